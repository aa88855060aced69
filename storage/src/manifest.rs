//! The manifest: one JSON entry per committed chunk under `<data>/_manifest/`. An entry is the
//! commit point: files it lists are the dataset, files it does not list are not.

use crate::error::{Error, Result};
use crate::files::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Folder of manifest entries, under the data directory.
pub const MANIFEST_DIR: &str = "_manifest";

/// One committed Parquet file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the data directory.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

/// One committed chunk: a block range and, per table with rows, its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// First block, inclusive.
    pub start: u64,
    /// Last block, inclusive.
    pub end: u64,
    /// Hash of block `start` (parsed on load: a damaged entry is an error, not a panic later).
    pub first_block_hash: tidewater_chain::B256,
    /// Hash of block `end`.
    pub last_block_hash: tidewater_chain::B256,
    /// Files by table; tables without rows in the chunk have no file.
    pub tables: BTreeMap<String, FileEntry>,
}

impl ChunkEntry {
    /// The entry's file name.
    pub fn file_name(start: u64, end: u64) -> String {
        format!("{start:012}-{end:012}.json")
    }

    /// Rows of `table` in this chunk.
    pub fn rows(&self, table: &str) -> u64 {
        self.tables.get(table).map_or(0, |f| f.rows)
    }
}

/// Every committed chunk, ordered by start block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    chunks: Vec<ChunkEntry>,
    /// Entries covered by a merged entry, left by an interrupted merge (to clean up).
    superseded: Vec<ChunkEntry>,
}

impl Manifest {
    /// Loads every entry under `<root>/_manifest`. Overlapping entries are corruption.
    pub fn load(root: &Path) -> Result<Self> {
        let dir = root.join(MANIFEST_DIR);
        let mut chunks = Vec::new();
        if dir.exists() {
            for entry in std::fs::read_dir(&dir).map_err(Error::io("listing", &dir))?.flatten() {
                let p = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') || !name.ends_with(".json") {
                    continue;
                }
                let bytes = std::fs::read(&p).map_err(Error::io("reading", &p))?;
                let c: ChunkEntry = serde_json::from_slice(&bytes)
                    .map_err(|source| Error::Json { path: p.clone(), source })?;
                chunks.push(c);
            }
        }
        // A merged entry supersedes the entries it covers (a crash between writing the merged
        // entry and removing the old ones leaves both): keep the widest.
        chunks.sort_by_key(|c| (c.start, std::cmp::Reverse(c.end)));
        let mut kept: Vec<ChunkEntry> = Vec::with_capacity(chunks.len());
        let mut superseded = Vec::new();
        for c in chunks {
            match kept.last() {
                Some(k) if k.start <= c.start && c.end <= k.end => superseded.push(c),
                _ => kept.push(c),
            }
        }
        let chunks = kept;
        for w in chunks.windows(2) {
            if w[1].start <= w[0].end {
                return Err(Error::Corrupt {
                    path: dir,
                    what: format!(
                        "chunks [{}, {}] and [{}, {}] overlap",
                        w[0].start, w[0].end, w[1].start, w[1].end
                    ),
                });
            }
        }
        Ok(Self { chunks, superseded })
    }

    /// Committed chunks in block order.
    pub fn chunks(&self) -> &[ChunkEntry] {
        &self.chunks
    }

    /// The committed chunk overlapping `[start, end]`, if any.
    pub fn overlapping(&self, start: u64, end: u64) -> Option<&ChunkEntry> {
        self.chunks.iter().find(|c| c.start <= end && start <= c.end)
    }

    /// The parts of `[start, end]` no committed chunk covers, in order.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut cursor = start;
        for c in &self.chunks {
            if c.end < cursor {
                continue;
            }
            if c.start > end {
                break;
            }
            if c.start > cursor {
                out.push((cursor, c.start - 1));
            }
            if c.end >= end {
                return out;
            }
            cursor = c.end + 1;
        }
        if cursor <= end {
            out.push((cursor, end));
        }
        out
    }

    /// Committed files of `table`, in block order, as absolute paths.
    pub fn files(&self, root: &Path, table: &str) -> Vec<PathBuf> {
        self.chunks.iter().filter_map(|c| c.tables.get(table)).map(|f| root.join(&f.path)).collect()
    }

    /// Total committed rows of `table`.
    pub fn rows(&self, table: &str) -> u64 {
        self.chunks.iter().map(|c| c.rows(table)).sum()
    }

    /// The last committed chunk: the checkpoint a tail resumes from.
    pub fn last(&self) -> Option<&ChunkEntry> {
        self.chunks.last()
    }

    /// Forgets every chunk ending after `keep_through` (all of them for `None`): manifest
    /// entries first (the commit point), then their files. Returns the removed entries.
    pub(crate) fn rollback(
        &mut self,
        root: &Path,
        keep_through: Option<u64>,
    ) -> Result<Vec<ChunkEntry>> {
        let keep = self.chunks.partition_point(|c| keep_through.is_some_and(|k| c.end <= k));
        let removed: Vec<ChunkEntry> = self.chunks.drain(keep..).collect();
        for c in removed.iter().rev() {
            let entry = root.join(MANIFEST_DIR).join(ChunkEntry::file_name(c.start, c.end));
            std::fs::remove_file(&entry).map_err(Error::io("removing", &entry))?;
        }
        if !removed.is_empty() {
            crate::files::sync_dir(&root.join(MANIFEST_DIR))?;
        }
        for c in &removed {
            for f in c.tables.values() {
                let p = root.join(&f.path);
                if let Err(e) = std::fs::remove_file(&p) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(Error::Io { op: "removing", path: p, source: e });
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Removes entries (files first are kept by callers' choice): the manifest entry files of
    /// `entries`, then their data files unless a kept chunk still lists the same path.
    pub(crate) fn remove_entries(&self, root: &Path, entries: &[ChunkEntry]) -> Result<()> {
        for c in entries {
            let entry = root.join(MANIFEST_DIR).join(ChunkEntry::file_name(c.start, c.end));
            if let Err(e) = std::fs::remove_file(&entry) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(Error::Io { op: "removing", path: entry, source: e });
                }
            }
        }
        crate::files::sync_dir(&root.join(MANIFEST_DIR))?;
        let live: std::collections::HashSet<&str> =
            self.chunks.iter().flat_map(|c| c.tables.values().map(|f| f.path.as_str())).collect();
        for c in entries {
            for f in c.tables.values().filter(|f| !live.contains(f.path.as_str())) {
                let _ = std::fs::remove_file(root.join(&f.path));
            }
        }
        Ok(())
    }

    /// Entries superseded by a merged entry (left by an interrupted merge).
    pub(crate) fn take_superseded(&mut self) -> Vec<ChunkEntry> {
        std::mem::take(&mut self.superseded)
    }

    /// Replaces the chunks inside `[merged.start, merged.end]` with `merged`, durably: the merged
    /// entry is written first (it supersedes the others on load), then the old entries go.
    pub(crate) fn replace(&mut self, root: &Path, merged: ChunkEntry) -> Result<()> {
        let path = root.join(MANIFEST_DIR).join(ChunkEntry::file_name(merged.start, merged.end));
        let bytes = serde_json::to_vec_pretty(&merged)
            .map_err(|source| Error::Json { path: path.clone(), source })?;
        write_atomic(&path, &bytes)?;
        let (old, keep): (Vec<ChunkEntry>, Vec<ChunkEntry>) =
            self.chunks.drain(..).partition(|c| merged.start <= c.start && c.end <= merged.end);
        self.chunks = keep;
        let at = self.chunks.partition_point(|c| c.start < merged.start);
        self.chunks.insert(at, merged);
        self.remove_entries(root, &old)
    }

    /// Records a committed chunk durably, then in memory.
    pub(crate) fn commit(&mut self, root: &Path, entry: ChunkEntry) -> Result<()> {
        if let Some(o) = self.overlapping(entry.start, entry.end) {
            return Err(Error::Overlap {
                start: entry.start,
                end: entry.end,
                other_start: o.start,
                other_end: o.end,
            });
        }
        let path = root.join(MANIFEST_DIR).join(ChunkEntry::file_name(entry.start, entry.end));
        let bytes = serde_json::to_vec_pretty(&entry)
            .map_err(|source| Error::Json { path: path.clone(), source })?;
        write_atomic(&path, &bytes)?;
        let at = self.chunks.partition_point(|c| c.start < entry.start);
        self.chunks.insert(at, entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(start: u64, end: u64) -> ChunkEntry {
        ChunkEntry {
            start,
            end,
            first_block_hash: Default::default(),
            last_block_hash: Default::default(),
            tables: BTreeMap::new(),
        }
    }

    #[test]
    fn gaps_fill_around_committed_chunks() {
        let m = Manifest { chunks: vec![chunk(10, 19), chunk(30, 39)], superseded: vec![] };
        assert_eq!(m.gaps(0, 50), vec![(0, 9), (20, 29), (40, 50)]);
        assert_eq!(m.gaps(10, 19), vec![]);
        assert_eq!(m.gaps(15, 35), vec![(20, 29)]);
        assert_eq!(m.gaps(40, 45), vec![(40, 45)]);
        assert_eq!(Manifest::default().gaps(3, 4), vec![(3, 4)]);
    }

    proptest::proptest! {
        /// The gaps and the committed chunks, clipped to the query, tile it exactly: every
        /// block once, gaps in order, none touching a chunk.
        #[test]
        fn gaps_and_chunks_tile_the_range(
            lens in proptest::collection::vec((0u64..20, 1u64..20), 0..12),
            start in 0u64..150, len in 1u64..200,
        ) {
            let mut chunks = Vec::new();
            let mut at = 0;
            for (skip, n) in lens {
                chunks.push(chunk(at + skip, at + skip + n - 1));
                at += skip + n;
            }
            let m = Manifest { chunks: chunks.clone(), superseded: vec![] };
            let end = start + len - 1;
            let gaps = m.gaps(start, end);
            let mut covered = vec![0u8; len as usize];
            for (a, b) in &gaps {
                proptest::prop_assert!(start <= *a && a <= b && *b <= end);
                for n in *a..=*b {
                    covered[(n - start) as usize] += 1;
                }
            }
            for w in gaps.windows(2) {
                proptest::prop_assert!(w[0].1 + 1 < w[1].0, "gaps {:?} touch or overlap", w);
            }
            for c in &chunks {
                for n in c.start.max(start)..=c.end.min(end) {
                    covered[(n - start) as usize] += 1;
                }
            }
            proptest::prop_assert!(covered.iter().all(|c| *c == 1), "{:?} / {:?}", gaps, chunks);
        }
    }
}
