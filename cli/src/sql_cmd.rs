//! `tidewater sql`, `status` and `verify`: read-only commands over a data directory.

use crate::args::{DataArgs, OutputFormat, SqlArgs, StateArgs, StatusArgs};
use crate::{usage, CmdResult, Failure};
use eyre::{eyre, WrapErr};
use std::io::Write as _;
use std::path::Path;
use tidewater_queries::{format_batches, Format, SqlSession};
use tidewater_storage::Dataset;

fn open(data: &Path) -> Result<Dataset, Failure> {
    Dataset::open(data)
        .map_err(|e| if e.is_usage() { usage(e) } else { Failure::Runtime(eyre!(e)) })
}

pub(crate) async fn sql(a: SqlArgs) -> CmdResult {
    let ds = open(&a.data)?;
    let out = tokio::task::spawn_blocking(move || -> Result<String, Failure> {
        let session = SqlSession::open(&ds).wrap_err("preparing views")?;
        let batches = session.query(&a.query).map_err(usage)?;
        let format = match a.format {
            OutputFormat::Table => Format::Table,
            OutputFormat::Csv => Format::Csv,
            OutputFormat::Json => Format::Json,
        };
        Ok(format_batches(&batches, format)?)
    })
    .await
    .wrap_err("running the query")??;
    std::io::stdout().write_all(out.as_bytes()).wrap_err("writing the result")?;
    Ok(())
}

pub(crate) async fn status(sa: StatusArgs) -> CmdResult {
    let a = sa.data;
    let ds = open(&a.data)?;
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
    let m = ds.manifest();
    let coverage: Vec<(u64, u64)> =
        m.chunks().iter().fold(Vec::new(), |mut acc: Vec<(u64, u64)>, c| {
            match acc.last_mut() {
                Some(last) if last.1 + 1 == c.start => last.1 = c.end,
                _ => acc.push((c.start, c.end)),
            }
            acc
        });
    let gaps = match (m.chunks().first(), m.last()) {
        (Some(f), Some(l)) => m.gaps(f.start, l.end),
        _ => vec![],
    };
    let checkpoint = m.last().map(|c| c.end);
    let deep_reorgs = ds.deep_reorgs().wrap_err("reading the deep-reorg log")?;
    let rows: std::collections::BTreeMap<&str, u64> =
        ds.identity().tables.iter().map(|t| (t.as_str(), m.rows(t))).collect();
    if a.json {
        let v = serde_json::json!({
            "checkpoint": m.last().map(|c| serde_json::json!({"block_number": c.end, "block_hash": c.last_block_hash})),
            "gaps": gaps,
            "deep_reorgs": deep_reorgs,
            "head": node.as_ref().map(|n| n.0),
            "finalized": node.as_ref().and_then(|n| n.1.clone().ok().flatten()),
            "finalized_error": node.as_ref().and_then(|n| n.1.clone().err()),
            "lag_blocks": node.as_ref().and_then(|n| checkpoint.map(|c| n.0.saturating_sub(c))),
            "chain_id": ds.identity().chain_id,
            "genesis_hash": ds.identity().genesis_hash,
            "chunks": m.chunks().len(),
            "coverage": coverage,
            "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&v).wrap_err("serializing status")?);
    } else {
        println!("data directory {}: chain {}", a.data.display(), ds.identity().chain_id);
        println!("chunks committed: {}", m.chunks().len());
        if let Some(c) = m.last() {
            println!("checkpoint: block {} ({})", c.end, c.last_block_hash);
        }
        for (s, e) in &coverage {
            println!("  blocks [{s}, {e}]");
        }
        for (s, e) in &gaps {
            println!("  gap [{s}, {e}]");
        }
        if let Some(last) = deep_reorgs.last() {
            println!("deep reorgs: {} (last: {last})", deep_reorgs.len());
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

pub(crate) async fn verify(a: DataArgs) -> CmdResult {
    let ds = open(&a.data)?;
    let problems = tokio::task::spawn_blocking(move || ds.verify()).await.wrap_err("verifying")?;
    if problems.is_empty() {
        println!("ok: every committed file matches the manifest");
        return Ok(());
    }
    for p in &problems {
        eprintln!("corrupt: {:#}", eyre!(format!("{p}")));
    }
    Err(Failure::Runtime(eyre!("{} file(s) do not match the manifest", problems.len())))
}

pub(crate) async fn state(a: StateArgs) -> CmdResult {
    let ds = open(&a.data)?;
    let sources: tidewater_chain::Sources = serde_json::from_value(ds.identity().sources.clone())
        .wrap_err("reading the dataset's sources")?;
    let u = sources
        .uniswap_v3
        .ok_or_else(|| usage(eyre!("{} does not index Uniswap V3", a.data.display())))?;
    tidewater_state::pool_state::check_coverage(&ds, &u).map_err(usage)?;
    let last = ds.manifest().last().map(|c| c.end);
    let first = ds.manifest().chunks().first().map(|c| c.start);
    if let (Some(b), Some(last), Some(first)) = (a.block, last, first) {
        if b > last || b < first {
            return Err(usage(eyre!(
                "block {b} is outside the committed blocks [{first}, {last}]"
            )));
        }
    }
    let block = a.block;
    let mut st = tokio::task::spawn_blocking(move || {
        tidewater_state::pool_state::fold_dataset(&ds, &u, block)
    })
    .await
    .wrap_err("folding state")?
    .wrap_err("reading the logs table")?;
    if let Some(p) = a.pool {
        if !st.pools.contains_key(&p) {
            return Err(usage(eyre!("no pool {p} was created by the factory")));
        }
        st.pools = st.pools.into_iter().filter(|(k, _)| *k == p).collect();
        st.ticks = st.ticks.into_iter().filter(|(k, _)| *k == p).collect();
        st.positions = st.positions.into_iter().filter(|(_, pos)| pos.pool == Some(p)).collect();
    }
    let out = st.to_json();
    println!("{}", serde_json::to_string_pretty(&out).wrap_err("serializing state")?);
    Ok(())
}
