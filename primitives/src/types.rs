//! Block headers and logs as the node returns them.

use alloy_primitives::{Address, Bloom, Bytes, B256};
use serde::{Deserialize, Serialize};

/// Serde helpers for JSON-RPC hex quantities (`"0x1a"`).
pub mod quantity {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    /// Parses `"0x…"` into a `u64`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let hex = s.strip_prefix("0x").ok_or_else(|| D::Error::custom("quantity without 0x"))?;
        u64::from_str_radix(hex, 16).map_err(D::Error::custom)
    }

    /// Writes a `u64` as `"0x…"`.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:#x}"))
    }
}

/// Serde helpers for an optional JSON-RPC hex quantity (absent or `null` is `None`).
pub mod opt_quantity {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses `"0x…"`, `null` or an absent field.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        struct Q(#[serde(with = "super::quantity")] u64);
        Ok(Option::<Q>::deserialize(d)?.map(|q| q.0))
    }

    /// Writes `Some(v)` as `"0x…"`, `None` as `null`.
    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::quantity::serialize(v, s),
            None => s.serialize_none(),
        }
    }
}

/// The header fields Tidewater keeps (the `blocks` table and the completeness checks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// Block number.
    #[serde(with = "quantity")]
    pub number: u64,
    /// Block hash.
    pub hash: B256,
    /// Parent block hash.
    pub parent_hash: B256,
    /// Unix timestamp, seconds.
    #[serde(with = "quantity")]
    pub timestamp: u64,
    /// Bloom filter over the block's log addresses and topics.
    pub logs_bloom: Bloom,
}

/// A log as returned by `eth_getLogs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Log {
    /// Emitting contract.
    pub address: Address,
    /// Indexed topics (topic0 is the event selector for non-anonymous events).
    pub topics: Vec<B256>,
    /// ABI-encoded non-indexed data.
    pub data: Bytes,
    /// Block number.
    #[serde(with = "quantity")]
    pub block_number: u64,
    /// Block hash.
    pub block_hash: B256,
    /// Transaction hash.
    pub transaction_hash: B256,
    /// Index of the transaction in its block.
    #[serde(with = "quantity")]
    pub transaction_index: u64,
    /// Index of the log in its block.
    #[serde(with = "quantity")]
    pub log_index: u64,
    /// True when the node says the log was removed by a reorg.
    #[serde(default)]
    pub removed: bool,
    /// The block's timestamp, when the node sends it with the log (current nodes do:
    /// `blockTimestamp`); lets a range fetch skip the header of every block with logs.
    #[serde(default, with = "opt_quantity", skip_serializing_if = "Option::is_none")]
    pub block_timestamp: Option<u64>,
}

/// A row of the `blocks` table. A block known from a full header has every field; a block
/// known only from its logs (a range fetched without per-block headers) has its number, hash
/// and timestamp, and no parent hash or bloom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRow {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
    /// Parent block hash, when the header was fetched.
    pub parent_hash: Option<B256>,
    /// Unix timestamp, seconds.
    pub timestamp: u64,
    /// Logs bloom, when the header was fetched.
    pub logs_bloom: Option<Bloom>,
}

impl From<&Header> for BlockRow {
    fn from(h: &Header) -> Self {
        Self {
            number: h.number,
            hash: h.hash,
            parent_hash: Some(h.parent_hash),
            timestamp: h.timestamp,
            logs_bloom: Some(h.logs_bloom),
        }
    }
}

impl Log {
    /// The event selector, if the log has one.
    pub fn topic0(&self) -> Option<&B256> {
        self.topics.first()
    }
}
