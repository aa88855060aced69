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
}

impl Log {
    /// The event selector, if the log has one.
    pub fn topic0(&self) -> Option<&B256> {
        self.topics.first()
    }
}

/// Which logs to ask for: any of `addresses` (all when empty) and, if not empty, a topic0 in
/// `topic0s`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Emitting contracts.
    pub addresses: Vec<Address>,
    /// Event selectors.
    pub topic0s: Vec<B256>,
}

/// Most addresses a single `eth_getLogs` carries; longer lists are split into several calls.
/// 500 stays under the smallest limit we know of among public providers (1000).
pub const MAX_ADDRESSES_PER_REQUEST: usize = 500;

impl LogFilter {
    /// The JSON filter object for a block range, one per address group.
    pub(crate) fn to_json(&self, from: u64, to: u64) -> Vec<serde_json::Value> {
        self.objects(|f| {
            f["fromBlock"] = serde_json::json!(format!("{from:#x}"));
            f["toBlock"] = serde_json::json!(format!("{to:#x}"));
        })
    }

    /// The JSON filter object for one block by hash, one per address group.
    pub(crate) fn to_json_by_hash(&self, hash: B256) -> Vec<serde_json::Value> {
        self.objects(|f| f["blockHash"] = serde_json::json!(hash))
    }

    fn objects(&self, block: impl Fn(&mut serde_json::Value)) -> Vec<serde_json::Value> {
        let topics = if self.topic0s.is_empty() {
            serde_json::Value::Array(vec![])
        } else {
            serde_json::json!([self.topic0s])
        };
        let groups: Vec<&[Address]> = if self.addresses.is_empty() {
            vec![&[]]
        } else {
            self.addresses.chunks(MAX_ADDRESSES_PER_REQUEST).collect()
        };
        groups
            .into_iter()
            .map(|group| {
                let mut f = serde_json::json!({ "topics": topics });
                block(&mut f);
                if !group.is_empty() {
                    f["address"] = serde_json::json!(group);
                }
                f
            })
            .collect()
    }

    /// Whether the bloom filter may contain a log this filter selects.
    pub fn may_match(&self, bloom: &Bloom) -> bool {
        let addr = self.addresses.is_empty()
            || self
                .addresses
                .iter()
                .any(|a| bloom.contains_input(alloy_primitives::BloomInput::Raw(a.as_slice())));
        let topic = self.topic0s.is_empty()
            || self
                .topic0s
                .iter()
                .any(|t| bloom.contains_input(alloy_primitives::BloomInput::Raw(t.as_slice())));
        addr && topic
    }
}
