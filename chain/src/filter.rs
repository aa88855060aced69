//! Which logs to ask a node for.

use alloy_primitives::{Address, Bloom, B256};

/// Which logs to ask for: any of `addresses` (all when empty) and, if not empty, a topic0 in
/// `topic0s`; and, when `open_topic0s` is not empty, also every log of any contract whose
/// topic0 is one of them (one more request, with no address list: the caller keeps the
/// emitters it watches, see [`FilterMode`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Emitting contracts.
    pub addresses: Vec<Address>,
    /// Event selectors.
    pub topic0s: Vec<B256>,
    /// Event selectors asked for from any contract.
    pub open_topic0s: Vec<B256>,
}

/// How the factory's pools are asked for.
///
/// With thousands of pools an address list splits into one request per
/// [`MAX_ADDRESSES_PER_REQUEST`] addresses for every block range; asking for the pool events'
/// selectors from any contract is one request whatever the number of pools, and answers with
/// the logs of contracts the factory did not create too (other forks' pools, spoofers), which
/// the caller drops before anything is stored. See `docs/design/mainnet-shape.md`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilterMode {
    /// Addresses while the pools fit one request, topics beyond.
    #[default]
    Auto,
    /// Pool addresses, in groups of [`MAX_ADDRESSES_PER_REQUEST`].
    Addresses,
    /// Pool event selectors from any contract, pools kept client-side.
    Topics,
}

impl std::str::FromStr for FilterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "addresses" => Ok(Self::Addresses),
            "topics" => Ok(Self::Topics),
            other => Err(format!("unknown filter mode '{other}' (auto, addresses, topics)")),
        }
    }
}

impl FilterMode {
    /// The filter for `contracts` (always by address) and `pools`, whose events have the
    /// selectors `pool_topic0s`.
    pub fn filter(
        self,
        contracts: Vec<Address>,
        pools: Vec<Address>,
        pool_topic0s: &[B256],
    ) -> LogFilter {
        let topics = match self {
            Self::Topics => true,
            Self::Addresses => false,
            Self::Auto => contracts.len() + pools.len() > MAX_ADDRESSES_PER_REQUEST,
        };
        if topics && !pools.is_empty() && !pool_topic0s.is_empty() {
            LogFilter { addresses: contracts, topic0s: vec![], open_topic0s: pool_topic0s.to_vec() }
        } else {
            let mut addresses = contracts;
            addresses.extend(pools);
            LogFilter { addresses, topic0s: vec![], open_topic0s: vec![] }
        }
    }
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
            if self.open_topic0s.is_empty() {
                vec![&[]]
            } else {
                vec![]
            }
        } else {
            self.addresses.chunks(MAX_ADDRESSES_PER_REQUEST).collect()
        };
        let mut out: Vec<serde_json::Value> = groups
            .into_iter()
            .map(|group| {
                let mut f = serde_json::json!({ "topics": topics });
                block(&mut f);
                if !group.is_empty() {
                    f["address"] = serde_json::json!(group);
                }
                f
            })
            .collect();
        if !self.open_topic0s.is_empty() {
            let mut f = serde_json::json!({ "topics": [self.open_topic0s] });
            block(&mut f);
            out.push(f);
        }
        out
    }

    /// Whether the filter selects `log` (what a node's answer to it may hold).
    pub fn matches(&self, log: &crate::Log) -> bool {
        let t0 = log.topic0();
        let by_address = (self.addresses.is_empty() && self.open_topic0s.is_empty()
            || self.addresses.contains(&log.address))
            && (self.topic0s.is_empty() || t0.is_some_and(|t| self.topic0s.contains(t)));
        by_address || t0.is_some_and(|t| self.open_topic0s.contains(t))
    }

    /// Whether the bloom filter may contain a log this filter selects.
    pub fn may_match(&self, bloom: &Bloom) -> bool {
        let has = |b: &[u8]| bloom.contains_input(alloy_primitives::BloomInput::Raw(b));
        if self.open_topic0s.iter().any(|t| has(t.as_slice())) {
            return true;
        }
        if self.addresses.is_empty() && !self.open_topic0s.is_empty() {
            return false;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> Address {
        let mut a = [0u8; 20];
        a[18..].copy_from_slice(&i.to_be_bytes());
        Address::new(a)
    }

    #[test]
    fn auto_asks_by_topic_once_the_pools_need_more_than_one_request() {
        let topics = [B256::repeat_byte(7)];
        let few = FilterMode::Auto.filter(vec![addr(0)], (1..10).map(addr).collect(), &topics);
        assert_eq!(few.addresses.len(), 10);
        assert!(few.open_topic0s.is_empty());
        assert_eq!(few.to_json(1, 2).len(), 1);
        let many = FilterMode::Auto.filter(vec![addr(0)], (1..2_000).map(addr).collect(), &topics);
        assert_eq!(many.addresses, vec![addr(0)]);
        assert_eq!(many.open_topic0s, topics);
        // One request for the fixed contracts, one for the pools' selectors from anyone.
        let json = many.to_json(1, 2);
        assert_eq!(json.len(), 2);
        assert!(json[1].get("address").is_none());
        let by_address =
            FilterMode::Addresses.filter(vec![], (1..2_000).map(addr).collect(), &topics);
        assert_eq!(by_address.to_json(1, 2).len(), 4);
    }

    #[test]
    fn matches_follows_the_requests() {
        let f = LogFilter {
            addresses: vec![addr(1)],
            topic0s: vec![],
            open_topic0s: vec![B256::repeat_byte(7)],
        };
        let log = |a: Address, t: u8| crate::Log {
            address: a,
            topics: vec![B256::repeat_byte(t)],
            data: Default::default(),
            block_number: 1,
            block_hash: B256::ZERO,
            transaction_hash: B256::ZERO,
            transaction_index: 0,
            log_index: 0,
            removed: false,
            block_timestamp: None,
        };
        assert!(f.matches(&log(addr(1), 1)));
        assert!(f.matches(&log(addr(9), 7)));
        assert!(!f.matches(&log(addr(9), 1)));
        assert!(LogFilter::default().matches(&log(addr(9), 1)));
    }
}
