//! `tidewater status`: what a data directory holds, and how far it is behind the chain.

use super::open_with;
use crate::args::StatusArgs;
use crate::{usage, CmdResult};
use eyre::{eyre, WrapErr};

pub(crate) async fn status(sa: StatusArgs) -> CmdResult {
    let a = sa.data;
    let (identity, m) = open_with(&a.data, tidewater_storage::Dataset::open_summary)?;
    let node = match &sa.rpc {
        None => None,
        Some(url) => {
            let url = tidewater_chain::ProviderUrl::parse(url).map_err(usage)?;
            let mut cfg = tidewater_chain::RpcConfig::new(vec![url.clone()]);
            cfg.max_attempts = 3;
            let rpc = tidewater_chain::RpcClient::new(cfg).wrap_err("building the HTTP client")?;
            let head = rpc
                .block_number()
                .await
                .map_err(|e| usage(eyre!(e).wrap_err(format!("cannot reach RPC {url}"))))?;
            // A failed `finalized` call is said, not hidden as "no finalized block".
            let finalized = match rpc.header_at("finalized").await {
                Ok(h) => Ok(h.map(|h| h.number)),
                Err(e) => Err(format!("{:#}", eyre!(e))),
            };
            Some((head, finalized))
        }
    };
    let coverage = &m.coverage;
    let gaps = m.gaps();
    let checkpoint = m.last.map(|(end, _)| end);
    let deep_reorgs =
        tidewater_storage::deep_reorgs(&a.data).wrap_err("reading the deep-reorg log")?;
    let rows: std::collections::BTreeMap<&str, u64> =
        identity.tables.iter().map(|t| (t.as_str(), m.rows(t))).collect();
    // `run --ha`: who holds the writer lease (the others stand by).
    let lease = tidewater_storage::lease::read_record(&a.data).map(|r| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        serde_json::json!({
            "holder": r.holder, "epoch": r.epoch, "live": r.live(now),
            "expires_in_ms": r.expires_unix_ms.saturating_sub(now),
        })
    });
    let store = tidewater_storage::attached(&a.data).map(|r| {
        serde_json::json!({"url": r.url(), "replica": r.cache(), "commit_log": r.coordinator()})
    });
    if a.json {
        let v = serde_json::json!({
            "object_store": store,
            "writer_lease": lease,
            "checkpoint": m.last.map(|(end, hash)| serde_json::json!({"block_number": end, "block_hash": hash})),
            "gaps": gaps,
            "deep_reorgs": deep_reorgs,
            "head": node.as_ref().map(|n| n.0),
            "finalized": node.as_ref().and_then(|n| n.1.clone().ok().flatten()),
            "finalized_error": node.as_ref().and_then(|n| n.1.clone().err()),
            "lag_blocks": node.as_ref().and_then(|n| checkpoint.map(|c| n.0.saturating_sub(c))),
            "chain_id": identity.chain_id,
            "genesis_hash": identity.genesis_hash,
            "chunks": m.chunks,
            "coverage": coverage,
            "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&v).wrap_err("serializing status")?);
    } else {
        match &store {
            Some(st) => println!(
                "dataset {} (replica {}; commit log on {}): chain {}",
                st["url"].as_str().unwrap_or_default(),
                a.data.display(),
                st["commit_log"].as_str().unwrap_or_default(),
                identity.chain_id
            ),
            None => {
                println!("data directory {}: chain {}", a.data.display(), identity.chain_id)
            }
        }
        println!("chunks committed: {}", m.chunks);
        if let Some((end, hash)) = m.last {
            println!("checkpoint: block {end} ({hash})");
        }
        for (s, e) in coverage {
            println!("  blocks [{s}, {e}]");
        }
        for (s, e) in &gaps {
            println!("  gap [{s}, {e}]");
        }
        if let Some(last) = deep_reorgs.last() {
            println!("deep reorgs: {} (last: {last})", deep_reorgs.len());
        }
        if let Some(l) = &lease {
            let state = if l["live"] == true { "leading" } else { "expired: a standby takes over" };
            println!("writer lease: {} (epoch {}), {state}", l["holder"], l["epoch"]);
        }
        if let Some((head, finalized)) = node {
            let finalized = match finalized {
                Ok(Some(n)) => n.to_string(),
                Ok(None) => "none (the node reports no finalized block)".to_string(),
                Err(e) => format!("unavailable ({e})"),
            };
            println!(
                "node head {head}, finalized {finalized}, lag {:?} blocks",
                checkpoint.map(|c| head.saturating_sub(c))
            );
        }
        for (t, n) in rows {
            println!("  {t:<20} {n:>10} rows");
        }
    }
    Ok(())
}
