//! `run --ha` / `tail --ha`: several instances on one data directory, one writer.
//!
//! ```text
//!   standby ──(lease free or expired: take it, epoch + 1)──▶ leader
//!     │ serves the API over the directory,                    │ the pipeline (backfill to the
//!     │ following the leader's commits                        │ watermark, tail), every commit
//!     │                                                       │ fenced by the lease; renewed
//!     ◀──────────(renewal refused, or a commit fenced)────────┘ every ttl / 3
//! ```
//!
//! A leader that dies (kill -9, a lost host) stops renewing: a standby takes the lease once it
//! expires (`--ha-lease-ms`, default 3,000; standbys look every ttl / 6) and resumes from the
//! checkpoint. A leader paused past its lease (SIGSTOP) finds, on waking, a higher epoch: its
//! next commit is refused before any file is written, and it stands by. A clean stop (SIGINT,
//! SIGTERM) releases the lease so a standby takes over at once.

use crate::pipeline::{Leader, Mode, Observer, Plan, TailOptions};
use crate::{Failure, Signals};
use eyre::{eyre, WrapErr as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidewater_chain::metrics::{Collector, DescriptorEncoder};
use tidewater_storage::lease::Lease;
use tokio_util::sync::CancellationToken;

/// Default lease time to live.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);

/// The role of this instance, for metrics and logs.
#[derive(Debug, Default)]
pub struct Role {
    leader: AtomicU64,
    epoch: AtomicU64,
    takeovers: AtomicU64,
}

impl Collector for Role {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> tidewater_chain::metrics::Result {
        use tidewater_chain::metrics::{counter, gauge};
        let e = &mut enc;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            e,
            "tidewater_ha_leader",
            "1 while this instance holds the writer lease, 0 on standby.",
            n(&self.leader) as f64,
        )?;
        gauge(
            e,
            "tidewater_ha_epoch",
            "Epoch of the lease this instance holds or last held.",
            n(&self.epoch) as f64,
        )?;
        counter(
            e,
            "tidewater_ha_takeovers",
            "Times this instance took the writer lease.",
            n(&self.takeovers),
        )
    }
}

/// This instance's name in the lease: host, process id and a random part.
fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{host}:{}:{nanos:08x}", std::process::id())
}

fn is_fenced(r: &Result<(), Failure>) -> bool {
    match r {
        Err(Failure::Runtime(e) | Failure::Usage(e)) => e.chain().any(|c| {
            c.downcast_ref::<tidewater_storage::Error>()
                .is_some_and(|e| matches!(e, tidewater_storage::Error::Fenced { .. }))
        }),
        Ok(()) => false,
    }
}

/// Runs as a standby until this instance holds the lease, then as the leader, and back.
pub async fn run(
    plan: Plan,
    mode: Mode,
    tail: TailOptions,
    ttl: Duration,
    observer: &mut dyn Observer,
) -> Result<(), Failure> {
    if plan.cfg.shard.is_some() {
        return Err(crate::usage(eyre!("--ha runs one writer of the whole chain: drop --shard")));
    }
    // An unreachable node is bad input, said before anything (the lease) is written.
    let mut probe = tidewater_chain::RpcConfig::new(plan.rpc_urls.clone());
    probe.max_attempts = 3;
    probe.timeout = probe.timeout.min(Duration::from_secs(10));
    let urls = plan.rpc_urls.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    tidewater_chain::RpcClient::new(probe)
        .wrap_err("building the HTTP client")?
        .chain_id()
        .await
        .map_err(|e| crate::usage(eyre!(e).wrap_err(format!("cannot reach RPC {urls}"))))?;
    let listener = if tail.no_serve {
        None
    } else {
        Some(crate::bind(&tail.api).await?.into_std().wrap_err("the API's listener")?)
    };
    let me = holder();
    let role = Arc::new(Role::default());
    let mut signals = Signals::new()?;
    tracing::info!(holder = %me, ttl_ms = ttl.as_millis() as u64, "high availability: standing by for the writer lease");
    loop {
        role.leader.store(0, Ordering::Relaxed);
        let Some(lease) =
            standby(&plan, &tail, listener.as_ref(), ttl, &me, &role, &mut signals).await?
        else {
            return Ok(());
        };
        let lease = Arc::new(lease);
        role.leader.store(1, Ordering::Relaxed);
        role.epoch.store(lease.epoch(), Ordering::Relaxed);
        role.takeovers.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(epoch = lease.epoch(), "took the writer lease: leading");
        let lost = CancellationToken::new();
        let stop_writer = CancellationToken::new();
        let renew = tidewater_chain::SpawnedTask::spawn(renew(
            lease.clone(),
            lost.clone(),
            stop_writer.clone(),
        ));
        let leader = Leader {
            lease: lease.clone(),
            listener: match &listener {
                Some(l) => Some(l.try_clone().wrap_err("the API's listener")?),
                None => None,
            },
            stop: stop_writer.clone(),
            metrics: Box::new(role.clone()),
        };
        let pipeline = crate::pipeline::run_with(
            plan.clone(),
            Some((mode, tail.clone())),
            observer,
            Some(leader),
        );
        tokio::pin!(pipeline);
        // A signal may come before the pipeline listens for it (it is starting): stop it here.
        let mut signalled = false;
        let r = loop {
            tokio::select! {
                r = &mut pipeline => break r,
                _ = signals.recv(), if !signalled => {
                    signalled = true;
                    stop_writer.cancel();
                }
            }
        };
        drop(renew);
        if !signalled && (lost.is_cancelled() || is_fenced(&r)) {
            tracing::warn!(epoch = lease.epoch(), "lost the writer lease; standing by");
            continue;
        }
        let l = lease.clone();
        let _ = tokio::task::spawn_blocking(move || l.release()).await;
        return r;
    }
}

/// Renews the lease every ttl / 3; cancels `lost` and `stop` once it is refused.
async fn renew(lease: Arc<Lease>, lost: CancellationToken, stop: CancellationToken) {
    let mut tick = tokio::time::interval(lease.ttl() / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let l = lease.clone();
        match tokio::task::spawn_blocking(move || l.renew()).await {
            Ok(Ok(())) => {}
            Ok(Err(e @ tidewater_storage::Error::Fenced { .. })) => {
                tracing::error!(error = %e, "the writer lease was taken over");
                lost.cancel();
                stop.cancel();
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "renewing the writer lease; retrying"),
            Err(e) => tracing::warn!(error = %e, "renewing the writer lease; retrying"),
        }
    }
}

/// Serves the directory (once it is a dataset) and waits for the lease. `None`: a signal.
#[allow(clippy::too_many_arguments)]
async fn standby(
    plan: &Plan,
    tail: &TailOptions,
    listener: Option<&std::net::TcpListener>,
    ttl: Duration,
    me: &str,
    role: &Arc<Role>,
    signals: &mut Signals,
) -> Result<Option<Lease>, Failure> {
    let cancel = CancellationToken::new();
    let mut server = None;
    let mut live: Option<Arc<std::sync::Mutex<tidewater_state::LiveState>>> = None;
    let mut tick = tokio::time::interval((ttl / 6).max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = signals.recv() => {
                stop(server, &cancel).await;
                return Ok(None);
            }
        }
        let (root, holder) = (plan.data.clone(), me.to_string());
        let got = tokio::task::spawn_blocking(move || Lease::try_acquire(&root, &holder, ttl))
            .await
            .wrap_err("taking the writer lease")?;
        match got {
            Ok(Some(lease)) => {
                stop(server, &cancel).await;
                return Ok(Some(lease));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the writer lease; retrying"),
        }
        // On object storage the replica follows the leader's commits in the store.
        if let Some(remote) = tidewater_storage::attached(&plan.data) {
            match tokio::task::spawn_blocking(move || remote.sync_cache()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "following the store; retrying"),
                Err(e) => tracing::warn!(error = %e, "following the store; retrying"),
            }
        }
        // The API over the directory, once there is a dataset to serve.
        match (&live, listener) {
            (None, Some(l))
                if tidewater_storage::read_identity(&plan.data).ok().flatten().is_some() =>
            {
                let state = crate::load(&plan.data, &tail.api, None).await?;
                let reader = state.reader();
                let mut metrics = tidewater_api::Registry::default();
                metrics.register_collector(Box::new(role.clone()));
                let l = tokio::net::TcpListener::from_std(
                    l.try_clone().wrap_err("the API's listener")?,
                )
                .wrap_err("the API's listener")?;
                server = Some(crate::start(
                    reader,
                    l,
                    &tail.api,
                    metrics,
                    Arc::new(|| true),
                    None,
                    crate::ServiceExt { role: Some(Arc::new(|| "standby")), blocked: None },
                    cancel.clone(),
                ));
                live = Some(Arc::new(std::sync::Mutex::new(state)));
            }
            (Some(state), _) => {
                let s = state.clone();
                let r = tokio::task::spawn_blocking(move || {
                    s.lock()
                        .map_err(|_| eyre!("the live state failed"))?
                        .catch_up_with_cold()
                        .map_err(|e| eyre!(e))
                })
                .await
                .wrap_err("following the data directory")?;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "reading the leader's commits; retrying");
                }
            }
            _ => {}
        }
    }
}

async fn stop(
    server: Option<tidewater_chain::SpawnedTask<std::io::Result<()>>>,
    cancel: &CancellationToken,
) {
    cancel.cancel();
    if let Some(s) = server {
        let _ = s.join().await;
    }
}
