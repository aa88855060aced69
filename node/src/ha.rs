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
use tidewater_state::live::{LiveReader, LiveState};
use tidewater_storage::lease::Lease;
use tidewater_tail::{CommittedFn, Tail, TailConfig, TailStats};
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
    let probe = tidewater_chain::RpcClient::new(probe).wrap_err("building the HTTP client")?;
    let reach = |e: tidewater_chain::Error| {
        crate::usage(eyre!(e).wrap_err(format!("cannot reach RPC {urls}")))
    };
    let chain_id = probe.chain_id().await.map_err(reach)?;
    let from = crate::pipeline::resolve_bound(&probe, plan.from).await.map_err(crate::usage)?;
    let ws = match tail.ws.as_deref() {
        Some(ws) => Some(
            tidewater_chain::ProviderUrl::parse_with(ws, &["ws", "wss"]).map_err(crate::usage)?,
        ),
        None => None,
    };
    let rpc = tidewater_chain::RpcClient::new(crate::pipeline::rpc_config(&plan))
        .wrap_err("building the HTTP client")?;
    let cfg = crate::pipeline::tail_config(&tail, &plan, from, ws);
    // Bad sources are said now: the follower would find them only once the leader committed.
    let probe = Tail::new(rpc.clone(), plan.sources.clone(), chain_id, cfg.clone())
        .map_err(crate::usage)?;
    let follow = Follow { probe, rpc, cfg, chain_id, stats: Arc::default() };
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
        let standby = Standby {
            plan: &plan,
            tail: &tail,
            listener: listener.as_ref(),
            ttl,
            me: &me,
            role: &role,
            follow: &follow,
        };
        let Some((lease, readers)) = standby.run(&mut signals).await? else {
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
            readers,
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
        // Once the lease is lost the pipeline stops as on SIGTERM; one stuck on a node or a
        // store that does not answer (a lost network) is dropped after a ttl: whatever it
        // still tries to commit is refused by the lease and the log.
        let mut abandon_at: Option<tokio::time::Instant> = None;
        let r = loop {
            tokio::select! {
                r = &mut pipeline => break r,
                _ = signals.recv(), if !signalled => {
                    signalled = true;
                    stop_writer.cancel();
                }
                _ = lost.cancelled(), if abandon_at.is_none() && !signalled => {
                    abandon_at = Some(tokio::time::Instant::now() + ttl);
                }
                _ = tokio::time::sleep_until(abandon_at.unwrap_or_else(tokio::time::Instant::now)), if abandon_at.is_some() => {
                    tracing::warn!(epoch = lease.epoch(), "the writer did not stop within the lease's ttl after losing it; abandoning it");
                    break Ok(());
                }
            }
        };
        drop(renew);
        // A writer resumed after a pause past its ttl may fail before its renewal says so: its
        // successor swept its staged files, so a rename fails. Ask the lease before calling
        // that error fatal.
        let lost_meanwhile =
            !signalled && r.is_err() && !lost.is_cancelled() && !is_fenced(&r) && {
                let l = lease.clone();
                let renewed = tokio::task::spawn_blocking(move || l.renew()).await;
                lease.expired()
                    || matches!(renewed, Ok(Err(tidewater_storage::Error::Fenced { .. })))
            };
        if lost_meanwhile {
            if let Err(Failure::Runtime(e) | Failure::Usage(e)) = &r {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "the writer failed after losing its lease"
                );
            }
        }
        if !signalled && (lost.is_cancelled() || is_fenced(&r) || lost_meanwhile) {
            tracing::warn!(epoch = lease.epoch(), "lost the writer lease; standing by");
            continue;
        }
        let l = lease.clone();
        let _ = tokio::task::spawn_blocking(move || l.release()).await;
        return r;
    }
}

/// Renews the lease every ttl / 3; cancels `lost` and `stop` once it is refused, or once it
/// ran out while a renewal hangs (the store or the coordinator is unreachable: a lost network).
async fn renew(lease: Arc<Lease>, lost: CancellationToken, stop: CancellationToken) {
    let mut tick = tokio::time::interval(lease.ttl() / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let give_up = |why: &str| {
        tracing::error!(epoch = lease.epoch(), "{why}");
        lost.cancel();
        stop.cancel();
    };
    let mut pending: Option<tokio::task::JoinHandle<tidewater_storage::Result<()>>> = None;
    loop {
        tick.tick().await;
        if let Some(h) = pending.take_if(|h| h.is_finished()) {
            match h.await {
                Ok(Ok(())) => {}
                Ok(Err(e @ tidewater_storage::Error::Fenced { .. })) => {
                    return give_up(&format!("the writer lease was taken over: {e}"));
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the writer lease; retrying"),
                Err(e) => tracing::warn!(error = %e, "renewing the writer lease; retrying"),
            }
        }
        if pending.is_some() {
            if lease.expired() {
                return give_up("the writer lease ran out while its renewal hangs (the store or the coordinator is unreachable)");
            }
            continue;
        }
        let l = lease.clone();
        pending = Some(tokio::task::spawn_blocking(move || l.renew()));
    }
}

/// What a standby follows the head with: its own client, tail settings and counters.
struct Follow {
    /// A tail that only computes the watermark (built once: its catalog is not free).
    probe: Tail,
    rpc: tidewater_chain::RpcClient,
    cfg: TailConfig,
    chain_id: u64,
    stats: Arc<TailStats>,
}

/// A standby starts following the head once the leader's checkpoint is this close to the
/// watermark (the leader is tailing, not backfilling: the hot buffer stays small).
const FOLLOW_MAX_LAG: u64 = 2_048;

/// The head follower of a standby: a tail that writes nothing, and the thread that folds its
/// bus into the live state the API serves.
struct Following {
    task: tidewater_chain::SpawnedTask<tidewater_tail::Result<()>>,
    cancel: CancellationToken,
    consumer: std::thread::JoinHandle<()>,
}

impl Following {
    /// Stops the tail, then its consumer (the bus closes with the tail).
    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.join().await;
        let c = self.consumer;
        let _ = tokio::task::spawn_blocking(move || c.join()).await;
    }
}

/// A standby: serves the API, follows the head with its own hot buffer and live state once
/// the leader tails (before that, the leader's commits), and waits for the lease.
struct Standby<'a> {
    plan: &'a Plan,
    tail: &'a TailOptions,
    listener: Option<&'a std::net::TcpListener>,
    ttl: Duration,
    me: &'a str,
    role: &'a Arc<Role>,
    follow: &'a Follow,
}

impl Standby<'_> {
    /// Until this instance takes the lease (with the readers of the state it served), or
    /// `None` on a signal.
    async fn run(
        &self,
        signals: &mut Signals,
    ) -> Result<Option<(Lease, Option<LiveReader>)>, Failure> {
        let (plan, ttl) = (self.plan, self.ttl);
        let cancel = CancellationToken::new();
        let mut server = None;
        let mut readers: Option<LiveReader> = None;
        // The leader's commits, folded here until the head follower starts.
        let mut cold: Option<Arc<std::sync::Mutex<LiveState>>> = None;
        let mut following: Option<Following> = None;
        let mut tick = tokio::time::interval((ttl / 6).max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let leave = |following: Option<Following>, server, cancel: CancellationToken| async move {
            if let Some(f) = following {
                f.stop().await;
            }
            stop(server, &cancel).await;
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = signals.recv() => {
                    leave(following, server, cancel).await;
                    return Ok(None);
                }
            }
            // Serve first, from the replica as it is: a store that hangs (a lost network) must
            // not keep the API down.
            if cold.is_none()
                && following.is_none()
                && !self.tail.no_serve
                && tidewater_storage::read_identity(&plan.data).ok().flatten().is_some()
            {
                if let Some(state) = self.load_or_retry(readers.clone()).await? {
                    let r = state.reader();
                    if let (Some(l), None) = (self.listener, &server) {
                        server = Some(self.serve(r.clone(), l, cancel.clone())?);
                    }
                    readers = Some(r);
                    cold = Some(Arc::new(std::sync::Mutex::new(state)));
                }
            }
            let (root, holder) = (plan.data.clone(), self.me.to_string());
            let got = tokio::task::spawn_blocking(move || Lease::try_acquire(&root, &holder, ttl))
                .await
                .wrap_err("taking the writer lease")?;
            match got {
                Ok(Some(lease)) => {
                    leave(following, server, cancel).await;
                    return Ok(Some((lease, readers)));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the writer lease; retrying"),
            }
            // A head follower that stopped (an error it could not retry): back to the commits.
            if following.as_ref().is_some_and(|f| f.task.is_finished()) {
                if let Some(f) = following.take() {
                    f.stop().await;
                }
                tracing::warn!(
                    "the standby's head follower stopped; following the leader's commits"
                );
                if let Some(r) = &readers {
                    cold = self
                        .load_or_retry(Some(r.clone()))
                        .await?
                        .map(std::sync::Mutex::new)
                        .map(Arc::new);
                }
            }
            if following.is_some() {
                continue;
            }
            // On object storage the replica follows the leader's commits in the store.
            if let Some(remote) = tidewater_storage::attached(&plan.data) {
                match tokio::task::spawn_blocking(move || remote.sync_cache()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "following the store; retrying"),
                    Err(e) => tracing::warn!(error = %e, "following the store; retrying"),
                }
            }
            // Without the API (or before there is a dataset) there is nothing to serve.
            let Some(s) = cold.clone() else { continue };
            let r = tokio::task::spawn_blocking(move || {
                let mut s = s.lock().map_err(|_| eyre!("the live state failed"))?;
                s.catch_up_with_cold().map_err(|e| eyre!(e))?;
                Ok::<_, eyre::Report>(s.confirmed().map(|c| c.0))
            })
            .await
            .wrap_err("following the data directory")?;
            let checkpoint = match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the leader's commits; retrying");
                    continue;
                }
            };
            // The live state (and the API) follow the head too once the leader tails.
            let Some(checkpoint) = checkpoint else { continue };
            match self.near_head(checkpoint).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the head; retrying");
                    continue;
                }
            }
            let Some(f) = self.start_following(readers.clone(), &cancel).await? else { continue };
            cold = None;
            tracing::info!(checkpoint, "standby: following the head");
            following = Some(f);
        }
    }

    /// Loads the state from the replica for a standby. A runtime failure (a read that raced the
    /// leader's merge, a file not synced yet) is said and retried at the next look; bad input
    /// (a dataset of another chain) ends the run.
    async fn load_or_retry(
        &self,
        readers: Option<LiveReader>,
    ) -> Result<Option<LiveState>, Failure> {
        match crate::load(&self.plan.data, &self.api(), readers).await {
            Ok(state) => Ok(Some(state)),
            Err(Failure::Runtime(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "standby: loading the state; retrying");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The API settings of a standby: no snapshots into a directory the leader writes.
    fn api(&self) -> crate::ApiOptions {
        let mut api = self.tail.api.clone();
        if tidewater_storage::attached(&self.plan.data).is_none() {
            api.snapshot_interval = 0;
        }
        api
    }

    /// Whether the leader's checkpoint is within [`FOLLOW_MAX_LAG`] of the watermark.
    async fn near_head(&self, checkpoint: u64) -> eyre::Result<bool> {
        let f = self.follow;
        let head = f.rpc.block_number().await?;
        let watermark = f.probe.watermark(head).await?;
        Ok(checkpoint + FOLLOW_MAX_LAG >= watermark)
    }

    /// Starts the head follower: a tail that writes nothing, its bus folded into a state
    /// that replaces the cold one for the same readers.
    async fn start_following(
        &self,
        readers: Option<LiveReader>,
        cancel: &CancellationToken,
    ) -> Result<Option<Following>, Failure> {
        let f = self.follow;
        let tail = Arc::new(
            Tail::new(f.rpc.clone(), self.plan.sources.clone(), f.chain_id, f.cfg.clone())
                .map_err(crate::usage)?
                .with_stats(f.stats.clone()),
        );
        let Some(state) = self.load_or_retry(readers).await? else { return Ok(None) };
        let consumer = tidewater_state::live::spawn_consumer(state, tail.subscribe())
            .wrap_err("starting the live state")?;
        let root = self.plan.data.clone();
        let committed: CommittedFn = Arc::new(move || {
            if let Some(remote) = tidewater_storage::attached(&root) {
                remote.sync_cache()?;
            }
            let ds = tidewater_storage::Dataset::open(&root)?;
            Ok(ds.manifest().last().map(|c| (c.end, c.last_block_hash)))
        });
        let stop = cancel.child_token();
        let c = stop.clone();
        let task = tidewater_chain::SpawnedTask::spawn(async move {
            let r = tail.follow(committed, c).await;
            if let Err(e) = &r {
                tracing::warn!(error = ?eyre!(format!("{e}")), "the standby's head follower failed");
            }
            r
        });
        Ok(Some(Following { task, cancel: stop, consumer }))
    }

    /// Starts the API of a standby.
    fn serve(
        &self,
        reader: LiveReader,
        l: &std::net::TcpListener,
        cancel: CancellationToken,
    ) -> Result<tidewater_chain::SpawnedTask<std::io::Result<()>>, Failure> {
        let mut metrics = tidewater_api::Registry::default();
        metrics.register_collector(Box::new(self.role.clone()));
        metrics.register_collector(Box::new(self.follow.stats.clone()));
        metrics.register_collector(Box::new(self.follow.rpc.clone()));
        let l = tokio::net::TcpListener::from_std(l.try_clone().wrap_err("the API's listener")?)
            .wrap_err("the API's listener")?;
        let stats = self.follow.stats.clone();
        // Ready while its own follower is at the head, as a leader is.
        let caught_up: tidewater_api::CaughtUpFn = Arc::new(move || {
            let lag = stats
                .head
                .load(Ordering::Relaxed)
                .saturating_sub(stats.tip.load(Ordering::Relaxed));
            stats.caught_up.load(Ordering::Relaxed) && lag <= crate::pipeline::READY_MAX_LAG_BLOCKS
        });
        Ok(crate::start(
            reader,
            l,
            &self.tail.api,
            metrics,
            caught_up,
            Some(self.follow.rpc.clone()),
            crate::ServiceExt { role: Some(Arc::new(|| "standby")), blocked: None },
            cancel,
        ))
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
