//! # tidewater-primitives
//!
//! The types every stage shares, with no I/O: block headers and logs as the node returns them
//! ([`Header`], [`Log`]), what the head follower publishes ([`ChainUpdate`], [`HotBlock`]), and
//! every table and column name of the dataset with the raw tables' Arrow schemas ([`schema`]),
//! the derived-state snapshot tables included.
//!
//! Defined here, below the stages, so that the producer of a type and its consumers (the tail
//! and the state, the chain client and the storage) share it without depending on each other.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod parse;
pub mod schema;
mod types;
mod update;

pub use alloy_primitives::{Address, Bloom, B256};
pub use parse::{parse_address, BadAddress};
pub use types::{opt_quantity, quantity, BlockRow, Header, Log};
pub use update::{ChainUpdate, HotBlock};
