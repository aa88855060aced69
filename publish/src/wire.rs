//! What goes on the wire: subjects, deterministic message ids, and the JSON of pool updates and
//! block markers (the SSE shape, documented in `docs/design/broker.md`).

use alloy_primitives::{hex, Address, B256};
use arrow::array::{Array, BinaryArray, BooleanArray};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tidewater_primitives::HotBlock;
use tidewater_state::live::StreamEvent;
use tidewater_state::pool_state::{ticks_json, UniswapState};

/// The subjects of one chain: `<prefix>.<chain_id>.uniswap_v3.<pool>` per pool (lowercase hex
/// address) and `<prefix>.<chain_id>.blocks` for block markers.
#[derive(Debug, Clone)]
pub struct Subjects {
    /// The first token (default `tidewater`).
    pub prefix: String,
    /// The chain id.
    pub chain_id: u64,
}

impl Subjects {
    /// The subject of a pool's updates.
    pub fn pool(&self, pool: &Address) -> String {
        format!("{}.{}.uniswap_v3.{}", self.prefix, self.chain_id, hex_address(pool))
    }

    /// The subject of block markers.
    pub fn blocks(&self) -> String {
        format!("{}.{}.blocks", self.prefix, self.chain_id)
    }

    /// What the stream holds: everything of this chain.
    pub fn stream_filter(&self) -> String {
        format!("{}.{}.>", self.prefix, self.chain_id)
    }

    /// What pool consumers filter on.
    pub fn pools_filter(&self) -> String {
        format!("{}.{}.uniswap_v3.*", self.prefix, self.chain_id)
    }
}

/// An address as subjects and ids spell it: 0x and lowercase hex.
pub fn hex_address(a: &Address) -> String {
    format!("0x{}", hex::encode(a.as_slice()))
}

/// One message to publish. Kept in the publisher's checkpoint until the next update, so that
/// a restart republishes it with the same id (the stream drops the duplicate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// Subject.
    pub subject: String,
    /// `Nats-Msg-Id`.
    pub id: String,
    /// JSON payload.
    pub payload: String,
}

/// The status of a published update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireStatus {
    /// A block joined the chain (unconfirmed).
    Pending,
    /// A block left the chain; the state carried is the state after undoing it.
    Reverted,
    /// A block is final (block markers only).
    Confirmed,
    /// The full state of every pool (after a gap: first publication, or a backlog longer than
    /// the live state's history).
    Resync,
}

impl WireStatus {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Reverted => "reverted",
            Self::Confirmed => "confirmed",
            Self::Resync => "resync",
        }
    }
}

/// The message id: deterministic from block hash, status and pool (or `blocks`), with the
/// number of earlier reverts of the same block when it comes back (`gen` > 0), so that a block
/// applied, reverted and applied again is three messages, while a republish of any of them
/// is a duplicate the stream drops.
pub fn msg_id(hash: &B256, status: WireStatus, what: &str, gen: u32) -> String {
    if gen == 0 {
        format!("{hash}:{}:{what}", status.as_str())
    } else {
        format!("{hash}:{}:{what}:{gen}", status.as_str())
    }
}

/// The block an update is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// Number.
    pub number: u64,
    /// Hash.
    pub hash: B256,
    /// Parent hash (zero when unknown: confirmations).
    pub parent_hash: B256,
    /// Timestamp, when known.
    pub timestamp: Option<u64>,
}

impl BlockRef {
    fn json(&self) -> Value {
        json!({"number": self.number, "hash": self.hash, "parent_hash": self.parent_hash, "timestamp": self.timestamp})
    }
}

/// What every message of one update shares.
struct Head<'a> {
    subjects: &'a Subjects,
    status: WireStatus,
    cursor: u64,
    block: &'a BlockRef,
}

impl Head<'_> {
    fn pool_payload(
        &self,
        pool: &Address,
        full: bool,
        state: Option<Value>,
        ticks: Value,
        positions: Vec<Value>,
        events: Vec<Value>,
    ) -> String {
        json!({
            "status": self.status.as_str(),
            "chain_id": self.subjects.chain_id,
            "cursor": self.cursor,
            "block": self.block.json(),
            "pool": pool,
            "full": full,
            "state": state,
            "ticks": ticks,
            "positions": positions,
            "events": events,
        })
        .to_string()
    }
}

/// The per-pool messages and the block marker of one live update (`pending` or `reverted`),
/// in publishing order (the marker last).
pub fn delta_messages(
    subjects: &Subjects,
    ev: &StreamEvent,
    status: WireStatus,
    gen: u32,
    cursor: u64,
) -> Vec<Outgoing> {
    let block = BlockRef {
        number: ev.number,
        hash: ev.hash,
        parent_hash: ev.parent_hash,
        timestamp: ev.block.as_ref().map(|b| b.header.timestamp),
    };
    let mut out = Vec::with_capacity(ev.touched.len() + 1);
    for pool in &ev.touched {
        let state = ev.pools.iter().find(|p| p.address == *pool).map(|p| p.to_json());
        let ticks: Vec<Value> = ev
            .ticks
            .iter()
            .filter(|t| t.0 == *pool)
            .map(|(_, t, l)| {
                json!({"tick": t, "liquidity_gross": l.liquidity_gross.to_string(), "liquidity_net": l.liquidity_net.to_string()})
            })
            .collect();
        let positions: Vec<Value> = ev
            .positions
            .iter()
            .filter(|(_, _, p)| *p == Some(*pool))
            .map(|(id, p, _)| match p {
                Some(p) => p.to_json(),
                None => json!({"token_id": id.to_string(), "burned": true}),
            })
            .collect();
        let events = ev.block.as_ref().map(|b| pool_events(b, pool)).unwrap_or_default();
        let head = Head { subjects, status, cursor, block: &block };
        let payload = head.pool_payload(pool, false, state, ticks.into(), positions, events);
        out.push(Outgoing {
            subject: subjects.pool(pool),
            id: msg_id(&ev.hash, status, &hex_address(pool), gen),
            payload,
        });
    }
    out.push(marker(subjects, status, &block, ev.touched.iter(), gen, cursor));
    out
}

/// A block marker on the blocks subject.
pub fn marker<'a>(
    subjects: &Subjects,
    status: WireStatus,
    block: &BlockRef,
    pools: impl Iterator<Item = &'a Address>,
    gen: u32,
    cursor: u64,
) -> Outgoing {
    let payload = json!({
        "status": status.as_str(),
        "chain_id": subjects.chain_id,
        "cursor": cursor,
        "block": block.json(),
        "pools": pools.collect::<Vec<_>>(),
    });
    Outgoing {
        subject: subjects.blocks(),
        id: msg_id(&block.hash, status, "blocks", gen),
        payload: payload.to_string(),
    }
}

/// Messages carrying the whole state of `pools` (scalar state, every initialized tick, every
/// position) as it is in `state`: for a resync, and for reverting blocks published before a
/// restart whose changes are no longer known. Consumers replace the pool's ticks and positions.
pub fn full_messages<'a>(
    subjects: &Subjects,
    state: &UniswapState,
    pools: impl Iterator<Item = &'a Address>,
    status: WireStatus,
    block: &BlockRef,
    id_of: impl Fn(&Address) -> String,
    cursor: u64,
) -> Vec<Outgoing> {
    let mut out = Vec::new();
    for pool in pools {
        let positions: Vec<Value> = state
            .positions
            .values()
            .filter(|p| p.pool == Some(*pool))
            .map(|p| p.to_json())
            .collect();
        let head = Head { subjects, status, cursor, block };
        let payload = head.pool_payload(
            pool,
            true,
            state.pools.get(pool).map(|p| p.to_json()),
            ticks_json(state.ticks.get(pool)),
            positions,
            vec![],
        );
        out.push(Outgoing { subject: subjects.pool(pool), id: id_of(pool), payload });
    }
    out
}

/// The decoded events `pool` emitted in `block`, as JSON rows with their table name (binary
/// columns as 0x-hex).
pub fn pool_events(block: &HotBlock, pool: &Address) -> Vec<Value> {
    let mut out = Vec::new();
    for (table, batch) in &block.events {
        let Some(rows) = rows_of(batch, pool) else { continue };
        for mut row in rows {
            if let Value::Object(m) = &mut row {
                m.insert("event".into(), Value::String(table.clone()));
            }
            out.push(row);
        }
    }
    out
}

fn rows_of(batch: &RecordBatch, pool: &Address) -> Option<Vec<Value>> {
    let addr = batch.column_by_name(tidewater_primitives::schema::ADDRESS)?;
    let addr = addr.as_any().downcast_ref::<BinaryArray>()?;
    let keep: BooleanArray = addr.iter().map(|a| Some(a == Some(pool.as_slice()))).collect();
    if keep.true_count() == 0 {
        return None;
    }
    let batch = arrow::compute::filter_record_batch(batch, &keep).ok()?;
    // Binary columns as 0x-hex text, so consumers read hashes and addresses as they print.
    let batch = tidewater_chain::encode::hex_binary_columns(&batch).ok()?;
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    w.write(&batch).ok()?;
    w.finish().ok()?;
    serde_json::from_slice(&w.into_inner()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_by_status_pool_and_generation_and_only_by_them() {
        let h = B256::with_last_byte(1);
        let a = msg_id(&h, WireStatus::Pending, "0xab", 0);
        assert_eq!(a, msg_id(&h, WireStatus::Pending, "0xab", 0), "deterministic");
        assert_ne!(a, msg_id(&h, WireStatus::Reverted, "0xab", 0));
        assert_ne!(a, msg_id(&h, WireStatus::Pending, "0xac", 0));
        assert_ne!(a, msg_id(&h, WireStatus::Pending, "0xab", 1), "a block applied again");
        assert_ne!(a, msg_id(&B256::with_last_byte(2), WireStatus::Pending, "0xab", 0));
    }

    #[test]
    fn subjects_are_per_pool_and_lowercase() {
        let s = Subjects { prefix: "tidewater".into(), chain_id: 31337 };
        let a: Address = "0x00000000000000000000000000000000000000AB".parse().unwrap();
        assert_eq!(
            s.pool(&a),
            "tidewater.31337.uniswap_v3.0x00000000000000000000000000000000000000ab"
        );
        assert_eq!(s.blocks(), "tidewater.31337.blocks");
    }
}
