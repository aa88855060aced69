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

/// Which of a filter's [`LogFilter::parts`] select a log ([`LogFilter::parts_of`]).
#[derive(Debug)]
pub struct PartsOf<'a> {
    filter: &'a LogFilter,
    groups: foldhash::HashMap<Address, usize>,
    open: Option<usize>,
    count: usize,
}

impl PartsOf<'_> {
    /// How many parts the filter has.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Calls `f` with the index of each part that selects `log` (none, one, or two: a watched
    /// contract's log with a selector asked for from any contract).
    pub fn each(&self, log: &crate::Log, mut f: impl FnMut(usize)) {
        let f0 = self.filter;
        let t0 = log.topic0();
        if f0.selects_topic(log) {
            if !f0.addresses.is_empty() {
                if let Some(g) = self.groups.get(&log.address) {
                    f(*g);
                }
            } else if f0.open_topic0s.is_empty() {
                f(0);
            }
        }
        if let Some(o) = self.open {
            if t0.is_some_and(|t| f0.open_topic0s.contains(t)) {
                f(o);
            }
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

    /// The JSON filter object for a block range as one request however many addresses it has
    /// (for a part of [`LogFilter::parts`] and one more address); `None` for selectors asked
    /// from any contract.
    pub(crate) fn to_json_one(&self, from: u64, to: u64) -> Option<serde_json::Value> {
        if !self.open_topic0s.is_empty() {
            return None;
        }
        let whole = Self { addresses: Vec::new(), ..self.clone() };
        let mut f = whole.to_json(from, to).pop()?;
        if !self.addresses.is_empty() {
            f["address"] = serde_json::json!(self.addresses);
        }
        Some(f)
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

    /// How many requests a range's question takes: one per address group, one for the
    /// selectors from any contract (the length of [`LogFilter::parts`]).
    pub(crate) fn requests(&self) -> usize {
        let groups = if self.addresses.is_empty() {
            usize::from(self.open_topic0s.is_empty())
        } else {
            self.addresses.len().div_ceil(MAX_ADDRESSES_PER_REQUEST)
        };
        groups + usize::from(!self.open_topic0s.is_empty())
    }

    /// The filter as the requests it is sent as, one filter each: address groups of at most
    /// [`MAX_ADDRESSES_PER_REQUEST`], then the selectors from any contract. Each is answered on
    /// its own, so each can come back empty on its own (a load balancer's lagging backend). A
    /// log of one of `addresses` with one of `open_topic0s` is in two of them.
    pub fn parts(&self) -> Vec<Self> {
        let by_address = |addresses: Vec<Address>| Self {
            addresses,
            topic0s: self.topic0s.clone(),
            open_topic0s: Vec::new(),
        };
        let mut out: Vec<Self> = if !self.addresses.is_empty() {
            self.addresses
                .chunks(MAX_ADDRESSES_PER_REQUEST)
                .map(|g| by_address(g.to_vec()))
                .collect()
        } else if self.open_topic0s.is_empty() {
            vec![by_address(Vec::new())]
        } else {
            Vec::new()
        };
        if !self.open_topic0s.is_empty() {
            out.push(Self {
                addresses: Vec::new(),
                topic0s: Vec::new(),
                open_topic0s: self.open_topic0s.clone(),
            });
        }
        out
    }

    /// Whether the filter selects `log` (what a node's answer to it may hold).
    pub fn matches(&self, log: &crate::Log) -> bool {
        self.selects(log, |a| self.addresses.contains(a))
    }

    /// [`LogFilter::matches`] for many logs: the addresses looked up in a hash set.
    pub fn matcher(&self) -> impl Fn(&crate::Log) -> bool + '_ {
        let addresses: foldhash::HashSet<Address> = self.addresses.iter().copied().collect();
        move |log| self.selects(log, |a| addresses.contains(a))
    }

    /// Whether `log`'s selector passes `topic0s` (the selectors asked of `addresses`).
    pub(crate) fn selects_topic(&self, log: &crate::Log) -> bool {
        self.topic0s.is_empty() || log.topic0().is_some_and(|t| self.topic0s.contains(t))
    }

    /// [`LogFilter::matches`], with `watched` saying whether an address is in `addresses`.
    fn selects(&self, log: &crate::Log, watched: impl Fn(&Address) -> bool) -> bool {
        let any_address = self.addresses.is_empty() && self.open_topic0s.is_empty();
        let by_address = (any_address || watched(&log.address)) && self.selects_topic(log);
        by_address || log.topic0().is_some_and(|t| self.open_topic0s.contains(t))
    }

    /// Which of [`LogFilter::parts`] select a log, for many logs (addresses looked up in a hash
    /// map rather than each part's list).
    pub fn parts_of(&self) -> PartsOf<'_> {
        let groups = self
            .addresses
            .chunks(MAX_ADDRESSES_PER_REQUEST)
            .enumerate()
            .flat_map(|(g, group)| group.iter().map(move |a| (*a, g)))
            .collect();
        let by_address = if !self.addresses.is_empty() {
            self.addresses.len().div_ceil(MAX_ADDRESSES_PER_REQUEST)
        } else {
            usize::from(self.open_topic0s.is_empty())
        };
        PartsOf {
            filter: self,
            groups,
            open: (!self.open_topic0s.is_empty()).then_some(by_address),
            count: by_address + usize::from(!self.open_topic0s.is_empty()),
        }
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

    /// What `bloom` says about a block for which this filter's answer came back empty.
    /// `pools` are the emitters kept client-side when the filter asks by selector
    /// (`open_topic0s`): a selector in the bloom says nothing about who emitted it, so "maybe"
    /// also needs one of them (or of `addresses`) in the bloom.
    ///
    /// A bloom is 2048 bits and each input sets 3 of them: when a fraction `f` is set, an input
    /// that is not in the block still "may" be with chance about `f³`, and one of `k` inputs
    /// with chance `1 - (1 - f³)^k`. At one half or more the "maybe" is [`BloomSays::Noise`]
    /// (busy mainnet blocks have ~90% of their bits set: a thousand pools "may" be in nearly
    /// every block); below it, [`BloomSays::Likely`].
    pub fn bloom_says(&self, bloom: &Bloom, pools: &[Address]) -> BloomSays {
        if *bloom == Bloom::ZERO || !self.may_match(bloom) {
            return BloomSays::Nothing;
        }
        let has = |b: &[u8]| bloom.contains_input(alloy_primitives::BloomInput::Raw(b));
        let inputs = if !self.open_topic0s.is_empty() {
            let emitters = self.addresses.iter().chain(pools);
            if !emitters.clone().any(|a| has(a.as_slice())) {
                return BloomSays::Nothing;
            }
            self.addresses.len() + pools.len()
        } else if !self.addresses.is_empty() {
            self.addresses.len()
        } else if !self.topic0s.is_empty() {
            self.topic0s.len()
        } else {
            // Every log is selected and the bloom holds one: the answer cannot be empty.
            return BloomSays::Likely;
        };
        let set: u32 = bloom.as_slice().iter().map(|b| b.count_ones()).sum();
        let one = (f64::from(set) / 2048.0).powi(3);
        let chance = 1.0 - (1.0 - one).powi(i32::try_from(inputs).unwrap_or(i32::MAX));
        if chance >= 0.5 {
            BloomSays::Noise
        } else {
            BloomSays::Likely
        }
    }
}

/// What a block's bloom says about an empty answer for it (see [`LogFilter::bloom_says`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BloomSays {
    /// No watched log can be in the block: the empty answer stands.
    Nothing,
    /// A watched log may be in the block, and the bloom is sparse enough that this "maybe" is
    /// unlikely by chance: worth asking again now.
    Likely,
    /// The bloom is so full that it says "maybe" for this many inputs by chance: asking again
    /// for every such block would be a request per block.
    Noise,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> Address {
        let mut a = [0u8; 20];
        a[18..].copy_from_slice(&i.to_be_bytes());
        Address::new(a)
    }

    /// A log of `address` with topic0 `t`.
    fn log(address: Address, t: B256) -> crate::Log {
        crate::Log {
            address,
            topics: vec![t],
            data: Default::default(),
            block_number: 1,
            block_hash: B256::ZERO,
            transaction_hash: B256::ZERO,
            transaction_index: 0,
            log_index: 0,
            removed: false,
            block_timestamp: None,
        }
    }

    /// A bloom holding `n` random inputs (`seed` varies them).
    fn bloom_of(n: u32, seed: u32) -> Bloom {
        let mut b = Bloom::ZERO;
        for i in 0..n {
            let input = [seed.to_be_bytes(), i.to_be_bytes()].concat();
            b.accrue(alloy_primitives::BloomInput::Raw(&input));
        }
        b
    }

    #[test]
    fn a_full_bloom_is_noise_a_sparse_one_likely_and_an_absent_emitter_nothing() {
        let topics = [B256::repeat_byte(7)];
        let pools: Vec<Address> = (1..2_000).map(addr).collect();
        let by_address = FilterMode::Addresses.filter(vec![addr(0)], pools.clone(), &topics);
        let by_topic = FilterMode::Topics.filter(vec![addr(0)], pools.clone(), &topics);
        // A sparse bloom holding one pool's address and the selector: a real "maybe".
        let mut sparse = bloom_of(20, 1);
        sparse.accrue(alloy_primitives::BloomInput::Raw(addr(5).as_slice()));
        sparse.accrue(alloy_primitives::BloomInput::Raw(topics[0].as_slice()));
        assert_eq!(by_address.bloom_says(&sparse, &[]), BloomSays::Likely);
        assert_eq!(by_topic.bloom_says(&sparse, &pools), BloomSays::Likely);
        // The selector alone (another contract emitted it): no watched emitter is there.
        let mut fork = bloom_of(20, 2);
        fork.accrue(alloy_primitives::BloomInput::Raw(topics[0].as_slice()));
        assert_eq!(by_topic.bloom_says(&fork, &pools), BloomSays::Nothing);
        // A bloom as full as a busy mainnet block's: "maybe" for 2,000 pools by chance.
        let mut full = bloom_of(2_000, 3);
        full.accrue(alloy_primitives::BloomInput::Raw(topics[0].as_slice()));
        let set: u32 = full.as_slice().iter().map(|b| b.count_ones()).sum();
        assert!(set > 1_500, "{set}");
        assert_eq!(by_address.bloom_says(&full, &[]), BloomSays::Noise);
        assert_eq!(by_topic.bloom_says(&full, &pools), BloomSays::Noise);
        // One watched address is not noise even in a full bloom (f³ < 1/2 until f > 0.79).
        let one = FilterMode::Addresses.filter(vec![addr(0)], vec![], &topics);
        assert_eq!(one.bloom_says(&bloom_of(300, 4), &[]), BloomSays::Nothing);
        assert_eq!(one.bloom_says(&Bloom::ZERO, &[]), BloomSays::Nothing);
    }

    #[test]
    fn each_part_is_one_request_and_together_they_select_what_the_filter_does() {
        let topics = [B256::repeat_byte(7)];
        for (mode, pools) in [
            (FilterMode::Addresses, 1_200u16),
            (FilterMode::Topics, 1_200),
            (FilterMode::Auto, 3),
            (FilterMode::Addresses, 0),
        ] {
            let f = mode.filter(vec![addr(0)], (1..=pools).map(addr).collect(), &topics);
            let parts = f.parts();
            assert_eq!(parts.len(), f.to_json(1, 2).len(), "{mode:?} {pools}");
            assert_eq!(f.requests(), parts.len(), "{mode:?} {pools}");
            for p in &parts {
                assert_eq!(p.to_json(1, 2).len(), 1);
                assert_eq!(p.requests(), 1);
            }
            for a in [0, 5, 1_100, 2_000] {
                for t in [topics[0], B256::repeat_byte(8)] {
                    let log = log(addr(a), t);
                    let n = parts.iter().filter(|p| p.matches(&log)).count();
                    // A watched contract's log with a selector asked from any contract is in
                    // two answers: callers drop the second copy.
                    assert_eq!(n > 0, f.matches(&log), "{mode:?} {pools} {a} {t}");
                }
            }
        }
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
        let t = B256::repeat_byte;
        assert!(f.matches(&log(addr(1), t(1))));
        assert!(f.matches(&log(addr(9), t(7))));
        assert!(!f.matches(&log(addr(9), t(1))));
        assert!(LogFilter::default().matches(&log(addr(9), t(1))));
    }

    #[test]
    fn parts_of_names_the_parts_whose_requests_select_a_log() {
        let t = B256::repeat_byte;
        let many: Vec<Address> =
            (0..1_200u32).map(|i| Address::left_padding_from(&i.to_be_bytes())).collect();
        let filters = [
            LogFilter::default(),
            LogFilter { topic0s: vec![t(1)], ..Default::default() },
            LogFilter { addresses: vec![addr(1), addr(2)], ..Default::default() },
            LogFilter { addresses: many.clone(), topic0s: vec![t(1), t(2)], open_topic0s: vec![] },
            LogFilter { addresses: vec![], topic0s: vec![], open_topic0s: vec![t(7), t(8)] },
            LogFilter { addresses: many.clone(), topic0s: vec![], open_topic0s: vec![t(7)] },
        ];
        let logs: Vec<crate::Log> = [addr(1), addr(2), addr(3), many[0], many[700], many[1_199]]
            .into_iter()
            .flat_map(|a| [1, 2, 3, 7, 8].map(|k| log(a, t(k))))
            .collect();
        for f in &filters {
            let parts = f.parts();
            let of = f.parts_of();
            assert_eq!(of.count(), parts.len(), "{f:?}");
            for l in &logs {
                let mut got = Vec::new();
                of.each(l, |p| got.push(p));
                let want: Vec<usize> = (0..parts.len()).filter(|&p| parts[p].matches(l)).collect();
                assert_eq!(got, want, "{:?} {:?}", l.address, l.topic0());
            }
        }
    }
}
