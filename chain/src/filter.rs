//! Which logs to ask a node for.

use alloy_primitives::{Address, Bloom, B256};

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
