//! The hot buffer: unconfirmed blocks above the checkpoint, each linked to the one before by
//! parent hash, and the update events a consumer folds.

use std::collections::VecDeque;
use std::sync::Arc;
pub use tidewater_chain::{ChainUpdate, HotBlock};

/// Unconfirmed blocks, contiguous and hash-linked.
#[derive(Debug, Default)]
pub struct HotBuffer {
    blocks: VecDeque<Arc<HotBlock>>,
}

/// A block that does not extend the buffer's tip.
#[derive(Debug, thiserror::Error)]
#[error("block {number} does not extend the tip")]
pub struct NotLinked {
    /// The block's number.
    pub number: u64,
}

impl HotBuffer {
    /// The newest block.
    pub fn tip(&self) -> Option<&Arc<HotBlock>> {
        self.blocks.back()
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block is held.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Blocks, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<HotBlock>> {
        self.blocks.iter()
    }

    /// Appends a block that extends the tip (number + 1, parent hash = tip hash).
    pub fn push(&mut self, b: Arc<HotBlock>) -> Result<(), NotLinked> {
        if let Some(tip) = self.tip() {
            if b.header.number != tip.header.number + 1 || b.header.parent_hash != tip.header.hash {
                return Err(NotLinked { number: b.header.number });
            }
        }
        self.blocks.push_back(b);
        Ok(())
    }

    /// Removes the tip (a reorg reverts it).
    pub fn pop_tip(&mut self) -> Option<Arc<HotBlock>> {
        self.blocks.pop_back()
    }

    /// Removes and returns the blocks at or below `number`, oldest first.
    pub fn drain_through(&mut self, number: u64) -> Vec<Arc<HotBlock>> {
        let n = self.blocks.iter().take_while(|b| b.header.number <= number).count();
        self.blocks.drain(..n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tidewater_chain::{Bloom, Header, B256};

    fn block(number: u64, hash: u8, parent: u8) -> Arc<HotBlock> {
        Arc::new(HotBlock {
            header: Header {
                number,
                hash: B256::repeat_byte(hash),
                parent_hash: B256::repeat_byte(parent),
                timestamp: number,
                logs_bloom: Bloom::ZERO,
            },
            logs: vec![],
            events: BTreeMap::new(),
        })
    }

    #[test]
    fn push_requires_links_and_drain_takes_the_confirmed_prefix() {
        let mut h = HotBuffer::default();
        h.push(block(10, 1, 0)).unwrap();
        h.push(block(11, 2, 1)).unwrap();
        assert!(h.push(block(12, 3, 9)).is_err(), "wrong parent");
        assert!(h.push(block(13, 3, 2)).is_err(), "gap");
        h.push(block(12, 3, 2)).unwrap();
        assert_eq!(h.drain_through(11).len(), 2);
        assert_eq!(h.tip().unwrap().header.number, 12);
        assert_eq!(h.pop_tip().unwrap().header.number, 12);
        assert!(h.is_empty());
    }

    #[test]
    fn inverting_twice_is_identity() {
        let u = ChainUpdate::Applied(block(5, 1, 0));
        assert_eq!(u.clone().into_inverted().into_inverted(), u);
        assert!(matches!(u.into_inverted(), ChainUpdate::Reverted(_)));
    }
}
