//! Inclusive block ranges.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An inclusive range of block numbers, `start..=end`. Never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockRange {
    /// First block, inclusive.
    pub start: u64,
    /// Last block, inclusive.
    pub end: u64,
}

impl BlockRange {
    /// A range `start..=end`; `None` when `start > end`.
    pub const fn try_new(start: u64, end: u64) -> Option<Self> {
        if start <= end {
            Some(Self { start, end })
        } else {
            None
        }
    }

    /// A range `start..=end`.
    ///
    /// # Panics
    /// When `start > end` (a bug in the caller).
    pub fn new(start: u64, end: u64) -> Self {
        Self::try_new(start, end).expect("invariant: range start <= end")
    }

    /// Number of blocks in the range (at least 1).
    pub const fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Always false: a `BlockRange` holds at least one block.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Whether `block` lies inside the range.
    pub const fn contains(&self, block: u64) -> bool {
        self.start <= block && block <= self.end
    }

    /// The overlap of two ranges, if any.
    pub fn intersect(&self, other: &Self) -> Option<Self> {
        Self::try_new(self.start.max(other.start), self.end.min(other.end))
    }

    /// The first `len` blocks and the rest (if any). `len` must be at least 1.
    pub fn split_at_len(&self, len: u64) -> (Self, Option<Self>) {
        let len = len.max(1);
        if len >= self.len() {
            (*self, None)
        } else {
            let head_end = self.start + len - 1;
            (Self::new(self.start, head_end), Some(Self::new(head_end + 1, self.end)))
        }
    }

    /// Consecutive sub-ranges of at most `size` blocks covering the range.
    pub fn chunks(&self, size: u64) -> impl Iterator<Item = Self> {
        let size = size.max(1);
        let end = self.end;
        let mut next = Some(self.start);
        std::iter::from_fn(move || {
            let start = next?;
            let stop = start.saturating_add(size - 1).min(end);
            next = if stop == end { None } else { Some(stop + 1) };
            Some(Self::new(start, stop))
        })
    }
}

impl fmt::Display for BlockRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn split_and_len() {
        let r = BlockRange::new(10, 19);
        assert_eq!(r.len(), 10);
        assert_eq!(r.split_at_len(3), (BlockRange::new(10, 12), Some(BlockRange::new(13, 19))));
        assert_eq!(r.split_at_len(10), (r, None));
        assert!(BlockRange::try_new(5, 4).is_none());
    }

    proptest! {
        #[test]
        fn chunks_cover_exactly(start in 0u64..1_000_000, len in 1u64..50_000, size in 1u64..5_000) {
            let r = BlockRange::new(start, start + len - 1);
            let parts: Vec<_> = r.chunks(size).collect();
            prop_assert_eq!(parts.first().unwrap().start, r.start);
            prop_assert_eq!(parts.last().unwrap().end, r.end);
            for w in parts.windows(2) {
                prop_assert_eq!(w[0].end + 1, w[1].start);
            }
            prop_assert!(parts.iter().all(|p| p.len() <= size));
            prop_assert_eq!(parts.iter().map(BlockRange::len).sum::<u64>(), r.len());
        }
    }
}
