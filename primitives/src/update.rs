//! What the head follower publishes: blocks joining and leaving the canonical chain, and
//! blocks becoming final. Defined here, below the stages, so the tail (producer) and the query
//! service (consumer) share it without depending on each other.

use crate::{Header, Log};
use alloy_primitives::B256;
use arrow::record_batch::RecordBatch;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One unconfirmed block with the watched logs it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct HotBlock {
    /// The header.
    pub header: Header,
    /// Watched logs, ordered by log index.
    pub logs: Vec<Log>,
    /// The block's decoded events, one batch per table that has rows (same schemas as the cold
    /// tables), so consumers fold typed events without decoding again.
    pub events: BTreeMap<String, RecordBatch>,
}

/// What happened to the chain, in an order a consumer can fold: reverts come newest first.
#[derive(Debug, Clone, PartialEq)]
pub enum ChainUpdate {
    /// A block joined the canonical chain (unconfirmed).
    Applied(Arc<HotBlock>),
    /// A block left the canonical chain (reorg); undo its logs.
    Reverted(Arc<HotBlock>),
    /// A block is final and stored in the cold tier.
    Confirmed {
        /// Block number.
        number: u64,
        /// Block hash.
        hash: B256,
    },
}

impl ChainUpdate {
    /// The update that undoes this one (Applied ↔ Reverted; Confirmed stays).
    pub fn into_inverted(self) -> Self {
        match self {
            Self::Applied(b) => Self::Reverted(b),
            Self::Reverted(b) => Self::Applied(b),
            c @ Self::Confirmed { .. } => c,
        }
    }

    /// Block number the update is about.
    pub fn number(&self) -> u64 {
        match self {
            Self::Applied(b) | Self::Reverted(b) => b.header.number,
            Self::Confirmed { number, .. } => *number,
        }
    }
}
