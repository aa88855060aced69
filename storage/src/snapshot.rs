//! Derived-state snapshots at confirmed heights, so the state at a past block is a lookup plus
//! a short fold instead of a replay from genesis.
//!
//! ```text
//!   <data>/_snapshots/<block>/<table>.parquet   written first (temp file, fsync, rename)
//!   <data>/_snapshots/<block>.json              then the marker: {block_number, block_hash}
//! ```
//!
//! A snapshot exists for readers only once its marker does. Snapshots are derived data: losing
//! one costs a longer fold, never correctness, and readers check the marker's hash against the
//! cold `blocks` table before trusting it (a deep reorg also removes the snapshots above the
//! rollback point).

use crate::{encode_parquet, read_parquet, sync_dir, write_atomic, Error, Result};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Directory of the snapshots, under the data directory.
pub const SNAPSHOT_DIR: &str = "_snapshots";

/// One committed snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The block the state is as of (after applying it).
    pub block_number: u64,
    /// That block's hash (`0x…`).
    pub block_hash: String,
    /// Table names written.
    pub tables: Vec<String>,
}

fn dir_of(root: &Path, block: u64) -> PathBuf {
    root.join(SNAPSHOT_DIR).join(format!("{block:012}"))
}

fn marker_of(root: &Path, block: u64) -> PathBuf {
    root.join(SNAPSHOT_DIR).join(format!("{block:012}.json"))
}

impl Snapshot {
    /// The file of one of its tables.
    pub fn file(&self, root: &Path, table: &str) -> PathBuf {
        dir_of(root, self.block_number).join(format!("{table}.parquet"))
    }

    /// Reads one of its tables.
    pub fn read(&self, root: &Path, table: &str) -> Result<Vec<RecordBatch>> {
        read_parquet(&self.file(root, table))
    }
}

/// Lock file (in the data directory) of every change to its snapshots.
const SNAPSHOT_LOCK: &str = ".lock.snapshots";

/// Runs `f` holding the lock of `root`'s snapshots: every writer (the live state's thread,
/// folds of `run` and `serve`) and every rollback, in this process or another, takes it, so a
/// snapshot is never written by two at once, and a writer that checks its block against the
/// committed chunks under it cannot write back a snapshot a rollback just removed.
pub fn with_snapshot_lock<T>(root: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let (file, p) = crate::files::open_lock_file(root, SNAPSHOT_LOCK)?;
    file.lock().map_err(Error::io("locking", &p))?;
    let r = f();
    let _ = file.unlock();
    r
}

/// Writes a snapshot of `tables` as of `block_number` (files first, then the marker). Call it
/// under [`with_snapshot_lock`], after checking the block is still committed with that hash.
pub fn write_snapshot(
    root: &Path,
    block_number: u64,
    block_hash: &str,
    tables: &[(&str, RecordBatch)],
) -> Result<Snapshot> {
    let dir = dir_of(root, block_number);
    std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    for (name, batch) in tables {
        let bytes = encode_parquet(name, batch)?;
        write_atomic(&dir.join(format!("{name}.parquet")), &bytes)?;
    }
    let snap = Snapshot {
        block_number,
        block_hash: block_hash.to_string(),
        tables: tables.iter().map(|(n, _)| n.to_string()).collect(),
    };
    let marker = marker_of(root, block_number);
    let json = serde_json::to_vec_pretty(&snap).expect("invariant: snapshot serializes");
    write_atomic(&marker, &json)?;
    Ok(snap)
}

/// Committed snapshots, oldest first.
pub fn list_snapshots(root: &Path) -> Result<Vec<Snapshot>> {
    let dir = root.join(SNAPSHOT_DIR);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io("listing", &dir)(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let path = entry.map_err(Error::io("listing", &dir))?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&path).map_err(Error::io("reading", &path))?;
            let snap: Snapshot = serde_json::from_slice(&bytes)
                .map_err(|source| Error::Json { path: path.clone(), source })?;
            out.push(snap);
        }
    }
    out.sort_by_key(|s| s.block_number);
    Ok(out)
}

/// Removes the snapshots above `keep_through` (`None`: all), marker first, under
/// [`with_snapshot_lock`].
pub fn remove_snapshots_after(root: &Path, keep_through: Option<u64>) -> Result<usize> {
    if !root.join(SNAPSHOT_DIR).exists() {
        return Ok(0);
    }
    with_snapshot_lock(root, || remove_unlocked(root, keep_through))
}

fn remove_unlocked(root: &Path, keep_through: Option<u64>) -> Result<usize> {
    let mut removed = 0;
    for s in list_snapshots(root)? {
        if keep_through.is_some_and(|k| s.block_number <= k) {
            continue;
        }
        let marker = marker_of(root, s.block_number);
        std::fs::remove_file(&marker).map_err(Error::io("removing", &marker))?;
        let dir = dir_of(root, s.block_number);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(Error::io("removing", &dir))?;
        }
        removed += 1;
    }
    if removed > 0 {
        sync_dir(&root.join(SNAPSHOT_DIR))?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::UInt64Array;
    use std::sync::Arc;

    fn batch(v: u64) -> RecordBatch {
        RecordBatch::try_from_iter([(
            "block_number",
            Arc::new(UInt64Array::from(vec![v])) as arrow::array::ArrayRef,
        )])
        .unwrap()
    }

    #[test]
    fn snapshots_are_listed_in_order_and_removed_above_a_height() {
        let d = tempfile::tempdir().unwrap();
        for n in [300, 100, 200] {
            write_snapshot(d.path(), n, "0x01", &[("pools", batch(n))]).unwrap();
        }
        let l = list_snapshots(d.path()).unwrap();
        assert_eq!(l.iter().map(|s| s.block_number).collect::<Vec<_>>(), vec![100, 200, 300]);
        let b = l[1].read(d.path(), "pools").unwrap();
        assert_eq!(b[0].num_rows(), 1);
        assert_eq!(remove_snapshots_after(d.path(), Some(150)).unwrap(), 2);
        assert_eq!(list_snapshots(d.path()).unwrap().len(), 1);
        // A snapshot without its marker (a crash before the marker) is invisible.
        std::fs::create_dir_all(dir_of(d.path(), 400)).unwrap();
        assert_eq!(list_snapshots(d.path()).unwrap().len(), 1);
    }
}
