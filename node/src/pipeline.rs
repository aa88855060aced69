//! The pipeline: probe the providers, check the plan against the chain, open the data
//! directory, backfill up to `--to` or the confirmed watermark, then (for `run` and `tail`)
//! follow the head with the live state and the API beside it, all stopped by one
//! cancellation token on SIGINT or SIGTERM.

use crate::{usage, Failure};
use eyre::{eyre, WrapErr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tidewater_backfill::{Backfill, BackfillConfig, Progress, Summary};
use tidewater_chain::{BlockRange, EventCatalog, ProviderUrl, RpcClient, RpcConfig, Sources};
use tidewater_storage::{DatasetWriter, Identity};
use tidewater_tail::{ChainUpdate, Finality, Tail, TailConfig};
use tokio_util::sync::CancellationToken;

/// A block given as a number or as a tag the node resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockBound {
    /// A block number.
    Number(u64),
    /// The node's head.
    Latest,
    /// The node's finalized block.
    Finalized,
}

/// How the head is followed and the API served (`run`, `tail`).
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// A WebSocket endpoint for new heads (polling otherwise).
    pub ws: Option<String>,
    /// Poll interval, milliseconds.
    pub poll_interval_ms: u64,
    /// Confirmation depth; `None` follows the node's `finalized` tag.
    pub confirmations: Option<u64>,
    /// Confirmed blocks per compaction.
    pub compact_blocks: u64,
    /// Longest wait between compactions, seconds.
    pub compact_interval_secs: u64,
    /// Blocks per merged cold file.
    pub merge_blocks: u64,
    /// When empty answers for blocks whose bloom may match are asked again.
    pub empty_checks: tidewater_tail::EmptyChecks,
    /// Whether the observer gets every bus update.
    pub print_updates: bool,
    /// No API (and no live state).
    pub no_serve: bool,
    /// The API.
    pub api: crate::ApiOptions,
    /// Publish every update of the live state to NATS JetStream.
    pub publish: Option<tidewater_publish::PublishConfig>,
}

/// What the caller shows of a run: progress, the backfill's summary, bus updates.
pub trait Observer: Send {
    /// The backfill starts; `progress` moves while it runs.
    fn backfill_started(&mut self, progress: Arc<Progress>) {
        let _ = progress;
    }
    /// Called a few times a second while the backfill runs.
    fn tick(&mut self) {}
    /// The backfill ended (`then_tail`: a tail takes over).
    fn backfill_done(&mut self, summary: &Summary, then_tail: bool) -> eyre::Result<()> {
        let _ = (summary, then_tail);
        Ok(())
    }
    /// A bus update (with `print_updates` only).
    fn update(&mut self, u: &ChainUpdate) -> eyre::Result<()> {
        let _ = u;
        Ok(())
    }
}

/// Attempts for the first call to a provider: an unreachable node should fail in seconds.
const PROBE_ATTEMPTS: u32 = 3;

/// Everything a backfill needs, validated (the CLI merges flags over the config file into it).
#[derive(Debug, Clone)]
pub struct Plan {
    /// Providers, in order of preference.
    pub rpc_urls: Vec<ProviderUrl>,
    /// The data directory.
    pub data: PathBuf,
    /// What to index.
    pub sources: Sources,
    /// The chain the providers must serve, when given.
    pub chain_id: Option<u64>,
    /// Backfill tuning (its range is set from `from`/`to`).
    pub cfg: BackfillConfig,
    /// First block.
    pub from: BlockBound,
    /// Last block of a plain backfill.
    pub to: BlockBound,
    /// Requests in flight.
    pub concurrency: Option<usize>,
    /// Requests per second per provider.
    pub rps: Option<f64>,
    /// Time limit of one request.
    pub rpc_timeout: Option<Duration>,
    /// Blocks this close to the head get a header each (older ranges one per answer).
    pub block_checks_depth: u64,
}

/// The RPC client's settings of a plan.
pub(crate) fn rpc_config(plan: &Plan) -> RpcConfig {
    let mut rpc_cfg = RpcConfig::new(plan.rpc_urls.clone());
    if let Some(c) = plan.concurrency {
        rpc_cfg.concurrency = c;
    }
    rpc_cfg.rps = plan.rps;
    if let Some(t) = plan.rpc_timeout {
        rpc_cfg.timeout = t;
    }
    rpc_cfg
}

/// The tail's settings, starting at `from` when the dataset is empty.
pub(crate) fn tail_config(
    t: &TailOptions,
    plan: &Plan,
    from: u64,
    ws: Option<ProviderUrl>,
) -> TailConfig {
    TailConfig {
        poll_interval: Duration::from_millis(t.poll_interval_ms.max(1)),
        finality: match t.confirmations {
            Some(d) => Finality::Depth(d),
            None => Finality::Finalized(tidewater_tail::DEFAULT_CONFIRMATIONS),
        },
        compact_blocks: t.compact_blocks.max(1),
        compact_interval: Duration::from_secs(t.compact_interval_secs),
        start_block: from,
        merge_blocks: t.merge_blocks.max(1),
        ws,
        filter_mode: plan.cfg.filter_mode,
        // A live state folds every hot block as it comes: one applied without the logs a lie
        // hid could meet an event it cannot take (a burn of liquidity the missing mint added)
        // and stay degraded until a restart. With it, `auto` checks at once.
        empty_checks: match t.empty_checks {
            tidewater_tail::EmptyChecks::Auto if !t.no_serve => tidewater_tail::EmptyChecks::AtOnce,
            other => other,
        },
    }
}

/// A block bound as a number, asking the node for `latest` and `finalized`.
pub async fn resolve_bound(rpc: &RpcClient, b: BlockBound) -> eyre::Result<u64> {
    Ok(match b {
        BlockBound::Number(n) => n,
        BlockBound::Latest => rpc.block_number().await?,
        BlockBound::Finalized => {
            rpc.header_at("finalized")
                .await?
                .ok_or_else(|| eyre!("the node reports no finalized block"))?
                .number
        }
    })
}

/// Blocks the tail may be behind the node's head and still be ready: a poll or two.
pub(crate) const READY_MAX_LAG_BLOCKS: u64 = 3;

/// Whether a head follower takes over after (or instead of) the backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Backfill to the watermark, then tail.
    Run,
    /// Tail only.
    Tail,
}

/// Runs a backfill (`tail` None), or a backfill to the watermark then the tail (`Mode::Run`),
/// or the tail alone (`Mode::Tail`), until done or SIGINT/SIGTERM. Bad input is
/// [`Failure::Usage`], found before anything is written.
pub async fn run(
    plan: Plan,
    tail: Option<(Mode, TailOptions)>,
    observer: &mut dyn Observer,
) -> Result<(), Failure> {
    run_with(plan, tail, observer, None).await
}

/// What the holder of the writer lease (`run --ha`) brings to the pipeline.
#[derive(Debug)]
pub struct Leader {
    /// The lease every commit is fenced by.
    pub lease: Arc<tidewater_storage::lease::Lease>,
    /// The API's listener, bound once for the process (standby and leader serve on it).
    pub listener: Option<std::net::TcpListener>,
    /// Cancelled when the pipeline must stop (the lease was lost, or a signal came while it
    /// was starting): it stops as on SIGTERM.
    pub stop: CancellationToken,
    /// Metrics of the role, registered with the API's.
    pub metrics: Box<dyn tidewater_chain::metrics::Collector>,
    /// The readers of the state this instance served as a standby: their streams go on.
    pub readers: Option<tidewater_state::live::LiveReader>,
}

/// [`run`], as the holder of the writer lease when `leader` is given.
pub async fn run_with(
    mut plan: Plan,
    tail: Option<(Mode, TailOptions)>,
    observer: &mut dyn Observer,
    leader: Option<Leader>,
) -> Result<(), Failure> {
    let (lease, leader_listener, lost, role_metrics, readers) = match leader {
        Some(l) => (Some(l.lease), l.listener, Some(l.stop), Some(l.metrics), l.readers),
        None => (None, None, None, None, None),
    };
    let ws = match tail.as_ref().and_then(|(_, t)| t.ws.as_deref()) {
        Some(ws) => Some(ProviderUrl::parse_with(ws, &["ws", "wss"]).map_err(usage)?),
        None => None,
    };
    if let Some((_, t)) = &tail {
        if let Some(p) = &t.publish {
            tidewater_publish::publisher::validate_url(&p.url)
                .map_err(|e| usage(eyre!("--publish {e}")))?;
            if t.no_serve {
                return Err(usage(eyre!(
                    "--publish publishes the live state, which --no-serve turns off: drop one"
                )));
            }
        }
    }
    let rpc_cfg = rpc_config(&plan);
    // Probe with few attempts: an unreachable node is bad input, reported fast.
    let mut probe_cfg = rpc_cfg.clone();
    probe_cfg.max_attempts = PROBE_ATTEMPTS;
    probe_cfg.timeout = rpc_cfg.timeout.min(Duration::from_secs(10));
    let probe = RpcClient::new(probe_cfg).wrap_err("building the HTTP client")?;
    let urls = plan.rpc_urls.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let chain_id = probe
        .chain_id()
        .await
        .map_err(|e| usage(eyre!(e).wrap_err(format!("cannot reach RPC {urls}"))))?;
    if let Some(expected) = plan.chain_id {
        if expected != chain_id {
            return Err(usage(eyre!(
                "RPC {urls} serves chain {chain_id}, expected chain {expected}"
            )));
        }
    }
    let genesis = probe
        .header_at("0x0")
        .await
        .map_err(|e| usage(eyre!(e).wrap_err(format!("reading block 0 from {urls}"))))?
        .ok_or_else(|| usage(eyre!("RPC {urls} has no block 0")))?;
    let from = resolve_bound(&probe, plan.from).await.map_err(usage)?;
    let head = probe.block_number().await.map_err(usage)?;
    let tail_cfg = tail.as_ref().map(|(_, t)| tail_config(t, &plan, from, ws.clone()));
    plan.cfg.spans_below = head.saturating_sub(plan.block_checks_depth);
    // The backfill's last block: --to, or the watermark when a tail takes over.
    let backfill_to = match (&tail, &tail_cfg) {
        (None, _) => {
            let to = resolve_bound(&probe, plan.to).await.map_err(usage)?;
            if from > to {
                return Err(usage(eyre!("--from {from} is after --to {to}")));
            }
            if to > head {
                return Err(usage(eyre!("--to {to} is above the node's head {head}")));
            }
            Some(to)
        }
        (Some((Mode::Run, _)), Some(cfg)) => {
            let t = Tail::new(probe.clone(), plan.sources.clone(), chain_id, cfg.clone())
                .map_err(usage)?;
            let wm = t.watermark(head).await.wrap_err("reading the watermark")?;
            (wm >= from).then_some(wm)
        }
        _ => None,
    };

    // The live Uniswap V3 state needs every block from the factory's deployment: refuse a
    // start after it (unless the dataset already holds the blocks before it) before writing.
    if let (Some((_, t)), Some(u)) = (&tail, &plan.sources.uniswap_v3) {
        let deployed = u.factory_start_block;
        if !t.no_serve && from > deployed {
            let data = plan.data.clone();
            let held = tokio::task::spawn_blocking(move || {
                tidewater_storage::Dataset::open(&data)
                    .ok()
                    .is_some_and(|ds| ds.manifest().gaps(deployed, from - 1).is_empty())
            })
            .await
            .wrap_err("reading the data directory")?;
            if !held {
                return Err(usage(eyre!(
                    "--from {from} starts after the factory's deployment block {deployed} (--factory-start-block): the live Uniswap V3 state needs every block from it; start at {deployed}, or pass --no-serve"
                )));
            }
        }
    }
    // The API's port is taken before anything is written: a conflict is bad input.
    let listener = match (&tail, leader_listener) {
        (Some((_, t)), _) if t.no_serve => None,
        (Some(_), Some(l)) => {
            Some(tokio::net::TcpListener::from_std(l).wrap_err("taking over the API's listener")?)
        }
        (Some((_, t)), None) => Some(crate::bind(&t.api).await?),
        _ => None,
    };
    let rpc = RpcClient::new(rpc_cfg).wrap_err("building the HTTP client")?;
    let catalog = EventCatalog::new(&plan.sources).map_err(usage)?;
    let mut schemas = catalog.tables();
    schemas.insert(tidewater_chain::schema::LOGS.into(), tidewater_chain::schema::logs_schema());
    schemas
        .insert(tidewater_chain::schema::BLOCKS.into(), tidewater_chain::schema::blocks_schema());
    let identity = Identity::new(
        chain_id,
        genesis.hash.to_string(),
        serde_json::to_value(&plan.sources).wrap_err("serializing sources")?,
        schemas.keys().cloned().collect(),
    );
    let data = plan.data.clone();
    let shard = plan.cfg.shard;
    if shard.is_some() && tail.is_some() {
        return Err(usage(eyre!("--shard is for backfills; a tail follows the whole chain")));
    }
    // The publisher's checkpoint: a damaged one is bad input (what consumers were told is not
    // guessed), found before anything runs.
    let publish = match tail.as_ref().and_then(|(_, t)| t.publish.clone()) {
        Some(cfg) => {
            let ck = tidewater_publish::publisher::load_checkpoint(&plan.data, &cfg.stream)
                .map_err(|e| usage(eyre!(e).wrap_err("reading the publisher's checkpoint")))?;
            Some((cfg, ck, Arc::new(tidewater_publish::PublishStats::default())))
        }
        None => None,
    };
    let leased = lease.clone();
    let opened = tokio::task::spawn_blocking(move || match leased {
        Some(lease) => DatasetWriter::open_leased(&data, &identity, &schemas, lease),
        None => DatasetWriter::open(&data, &identity, &schemas, shard),
    })
    .await
    .wrap_err("opening the data directory")?;
    let mut dataset = match opened {
        Ok(d) => d,
        Err(e) if e.is_usage() => return Err(usage(e)),
        Err(e) => {
            return Err(Failure::Runtime(
                eyre!(e).wrap_err(format!("opening {}", plan.data.display())),
            ))
        }
    };

    let cancel = CancellationToken::new();
    // A lost lease stops everything this pipeline runs.
    let _on_lost = lost.map(|lost| {
        let cancel = cancel.clone();
        tidewater_chain::SpawnedTask::spawn(async move {
            lost.cancelled().await;
            tracing::warn!("stopping the writer (the lease was lost, or a signal)");
            cancel.cancel();
        })
    });
    let mut signals = crate::Signals::new()?;
    let follower = match &tail_cfg {
        Some(cfg) => Some(
            Tail::new(rpc.clone(), plan.sources.clone(), chain_id, cfg.clone()).map_err(usage)?,
        ),
        None => None,
    };
    // The API answers from the start: during the backfill /health is up, /ready says 503 and
    // the state is what was committed before.
    let api = match (listener, &follower, &tail) {
        (Some(listener), Some(f), Some((_, targs))) => {
            let live = crate::load(&plan.data, &targs.api, readers).await?.reader();
            let (stats, caught, metrics_rpc) = (f.stats(), f.stats(), rpc.clone());
            let mut metrics = tidewater_api::Registry::default();
            metrics.register_collector(Box::new(stats));
            metrics.register_collector(Box::new(metrics_rpc));
            if let Some(m) = role_metrics {
                metrics.register_collector(m);
            }
            if let Some((_, _, stats)) = &publish {
                metrics.register_collector(Box::new(stats.clone()));
                let _ = f.stats().later_stages.set(stats.stages());
            }
            // Ready once the tail has reached the head, and while it stays within a few blocks.
            let caught_up: tidewater_api::CaughtUpFn = std::sync::Arc::new(move || {
                use std::sync::atomic::Ordering::Relaxed;
                let lag = caught.head.load(Relaxed).saturating_sub(caught.tip.load(Relaxed));
                caught.caught_up.load(Relaxed) && lag <= READY_MAX_LAG_BLOCKS
            });
            let server = crate::start(
                live.clone(),
                listener,
                &targs.api,
                metrics,
                caught_up,
                Some(rpc.clone()),
                crate::ServiceExt {
                    role: lease
                        .is_some()
                        .then(|| -> tidewater_api::RoleFn { Arc::new(|| "leader") }),
                    blocked: Some({
                        let stats = f.stats();
                        Arc::new(move || {
                            stats
                                .store_unavailable
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .as_ref()
                                .map(|r| format!("cold storage unavailable, retrying: {r}"))
                        })
                    }),
                },
                cancel.clone(),
            );
            Some((live, server))
        }
        _ => None,
    };
    if let Some(to) = backfill_to {
        plan.cfg.range = BlockRange::new(from, to);
        let backfill = Backfill::new(rpc.clone(), plan.sources.clone(), chain_id, plan.cfg.clone())
            .map_err(usage)?;
        observer.backfill_started(backfill.progress());
        let run = backfill.run_with(dataset, cancel.clone());
        tokio::pin!(run);
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = ticker.tick() => observer.tick(),
                _ = signals.recv(), if !cancel.is_cancelled() => {
                    tracing::warn!("stopping after the chunk being committed (signal received)");
                    cancel.cancel();
                }
            }
        };
        let (summary, w) = result.wrap_err_with(|| {
            format!("backfill of {} into {}", plan.cfg.range, plan.data.display())
        })?;
        dataset = w;
        if tail.is_some() {
            tracing::info!(
                blocks = summary.blocks,
                logs = summary.logs,
                to,
                "backfill done, tail takes over"
            );
        }
        observer.backfill_done(&summary, tail.is_some())?;
        if summary.cancelled {
            return Ok(());
        }
    }
    let (Some((_, targs)), Some(follower)) = (tail, follower) else { return Ok(()) };
    let mut publisher = None;
    if let Some((live, _)) = &api {
        // The backfill committed more: the state starts again from the cold tier as it is now,
        // then folds the tail's updates.
        let fresh = crate::load(&plan.data, &targs.api, Some(live.clone())).await?;
        // The publisher subscribes before the writer starts: no update falls between.
        if let Some((cfg, ck, stats)) = publish {
            let sub = live.subscribe(None).map_err(|_| eyre!("the live stream is unavailable"))?;
            let mut p = tidewater_publish::Publisher::new(
                cfg,
                chain_id,
                plan.data.clone(),
                ck,
                live.clone(),
                stats,
            );
            if let Some(l) = &lease {
                p = p.with_lease(l.clone());
            }
            publisher = Some(tidewater_chain::SpawnedTask::spawn(p.run(sub, cancel.clone())));
        }
        tidewater_state::live::spawn_consumer(fresh, follower.subscribe())
            .wrap_err("starting the live state")?;
    }
    let r = follow(follower, dataset, &targs, observer, &mut signals, &cancel).await;
    cancel.cancel();
    if let Some(p) = publisher {
        // The update being sent finishes (or is sent again by the next start: same ids).
        if tokio::time::timeout(Duration::from_secs(5), p.join()).await.is_err() {
            tracing::warn!(
                "the publisher did not stop in time; the next start resends its last update"
            );
        }
    }
    r
}

/// Runs the tail until it ends or a signal stops it, printing updates when asked.
async fn follow(
    follower: Tail,
    dataset: DatasetWriter,
    targs: &TailOptions,
    observer: &mut dyn Observer,
    signals: &mut crate::Signals,
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    // Subscribe only when printing: a receiver nobody reads would hold the bus's last
    // BUS_CAPACITY updates (blocks with their logs) in memory.
    let mut updates = targs.print_updates.then(|| follower.subscribe());
    let run = follower.run(dataset, cancel.clone());
    tokio::pin!(run);
    loop {
        tokio::select! {
            r = &mut run => {
                r.wrap_err("tail")?;
                return Ok(());
            }
            u = async { updates.as_mut().expect("invariant: guarded by print_updates").recv().await }, if targs.print_updates => {
                match u {
                    Ok(u) => observer.update(&u)?,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        return Err(Failure::Runtime(eyre!("--print-updates fell {n} updates behind")));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
                }
            }
            _ = signals.recv(), if !cancel.is_cancelled() => {
                tracing::warn!("stopping the tail (signal received)");
                cancel.cancel();
            }
        }
    }
}
