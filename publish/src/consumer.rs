//! The reference consumer: a durable JetStream pull consumer that folds pool updates into
//! SQLite, exactly once.
//!
//! Each batch is applied in one SQLite transaction that also stores the stream sequence of the
//! last message it applied (`cursor`) and one row per message (`applied`, keyed by stream
//! sequence); the batch is acknowledged only after the commit. A crash before the commit
//! loses nothing (the broker redelivers); a crash after it and before the ack redelivers
//! messages whose sequence is at or below the cursor, which are skipped. Messages carry the
//! state *after* the change (pools, ticks, positions), so applying them in stream order per
//! pool leaves the table equal to the chain; `full` messages (resyncs, reverts of blocks
//! published before a publisher restart) replace a pool's ticks and positions.
//!
//! Partitioning: one pool's messages are on one subject, and one durable consumer reads its
//! subjects in stream order. Several consumer processes split the pools with
//! `--partition i/N` (pool address modulo N), each with its own durable consumer, so a pool is
//! always applied by one process, in order. (A JetStream queue group, several processes on one
//! durable, would hand one pool's messages to different processes and lose that order.)

use alloy_primitives::Address;
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt as _;
use rusqlite::{params, Connection, OptionalExtension as _};
use serde_json::Value;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tidewater_chain::metrics::{Collector, DescriptorEncoder, Histogram, DELAY_BUCKETS};
use tokio_util::sync::CancellationToken;

/// What a consumer reads and where it writes.
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    /// NATS server.
    pub url: String,
    /// Stream name.
    pub stream: String,
    /// First subject token.
    pub prefix: String,
    /// Durable consumer name (a partition appends `-<i>-of-<n>`).
    pub durable: String,
    /// Only these pools (all when None).
    pub pools: Option<HashSet<Address>>,
    /// `(i, n)`: only pools whose address modulo n is i.
    pub partition: Option<(u64, u64)>,
    /// The SQLite file.
    pub db: PathBuf,
    /// Messages per batch (one transaction).
    pub batch: usize,
}

/// The consumer's numbers (served on `--metrics-listen` as OpenMetrics text).
#[derive(Debug)]
pub struct ConsumeStats {
    /// Messages applied.
    pub applied: AtomicU64,
    /// Messages delivered again after a crash or a lost ack, skipped (already applied).
    pub redelivered: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// The stream sequence applied up to.
    pub cursor: AtomicU64,
    /// From the block's timestamp to the commit of its update (stage `consumed`).
    pub consumed: Histogram,
}

impl Default for ConsumeStats {
    fn default() -> Self {
        Self {
            applied: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
            consumed: Histogram::new(DELAY_BUCKETS),
        }
    }
}

impl Collector for ConsumeStats {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> tidewater_chain::metrics::Result {
        use tidewater_chain::metrics::{counter, gauge};
        let e = &mut enc;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(e, "tidewater_consume_applied", "Pool updates applied.", n(&self.applied))?;
        counter(
            e,
            "tidewater_consume_redelivered",
            "Messages delivered again and skipped (already applied).",
            n(&self.redelivered),
        )?;
        counter(e, "tidewater_consume_batches", "Transactions committed.", n(&self.batches))?;
        gauge(
            e,
            "tidewater_consume_cursor",
            "Stream sequence applied up to.",
            n(&self.cursor) as f64,
        )?;
        Histogram::encode_family(
            e,
            "tidewater_stage_delay_seconds",
            "Delay from the block timestamp to each stage (consumed: committed by this consumer).",
            &[(vec![("stage", "consumed".to_string())], &self.consumed)],
        )
    }
}

/// Serves `stats` as `/metrics` on `listener` until `cancel` (any path answers the metrics).
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    stats: std::sync::Arc<ConsumeStats>,
    cancel: CancellationToken,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut registry = tidewater_chain::metrics::Registry::default();
    registry.register_collector(Box::new(stats));
    loop {
        let (mut conn, _) = tokio::select! {
            c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
            _ = cancel.cancelled() => return,
        };
        // Read the request head before answering: closing on unread bytes resets the connection.
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
            match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => req.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        let body = tidewater_chain::metrics::encode(&registry).unwrap_or_default();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            tidewater_chain::metrics::CONTENT_TYPE,
            body.len()
        );
        let _ = conn.write_all(head.as_bytes()).await;
        let _ = conn.write_all(body.as_bytes()).await;
    }
}

impl ConsumeConfig {
    /// The durable consumer's name.
    pub fn durable_name(&self) -> String {
        match self.partition {
            Some((i, n)) => format!("{}-{i}-of-{n}", self.durable),
            None => self.durable.clone(),
        }
    }

    /// Whether this consumer applies `pool`'s updates.
    pub fn owns(&self, pool: &Address) -> bool {
        self.pools.as_ref().is_none_or(|p| p.contains(pool))
            && self.partition.is_none_or(|(i, n)| partition_of(pool, n) == i)
    }
}

/// The partition of `pool` among `n`: its last eight bytes, big-endian, modulo `n`.
pub fn partition_of(pool: &Address, n: u64) -> u64 {
    let b = pool.as_slice();
    let mut last = [0u8; 8];
    last.copy_from_slice(&b[12..20]);
    u64::from_be_bytes(last) % n.max(1)
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS pools (
  address TEXT PRIMARY KEY, token0 TEXT, token1 TEXT, fee INTEGER, tick_spacing INTEGER,
  sqrt_price_x96 TEXT NOT NULL, tick INTEGER NOT NULL, liquidity TEXT NOT NULL,
  block_number INTEGER NOT NULL, block_hash TEXT NOT NULL, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ticks (
  pool TEXT NOT NULL, tick INTEGER NOT NULL, liquidity_gross TEXT NOT NULL,
  liquidity_net TEXT NOT NULL, PRIMARY KEY (pool, tick));
CREATE TABLE IF NOT EXISTS positions (
  token_id TEXT PRIMARY KEY, pool TEXT, owner TEXT, tick_lower INTEGER, tick_upper INTEGER,
  liquidity TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS applied (
  stream_seq INTEGER PRIMARY KEY, msg_id TEXT, pool TEXT NOT NULL, status TEXT NOT NULL,
  block_number INTEGER, block_hash TEXT, block_timestamp INTEGER, applied_at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cursor (consumer TEXT PRIMARY KEY, stream_seq INTEGER NOT NULL);
";

/// Opens (creating) the consumer's database.
pub fn open_db(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.execute_batch(SCHEMA)?;
    Ok(c)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// Applies one pool message to the tables (inside the caller's transaction).
pub fn apply(tx: &rusqlite::Transaction<'_>, m: &Value) -> rusqlite::Result<()> {
    let pool = s(&m["pool"]).to_lowercase();
    let block = &m["block"];
    let full = m["full"].as_bool().unwrap_or(false);
    if full {
        tx.execute("DELETE FROM ticks WHERE pool = ?1", params![pool])?;
        tx.execute("DELETE FROM positions WHERE pool = ?1", params![pool])?;
    }
    match &m["state"] {
        Value::Null if full => {
            tx.execute("DELETE FROM pools WHERE address = ?1", params![pool])?;
        }
        Value::Null => {
            tx.execute(
                "UPDATE pools SET block_number = ?2, block_hash = ?3, status = ?4 WHERE address = ?1",
                params![pool, block["number"].as_i64(), s(&block["hash"]), s(&m["status"])],
            )?;
        }
        st => {
            tx.execute(
                "INSERT INTO pools VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (address) DO UPDATE SET sqrt_price_x96 = ?6, tick = ?7, liquidity = ?8,
                   block_number = ?9, block_hash = ?10, status = ?11",
                params![
                    pool,
                    s(&st["token0"]).to_lowercase(),
                    s(&st["token1"]).to_lowercase(),
                    st["fee"].as_i64(),
                    st["tick_spacing"].as_i64(),
                    s(&st["sqrt_price_x96"]),
                    st["tick"].as_i64(),
                    s(&st["liquidity"]),
                    block["number"].as_i64(),
                    s(&block["hash"]),
                    s(&m["status"]),
                ],
            )?;
        }
    }
    for t in m["ticks"].as_array().into_iter().flatten() {
        if s(&t["liquidity_gross"]) == "0" {
            tx.execute(
                "DELETE FROM ticks WHERE pool = ?1 AND tick = ?2",
                params![pool, t["tick"].as_i64()],
            )?;
        } else {
            tx.execute(
                "INSERT INTO ticks VALUES (?1, ?2, ?3, ?4) ON CONFLICT (pool, tick) DO UPDATE SET liquidity_gross = ?3, liquidity_net = ?4",
                params![pool, t["tick"].as_i64(), s(&t["liquidity_gross"]), s(&t["liquidity_net"])],
            )?;
        }
    }
    for p in m["positions"].as_array().into_iter().flatten() {
        if p["burned"].as_bool() == Some(true) {
            tx.execute("DELETE FROM positions WHERE token_id = ?1", params![s(&p["token_id"])])?;
        } else {
            tx.execute(
                "INSERT INTO positions VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (token_id) DO UPDATE SET pool = ?2, owner = ?3, tick_lower = ?4, tick_upper = ?5, liquidity = ?6",
                params![
                    s(&p["token_id"]),
                    s(&p["pool"]).to_lowercase(),
                    s(&p["owner"]).to_lowercase(),
                    p["tick_lower"].as_i64(),
                    p["tick_upper"].as_i64(),
                    s(&p["liquidity"]),
                ],
            )?;
        }
    }
    Ok(())
}

/// The stream sequence this consumer has applied up to.
pub fn cursor(db: &Connection, consumer: &str) -> rusqlite::Result<u64> {
    Ok(db
        .query_row("SELECT stream_seq FROM cursor WHERE consumer = ?1", params![consumer], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .map_or(0, |v| v as u64))
}

/// One received message: its stream sequence, id and payload.
#[derive(Debug)]
pub struct Received {
    /// Stream sequence.
    pub seq: u64,
    /// `Nats-Msg-Id`.
    pub id: Option<String>,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Applies a batch in one transaction: messages at or below the cursor are skipped (already
/// applied before a crash), the others applied and logged, and the cursor moved. Returns how
/// many were applied.
pub fn apply_batch(
    db: &mut Connection,
    cfg: &ConsumeConfig,
    batch: &[Received],
    stats: &ConsumeStats,
) -> eyre::Result<usize> {
    let name = cfg.durable_name();
    let tx = db.transaction()?;
    let mut last = cursor(&tx, &name)?;
    let mut applied = 0;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut stamps = Vec::new();
    for r in batch {
        if r.seq <= last {
            stats.redelivered.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        last = r.seq;
        let m: Value = match serde_json::from_slice(&r.payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(seq = r.seq, error = %e, "skipping a message that is not JSON");
                continue;
            }
        };
        let Some(pool) = m["pool"].as_str().and_then(|p| p.parse::<Address>().ok()) else {
            tracing::error!(seq = r.seq, "skipping a message without a pool");
            continue;
        };
        if !cfg.owns(&pool) {
            continue;
        }
        apply(&tx, &m)?;
        tx.execute(
            "INSERT INTO applied VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                r.seq as i64,
                r.id,
                s(&m["pool"]).to_lowercase(),
                s(&m["status"]),
                m["block"]["number"].as_i64(),
                s(&m["block"]["hash"]),
                m["block"]["timestamp"].as_i64(),
                now,
            ],
        )?;
        applied += 1;
        stamps.extend(m["block"]["timestamp"].as_u64());
    }
    tx.execute(
        "INSERT INTO cursor VALUES (?1, ?2) ON CONFLICT (consumer) DO UPDATE SET stream_seq = ?2",
        params![name, last as i64],
    )?;
    tx.commit()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    for ts in stamps {
        stats.consumed.observe(now - ts as f64);
    }
    stats.applied.fetch_add(applied as u64, Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.cursor.store(last, Ordering::Relaxed);
    Ok(applied)
}

/// Runs the consumer until `cancel`.
pub async fn run(
    cfg: ConsumeConfig,
    stats: std::sync::Arc<ConsumeStats>,
    cancel: CancellationToken,
) -> eyre::Result<()> {
    let mut db = open_db(&cfg.db)?;
    let url = crate::publisher::redact(&cfg.url);
    let mut backoff = Duration::from_millis(100);
    loop {
        let r = tokio::select! {
            r = consume(&cfg, &mut db, &stats, &cancel) => r,
            _ = cancel.cancelled() => return Ok(()),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(url = %url, error = %e, "consumer: broker unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.cancelled() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn consume(
    cfg: &ConsumeConfig,
    db: &mut Connection,
    stats: &ConsumeStats,
    cancel: &CancellationToken,
) -> eyre::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(cfg.url.as_str())
        .await?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&cfg.stream).await?;
    let name = cfg.durable_name();
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: format!("{}.*.uniswap_v3.*", cfg.prefix),
                ack_policy: jetstream::consumer::AckPolicy::All,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await?;
    tracing::info!(consumer = %name, "consuming");
    while !cancel.is_cancelled() {
        let mut msgs = consumer
            .fetch()
            .max_messages(cfg.batch.max(1))
            .expires(Duration::from_millis(500))
            .messages()
            .await?;
        let mut batch = Vec::new();
        let mut last = None;
        while let Some(m) = msgs.next().await {
            let m = m.map_err(|e| eyre::eyre!("receiving: {e}"))?;
            let seq = m.info().map_err(|e| eyre::eyre!("message info: {e}"))?.stream_sequence;
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_string());
            batch.push(Received { seq, id, payload: m.payload.to_vec() });
            last = Some(m);
        }
        let Some(last) = last else { continue };
        let n = apply_batch(db, cfg, &batch, stats)?;
        tracing::debug!(messages = batch.len(), applied = n, "batch committed");
        // Acknowledged after the commit: AckPolicy::All acknowledges the batch up to it.
        last.ack().await.map_err(|e| eyre::eyre!("acknowledging: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(db: PathBuf) -> ConsumeConfig {
        ConsumeConfig {
            url: "nats://127.0.0.1:1".into(),
            stream: "s".into(),
            prefix: "tidewater".into(),
            durable: "d".into(),
            pools: None,
            partition: None,
            db,
            batch: 10,
        }
    }

    fn msg(seq: u64, status: &str, liquidity: &str, ticks: Value, full: bool) -> Received {
        let m = json!({
            "status": status, "pool": "0x00000000000000000000000000000000000000aa", "full": full,
            "block": {"number": seq, "hash": format!("0x{seq:064x}"), "parent_hash": "0x00", "timestamp": 1},
            "state": {"address": "0x00000000000000000000000000000000000000aa", "token0": "0x01", "token1": "0x02",
                      "fee": 500, "tick_spacing": 10, "sqrt_price_x96": "79228162514264337593543950336", "tick": 0, "liquidity": liquidity},
            "ticks": ticks, "positions": [], "events": [],
        });
        Received { seq, id: Some(format!("id{seq}")), payload: m.to_string().into_bytes() }
    }

    fn ticks_of(db: &Connection) -> Vec<i64> {
        db.prepare("SELECT tick FROM ticks ORDER BY tick")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_batch_delivered_again_is_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path().join("c.db"));
        let mut db = open_db(&c.db).unwrap();
        let st = ConsumeStats::default();
        let t =
            |tick: i64, g: &str| json!([{"tick": tick, "liquidity_gross": g, "liquidity_net": g}]);
        let batch = vec![
            msg(1, "pending", "5", t(10, "5"), false),
            msg(2, "pending", "7", t(20, "2"), false),
        ];
        assert_eq!(apply_batch(&mut db, &c, &batch, &st).unwrap(), 2);
        // Redelivered (a crash between commit and ack), plus one new message that reverts.
        let mut again = batch;
        again.push(msg(3, "reverted", "5", t(20, "0"), false));
        assert_eq!(apply_batch(&mut db, &c, &again, &st).unwrap(), 1);
        let liq: String = db.query_row("SELECT liquidity FROM pools", [], |r| r.get(0)).unwrap();
        assert_eq!(liq, "5");
        let ticks = ticks_of(&db);
        assert_eq!(ticks, vec![10], "the reverted tick is gone");
        let n: i64 = db.query_row("SELECT count(*) FROM applied", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 3);
        // A full message replaces the pool's ticks.
        apply_batch(&mut db, &c, &[msg(4, "resync", "9", t(30, "9"), true)], &st).unwrap();
        let ticks = ticks_of(&db);
        assert_eq!(ticks, vec![30]);
        assert_eq!(cursor(&db, "d").unwrap(), 4);
        assert_eq!(st.redelivered.load(Ordering::Relaxed), 2, "the redelivered two were counted");
        assert_eq!(st.applied.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn partitions_split_the_pools() {
        let pools: Vec<Address> = (0u8..64).map(Address::with_last_byte).collect();
        let mut c = cfg(PathBuf::new());
        for n in [1u64, 2, 3] {
            for p in &pools {
                let owners = (0..n)
                    .filter(|i| {
                        c.partition = Some((*i, n));
                        c.owns(p)
                    })
                    .count();
                assert_eq!(owners, 1, "pool {p} has exactly one owner among {n}");
            }
        }
    }
}
