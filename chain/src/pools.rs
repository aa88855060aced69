//! Pools created by the configured factory: only these may emit pool events that count.

use crate::events::{Emitter, EventDef, UNISWAP_V3_FACTORY_EVENTS};
use crate::{fetch_logs, BlockRange, Log, LogFilter, RangeSizer, RpcClient};
use alloy_primitives::Address;
use std::collections::HashMap;

/// Pool address → block of its `PoolCreated`.
#[derive(Debug, Clone, Default)]
pub struct PoolSet {
    created: HashMap<Address, u64, foldhash::fast::RandomState>,
}

impl PoolSet {
    /// Whether `address` is a pool created at or before `block`.
    pub fn is_pool_at(&self, address: Address, block: u64) -> bool {
        self.created.get(&address).is_some_and(|b| *b <= block)
    }

    /// Pools created at or before `block`, sorted.
    pub fn created_by(&self, block: u64) -> Vec<Address> {
        let mut v: Vec<Address> =
            self.created.iter().filter(|(_, b)| **b <= block).map(|(a, _)| *a).collect();
        v.sort();
        v
    }

    /// Number of pools.
    pub fn len(&self) -> usize {
        self.created.len()
    }

    /// Whether no pool is known.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty()
    }

    /// Number of pools created at or before `block`.
    pub fn count_created_by(&self, block: u64) -> usize {
        self.created.values().filter(|b| **b <= block).count()
    }

    /// Adds every pool of `other` (keeping the earlier creation block of a pool in both).
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in &other.created {
            let e = self.created.entry(*a).or_insert(*b);
            *e = (*e).min(*b);
        }
    }

    /// Pools of `self` that `known` does not have (created at or before `block`).
    pub fn missing_from(&self, known: &Self, block: u64) -> Vec<Address> {
        self.created_by(block).into_iter().filter(|p| !known.is_pool_at(*p, block)).collect()
    }

    /// Forgets pools created after `block` (their creation was reorged away).
    pub fn forget_after(&mut self, block: u64) {
        self.created.retain(|_, b| *b <= block);
    }

    /// Keeps the logs of the watched emitters only: `contracts` (sorted) and the pools created
    /// at or before each log's block. A filter by event selector answers with logs of any
    /// contract; a contract the factory did not create must never reach a table.
    pub fn retain_watched(&self, logs: &mut Vec<Log>, contracts: &[Address]) {
        logs.retain(|l| {
            contracts.binary_search(&l.address).is_ok()
                || self.is_pool_at(l.address, l.block_number)
        });
    }

    /// Adds the pools of `PoolCreated` logs (other logs are ignored).
    pub fn extend_from_logs(&mut self, factory: Address, logs: &[Log]) {
        let selector = pool_created_selector();
        for l in logs {
            if l.address == factory && l.topic0() == Some(&selector) && l.data.len() >= 64 {
                let pool = Address::from_slice(&l.data[44..64]);
                self.created.entry(pool).or_insert(l.block_number);
            }
        }
    }
}

/// topic0 of the factory's `PoolCreated`.
pub fn pool_created_selector() -> alloy_primitives::B256 {
    let (table, sig) = UNISWAP_V3_FACTORY_EVENTS[0];
    EventDef::new(table, sig, Emitter::FactoryPools)
        .expect("invariant: the PoolCreated signature parses")
        .selector
}

fn factory_filter(factory: Address) -> LogFilter {
    LogFilter {
        addresses: vec![factory],
        topic0s: vec![pool_created_selector()],
        open_topic0s: vec![],
    }
}

/// Blocks per window of a checked discovery scan: 20 header batches, a few MB of headers.
const CHECKED_WINDOW: u64 = 2_000;

/// Scans the factory's `PoolCreated` logs over `range` with the completeness checks of a range
/// fetch (headers, blooms, receipts where an empty answer is doubtful). For ranges no chunk of
/// the run will fetch itself: a lagging provider cannot hide a pool here.
pub async fn discover_pools_checked(
    rpc: &RpcClient,
    factory: Address,
    range: BlockRange,
    sizer: &RangeSizer,
    checks: crate::Checks,
) -> crate::Result<PoolSet> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let filter = factory_filter(factory);
    let filter = &filter;
    let parts: Vec<crate::RangeData> = stream::iter(range.chunks(CHECKED_WINDOW))
        .map(|w| crate::fetch_range_consistent(rpc, filter, w, sizer, checks))
        .buffer_unordered(4)
        .try_collect()
        .await?;
    let mut set = PoolSet::default();
    for p in &parts {
        sizer.remember(&p.logs);
        set.extend_from_logs(factory, &p.logs);
    }
    Ok(set)
}

/// Scans the factory's `PoolCreated` logs over `range`, trusting the answers: a quick hint for
/// ranges whose chunks check their own `PoolCreated` logs.
pub async fn discover_pools(
    rpc: &RpcClient,
    factory: Address,
    range: BlockRange,
    sizer: &RangeSizer,
) -> crate::Result<PoolSet> {
    let filter = factory_filter(factory);
    let logs = fetch_logs(rpc, &filter, range, sizer).await?;
    // Real logs (a provider can hide logs, not make them up): anchors for the chunks' checks.
    sizer.remember(&logs);
    let mut set = PoolSet::default();
    set.extend_from_logs(factory, &logs);
    Ok(set)
}
