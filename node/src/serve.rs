//! The API and the live state: loading the state of a data directory, starting the API beside
//! a tail (`run`, `tail`), or serving a directory that another process writes (`serve`).

use crate::{usage, Failure, Signals};
use eyre::{eyre, WrapErr as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tidewater_api::{CaughtUpFn, Registry, Service};
use tidewater_queries::df_sql::SqlLimits;
use tidewater_state::live::{LiveReader, LiveState};
use tidewater_storage::Dataset;
use tokio_util::sync::CancellationToken;

/// What the API needs besides the state.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Write a state snapshot every this many confirmed blocks (0: none).
    pub snapshot_interval: u64,
    /// Stream events kept for `Last-Event-ID` reconnects and the publisher's backlog.
    pub stream_history: usize,
    /// Limits of `POST /v1/sql`.
    pub limits: SqlLimits,
}

/// Binds the API's address (before anything is written, so a taken port is bad input).
pub async fn bind(api: &ApiOptions) -> Result<tokio::net::TcpListener, Failure> {
    tokio::net::TcpListener::bind(api.listen).await.map_err(|e| {
        usage(eyre!(e).wrap_err(format!(
            "cannot listen on {} (pass another --listen, or --no-serve)",
            api.listen
        )))
    })
}

/// Loads the live state of the data directory at `root` (blocking: folds the cold tier).
/// With `reader`, the state is published to its readers (see [`LiveState::load_for`]).
pub async fn load(
    root: &std::path::Path,
    api: &ApiOptions,
    reader: Option<LiveReader>,
) -> Result<LiveState, Failure> {
    let root = root.to_path_buf();
    let interval = api.snapshot_interval;
    let history = api.stream_history;
    tokio::task::spawn_blocking(move || -> Result<LiveState, Failure> {
        let ds = Dataset::open(&root).map_err(|e| {
            if e.is_usage() {
                usage(e)
            } else {
                Failure::Runtime(eyre!(e))
            }
        })?;
        let sources: tidewater_chain::Sources =
            serde_json::from_value(ds.identity().sources.clone())
                .wrap_err("reading the dataset's sources")?;
        // Without Uniswap V3 sources the state stays empty; SQL, stream and metrics still work.
        let u = sources.uniswap_v3.unwrap_or(tidewater_chain::UniswapV3 {
            factory: tidewater_chain::Address::ZERO,
            position_manager: None,
            factory_start_block: 0,
        });
        let live = LiveState::load_for(ds, u, interval, reader.as_ref()).map_err(|e| {
            let usage_error = e.is_usage();
            let e = eyre!(e).wrap_err("loading the state from the cold tier");
            if usage_error {
                usage(e)
            } else {
                Failure::Runtime(e)
            }
        })?;
        live.set_stream_history(history);
        Ok(live)
    })
    .await
    .wrap_err("loading the state")?
}

/// What an instance adds to its API's answers: its role (`run --ha`), what blocks it.
#[derive(Default)]
pub struct ServiceExt {
    /// `leader` / `standby`.
    pub role: Option<tidewater_api::RoleFn>,
    /// Why it cannot write (the object store is down).
    pub blocked: Option<tidewater_api::BlockedFn>,
}

impl std::fmt::Debug for ServiceExt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceExt").finish_non_exhaustive()
    }
}

/// Starts the API on `listener` until `cancel`.
#[allow(clippy::too_many_arguments)] // the server's parts, each optional or owned; a builder would hide none
pub fn start(
    live: LiveReader,
    listener: tokio::net::TcpListener,
    api: &ApiOptions,
    metrics: Registry,
    caught_up: CaughtUpFn,
    rpc: Option<tidewater_chain::RpcClient>,
    ext: ServiceExt,
    cancel: CancellationToken,
) -> tidewater_chain::SpawnedTask<std::io::Result<()>> {
    let limits = api.limits;
    if let Ok(a) = listener.local_addr() {
        tracing::info!("HTTP API on http://{a} (see /openapi.json)");
    }
    let mut svc = Service::new(live, metrics, caught_up, limits);
    if let Some(rpc) = rpc {
        svc = svc.with_tokens(crate::token_lookup(rpc));
    }
    if let Some(role) = ext.role {
        svc = svc.with_role(role);
    }
    if let Some(b) = ext.blocked {
        svc = svc.with_blocked(b);
    }
    tidewater_chain::SpawnedTask::spawn(tidewater_api::serve(svc, listener, cancel))
}

/// Serves the data directory `data`, which another process writes: the state catches up with
/// newly committed blocks every `poll_interval`, until SIGINT or SIGTERM.
pub async fn serve_directory(
    data: PathBuf,
    api: ApiOptions,
    poll_interval: Duration,
) -> Result<(), Failure> {
    let listener = bind(&api).await?;
    // The state is written by this task only (catching up with the directory); the server
    // reads the views it publishes.
    let live = Arc::new(std::sync::Mutex::new(load(&data, &api, None).await?));
    let reader = live.lock().map_err(|_| eyre!("the live state failed"))?.reader();
    let cancel = CancellationToken::new();
    let server = start(
        reader,
        listener,
        &api,
        Registry::default(),
        Arc::new(|| true),
        None,
        ServiceExt::default(),
        cancel.clone(),
    );
    let mut signals = Signals::new()?;
    let mut tick = tokio::time::interval(poll_interval.max(Duration::from_millis(10)));
    let server_done = server.join();
    tokio::pin!(server_done);
    loop {
        tokio::select! {
            r = &mut server_done => {
                r.wrap_err("HTTP server")?.wrap_err("HTTP server")?;
                return Ok(());
            }
            _ = tick.tick() => {
                let l = live.clone();
                let r = tokio::task::spawn_blocking(move || {
                    l.lock().map_err(|_| eyre!("the live state failed"))?.catch_up_with_cold().map_err(|e| eyre!(e))
                })
                .await
                .wrap_err("following the data directory")?;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "reading newly committed blocks; retrying");
                }
            }
            _ = signals.recv() => {
                tracing::info!("stopping the server (signal received)");
                cancel.cancel();
            }
        }
    }
}
