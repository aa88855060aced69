//! Pools created by the configured factory: only these may emit pool events that count.

use crate::events::{Emitter, EventDef, UNISWAP_V3_FACTORY_EVENTS};
use crate::{fetch_logs, BlockRange, Log, LogFilter, RangeSizer, RpcClient};
use alloy_primitives::Address;
use std::collections::HashMap;

/// Pool address → block of its `PoolCreated`.
#[derive(Debug, Clone, Default)]
pub struct PoolSet {
    created: HashMap<Address, u64>,
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

    /// Forgets pools created after `block` (their creation was reorged away).
    pub fn forget_after(&mut self, block: u64) {
        self.created.retain(|_, b| *b <= block);
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

/// Scans the factory's `PoolCreated` logs over `range`.
pub async fn discover_pools(
    rpc: &RpcClient,
    factory: Address,
    range: BlockRange,
    sizer: &RangeSizer,
) -> crate::Result<PoolSet> {
    let filter = LogFilter { addresses: vec![factory], topic0s: vec![pool_created_selector()] };
    let logs = fetch_logs(rpc, &filter, range, sizer).await?;
    let mut set = PoolSet::default();
    set.extend_from_logs(factory, &logs);
    Ok(set)
}
