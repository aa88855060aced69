//! `tidewater backfill` (and the pipeline that `run` and `tail` share): merge flags over the
//! config file into a validated plan, then run `tidewater_node::pipeline` with the terminal as
//! its observer (progress line, summary, `--print-updates`).

use crate::args::{BackfillArgs, BlockBound, TailArgs};
use crate::progress::{LogWriter, Reporter};
use crate::{config, usage, CmdResult, Failure};
use eyre::{eyre, WrapErr};
use std::path::PathBuf;
use std::time::Duration;
use tidewater_backfill::BackfillConfig;
use tidewater_chain::{BlockRange, ContractSource, EventCatalog, ProviderUrl, Sources, UniswapV3};
pub(crate) use tidewater_node::Mode;
use tidewater_node::{Observer, Plan};
use tidewater_storage::Shard;
use tidewater_tail::ChainUpdate;

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
    let data = crate::data::resolve(&data)?;

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
    cfg.chunk_logs = a.chunk_logs.or(t.chunk_logs).unwrap_or(cfg.chunk_logs);
    let local = rpc_urls.iter().all(ProviderUrl::is_loopback);
    cfg.answer_logs = a.answer_logs.or(t.answer_logs).unwrap_or(if local {
        tidewater_chain::LOCAL_ANSWER_LOGS as u64
    } else {
        tidewater_chain::DEFAULT_ANSWER_LOGS as u64
    });
    cfg.log_range = a.log_range.or(t.log_range).unwrap_or(cfg.log_range);
    cfg.max_log_range = a.max_log_range.or(t.max_log_range).unwrap_or(cfg.max_log_range);
    cfg.shard = a.shard.map(|(index, count)| Shard { index, count });
    cfg.filter_mode = match &a.filter_mode {
        Some(m) => m.parse().map_err(|e: String| usage(eyre!(e)))?,
        None => t.filter_mode.unwrap_or_default(),
    };
    let block_checks_depth = a
        .block_checks_depth
        .or(t.block_checks_depth)
        .unwrap_or(tidewater_backfill::DEFAULT_BLOCK_CHECKS_DEPTH);
    for (name, v) in [
        ("--chunk-size", cfg.chunk_size),
        ("--chunks-in-flight", cfg.chunks_in_flight as u64),
        ("--chunk-logs", cfg.chunk_logs),
        ("--answer-logs", cfg.answer_logs),
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
        block_checks_depth,
    })
}

/// Shows a run on the terminal: the progress line, the summary, `--print-updates` lines.
pub(crate) struct Terminal {
    pub(crate) log_writer: LogWriter,
    pub(crate) json: bool,
    pub(crate) reporter: Option<Reporter>,
    pub(crate) stdout: std::io::Stdout,
}

impl Terminal {
    pub(crate) fn new(log_writer: LogWriter, json: bool) -> Self {
        Self { log_writer, json, reporter: None, stdout: std::io::stdout() }
    }
}

impl Observer for Terminal {
    fn backfill_started(&mut self, progress: std::sync::Arc<tidewater_backfill::Progress>) {
        self.reporter = Some(Reporter::new(progress, self.log_writer.clone(), self.json));
    }

    fn tick(&mut self) {
        if let Some(r) = &mut self.reporter {
            r.tick();
        }
    }

    fn backfill_done(
        &mut self,
        summary: &tidewater_backfill::Summary,
        then_tail: bool,
    ) -> eyre::Result<()> {
        self.reporter = None;
        if then_tail {
            return Ok(());
        }
        print_summary(summary, self.json)
    }

    fn update(&mut self, u: &ChainUpdate) -> eyre::Result<()> {
        print_update(&mut self.stdout.lock(), u)
    }
}

/// `backfill`, `run` and `tail`: resolve the plan, then run the pipeline.
pub(crate) async fn run(
    a: BackfillArgs,
    tail: Option<(Mode, TailArgs)>,
    log_writer: LogWriter,
) -> CmdResult {
    let plan = resolve(&a)?;
    let mut term = Terminal::new(log_writer, a.json);
    let (tail, ha) = match tail {
        Some((m, t)) => {
            let file = config::load(a.config.as_deref()).map_err(usage)?;
            let publish = t.publish.config(&file.publish);
            let ha = (t.ha || file.ha.enabled.unwrap_or(false)).then(|| {
                std::time::Duration::from_millis(file.ha.lease_ms.unwrap_or(t.ha_lease_ms).max(100))
            });
            let mut o = t.options();
            o.publish = publish;
            (Some((m, o)), ha)
        }
        None => (None, None),
    };
    if let (Some(ttl), Some((m, o))) = (ha, &tail) {
        return tidewater_node::ha::run(plan, *m, o.clone(), ttl, &mut term).await;
    }
    tidewater_node::pipeline::run(plan, tail, &mut term).await
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
