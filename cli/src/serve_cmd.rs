//! `tidewater serve`, and the API that `run` and `tail` start beside the tail.

use crate::args::{ApiArgs, ServeArgs};
use crate::{usage, CmdResult, Failure};
use eyre::{eyre, WrapErr as _};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tidewater_queries::df_sql::SqlLimits;
use tidewater_queries::live::LiveState;
use tidewater_queries::server::{CaughtUpFn, MetricsFn, Service};
use tidewater_storage::Dataset;
use tokio_util::sync::CancellationToken;

/// Binds the API's address (before anything is written, so a taken port is bad input).
pub(crate) async fn bind(api: &ApiArgs) -> Result<tokio::net::TcpListener, Failure> {
    tokio::net::TcpListener::bind(api.listen).await.map_err(|e| {
        usage(eyre!(e).wrap_err(format!(
            "cannot listen on {} (pass another --listen, or --no-serve)",
            api.listen
        )))
    })
}

/// Loads the live state of the data directory at `root` (blocking: folds the cold tier).
pub(crate) async fn load(root: &std::path::Path, api: &ApiArgs) -> Result<LiveState, Failure> {
    let root = root.to_path_buf();
    let interval = api.snapshot_interval;
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
        LiveState::load(ds, u, interval).map_err(|e| {
            let usage_error = e.is_usage();
            let e = eyre!(e).wrap_err("loading the state from the cold tier");
            if usage_error {
                usage(e)
            } else {
                Failure::Runtime(e)
            }
        })
    })
    .await
    .wrap_err("loading the state")?
}

/// Starts the API on `listener` until `cancel`.
pub(crate) fn start(
    live: Arc<RwLock<LiveState>>,
    listener: tokio::net::TcpListener,
    api: &ApiArgs,
    metrics: MetricsFn,
    caught_up: CaughtUpFn,
    rpc: Option<tidewater_chain::RpcClient>,
    cancel: CancellationToken,
) -> tidewater_chain::SpawnedTask<std::io::Result<()>> {
    let limits = SqlLimits {
        max_rows: api.sql_max_rows,
        timeout: Duration::from_millis(api.sql_timeout_ms.max(1)),
        memory: api.sql_memory_mib.max(1) << 20,
    };
    if let Ok(a) = listener.local_addr() {
        tracing::info!("HTTP API on http://{a} (see /openapi.json)");
    }
    let mut svc = Service::new(live, metrics, caught_up, limits);
    if let Some(rpc) = rpc {
        svc = svc.with_tokens(token_lookup(rpc));
    }
    tidewater_chain::SpawnedTask::spawn(tidewater_queries::server::serve(svc, listener, cancel))
}

pub(crate) async fn serve(a: ServeArgs) -> CmdResult {
    let listener = bind(&a.api).await?;
    let live = Arc::new(RwLock::new(load(&a.data, &a.api).await?));
    let cancel = CancellationToken::new();
    let server = start(
        live.clone(),
        listener,
        &a.api,
        Arc::new(|_: &mut String| {}),
        Arc::new(|| true),
        None,
        cancel.clone(),
    );
    let mut signals = crate::backfill_cmd::Signals::new()?;
    let mut tick = tokio::time::interval(Duration::from_millis(a.poll_interval_ms.max(10)));
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
                let r = tokio::task::spawn_blocking(move || LiveState::catch_up_with_cold(&l))
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

/// `symbol()` and `decimals()` of a token through the node (for the page's pairs and prices).
fn token_lookup(rpc: tidewater_chain::RpcClient) -> tidewater_queries::server::TokenFn {
    Arc::new(move |a: tidewater_chain::Address| {
        let rpc = rpc.clone();
        Box::pin(async move {
            let call = |selector: &'static str| {
                let rpc = rpc.clone();
                async move {
                    let out: String = rpc
                        .request(
                            "eth_call",
                            serde_json::json!([{"to": a, "data": selector}, "latest"]),
                        )
                        .await
                        .ok()?;
                    hex::decode(out.trim_start_matches("0x")).ok()
                }
            };
            let (symbol, decimals) = tokio::join!(call("0x95d89b41"), call("0x313ce567"));
            let decimals =
                decimals.filter(|d| d.len() == 32 && d[..31].iter().all(|b| *b == 0))?[31];
            let symbol = decode_symbol(&symbol?)?;
            Some(tidewater_queries::server::TokenInfo { address: a, symbol, decimals })
        })
    })
}

/// An ABI `string` return value, or a `bytes32` one (old tokens such as MKR).
fn decode_symbol(b: &[u8]) -> Option<String> {
    if b.len() == 32 {
        let end = b.iter().position(|c| *c == 0).unwrap_or(32);
        return String::from_utf8(b[..end].to_vec()).ok();
    }
    let offset = usize::try_from(u64::from_be_bytes(b.get(24..32)?.try_into().ok()?)).ok()?;
    let len_at = b.get(offset + 24..offset + 32)?;
    let len = usize::try_from(u64::from_be_bytes(len_at.try_into().ok()?)).ok()?;
    let start = offset.checked_add(32)?;
    let text = b.get(start..start.checked_add(len)?)?;
    let s = String::from_utf8(text.to_vec()).ok()?;
    (!s.is_empty() && s.len() <= 32 && s.chars().all(|c| !c.is_control())).then_some(s)
}
