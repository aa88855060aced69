//! The manifest: the checkpoint `<data>/_manifest/_checkpoint.bin` and one JSON entry file per
//! chunk committed since. An entry file's rename is the commit point of its chunk; the
//! checkpoint's rename is the commit point of everything before it (the entries it absorbs, and
//! removals: rollbacks, merges). Files no entry lists are not the dataset.

use crate::error::{Error, Result};
use crate::files::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Folder of manifest entries, under the data directory.
pub const MANIFEST_DIR: &str = "_manifest";
/// The manifest's checkpoint, under [`MANIFEST_DIR`]: every entry as of its writing, and the
/// entry files it absorbed (which the writer then removes; any left by a crash are ignored).
/// Loading reads it and the few entry files committed since, so opening a dataset reads and
/// lists a number of files that does not grow with its chunks (Delta Lake's checkpoint).
/// Binary (`postcard`; see [`encode_checkpoint`]): at 20,000 entries it loads in a fraction of
/// JSON's time, and its head (a [`Summary`], checked by its own digest) is read without the
/// entries (`docs/design/mainnet-shape.md`).
pub const CHECKPOINT_FILE: &str = "_checkpoint.bin";
/// The checkpoint of earlier versions (JSON): never read, removed with the checkpoint so that
/// an earlier binary never reads a stale one.
pub(crate) const LEGACY_CHECKPOINT_FILE: &str = "_checkpoint.json";
/// The first bytes of a checkpoint of this format.
const CHECKPOINT_MAGIC: &[u8; 8] = b"TWCKPT03";
/// The magic of the previous format: a cache of entries whose files all stayed (ignored: the
/// files are read, and the next writer writes a checkpoint of this format).
const CACHE_CHECKPOINT_MAGIC: &[u8; 8] = b"TWCKPT02";
/// Lock file (beside the writer's) held while a checkpoint is written: a writer and a replica's
/// sync of the same folder never write one over the other's.
const CHECKPOINT_LOCK: &str = ".lock.manifest";
/// Loads that found the manifest changing under them (a checkpoint written meanwhile) before
/// one gives up.
const LOAD_ATTEMPTS: usize = 50;
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

/// One entry file in the folder: its range and its incarnation (`seq`, drawn at random when it
/// is written; 0 for files of earlier versions). A checkpoint names the files it absorbed by
/// both, so a file committed again at the same name after a rollback is never taken for the
/// one the checkpoint absorbed.
type EntryFile = (u64, u64, u64);

/// An entry file's content: the entry and its incarnation.
#[derive(Serialize)]
struct StoredEntryRef<'a> {
    seq: u64,
    #[serde(flatten)]
    entry: &'a ChunkEntry,
}

#[derive(Deserialize)]
struct StoredEntry {
    #[serde(default)]
    seq: u64,
    #[serde(flatten)]
    entry: ChunkEntry,
}

/// A new entry file's incarnation: random, never 0.
fn fresh_seq() -> u64 {
    rand::random::<u64>().max(1)
}

/// The head of a checkpoint: what `status` reads without the entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct CheckpointHead {
    summary: Summary,
    absorbed: Vec<EntryFile>,
}

/// A checkpoint's bytes:
/// `magic | version (u64 LE) | head length (u32 LE) | head | SHA-256 of version..head | entries |
/// SHA-256 of version..entries`. The version is random: what a reader checks again after
/// reading the entry files. Head and entries are `postcard`; the head has its own digest so
/// that it can be read alone.
fn encode_checkpoint(
    version: u64,
    head: &CheckpointHead,
    entries: &[ChunkEntry],
) -> std::result::Result<Vec<u8>, postcard::Error> {
    use sha2::Digest;
    let head = postcard::to_stdvec(head)?;
    let entries = postcard::to_stdvec(entries)?;
    let len = u32::try_from(head.len()).map_err(|_| postcard::Error::SerializeBufferFull)?;
    let mut out = Vec::with_capacity(CHECKPOINT_MAGIC.len() + 12 + head.len() + entries.len() + 64);
    out.extend_from_slice(CHECKPOINT_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&head);
    let sum = sha2::Sha256::digest(&out[CHECKPOINT_MAGIC.len()..]);
    out.extend_from_slice(&sum);
    out.extend_from_slice(&entries);
    let sum = sha2::Sha256::digest(&out[CHECKPOINT_MAGIC.len()..]);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// The version and head of a checkpoint's first bytes, and where its entries start; None when
/// they are not a whole head of this format.
fn decode_checkpoint_head(bytes: &[u8]) -> Option<(u64, CheckpointHead, usize)> {
    use sha2::Digest;
    let rest = bytes.strip_prefix(CHECKPOINT_MAGIC.as_slice())?;
    let (version, rest) = rest.split_first_chunk::<8>()?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    let head = rest.get(..len)?;
    let sum = rest.get(len..len.checked_add(32)?)?;
    let signed = bytes.get(CHECKPOINT_MAGIC.len()..CHECKPOINT_MAGIC.len() + 12 + len)?;
    if sha2::Sha256::digest(signed).as_slice() != sum {
        return None;
    }
    let head = postcard::from_bytes(head).ok()?;
    Some((u64::from_le_bytes(*version), head, CHECKPOINT_MAGIC.len() + 12 + len + 32))
}

/// The version, head and entries of a checkpoint's bytes; None when they are not a whole
/// checkpoint of this format (cut short, damaged, another format).
fn decode_checkpoint(bytes: &[u8]) -> Option<(u64, CheckpointHead, Vec<ChunkEntry>)> {
    use sha2::Digest;
    let (version, head, at) = decode_checkpoint_head(bytes)?;
    let (signed, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    let entries = signed.get(at..)?;
    if sha2::Sha256::digest(signed.get(CHECKPOINT_MAGIC.len()..)?).as_slice() != sum {
        return None;
    }
    Some((version, head, postcard::from_bytes(entries).ok()?))
}

/// What `status` says of a manifest without its entries: counts, coverage, rows, the last
/// block. The checkpoint's head holds it, so it is read without the entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Committed chunks.
    pub chunks: u64,
    /// Runs of contiguous committed blocks, in order.
    pub coverage: Vec<(u64, u64)>,
    /// Rows per table (tables with rows).
    pub rows: BTreeMap<String, u64>,
    /// The last chunk's last block and its hash: the checkpoint a tail resumes from.
    pub last: Option<(u64, tidewater_chain::B256)>,
}

impl Summary {
    /// The summary of chunks in block order.
    pub fn of(chunks: &[ChunkEntry]) -> Self {
        let mut s = Self::default();
        for c in chunks {
            s.add(c);
        }
        s
    }

    /// Adds a chunk; false (and nothing added) when it overlaps the coverage.
    fn add(&mut self, c: &ChunkEntry) -> bool {
        let at = self.coverage.partition_point(|r| r.1 < c.start);
        if self.coverage.get(at).is_some_and(|r| r.0 <= c.end) {
            return false;
        }
        // Checked: the ranges come from files (a block number near u64::MAX is bad input, not
        // a reason to panic).
        // Checked: the ranges come from files (a block number near u64::MAX is bad input, not
        // a reason to panic).
        let (before, after) = self.coverage.split_at_mut(at);
        let prev = before.last_mut().filter(|r| r.1.checked_add(1) == Some(c.start));
        let next = after.first_mut().filter(|r| c.end.checked_add(1) == Some(r.0));
        match (prev, next) {
            (Some(p), Some(n)) => {
                p.1 = n.1;
                self.coverage.remove(at);
            }
            (Some(p), None) => p.1 = c.end,
            (None, Some(n)) => n.0 = c.start,
            (None, None) => self.coverage.insert(at, (c.start, c.end)),
        }
        self.chunks += 1;
        for (t, f) in &c.tables {
            *self.rows.entry(t.clone()).or_default() += f.rows;
        }
        if self.last.is_none_or(|(end, _)| end < c.end) {
            self.last = Some((c.end, c.last_block_hash));
        }
        true
    }

    /// Rows of `table`.
    pub fn rows(&self, table: &str) -> u64 {
        self.rows.get(table).copied().unwrap_or(0)
    }

    /// The gaps between the first and the last committed block.
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        self.coverage
            .iter()
            .zip(self.coverage.iter().skip(1))
            .map(|(a, b)| (a.1.saturating_add(1), b.0.saturating_sub(1)))
            .collect()
    }
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
    /// Entries covered by a merged entry, left by an interrupted merge of an earlier version (to
    /// clean up).
    superseded: Vec<ChunkEntry>,
    /// The entry files in the folder: committed since the checkpoint, or absorbed by it and
    /// left by a crash before their removal. The next checkpoint absorbs them all.
    files: Vec<EntryFile>,
    /// Entry files not absorbed by the checkpoint (read one by one at load, or committed since).
    uncheckpointed: usize,
}

/// A load that found the folder changing under it: try again.
struct Changed;

/// One read of the manifest folder fails with [`Changed`] (try again) or an error.
type Attempt = std::result::Result<Changed, Error>;

/// Runs `read` on the manifest folder `dir` until it reads it unchanged (at most
/// [`LOAD_ATTEMPTS`] times).
fn until_unchanged<T>(
    dir: &Path,
    read: impl Fn(&Path) -> std::result::Result<T, Attempt>,
) -> Result<T> {
    for _ in 0..LOAD_ATTEMPTS {
        match read(dir) {
            Ok(t) => return Ok(t),
            Err(Ok(Changed)) => std::thread::yield_now(),
            Err(Err(e)) => return Err(e),
        }
    }
    Err(Error::Corrupt {
        path: dir.to_path_buf(),
        what: format!("the manifest changed under each of {LOAD_ATTEMPTS} reads"),
    })
}

/// Reads every entry file under `dir`, giving each to `each` with whether it counts (not
/// absorbed by the checkpoint); returns them all. A file gone between the listing and its read
/// was absorbed by a checkpoint written meanwhile: [`Changed`].
fn scan_entry_files(
    dir: &Path,
    absorbed: &[EntryFile],
    mut each: impl FnMut(ChunkEntry, bool),
) -> std::result::Result<Vec<EntryFile>, Attempt> {
    let absorbed: std::collections::HashSet<&EntryFile> = absorbed.iter().collect();
    let mut files = Vec::new();
    let listing = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(Err(Error::io("listing", dir)(e))),
    };
    for entry in listing {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(['.', '_']) || !name.ends_with(".json") {
            continue;
        }
        let p = dir.join(&*name);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Ok(Changed)),
            Err(e) => return Err(Err(Error::Io { op: "reading", path: p, source: e })),
        };
        let stored: StoredEntry = serde_json::from_slice(&bytes)
            .map_err(|source| Err(Error::Json { path: p.clone(), source }))?;
        let c = stored.entry;
        let file = (c.start, c.end, stored.seq);
        files.push(file);
        each(c, !absorbed.contains(&file));
    }
    Ok(files)
}

impl Manifest {
    /// Loads the manifest under `<root>/_manifest`: the checkpoint and the entry files it did
    /// not absorb. Overlapping entries are corruption; so is a damaged checkpoint.
    pub fn load(root: &Path) -> Result<Self> {
        until_unchanged(&root.join(MANIFEST_DIR), Self::try_load)
    }

    /// [`Manifest::load`] for readers, shared within the process: a service opens the same
    /// dataset for every SQL request, past-block state and poll. The manifest loaded last is
    /// reused while the folder's modification time is what it was: every change of the
    /// manifest creates, renames or removes a file in it. A time within [`RACY_STAMP`] of the
    /// load is never trusted (two changes within the file system's timestamp granularity share
    /// one time; git's index has the same rule).
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

    /// The summary of the manifest under `<root>/_manifest` (what `status` says): the
    /// checkpoint's head and the entry files committed since, never the checkpoint's entries,
    /// so its cost does not grow with the chunks.
    pub fn load_summary(root: &Path) -> Result<Summary> {
        match until_unchanged(&root.join(MANIFEST_DIR), Self::try_summary)? {
            Some(s) => Ok(s),
            // No checkpoint of this format, or entries it cannot simply add up (an earlier
            // version's interrupted merge): from every entry.
            None => Self::load(root).map(|m| m.summary()),
        }
    }

    /// The summary of the chunks.
    pub fn summary(&self) -> Summary {
        Summary::of(&self.chunks)
    }

    fn try_summary(dir: &Path) -> std::result::Result<Option<Summary>, Attempt> {
        let Some((version, head)) = read_checkpoint_head(dir).map_err(Err)? else {
            return Ok(None);
        };
        let mut summary = head.summary;
        let mut simple = true;
        scan_entry_files(dir, &head.absorbed, |c, counted| {
            if counted {
                simple &= summary.add(&c);
            }
        })?;
        if read_checkpoint_version(dir).map_err(Err)? != Some(version) {
            return Err(Ok(Changed));
        }
        Ok(simple.then_some(summary))
    }

    /// One read of the folder: the checkpoint, the listing, the entry files not absorbed, and
    /// the checkpoint's version again. A checkpoint written meanwhile (it is written before the
    /// files it absorbs are removed) makes it [`Changed`].
    fn try_load(dir: &Path) -> std::result::Result<Self, Attempt> {
        if !dir.exists() {
            return Ok(Self::default());
        }
        let checkpoint = read_checkpoint(dir).map_err(Err)?;
        let version = checkpoint.as_ref().map(|(v, _, _)| *v);
        let (mut chunks, absorbed) = match checkpoint {
            Some((_, head, entries)) => (entries, head.absorbed),
            None => (Vec::new(), Vec::new()),
        };
        let mut uncheckpointed = 0;
        let files = scan_entry_files(dir, &absorbed, |c, counted| {
            if counted {
                uncheckpointed += 1;
                chunks.push(c);
            }
        })?;
        if read_checkpoint_version(dir).map_err(Err)? != version {
            return Err(Ok(Changed));
        }
        // A merged entry supersedes the entries it covers (an earlier version's merge wrote the
        // merged entry, then removed the old ones: a crash between left both): keep the widest.
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
                return Err(Err(Error::Corrupt {
                    path: dir.to_path_buf(),
                    what: format!(
                        "chunks [{}, {}] and [{}, {}] overlap",
                        w[0].start, w[0].end, w[1].start, w[1].end
                    ),
                }));
            }
        }
        Ok(Self { chunks, superseded, files, uncheckpointed })
    }

    /// Entries committed since the last checkpoint (their entry files are read at load).
    pub fn uncheckpointed(&self) -> usize {
        self.uncheckpointed
    }

    /// Entry files in the folder (committed since the checkpoint, or left by a crash after it).
    pub fn entry_files(&self) -> usize {
        self.files.len()
    }

    /// Whether the writer should write a checkpoint: [`CHECKPOINT_EVERY`] entries since the last
    /// one, entry files a crash left behind, or entries an interrupted merge superseded.
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.uncheckpointed >= CHECKPOINT_EVERY
            || self.files.len() > self.uncheckpointed
            || !self.superseded.is_empty()
    }

    /// Writes the checkpoint: every entry, and the entry files it absorbs. Its rename is the
    /// commit point (of the entries, and of whatever was removed from them since the last
    /// one); the absorbed entry files go after it. A crash leaves the old checkpoint or the new
    /// one, and entry files the new one ignores. Blocking I/O.
    pub(crate) fn write_checkpoint(&mut self, root: &Path) -> Result<()> {
        let _lock = checkpoint_lock(root)?;
        self.write_checkpoint_locked(root)
    }

    fn write_checkpoint_locked(&mut self, root: &Path) -> Result<()> {
        let dir = root.join(MANIFEST_DIR);
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let path = dir.join(CHECKPOINT_FILE);
        let head = CheckpointHead { summary: self.summary(), absorbed: self.files.clone() };
        let bytes =
            encode_checkpoint(rand::random(), &head, &self.chunks).map_err(|e| Error::Corrupt {
                path: path.clone(),
                what: format!("encoding the manifest checkpoint: {e}"),
            })?;
        write_atomic(&path, &bytes)?;
        remove_legacy_checkpoint(&dir)?;
        for (start, end, _) in std::mem::take(&mut self.files) {
            let p = dir.join(ChunkEntry::file_name(start, end));
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io { op: "removing", path: p, source: e }),
            }
        }
        crate::files::sync_dir(&dir)?;
        self.uncheckpointed = 0;
        self.superseded.clear();
        Ok(())
    }

    /// Changes the entries by `change` durably, through a checkpoint written under the lock
    /// from the folder as it is now (a replica following its store, which may share the folder
    /// with a writer whose commits must not be lost). Returns the manifest written.
    pub(crate) fn rewrite(root: &Path, change: impl FnOnce(&mut Vec<ChunkEntry>)) -> Result<Self> {
        let _lock = checkpoint_lock(root)?;
        let mut m = Self::load(root)?;
        change(&mut m.chunks);
        m.chunks.sort_by_key(|c| c.start);
        m.write_checkpoint_locked(root)?;
        Ok(m)
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

    /// Forgets every chunk ending after `keep_through` (all of them for `None`): a checkpoint
    /// without them first (the commit point), then their files. Returns the removed entries.
    pub(crate) fn rollback(
        &mut self,
        root: &Path,
        keep_through: Option<u64>,
    ) -> Result<Vec<ChunkEntry>> {
        let keep = self.chunks.partition_point(|c| keep_through.is_some_and(|k| c.end <= k));
        let removed: Vec<ChunkEntry> = self.chunks.drain(keep..).collect();
        if removed.is_empty() {
            return Ok(removed);
        }
        self.write_checkpoint(root)?;
        self.retire_files_of(root, &removed)?;
        Ok(removed)
    }

    /// Removes the entries an interrupted merge superseded: a checkpoint without them, then
    /// their data files unless a kept chunk still lists the same path.
    pub(crate) fn remove_superseded(&mut self, root: &Path) -> Result<()> {
        let entries = std::mem::take(&mut self.superseded);
        if entries.is_empty() {
            return Ok(());
        }
        self.write_checkpoint(root)?;
        self.retire_files_of(root, &entries)
    }

    /// Puts the data files of `entries` (removed from the manifest) on the vacuum list.
    fn retire_files_of(&self, root: &Path, entries: &[ChunkEntry]) -> Result<()> {
        let paths = entries.iter().flat_map(|c| c.tables.values().map(|f| f.path.clone()));
        self.retire(root, paths.collect())
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

    /// Entries superseded by a merged entry (left by an interrupted merge of an earlier
    /// version).
    pub(crate) fn superseded(&self) -> usize {
        self.superseded.len()
    }

    /// Replaces the chunks inside `[merged.start, merged.end]` with `merged`, durably: one
    /// checkpoint (the commit point) holds the merged entry and none of the old ones; their
    /// data files go to the vacuum list.
    pub(crate) fn replace(&mut self, root: &Path, merged: ChunkEntry) -> Result<()> {
        let (old, keep): (Vec<ChunkEntry>, Vec<ChunkEntry>) =
            self.chunks.drain(..).partition(|c| merged.start <= c.start && c.end <= merged.end);
        self.chunks = keep;
        let at = self.chunks.partition_point(|c| c.start < merged.start);
        self.chunks.insert(at, merged);
        self.write_checkpoint(root)?;
        self.retire_files_of(root, &old)
    }

    /// Writes the entry file of `entry` (a replica following its store; not fenced).
    pub(crate) fn add(&mut self, root: &Path, entry: ChunkEntry) -> Result<()> {
        self.commit_with(root, entry, crate::files::Staged::rename)
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
        let seq = fresh_seq();
        let bytes = serde_json::to_vec_pretty(&StoredEntryRef { seq, entry: &entry })
            .map_err(|source| Error::Json { path: path.clone(), source })?;
        let staged = crate::files::Staged::write(&path, &bytes)?;
        rename(&staged)?;
        staged.sync()?;
        // A leftover file of the same name (absorbed by the checkpoint) was just replaced.
        self.files.retain(|f| (f.0, f.1) != (entry.start, entry.end));
        self.files.push((entry.start, entry.end, seq));
        let at = self.chunks.partition_point(|c| c.start < entry.start);
        self.chunks.insert(at, entry);
        self.uncheckpointed += 1;
        Ok(())
    }
}

/// The version, head and entries of the checkpoint under `dir`; none when there is none (or
/// only an earlier version's cache of the entries, whose files all stayed). A damaged
/// checkpoint is an error: it is the commit point of the entries it absorbed.
fn read_checkpoint(dir: &Path) -> Result<Option<(u64, CheckpointHead, Vec<ChunkEntry>)>> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io { op: "reading", path, source: e }),
    };
    if bytes.starts_with(CACHE_CHECKPOINT_MAGIC) {
        return Ok(None);
    }
    decode_checkpoint(&bytes).map(Some).ok_or_else(|| damaged_checkpoint(path))
}

fn damaged_checkpoint(path: PathBuf) -> Error {
    Error::Corrupt {
        path,
        what: "the manifest checkpoint is damaged or of an unknown format (it holds the entries \
               it absorbed: restore it from a copy, or backfill again)"
            .into(),
    }
}

/// The version and head of the checkpoint under `dir`, reading only them.
fn read_checkpoint_head(dir: &Path) -> Result<Option<(u64, CheckpointHead)>> {
    use std::io::Read as _;
    let path = dir.join(CHECKPOINT_FILE);
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io { op: "reading", path, source: e }),
    };
    let mut fixed = [0u8; 20];
    match f.read_exact(&mut fixed) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(damaged_checkpoint(path))
        }
        Err(e) => return Err(Error::Io { op: "reading", path, source: e }),
    }
    if fixed.starts_with(CACHE_CHECKPOINT_MAGIC) {
        return Ok(None);
    }
    let [.., l0, l1, l2, l3] = fixed;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let mut bytes = fixed.to_vec();
    // A length beyond the file is refused by the digest of what could be read.
    let mut rest = Vec::new();
    (&mut f).take(len as u64 + 32).read_to_end(&mut rest).map_err(Error::io("reading", &path))?;
    bytes.extend_from_slice(&rest);
    match decode_checkpoint_head(&bytes) {
        Some((version, head, _)) => Ok(Some((version, head))),
        None => Err(damaged_checkpoint(path)),
    }
}

/// The version of the checkpoint under `dir` (its first bytes only), as [`read_checkpoint`]
/// gives it.
fn read_checkpoint_version(dir: &Path) -> Result<Option<u64>> {
    use std::io::Read as _;
    let path = dir.join(CHECKPOINT_FILE);
    let mut head = [0u8; 16];
    let read = std::fs::File::open(&path).and_then(|mut f| f.read_exact(&mut head));
    match read {
        Ok(()) if head.starts_with(CHECKPOINT_MAGIC) => {
            let (_, version) = head.split_at(CHECKPOINT_MAGIC.len());
            Ok(version.try_into().ok().map(u64::from_le_bytes))
        }
        Ok(()) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(Error::Io { op: "reading", path, source: e }),
    }
}

/// Holds the lock under which checkpoints are written (blocking until it is free).
fn checkpoint_lock(root: &Path) -> Result<std::fs::File> {
    let (lock, lock_path) = crate::files::open_lock_file(root, CHECKPOINT_LOCK)?;
    lock.lock().map_err(Error::io("locking", &lock_path))?;
    Ok(lock)
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
    fn a_checkpoint_round_trips_and_any_damage_is_refused() {
        let mut entries: Vec<ChunkEntry> = (0..50).map(|i| chunk(i * 10, i * 10 + 9)).collect();
        entries[7].last_block_hash = tidewater_chain::B256::repeat_byte(7);
        entries[7].tables.insert(
            "logs".into(),
            FileEntry { path: "logs/x.parquet".into(), rows: 3, bytes: 99, sha256: "ab".into() },
        );
        let head = CheckpointHead { summary: Summary::of(&entries), absorbed: vec![(0, 9, 5)] };
        let bytes = encode_checkpoint(42, &head, &entries).unwrap();
        assert_eq!(decode_checkpoint(&bytes), Some((42, head.clone(), entries)));
        let (version, only_head, _) = decode_checkpoint_head(&bytes).unwrap();
        assert_eq!((version, only_head), (42, head));
        // Cut short anywhere, or any byte flipped: not a checkpoint.
        for cut in [0, 4, 8, 16, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(decode_checkpoint(&bytes[..cut]), None, "cut at {cut}");
        }
        for i in (0..bytes.len()).step_by(97).chain([9]) {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            assert_eq!(decode_checkpoint(&b), None, "byte {i} flipped");
        }
        // A damaged checkpoint is an error at load (it is the commit point of what it holds);
        // the previous format's cache of entries is ignored (their files all stayed).
        let dir = tempfile::tempdir().unwrap();
        let m_dir = dir.path().join(MANIFEST_DIR);
        std::fs::create_dir_all(&m_dir).unwrap();
        let mut b = bytes;
        b[20] ^= 1;
        std::fs::write(m_dir.join(CHECKPOINT_FILE), &b).unwrap();
        let e = Manifest::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("checkpoint is damaged"), "{e}");
        std::fs::write(m_dir.join(CHECKPOINT_FILE), b"TWCKPT02whatever").unwrap();
        assert!(Manifest::load(dir.path()).unwrap().chunks().is_empty());
    }

    #[test]
    fn writing_the_checkpoint_removes_an_earlier_versions_json() {
        let dir = tempfile::tempdir().unwrap();
        let m_dir = dir.path().join(MANIFEST_DIR);
        std::fs::create_dir_all(&m_dir).unwrap();
        let legacy = m_dir.join(LEGACY_CHECKPOINT_FILE);
        std::fs::write(&legacy, b"{\"format\": 1, \"entries\": []}").unwrap();
        let mut m = Manifest::load(dir.path()).unwrap();
        m.write_checkpoint(dir.path()).unwrap();
        assert!(!legacy.exists() && m_dir.join(CHECKPOINT_FILE).exists());
    }

    /// The checkpoint is the commit point of what it absorbs and of removals: entry files it
    /// absorbed and a crash left behind are ignored (even when they hold entries it removed),
    /// an entry committed again at the same name after it counts, and a load that sees a
    /// checkpoint written while it read the entry files reads again.
    #[test]
    fn entry_files_a_checkpoint_absorbed_never_count_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let m_dir = root.join(MANIFEST_DIR);
        let mut m = Manifest::load(root).unwrap();
        for i in 0..10 {
            m.commit_with(root, chunk(i * 10, i * 10 + 9), crate::files::Staged::rename).unwrap();
        }
        assert_eq!((m.uncheckpointed(), m.entry_files()), (10, 10));
        // A rollback's checkpoint, then a crash before the absorbed files were removed: put
        // them back as they were.
        let saved: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&m_dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('0'))
            .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
            .collect();
        assert_eq!(saved.len(), 10);
        m.rollback(root, Some(49)).unwrap();
        assert_eq!(m.entry_files(), 0);
        for (p, b) in &saved {
            std::fs::write(p, b).unwrap();
        }
        let loaded = Manifest::load(root).unwrap();
        assert_eq!(loaded.chunks(), m.chunks(), "absorbed files count again");
        assert_eq!(
            (loaded.chunks().len(), loaded.uncheckpointed(), loaded.entry_files()),
            (5, 0, 10)
        );
        assert!(loaded.checkpoint_due(), "leftover files are for the next checkpoint to remove");
        // The same range committed again: its new file counts, the other leftovers do not.
        let mut again = chunk(50, 59);
        again.last_block_hash = tidewater_chain::B256::repeat_byte(9);
        let mut l = loaded;
        l.commit_with(root, again.clone(), crate::files::Staged::rename).unwrap();
        let reloaded = Manifest::load(root).unwrap();
        assert_eq!(reloaded.chunks().len(), 6);
        assert_eq!(reloaded.chunks()[5], again);
        assert_eq!((reloaded.uncheckpointed(), reloaded.entry_files()), (1, 10));
        // The next checkpoint absorbs and removes them all; the dataset is unchanged.
        l.write_checkpoint(root).unwrap();
        let names: Vec<String> = std::fs::read_dir(&m_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(['.', '_']))
            .collect();
        assert!(names.is_empty(), "{names:?}");
        assert!(m_dir.join(CHECKPOINT_FILE).exists());
        assert_eq!(Manifest::load(root).unwrap().chunks(), reloaded.chunks());
    }

    /// A reader that read the old checkpoint and then finds the entry files it absorbed gone
    /// (or a new checkpoint) reads again rather than miss them.
    #[test]
    fn a_load_racing_checkpoints_never_misses_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let commits = 600;
        let writer = {
            let (root, done) = (root.clone(), done.clone());
            std::thread::spawn(move || {
                let mut m = Manifest::load(&root).unwrap();
                for n in 0..commits {
                    m.commit_with(&root, chunk(n, n), crate::files::Staged::rename).unwrap();
                    if n % 5 == 4 {
                        m.write_checkpoint(&root).unwrap();
                    }
                }
                done.store(true, std::sync::atomic::Ordering::Relaxed);
            })
        };
        let (mut seen, mut loads) = (0, 0);
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let m = Manifest::load(&root).unwrap();
            let n = m.chunks().len() as u64;
            assert!(n >= seen, "a later load saw {n} chunks, an earlier one {seen}");
            assert!(m.chunks().iter().enumerate().all(|(i, c)| c.start == i as u64), "a gap");
            seen = n;
            loads += 1;
        }
        writer.join().unwrap();
        assert!(loads > 10, "{loads} loads while the writer ran");
        let n = commits;
        assert_eq!(Manifest::load(&root).unwrap().chunks().len() as u64, n);
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
            files: vec![],
            uncheckpointed: 0,
        };
        assert_eq!(m.gaps(0, 50), vec![(0, 9), (20, 29), (40, 50)]);
        assert_eq!(m.gaps(10, 19), vec![]);
        assert_eq!(m.gaps(15, 35), vec![(20, 29)]);
        assert_eq!(m.gaps(40, 45), vec![(40, 45)]);
        assert_eq!(Manifest::default().gaps(3, 4), vec![(3, 4)]);
    }

    proptest::proptest! {
        /// A summary added up chunk by chunk in any order (entries committed since the
        /// checkpoint, by shards anywhere) is the summary of the chunks in order; a chunk that
        /// overlaps is refused.
        #[test]
        fn a_summary_adds_up_in_any_order(
            lens in proptest::collection::vec((0u64..3, 1u64..4, 0u64..5), 1..20),
            order in proptest::collection::vec(proptest::num::usize::ANY, 1..20),
        ) {
            let mut chunks = Vec::new();
            let mut at = 0;
            for (skip, n, rows) in lens {
                let mut c = chunk(at + skip, at + skip + n - 1);
                c.last_block_hash = tidewater_chain::B256::with_last_byte((at + skip) as u8);
                c.tables.insert(
                    "t".into(),
                    FileEntry { path: String::new(), rows, bytes: 0, sha256: String::new() },
                );
                chunks.push(c);
                at += skip + n;
            }
            let mut shuffled = chunks.clone();
            for (i, o) in order.iter().enumerate() {
                let n = shuffled.len();
                shuffled.swap(i % n, o % n);
            }
            let mut s = Summary::default();
            for c in &shuffled {
                proptest::prop_assert!(s.add(c));
            }
            let all = Summary::of(&chunks);
            proptest::prop_assert_eq!(&s, &all);
            let m = Manifest { chunks: chunks.clone(), ..Default::default() };
            proptest::prop_assert_eq!(all.gaps(), m.gaps(chunks[0].start, chunks[chunks.len() - 1].end));
            proptest::prop_assert_eq!(all.rows("t"), m.rows("t"));
            for c in &chunks {
                proptest::prop_assert!(!s.add(c), "[{}, {}] overlaps", c.start, c.end);
            }
            proptest::prop_assert_eq!(&s, &all);
        }

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
            let m = Manifest {
                chunks: chunks.clone(),
                superseded: vec![],
                files: vec![],
                uncheckpointed: 0,
            };
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
