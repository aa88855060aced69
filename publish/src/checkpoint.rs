//! The publisher's checkpoint, beside the dataset's (`<data>/_publish/<stream>.json`): what
//! consumers have been told (the confirmed block, the unconfirmed blocks published as pending
//! and the pools each touched), and the messages of the update being published. It is written
//! (atomically: temporary file, fsync, rename) *before* those messages are sent, so after a
//! kill -9 the restarted publisher sends them again with the same ids, and the stream drops
//! the ones it already has.

use crate::wire::Outgoing;
use alloy_primitives::{Address, B256};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Format of the file.
const FORMAT: u32 = 1;

/// A block consumers were told is pending (and not since reverted or confirmed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedBlock {
    /// Number.
    pub number: u64,
    /// Hash.
    pub hash: B256,
    /// Parent hash.
    pub parent_hash: B256,
    /// Pools its update touched.
    pub pools: Vec<Address>,
}

/// What consumers have been told, and the update in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// File format.
    pub format: u32,
    /// Updates published so far (each message carries the count as its `cursor`).
    pub seq: u64,
    /// The newest confirmed block announced.
    pub confirmed: Option<(u64, B256)>,
    /// Unconfirmed blocks announced as pending, oldest first.
    pub chain: Vec<PublishedBlock>,
    /// How many times each recent block was reverted (the generation in its next ids).
    pub reverts: BTreeMap<B256, (u64, u32)>,
    /// The messages of the newest update, in order (the last is its block marker).
    pub intent: Vec<Outgoing>,
}

impl Checkpoint {
    /// The file of `stream` under the data directory `root`.
    pub fn path(root: &Path, stream: &str) -> PathBuf {
        root.join("_publish").join(format!("{stream}.json"))
    }

    /// Loads the checkpoint (an empty one when there is none). A damaged file is an error: the
    /// publisher must not guess what consumers were told.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(b) => {
                let c: Self = serde_json::from_slice(&b).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                if c.format != FORMAT {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{}: format {} (this build reads {FORMAT})",
                            path.display(),
                            c.format
                        ),
                    ));
                }
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Self { format: FORMAT, ..Self::default() })
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the checkpoint atomically and durably.
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// The newest block consumers know of (pending or confirmed).
    pub fn tip(&self) -> Option<u64> {
        self.chain.last().map(|b| b.number).or(self.confirmed.map(|c| c.0))
    }

    /// The generation of `hash`: how many times it was reverted.
    pub fn generation(&self, hash: &B256) -> u32 {
        self.reverts.get(hash).map_or(0, |r| r.1)
    }

    /// Records a revert of `hash` at `number`.
    pub fn reverted(&mut self, number: u64, hash: B256) {
        self.reverts.entry(hash).or_insert((number, 0)).1 += 1;
    }

    /// Records a confirmation: blocks at or below `number` leave the unconfirmed chain, and
    /// revert counts of blocks that can no longer come back are dropped.
    pub fn confirm(&mut self, number: u64, hash: B256) {
        self.confirmed = Some((number, hash));
        self.chain.retain(|b| b.number > number);
        self.reverts.retain(|_, (n, _)| *n > number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = Checkpoint::path(dir.path(), "s");
        let empty = Checkpoint::load(&p).unwrap();
        assert_eq!(empty.tip(), None);
        let mut c = empty;
        c.seq = 7;
        c.chain.push(PublishedBlock {
            number: 5,
            hash: B256::with_last_byte(5),
            parent_hash: B256::with_last_byte(4),
            pools: vec![Address::with_last_byte(1)],
        });
        c.reverted(5, B256::with_last_byte(9));
        c.intent.push(Outgoing { subject: "a.b".into(), id: "x".into(), payload: "{}".into() });
        c.store(&p).unwrap();
        assert_eq!(Checkpoint::load(&p).unwrap(), c);
        assert_eq!(c.tip(), Some(5));
        c.confirm(5, B256::with_last_byte(5));
        assert!(c.chain.is_empty() && c.reverts.is_empty());
        assert_eq!(c.tip(), Some(5));
        std::fs::write(&p, b"{\"format\":1,").unwrap();
        assert!(Checkpoint::load(&p).is_err(), "a damaged checkpoint is not guessed around");
    }
}
