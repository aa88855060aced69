//! `tidewater backfill`: resolve flags and config, validate everything, then run.

use crate::args::{BackfillArgs, BlockBound, TailArgs};
use crate::progress::{LogWriter, Reporter};
use crate::{config, usage, CmdResult, Failure};
use eyre::{eyre, WrapErr};
use std::path::PathBuf;
use std::time::Duration;
use tidewater_backfill::{Backfill, BackfillConfig};
use tidewater_chain::{
    BlockRange, ContractSource, EventCatalog, ProviderUrl, RpcClient, RpcConfig, Sources, UniswapV3,
};
use tidewater_storage::{DatasetWriter, Identity, Shard};
use tidewater_tail::{ChainUpdate, Finality, Tail, TailConfig};
use tokio_util::sync::CancellationToken;

/// Attempts for the first call to a provider: an unreachable node should fail in seconds.
const PROBE_ATTEMPTS: u32 = 3;

/// Everything a backfill needs, validated.
pub(crate) struct Plan {
    pub(crate) rpc_urls: Vec<ProviderUrl>,
    pub(crate) data: PathBuf,
    pub(crate) sources: Sources,
    pub(crate) chain_id: Option<u64>,
    pub(crate) cfg: BackfillConfig,
    pub(crate) from: BlockBound,
    pub(crate) to: BlockBound,
    pub(crate) concurrency: Option<usize>,
    pub(crate) rps: Option<f64>,
    pub(crate) rpc_timeout: Option<Duration>,
}

/// Merges flags over the config file and checks what can be checked without a node.
pub(crate) fn resolve(a: &BackfillArgs) -> Result<Plan, Failure> {
    let file = config::load(a.config.as_deref()).map_err(usage)?;
    let mut raw_urls = if a.rpc.is_empty() { file.chain.rpc.clone() } else { a.rpc.clone() };
    if raw_urls.is_empty() {
        if let Ok(url) = std::env::var("ETH_RPC_URL") {
            raw_urls.push(url);
        }
    }
    if raw_urls.is_empty() {
        return Err(usage(eyre!(
            "no RPC URL: pass --rpc, set ETH_RPC_URL, or set chain.rpc in tidewater.toml"
        )));
    }
    // Provider URLs carry API keys: from here on only their redacted form is printed.
    let rpc_urls = raw_urls
        .iter()
        .map(|u| ProviderUrl::parse(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    let data = a.data.clone().or(file.data.clone()).unwrap_or_else(|| PathBuf::from("data"));

    let mut sources = Sources {
        uniswap_v3: file.sources.uniswap_v3.clone(),
        contracts: file.sources.contracts.clone(),
    };
    if let Some(factory) = a.uniswap_v3_factory {
        sources.uniswap_v3 = Some(UniswapV3 {
            factory,
            position_manager: a.uniswap_v3_position_manager,
            factory_start_block: a.factory_start_block.unwrap_or(0),
        });
    } else if a.uniswap_v3_position_manager.is_some() {
        return Err(usage(eyre!("--uniswap-v3-position-manager needs --uniswap-v3-factory")));
    }
    if let (Some(u), Some(b)) = (sources.uniswap_v3.as_mut(), a.factory_start_block) {
        u.factory_start_block = b;
    }
    if !a.event.is_empty() && a.contract.is_empty() {
        return Err(usage(eyre!("--event needs at least one --contract")));
    }
    if !a.contract.is_empty() && a.event.is_empty() {
        return Err(usage(eyre!("--contract needs at least one --event signature")));
    }
    for addr in &a.contract {
        sources.contracts.push(ContractSource { address: *addr, events: a.event.clone() });
    }
    if sources.uniswap_v3.is_none() && sources.contracts.is_empty() {
        return Err(usage(eyre!(
            "nothing to index: pass --uniswap-v3-factory, or --contract with --event, or set [sources] in tidewater.toml"
        )));
    }
    // Parses every event signature: a bad one is a usage error before anything runs.
    EventCatalog::new(&sources).map_err(usage)?;

    if let (BlockBound::Number(f), BlockBound::Number(t)) = (a.from, a.to) {
        if f > t {
            return Err(usage(eyre!("--from {f} is after --to {t}")));
        }
    }
    if a.from != BlockBound::Number(0) && !matches!(a.from, BlockBound::Number(_)) {
        return Err(usage(eyre!("--from must be a block number")));
    }
    let t = &file.tuning;
    let mut cfg = BackfillConfig::new(BlockRange::new(0, 0));
    cfg.chunk_size = a.chunk_size.or(t.chunk_size).unwrap_or(cfg.chunk_size);
    cfg.chunks_in_flight =
        a.chunks_in_flight.or(t.chunks_in_flight).unwrap_or(cfg.chunks_in_flight);
    cfg.log_range = a.log_range.or(t.log_range).unwrap_or(cfg.log_range);
    cfg.max_log_range = a.max_log_range.or(t.max_log_range).unwrap_or(cfg.max_log_range);
    cfg.shard = a.shard.map(|(index, count)| Shard { index, count });
    for (name, v) in [
        ("--chunk-size", cfg.chunk_size),
        ("--chunks-in-flight", cfg.chunks_in_flight as u64),
        ("--log-range", cfg.log_range),
        ("--max-log-range", cfg.max_log_range),
    ] {
        if v == 0 {
            return Err(usage(eyre!("{name} must be at least 1")));
        }
    }
    let concurrency = a.concurrency.or(t.concurrency);
    if concurrency == Some(0) {
        return Err(usage(eyre!("--concurrency must be at least 1")));
    }
    let rps = a.rps.or(t.rps);
    if rps.is_some_and(|r| !(r >= 0.0 && r.is_finite())) {
        return Err(usage(eyre!("--rps must be a non-negative number")));
    }
    let rpc_timeout = match a.rpc_timeout_ms.or(t.rpc_timeout_ms) {
        Some(0) => return Err(usage(eyre!("--rpc-timeout-ms must be at least 1"))),
        ms => ms.map(Duration::from_millis),
    };
    Ok(Plan {
        rpc_timeout,
        rpc_urls,
        data,
        sources,
        chain_id: a.chain_id.or(file.chain.chain_id),
        cfg,
        from: a.from,
        to: a.to,
        concurrency,
        rps,
    })
}

async fn resolve_bound(rpc: &RpcClient, b: BlockBound) -> eyre::Result<u64> {
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
const READY_MAX_LAG_BLOCKS: u64 = 3;

/// Whether a head follower takes over after (or instead of) the backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Backfill to the watermark, then tail.
    Run,
    /// Tail only.
    Tail,
}

pub(crate) async fn run(
    a: BackfillArgs,
    tail: Option<(Mode, TailArgs)>,
    log_writer: LogWriter,
) -> CmdResult {
    let mut plan = resolve(&a)?;
    let ws = match tail.as_ref().and_then(|(_, t)| t.ws.as_deref()) {
        Some(ws) => Some(ProviderUrl::parse_with(ws, &["ws", "wss"]).map_err(usage)?),
        None => None,
    };
    let mut rpc_cfg = RpcConfig::new(plan.rpc_urls.clone());
    if let Some(c) = plan.concurrency {
        rpc_cfg.concurrency = c;
    }
    rpc_cfg.rps = plan.rps;
    if let Some(t) = plan.rpc_timeout {
        rpc_cfg.timeout = t;
    }
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
    let tail_cfg = tail.as_ref().map(|(_, t)| TailConfig {
        poll_interval: Duration::from_millis(t.poll_interval_ms.max(1)),
        finality: match t.confirmations {
            Some(d) => Finality::Depth(d),
            None => Finality::Finalized(tidewater_tail::DEFAULT_CONFIRMATIONS),
        },
        compact_blocks: t.compact_blocks.max(1),
        compact_interval: Duration::from_secs(t.compact_interval_secs),
        start_block: from,
        merge_blocks: t.merge_blocks.max(1),
        ws: ws.clone(),
    });
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
    let listener = match &tail {
        Some((_, t)) if !t.no_serve => Some(tidewater_node::bind(&t.api.options()).await?),
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
    let opened =
        tokio::task::spawn_blocking(move || DatasetWriter::open(&data, &identity, &schemas, shard))
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
    let mut signals = tidewater_node::Signals::new()?;
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
            let live = tidewater_node::load(&plan.data, &targs.api.options(), None).await?.reader();
            let (stats, caught, metrics_rpc) = (f.stats(), f.stats(), rpc.clone());
            let metrics: tidewater_api::MetricsFn = std::sync::Arc::new(move |out: &mut String| {
                stats.render_metrics(out);
                metrics_rpc.render_metrics(out);
            });
            // Ready once the tail has reached the head, and while it stays within a few blocks.
            let caught_up: tidewater_api::CaughtUpFn = std::sync::Arc::new(move || {
                use std::sync::atomic::Ordering::Relaxed;
                let lag = caught.head.load(Relaxed).saturating_sub(caught.tip.load(Relaxed));
                caught.caught_up.load(Relaxed) && lag <= READY_MAX_LAG_BLOCKS
            });
            let server = tidewater_node::start(
                live.clone(),
                listener,
                &targs.api.options(),
                metrics,
                caught_up,
                Some(rpc.clone()),
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
        let mut reporter = Reporter::new(backfill.progress(), log_writer.clone(), a.json);
        let run = backfill.run_with(dataset, cancel.clone());
        tokio::pin!(run);
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = ticker.tick() => reporter.tick(),
                _ = signals.recv(), if !cancel.is_cancelled() => {
                    tracing::warn!("stopping after the chunk being committed (signal received)");
                    cancel.cancel();
                }
            }
        };
        drop(reporter);
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
        } else {
            print_summary(&summary, a.json)?;
        }
        if summary.cancelled {
            return Ok(());
        }
    }
    let (Some((_, targs)), Some(follower)) = (tail, follower) else { return Ok(()) };
    if let Some((live, _)) = &api {
        // The backfill committed more: the state starts again from the cold tier as it is now,
        // then folds the tail's updates.
        let fresh =
            tidewater_node::load(&plan.data, &targs.api.options(), Some(live.clone())).await?;
        tidewater_state::live::spawn_consumer(fresh, follower.subscribe())
            .wrap_err("starting the live state")?;
    }
    // Subscribe only when printing: a receiver nobody reads would hold the bus's last
    // BUS_CAPACITY updates (blocks with their logs) in memory.
    let mut updates = targs.print_updates.then(|| follower.subscribe());
    let run = follower.run(dataset, cancel.clone());
    tokio::pin!(run);
    let mut stdout = std::io::stdout().lock();
    loop {
        tokio::select! {
            r = &mut run => {
                r.wrap_err("tail")?;
                return Ok(());
            }
            u = async { updates.as_mut().expect("invariant: guarded by print_updates").recv().await }, if targs.print_updates => {
                match u {
                    Ok(u) => print_update(&mut stdout, &u)?,
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

fn print_update(out: &mut impl std::io::Write, u: &ChainUpdate) -> eyre::Result<()> {
    let v = match u {
        ChainUpdate::Applied(b) | ChainUpdate::Reverted(b) => serde_json::json!({
            "status": if matches!(u, ChainUpdate::Applied(_)) { "pending" } else { "reverted" },
            "block_number": b.header.number,
            "block_hash": b.header.hash,
            "logs": b.logs.iter().map(|l| serde_json::json!([l.log_index, l.transaction_hash, l.address])).collect::<Vec<_>>(),
            "events": b.events.iter().map(|(t, batch)| (t.clone(), batch.num_rows())).collect::<std::collections::BTreeMap<_, _>>(),
        }),
        ChainUpdate::Confirmed { number, hash } => {
            serde_json::json!({"status": "confirmed", "block_number": number, "block_hash": hash})
        }
    };
    writeln!(out, "{v}").wrap_err("writing an update")?;
    out.flush().wrap_err("writing an update")?;
    Ok(())
}

fn print_summary(summary: &tidewater_backfill::Summary, json: bool) -> eyre::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary).wrap_err("serializing the summary")?);
        return Ok(());
    }
    let rate = |n: u64| n as f64 / summary.elapsed_secs.max(1e-9);
    println!(
        "backfill [{}, {}]: {} chunks committed of {} planned, {} blocks, {} logs, {} pools in {:.2}s ({:.0} blocks/s, {:.0} logs/s){}",
        summary.range.0,
        summary.range.1,
        summary.chunks_committed,
        summary.chunks_planned,
        summary.blocks,
        summary.logs,
        summary.pools,
        summary.elapsed_secs,
        rate(summary.blocks),
        rate(summary.logs),
        if summary.cancelled { " (stopped early on a signal)" } else { "" },
    );
    for (t, n) in &summary.rows {
        println!("  {t:<20} {n:>10} rows");
    }
    Ok(())
}
