//! # tidewater-chain
//!
//! Owns everything that talks to an EVM node: the JSON-RPC client ([`RpcClient`]: a cap on
//! requests in flight, a rate limit per provider, retries with exponential backoff and jitter,
//! failover across providers), adaptive `eth_getLogs` ranges ([`RangeSizer`]), complete range
//! fetches with consistency checks ([`fetch_range`]), the event catalog ([`EventCatalog`]) and
//! decoding of headers and logs into Arrow batches ([`encode`]). Block, log and update types and
//! table names come from `tidewater-primitives` (re-exported here).
//!
//! It does not own files or SQL.
//!
//! Invariants:
//! - errors classify themselves ([`Error::is_retryable`], [`Error::is_range_too_large`]); a
//!   "too many results" answer is never retried unchanged;
//! - [`fetch_range`] returns logs ordered by (block_number, log_index), each carrying the hash
//!   of the header fetched for its block, or an error: never a silent hole.
//!
//! ```no_run
//! # async fn run() -> tidewater_chain::Result<()> {
//! use tidewater_chain::{
//!     fetch_range, BlockRange, Checks, LogFilter, RangeSizer, RpcClient, RpcConfig,
//! };
//! let url = tidewater_chain::ProviderUrl::parse("http://127.0.0.1:8545").expect("a URL");
//! let rpc = RpcClient::new(RpcConfig::new(vec![url])).expect("client");
//! let sizer = RangeSizer::new(2_000, 10_000);
//! let (filter, range) = (LogFilter::default(), BlockRange::new(0, 99));
//! let data = fetch_range(&rpc, &filter, range, &sizer, Checks::Blocks).await?;
//! println!("{} logs in {} blocks", data.logs.len(), data.headers.len());
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod encode;
mod error;
pub mod events;
mod fetch;
mod filter;
mod logs_json;
pub mod metrics;
mod pools;
mod provider_url;
mod range;
mod rpc;
mod task;

pub use error::{parse_range_hint, Error, Result};
pub use events::{ContractSource, EventCatalog, EventDef, Sources, UniswapV3};
pub use fetch::{
    confirm_empty_block, fetch_log_spans, fetch_logs, fetch_prefix, fetch_range,
    fetch_range_consistent, next_span, recheck_believed_empty, Checks, RangeData, RangeSizer,
    DEFAULT_ANSWER_LOGS, DEFAULT_LOG_RANGE, DEFAULT_MAX_LOG_RANGE, INCONSISTENT_RETRIES,
    LOCAL_ANSWER_LOGS,
};
pub use filter::{BloomSays, FilterMode, LogFilter, PartsOf, MAX_ADDRESSES_PER_REQUEST};
pub use pools::{discover_pools, discover_pools_checked, pool_created_selector, PoolSet};
pub use provider_url::{redact, BadProviderUrl, ProviderUrl};
pub use range::BlockRange;
pub use rpc::{
    backoff, ProviderStats, RpcClient, RpcConfig, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX,
    DEFAULT_CONCURRENCY, DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT, HEADER_BATCH,
};
pub use task::{run_on_rayon, Panicked, SpawnedTask};
// The shared types live in tidewater-primitives; re-exported so a user of the client needs one
// crate.
pub use tidewater_primitives::{quantity, schema, BlockRow, ChainUpdate, Header, HotBlock, Log};

pub use alloy_primitives::{Address, Bloom, B256};
