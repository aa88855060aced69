//! # tidewater-state
//!
//! Owns the Uniswap V3 state derived from the events: the model (pools, initialized ticks,
//! position manager positions), its exact integer fold of typed events ([`events`]) with an undo
//! journal per block ([`pool_state`]), the state at a confirmed block from the newest snapshot plus a short fold
//! of the cold tier, and the live state kept from the tail's update bus with the stream of
//! changes that clients follow ([`live`]). It does not own HTTP or SQL engines.
//!
//! ```text
//!   cold Parquet ──snapshot + fold──▶ LiveState (one writer thread) ◀── ChainUpdate bus
//!   (raw logs, decoded once here)        │  head state + undo journal    (hot blocks carry their
//!                                        │  per hot block                 events decoded: folded
//!                                        │                                as they are)
//!                                        ▼  publishes after every update
//!                                     View (immutable, Arc-swapped) ──▶ readers, no lock
//!                                     StreamEvent history + channel  ──▶ SSE subscribers
//! ```
//!
//! Invariants: the head state equals a fold of the canonical chain through the newest applied
//! block; a revert restores exactly the values the block changed; stream ids increase by one;
//! a reader never waits for the writer.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod events;
pub mod live;
pub mod pool_state;

pub use live::{LiveReader, LiveState, StateAt, View};
pub use pool_state::{PoolState, Position, TickLiquidity, UniswapState};
