#![allow(unreachable_pub, missing_docs)]

//! Integration tests: the real `tidewater` binary against a real anvil running the real
//! Uniswap V3 contracts. Run through `scripts/test.sh`, which installs anvil and builds the
//! cached devnet chain.

mod alerts;
mod backfill;
mod bad_input;
mod broker;
mod bucket;
mod ha;
mod hostile;
mod mainnet_shape;
mod openapi;
mod oracle;
mod page;
mod proxy;
mod serve;
mod snapshots;
mod sqllogic;
mod state;
mod tail;
mod util;
