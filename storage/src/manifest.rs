//! The manifest: one JSON entry per committed chunk under `<data>/_manifest/`. An entry is the
//! commit point: files it lists are the dataset, files it does not list are not.

use crate::error::{Error, Result};
use crate::files::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Folder of manifest entries, under the data directory.
pub const MANIFEST_DIR: &str = "_manifest";
/// Every entry of the manifest in one file, under [`MANIFEST_DIR`]: what `load` reads instead
/// of one file per chunk. A cache of the entries, never their commit point: only entries whose
/// own file is still listed count, and whatever removes an entry removes the checkpoint first.
/// Binary (`postcard`, behind a magic and followed by the SHA-256 of the payload): at 20,000
/// entries it loads in a fraction of the JSON's time (`docs/design/mainnet-shape.md`).
pub const CHECKPOINT_FILE: &str = "_checkpoint.bin";
/// The checkpoint of earlier versions (JSON): never read, removed with the checkpoint so that
/// an earlier binary never reads a stale one.
pub(crate) const LEGACY_CHECKPOINT_FILE: &str = "_checkpoint.json";
/// The first bytes of a checkpoint of this format.
const CHECKPOINT_MAGIC: &[u8; 8] = b"TWCKPT02";
/// A manifest folder modified this recently is read again by [`Manifest::load_shared`] rather
/// than trusted to its modification time.
pub const RACY_STAMP: std::time::Duration = std::time::Duration::from_secs(2);
/// Entries committed since the last checkpoint before the writer writes a new one.
pub const CHECKPOINT_EVERY: usize = 256;

/// Files no entry lists any more, kept for readers that may still read them, under
/// [`MANIFEST_DIR`].
pub const VACUUM_FILE: &str = "_vacuum.json";
/// How long a file no entry lists is kept for the readers that loaded an older manifest:
/// longer than any reader's time limit (SQL's is seconds). `TIDEWATER_RETENTION_SECS` sets it.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(600);

pub(crate) fn retention() -> std::time::Duration {
    std::env::var("TIDEWATER_RETENTION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_RETENTION, std::time::Duration::from_secs)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Retired {
    path: String,
    since: u64,
}

fn read_vacuum_list(path: &Path) -> Vec<Retired> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// A checkpoint's bytes: the magic, the entries (postcard), the SHA-256 of those.
fn encode_checkpoint(entries: &[ChunkEntry]) -> std::result::Result<Vec<u8>, postcard::Error> {
    use sha2::Digest;
    let payload = postcard::to_stdvec(entries)?;
    let mut out = Vec::with_capacity(CHECKPOINT_MAGIC.len() + payload.len() + 32);
    out.extend_from_slice(CHECKPOINT_MAGIC);
    out.extend_from_slice(&payload);
    out.extend_from_slice(&sha2::Sha256::digest(&payload));
    Ok(out)
}

/// The entries of a checkpoint's bytes; None when they are not a whole checkpoint of this
/// format (cut short, damaged, another format).
fn decode_checkpoint(bytes: &[u8]) -> Option<Vec<ChunkEntry>> {
    use sha2::Digest;
    let rest = bytes.strip_prefix(CHECKPOINT_MAGIC.as_slice())?;
    let (payload, sum) = rest.split_at_checked(rest.len().checked_sub(32)?)?;
    if sha2::Sha256::digest(payload).as_slice() != sum {
        return None;
    }
    postcard::from_bytes(payload).ok()
}

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
    /// Entries not in the checkpoint (read one by one at load, or committed since).
    uncheckpointed: usize,
}

impl Manifest {
    /// Loads every entry under `<root>/_manifest`. Overlapping entries are corruption.
    pub fn load(root: &Path) -> Result<Self> {
        Self::load_with(root, true)
    }

    /// [`Manifest::load`] for readers, shared within the process: a service opens the same
    /// dataset for every SQL request, past-block state and poll, and at 20,000 entries a load
    /// lists and decodes 20,000 of them. The manifest loaded last is reused while the
    /// folder's modification time is what it was: every change of the manifest creates,
    /// renames or removes a file in it. A time within [`RACY_STAMP`] of the load is never
    /// trusted (two changes within the file system's timestamp granularity share one time;
    /// git's index has the same rule).
    pub fn load_shared(root: &Path) -> Result<std::sync::Arc<Self>> {
        type Cache =
            std::collections::HashMap<PathBuf, (std::time::SystemTime, std::sync::Arc<Manifest>)>;
        static CACHE: std::sync::Mutex<Option<Cache>> = std::sync::Mutex::new(None);
        let stamp = std::fs::metadata(root.join(MANIFEST_DIR)).and_then(|m| m.modified()).ok();
        let cache = || CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(stamp) = stamp {
            if let Some((s, m)) = cache().as_ref().and_then(|c| c.get(root)) {
                if *s == stamp {
                    return Ok(m.clone());
                }
            }
        }
        let settled = stamp.filter(|s| {
            std::time::SystemTime::now().duration_since(*s).is_ok_and(|age| age > RACY_STAMP)
        });
        let m = std::sync::Arc::new(Self::load(root)?);
        let mut c = cache();
        let c = c.get_or_insert_with(Default::default);
        match settled {
            Some(s) => {
                c.insert(root.to_path_buf(), (s, m.clone()));
            }
            None => {
                c.remove(root);
            }
        }
        Ok(m)
    }

    /// [`Manifest::load`] from the entry files alone, ignoring the checkpoint (`verify`).
    pub fn load_entries(root: &Path) -> Result<Self> {
        Self::load_with(root, false)
    }

    fn load_with(root: &Path, use_checkpoint: bool) -> Result<Self> {
        let dir = root.join(MANIFEST_DIR);
        let mut chunks = Vec::new();
        let mut uncheckpointed = 0;
        if dir.exists() {
            // Entry files by their range (parsed from the name: no string per entry to build
            // at 20,000 chunks); a name of another shape is read as it is.
            let mut ranges = std::collections::HashMap::new();
            let mut others = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(Error::io("listing", &dir))?.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(['.', '_']) || !name.ends_with(".json") {
                    continue;
                }
                match parse_entry_name(&name) {
                    Some(r) => {
                        ranges.insert(r, ());
                    }
                    None => others.push(name.into_owned()),
                }
            }
            // The checkpoint's copies of the entries still listed; the rest read one by one.
            let cached = if use_checkpoint { read_checkpoint(&dir) } else { Vec::new() };
            for c in cached {
                if ranges.remove(&(c.start, c.end)).is_some() {
                    chunks.push(c);
                }
            }
            let mut names = others;
            names.extend(ranges.into_keys().map(|(a, b)| ChunkEntry::file_name(a, b)));
            uncheckpointed = names.len();
            for name in names {
                let p = dir.join(name);
                let bytes = match std::fs::read(&p) {
                    Ok(b) => b,
                    // Removed since the listing (a merge or rollback by the writer).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::Io { op: "reading", path: p, source: e }),
                };
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
        Ok(Self { chunks, superseded, uncheckpointed })
    }

    #[cfg(test)]
    pub(crate) fn chunks_mut(&mut self) -> &mut [ChunkEntry] {
        &mut self.chunks
    }

    /// Entries committed or read one by one since the last checkpoint.
    pub fn uncheckpointed(&self) -> usize {
        self.uncheckpointed
    }

    /// Writes every entry into the checkpoint file (atomically: a crash leaves the old one or
    /// the new one). Blocking I/O.
    pub(crate) fn write_checkpoint(&mut self, root: &Path) -> Result<()> {
        let dir = root.join(MANIFEST_DIR);
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = encode_checkpoint(&self.chunks).map_err(|e| Error::Corrupt {
            path: path.clone(),
            what: format!("encoding the manifest checkpoint: {e}"),
        })?;
        write_atomic(&path, &bytes)?;
        remove_legacy_checkpoint(&dir)?;
        self.uncheckpointed = 0;
        Ok(())
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
        if !removed.is_empty() {
            // The same ranges may be committed again with other blocks: no stale copy.
            remove_checkpoint(root)?;
            self.uncheckpointed = self.chunks.len();
        }
        for c in removed.iter().rev() {
            let entry = root.join(MANIFEST_DIR).join(ChunkEntry::file_name(c.start, c.end));
            std::fs::remove_file(&entry).map_err(Error::io("removing", &entry))?;
        }
        if !removed.is_empty() {
            crate::files::sync_dir(&root.join(MANIFEST_DIR))?;
        }
        let paths: Vec<String> =
            removed.iter().flat_map(|c| c.tables.values().map(|f| f.path.clone())).collect();
        self.retire(root, paths)?;
        Ok(removed)
    }

    /// Removes entries (files first are kept by callers' choice): the manifest entry files of
    /// `entries`, then their data files unless a kept chunk still lists the same path.
    pub(crate) fn remove_entries(&mut self, root: &Path, entries: &[ChunkEntry]) -> Result<()> {
        if !entries.is_empty() {
            remove_checkpoint(root)?;
            self.uncheckpointed = self.chunks.len();
        }
        for c in entries {
            let entry = root.join(MANIFEST_DIR).join(ChunkEntry::file_name(c.start, c.end));
            if let Err(e) = std::fs::remove_file(&entry) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(Error::Io { op: "removing", path: entry, source: e });
                }
            }
        }
        crate::files::sync_dir(&root.join(MANIFEST_DIR))?;
        // Readers that loaded the manifest before this change may still read these files: they
        // go to the vacuum list, and are removed once the retention has passed.
        let paths: Vec<String> =
            entries.iter().flat_map(|c| c.tables.values().map(|f| f.path.clone())).collect();
        self.retire(root, paths)
    }

    /// Puts `paths` on the vacuum list (files no entry lists any more), then vacuums.
    pub(crate) fn retire(&self, root: &Path, paths: Vec<String>) -> Result<()> {
        let list = root.join(MANIFEST_DIR).join(VACUUM_FILE);
        let mut retired = read_vacuum_list(&list);
        let now = unix_now();
        retired.extend(paths.into_iter().map(|path| Retired { path, since: now }));
        self.vacuum(root, retired)
    }

    /// Removes the retired files older than the retention that no entry lists (a range committed
    /// again after a rollback reuses its paths), and keeps the rest on the list.
    fn vacuum(&self, root: &Path, retired: Vec<Retired>) -> Result<()> {
        let list = root.join(MANIFEST_DIR).join(VACUUM_FILE);
        let live: std::collections::HashSet<&str> =
            self.chunks.iter().flat_map(|c| c.tables.values().map(|f| f.path.as_str())).collect();
        let retention = retention().as_secs();
        let now = unix_now();
        let mut kept = Vec::new();
        for r in retired {
            if live.contains(r.path.as_str()) {
                continue;
            }
            if r.since.saturating_add(retention) <= now {
                let p = root.join(&r.path);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::Io { op: "removing", path: p, source: e }),
                }
            } else if !kept.iter().any(|k: &Retired| k.path == r.path) {
                kept.push(r);
            }
        }
        let bytes = serde_json::to_vec(&kept)
            .map_err(|source| Error::Json { path: list.clone(), source })?;
        write_atomic(&list, &bytes)
    }

    /// Removes Parquet files under the tables' folders that no entry lists and that were last
    /// written before the retention: uploads of a writer killed before its commit point, or of
    /// a leader fenced at it (`run --ha`). Younger ones may be a commit in progress, or still
    /// read by a reader of an older manifest. Returns how many went.
    pub(crate) fn sweep_unlisted(&self, root: &Path, tables: &[String]) -> Result<usize> {
        // Listed files, and files a merge or rollback retired (the vacuum removes those once
        // readers of the older manifest are done: their age is since their retirement).
        let retired = read_vacuum_list(&root.join(MANIFEST_DIR).join(VACUUM_FILE));
        let live: std::collections::HashSet<&str> = self
            .chunks
            .iter()
            .flat_map(|c| c.tables.values().map(|f| f.path.as_str()))
            .chain(retired.iter().map(|r| r.path.as_str()))
            .collect();
        let cutoff = std::time::SystemTime::now().checked_sub(retention());
        let mut removed = 0;
        for t in tables {
            let dir = root.join(t);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if !name.ends_with(".parquet") || live.contains(format!("{t}/{name}").as_str()) {
                    continue;
                }
                let old = match (e.metadata().and_then(|m| m.modified()), cutoff) {
                    (Ok(m), Some(c)) => m <= c,
                    _ => false,
                };
                if old {
                    std::fs::remove_file(e.path()).map_err(Error::io("removing", e.path()))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Vacuums the retired files whose retention has passed (the writer calls it at open).
    pub(crate) fn vacuum_due(&self, root: &Path) -> Result<()> {
        let list = root.join(MANIFEST_DIR).join(VACUUM_FILE);
        if !list.exists() {
            return Ok(());
        }
        self.vacuum(root, read_vacuum_list(&list))
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
    /// The entry's rename (the commit point) is done by `rename`: the writer fences it by its
    /// lease.
    pub(crate) fn commit_with(
        &mut self,
        root: &Path,
        entry: ChunkEntry,
        rename: impl FnOnce(&crate::files::Staged) -> Result<()>,
    ) -> Result<()> {
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
        let staged = crate::files::Staged::write(&path, &bytes)?;
        rename(&staged)?;
        staged.sync()?;
        let at = self.chunks.partition_point(|c| c.start < entry.start);
        self.chunks.insert(at, entry);
        self.uncheckpointed += 1;
        Ok(())
    }
}

/// `(start, end)` of an entry file named by [`ChunkEntry::file_name`].
fn parse_entry_name(name: &str) -> Option<(u64, u64)> {
    let (a, b) = name.strip_suffix(".json")?.split_once('-')?;
    // As `{n:012}` writes them: twelve digits, or more without a leading zero.
    let canonical = |d: &str| d.len() == 12 || (d.len() > 12 && !d.starts_with('0'));
    if !canonical(a) || !canonical(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The entries of the checkpoint under `dir`; none when it is missing or unreadable (it is only
/// a cache: the entry files are read instead).
fn read_checkpoint(dir: &Path) -> Vec<ChunkEntry> {
    let path = dir.join(CHECKPOINT_FILE);
    let Ok(bytes) = std::fs::read(&path) else { return Vec::new() };
    decode_checkpoint(&bytes).unwrap_or_else(|| {
        tracing::warn!(path = %path.display(), "unreadable manifest checkpoint; ignored");
        Vec::new()
    })
}

/// Removes an earlier version's checkpoint (it may hold entries removed since: an earlier
/// binary must not read it).
fn remove_legacy_checkpoint(dir: &Path) -> Result<()> {
    let path = dir.join(LEGACY_CHECKPOINT_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => crate::files::sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io { op: "removing", path, source: e }),
    }
}

/// Removes the checkpoint durably (before entries are removed or replaced).
fn remove_checkpoint(root: &Path) -> Result<()> {
    let dir = root.join(MANIFEST_DIR);
    remove_legacy_checkpoint(&dir)?;
    let path = dir.join(CHECKPOINT_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => crate::files::sync_dir(&dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io { op: "removing", path, source: e }),
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
    fn entry_names_parse_back_to_their_range() {
        for (a, b) in [(0, 0), (7, 1_000), (999_999_999_999, 1_000_000_000_000)] {
            assert_eq!(parse_entry_name(&ChunkEntry::file_name(a, b)), Some((a, b)));
        }
        for odd in ["1-2.json", "0000000000001-000000000002.json", "x-y.json", "000000000001.json"]
        {
            assert_eq!(parse_entry_name(odd), None, "{odd}");
        }
    }

    #[test]
    fn a_checkpoint_round_trips_and_any_damage_is_refused() {
        let mut entries: Vec<ChunkEntry> = (0..50).map(|i| chunk(i * 10, i * 10 + 9)).collect();
        entries[7].last_block_hash = tidewater_chain::B256::repeat_byte(7);
        entries[7].tables.insert(
            "logs".into(),
            FileEntry { path: "logs/x.parquet".into(), rows: 3, bytes: 99, sha256: "ab".into() },
        );
        let bytes = encode_checkpoint(&entries).unwrap();
        assert_eq!(decode_checkpoint(&bytes), Some(entries));
        // Cut short anywhere, or any byte flipped: not a checkpoint (the entries are read).
        for cut in [0, 4, 8, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(decode_checkpoint(&bytes[..cut]), None, "cut at {cut}");
        }
        for i in (0..bytes.len()).step_by(97) {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            assert_eq!(decode_checkpoint(&b), None, "byte {i} flipped");
        }
    }

    #[test]
    fn writing_or_dropping_the_checkpoint_removes_an_earlier_versions_json() {
        let dir = tempfile::tempdir().unwrap();
        let m_dir = dir.path().join(MANIFEST_DIR);
        std::fs::create_dir_all(&m_dir).unwrap();
        let legacy = m_dir.join(LEGACY_CHECKPOINT_FILE);
        std::fs::write(&legacy, b"{\"format\": 1, \"entries\": []}").unwrap();
        let mut m = Manifest::load(dir.path()).unwrap();
        m.write_checkpoint(dir.path()).unwrap();
        assert!(!legacy.exists() && m_dir.join(CHECKPOINT_FILE).exists());
        std::fs::write(&legacy, b"{}").unwrap();
        remove_checkpoint(dir.path()).unwrap();
        assert!(!legacy.exists() && !m_dir.join(CHECKPOINT_FILE).exists());
    }

    /// Writes `c`'s entry file as a commit does, then sets the folder's modification time.
    fn commit_entry(root: &Path, c: &ChunkEntry, stamp: std::time::SystemTime) {
        let dir = root.join(MANIFEST_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(".tmp-entry");
        std::fs::write(&tmp, serde_json::to_vec(c).unwrap()).unwrap();
        std::fs::rename(&tmp, dir.join(ChunkEntry::file_name(c.start, c.end))).unwrap();
        std::fs::File::open(&dir).unwrap().set_modified(stamp).unwrap();
    }

    #[test]
    fn a_shared_load_is_reused_only_while_the_folder_is_unchanged_and_settled() {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let old = SystemTime::now() - Duration::from_secs(60);
        commit_entry(root, &chunk(0, 9), old);
        let a = Manifest::load_shared(root).unwrap();
        let b = Manifest::load_shared(root).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &b), "an unchanged, settled folder is read once");
        // A commit changes the folder's time: read again.
        commit_entry(root, &chunk(10, 19), old + Duration::from_secs(1));
        assert_eq!(Manifest::load_shared(root).unwrap().chunks().len(), 2);
        // A folder changed just now is not trusted to its time: a second change within the
        // same timestamp (coarse clocks) must still be seen.
        let now = SystemTime::now();
        commit_entry(root, &chunk(20, 29), now);
        assert_eq!(Manifest::load_shared(root).unwrap().chunks().len(), 3);
        commit_entry(root, &chunk(30, 39), now);
        assert_eq!(Manifest::load_shared(root).unwrap().chunks().len(), 4);
    }

    #[test]
    fn gaps_fill_around_committed_chunks() {
        let m = Manifest {
            chunks: vec![chunk(10, 19), chunk(30, 39)],
            superseded: vec![],
            uncheckpointed: 0,
        };
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
            let m = Manifest { chunks: chunks.clone(), superseded: vec![], uncheckpointed: 0 };
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
