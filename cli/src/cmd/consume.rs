//! `tidewater consume`: the reference exactly-once consumer of `run --publish` (see
//! `tidewater_publish::consumer`).

use crate::args::ConsumeArgs;
use crate::{usage, CmdResult, Failure};
use eyre::eyre;
use tokio_util::sync::CancellationToken;

pub(crate) async fn consume(a: ConsumeArgs) -> CmdResult {
    tidewater_publish::publisher::validate_url(&a.nats).map_err(|e| usage(eyre!("--nats {e}")))?;
    let db = a
        .into
        .strip_prefix("sqlite://")
        .ok_or_else(|| usage(eyre!("--into {}: expected sqlite://PATH", a.into)))?;
    if db.is_empty() {
        return Err(usage(eyre!("--into sqlite://: the database path is missing")));
    }
    let cfg = tidewater_publish::consumer::ConsumeConfig {
        url: a.nats,
        stream: a.stream,
        prefix: "tidewater".into(),
        durable: a.durable,
        pools: (!a.pools.is_empty()).then(|| a.pools.into_iter().collect()),
        partition: a.partition.map(|(i, n)| (u64::from(i), u64::from(n))),
        db: db.into(),
        batch: a.batch.max(1),
    };
    // A database that cannot be opened is bad input, reported before connecting.
    tidewater_publish::consumer::open_db(&cfg.db)
        .map_err(|e| usage(eyre!(e).wrap_err(format!("opening {db}"))))?;
    let cancel = CancellationToken::new();
    let stats = std::sync::Arc::new(tidewater_publish::consumer::ConsumeStats::default());
    let _metrics = match a.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| usage(eyre!(e).wrap_err(format!("cannot listen on {addr}"))))?;
            tracing::info!(addr = %l.local_addr().map_err(|e| Failure::Runtime(eyre!(e)))?, "metrics");
            Some(tidewater_chain::SpawnedTask::spawn(tidewater_publish::consumer::serve_metrics(
                l,
                stats.clone(),
                cancel.clone(),
            )))
        }
        None => None,
    };
    let mut signals = tidewater_node::Signals::new()?;
    let stop = cancel.clone();
    let run = tidewater_publish::consumer::run(cfg, stats, cancel);
    tokio::pin!(run);
    loop {
        tokio::select! {
            r = &mut run => return r.map_err(Failure::Runtime),
            _ = signals.recv(), if !stop.is_cancelled() => stop.cancel(),
        }
    }
}
