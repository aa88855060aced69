//! The data directory: identity (`dataset.json`), writer lock, committed chunks, verification.

use crate::error::{Error, Result};
use crate::files::{remove_temp_files, sync_dir, write_atomic};
use crate::manifest::{ChunkEntry, FileEntry, Manifest};
use crate::parquet_io::encode_parquet;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// Log of reorgs deeper than the watermark, one JSON object a line.
pub const DEEP_REORGS_FILE: &str = "_deep_reorgs.jsonl";
/// Identity file of a data directory.
pub const IDENTITY_FILE: &str = "dataset.json";
/// Empty Parquet files carrying each table's schema, so views exist before any rows do.
pub const SCHEMA_DIR: &str = "_schema";
const LOCK_FILE: &str = ".lock";
const FORMAT_VERSION: u32 = 1;

/// What a data directory holds: one chain, one set of sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Layout version.
    pub format: u32,
    /// Chain id.
    pub chain_id: u64,
    /// Hash of block 0, which tells apart chains that share an id (devnets).
    pub genesis_hash: String,
    /// The sources configuration, as JSON.
    pub sources: serde_json::Value,
    /// Tables, in name order.
    pub tables: Vec<String>,
}

impl Identity {
    /// An identity of the current layout version.
    pub fn new(
        chain_id: u64,
        genesis_hash: String,
        sources: serde_json::Value,
        tables: Vec<String>,
    ) -> Self {
        Self { format: FORMAT_VERSION, chain_id, genesis_hash, sources, tables }
    }

    fn mismatch(&self, other: &Self) -> Option<String> {
        if self.chain_id != other.chain_id {
            return Some(format!("chain id {} (this node: {})", self.chain_id, other.chain_id));
        }
        if self.genesis_hash != other.genesis_hash {
            return Some(format!(
                "genesis block {} (this node: {}): data of another chain",
                self.genesis_hash, other.genesis_hash
            ));
        }
        if self.sources != other.sources {
            return Some(format!(
                "sources {} (requested: {}); use another --data directory",
                self.sources, other.sources
            ));
        }
        if self.format != other.format {
            return Some(format!("layout version {} (this build: {})", self.format, other.format));
        }
        None
    }
}

/// Reads `dataset.json`, if present.
pub fn read_identity(root: &Path) -> Result<Option<Identity>> {
    let p = root.join(IDENTITY_FILE);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Json { path: p, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io { op: "reading", path: p, source: e }),
    }
}

/// A read-only view of a data directory.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
    identity: Identity,
    manifest: std::sync::Arc<Manifest>,
}

impl Dataset {
    /// Opens an existing data directory for reading.
    pub fn open(root: &Path) -> Result<Self> {
        let identity =
            read_identity(root)?.ok_or_else(|| Error::NotADataset { path: root.to_path_buf() })?;
        let manifest = Manifest::load_shared(root)?;
        Ok(Self { root: root.to_path_buf(), identity, manifest })
    }

    /// A data directory's identity and the summary of its manifest (what `status` says),
    /// without reading every entry: its cost does not grow with the chunks.
    pub fn open_summary(root: &Path) -> Result<(Identity, crate::Summary)> {
        let identity =
            read_identity(root)?.ok_or_else(|| Error::NotADataset { path: root.to_path_buf() })?;
        Ok((identity, Manifest::load_summary(root)?))
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The committed chunks.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Committed files of `table`.
    pub fn files(&self, table: &str) -> Vec<PathBuf> {
        self.manifest.files(&self.root, table)
    }

    /// The empty schema-carrying file of `table`.
    pub fn schema_file(&self, table: &str) -> PathBuf {
        self.root.join(SCHEMA_DIR).join(format!("{table}.parquet"))
    }

    /// Reorgs deeper than the watermark this directory went through, oldest first.
    pub fn deep_reorgs(&self) -> Result<Vec<serde_json::Value>> {
        deep_reorgs(&self.root)
    }

    /// Checks every committed file against its manifest entry: present, same size, same
    /// SHA-256, a readable Parquet footer with the recorded row count. Returns the problems.
    pub fn verify(&self) -> Vec<Error> {
        let mut problems = Vec::new();
        for c in self.manifest.chunks() {
            for f in c.tables.values() {
                if let Err(e) = verify_file(&self.root, f) {
                    problems.push(e);
                }
            }
        }
        problems
    }
}

/// Reorgs deeper than the watermark the data directory `root` went through, oldest first.
pub fn deep_reorgs(root: &Path) -> Result<Vec<serde_json::Value>> {
    let p = root.join(DEEP_REORGS_FILE);
    match std::fs::read_to_string(&p) {
        Ok(text) => text
            .lines()
            .map(|l| {
                serde_json::from_str(l).map_err(|source| Error::Json { path: p.clone(), source })
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(Error::Io { op: "reading", path: p, source: e }),
    }
}

fn verify_file(root: &Path, f: &FileEntry) -> Result<()> {
    let path = root.join(&f.path);
    let corrupt = |what: String| Error::Corrupt { path: path.clone(), what };
    let bytes = std::fs::read(&path).map_err(Error::io("reading", &path))?;
    if bytes.len() as u64 != f.bytes {
        return Err(corrupt(format!("{} bytes, manifest says {}", bytes.len(), f.bytes)));
    }
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != f.sha256 {
        return Err(corrupt(format!("sha256 {digest}, manifest says {}", f.sha256)));
    }
    let reader =
        parquet::file::serialized_reader::SerializedFileReader::new(bytes::Bytes::from(bytes))
            .map_err(|source| Error::Parquet { path: path.clone(), source })?;
    use parquet::file::reader::FileReader as _;
    let rows = reader.metadata().file_metadata().num_rows() as u64;
    if rows != f.rows {
        return Err(corrupt(format!("{rows} rows, manifest says {}", f.rows)));
    }
    Ok(())
}

/// Which part of a range a writer owns when several processes share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process's index, `0..count`.
    pub index: u32,
    /// Number of processes.
    pub count: u32,
}

/// A chunk ready to commit: its range, boundary hashes, and one batch per table.
#[derive(Debug)]
pub struct ChunkCommit {
    /// First block.
    pub start: u64,
    /// Last block.
    pub end: u64,
    /// Hash of `start`.
    pub first_block_hash: tidewater_chain::B256,
    /// Hash of `end`.
    pub last_block_hash: tidewater_chain::B256,
    /// Encoded Parquet per table (empty tables omitted), with row counts.
    pub files: BTreeMap<String, (Vec<u8>, u64)>,
}

/// The only writer of a data directory (or of one shard of it).
#[derive(Debug)]
pub struct DatasetWriter {
    root: PathBuf,
    manifest: Manifest,
    shard: Option<Shard>,
    _locks: Vec<File>,
    /// With `run --ha`: the writer lease every mutation is fenced by (instead of the lock).
    lease: Option<std::sync::Arc<crate::lease::Lease>>,
    /// On object storage: the bucket this directory replicates; commits go there first.
    remote: Option<std::sync::Arc<crate::remote::Remote>>,
}

/// Whether `root` holds files a dataset being created does not (anything but locks, schema
/// files and temp files).
fn has_foreign_files(root: &Path) -> bool {
    std::fs::read_dir(root).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            !(n.starts_with(LOCK_FILE)
                || n == SCHEMA_DIR
                || (n.starts_with('.') && n.ends_with(".tmp")))
        })
    })
}

impl DatasetWriter {
    /// Opens (creating if needed) a data directory for writing. Checks, before writing anything,
    /// that the directory is empty or holds this same dataset, and that no other writer holds it
    /// (sharded writers share the directory, one per shard).
    pub fn open(
        root: &Path,
        identity: &Identity,
        schemas: &BTreeMap<String, SchemaRef>,
        shard: Option<Shard>,
    ) -> Result<Self> {
        Self::open_with(root, identity, schemas, shard, None)
    }

    /// [`Self::open`] for the holder of the writer lease (`run --ha`): instead of the lock file,
    /// every file write and manifest change runs fenced by `lease` (refused once another
    /// instance took it over).
    pub fn open_leased(
        root: &Path,
        identity: &Identity,
        schemas: &BTreeMap<String, SchemaRef>,
        lease: std::sync::Arc<crate::lease::Lease>,
    ) -> Result<Self> {
        Self::open_with(root, identity, schemas, None, Some(lease))
    }

    fn open_with(
        root: &Path,
        identity: &Identity,
        schemas: &BTreeMap<String, SchemaRef>,
        shard: Option<Shard>,
        lease: Option<std::sync::Arc<crate::lease::Lease>>,
    ) -> Result<Self> {
        let remote = crate::remote::attached(root);
        if let Some(r) = &remote {
            let id_bytes = serde_json::to_vec_pretty(identity)
                .map_err(|source| Error::Json { path: root.join(IDENTITY_FILE), source })?;
            let mut schema_files = Vec::new();
            for (table, schema) in schemas {
                let empty = RecordBatch::new_empty(schema.clone());
                schema_files.push((
                    format!("{SCHEMA_DIR}/{table}.parquet"),
                    bytes::Bytes::from(encode_parquet(table, &empty)?),
                ));
            }
            let found = r.ensure_identity(id_bytes.into(), schema_files)?;
            let found: Identity = serde_json::from_slice(&found).map_err(|source| Error::Json {
                path: PathBuf::from(format!("{}/{IDENTITY_FILE}", r.url())),
                source,
            })?;
            if let Some(what) = found.mismatch(identity) {
                return Err(Error::IdentityMismatch { path: PathBuf::from(r.url()), what });
            }
            r.sync_cache()?;
        }
        let mut existing = read_identity(root)?;
        if existing.is_none() && has_foreign_files(root) {
            // A sibling shard may have written the identity (one of the files listed) since our
            // read; without one now, the folder is something else's. The folder is listed once:
            // a second listing failed a shard whose sibling wrote the identity in between.
            let found = read_identity(root)?;
            existing = Some(found.ok_or_else(|| Error::NotADataset { path: root.to_path_buf() })?);
        }
        // Else empty, or being created right now by a sibling shard (only a writer's own files).
        if let Some(found) = &existing {
            if let Some(what) = found.mismatch(identity) {
                return Err(Error::IdentityMismatch { path: root.to_path_buf(), what });
            }
        }
        std::fs::create_dir_all(root).map_err(Error::io("creating", root))?;
        let locks = match &lease {
            Some(_) => Vec::new(),
            None => {
                // Instances of `run --ha` hold a lease instead of the lock: a live one is a writer.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                if crate::lease::read_record(root).is_some_and(|r| r.live(now)) {
                    return Err(Error::Locked {
                        path: root.to_path_buf(),
                        lock: root.join(crate::lease::LEASE_FILE),
                    });
                }
                take_locks(root, shard)?
            }
        };
        if existing.is_none() {
            for (table, schema) in schemas {
                let empty = RecordBatch::new_empty(schema.clone());
                let bytes = encode_parquet(table, &empty)?;
                write_atomic(&root.join(SCHEMA_DIR).join(format!("{table}.parquet")), &bytes)?;
            }
            let bytes = serde_json::to_vec_pretty(identity)
                .map_err(|source| Error::Json { path: root.join(IDENTITY_FILE), source })?;
            write_atomic(&root.join(IDENTITY_FILE), &bytes)?;
            // A sibling shard may have created it first: it must be the same dataset.
            if let Some(found) = read_identity(root)? {
                if let Some(what) = found.mismatch(identity) {
                    return Err(Error::IdentityMismatch { path: root.to_path_buf(), what });
                }
            }
        }
        if shard.is_none() {
            let removed = remove_temp_files(root)?;
            if removed > 0 {
                tracing::info!(removed, "removed temp files of an interrupted writer");
            }
        }
        let manifest = Manifest::load(root)?;
        let mut w =
            Self { root: root.to_path_buf(), manifest, shard, _locks: locks, lease, remote };
        if w.manifest.superseded() > 0 && shard.is_none() {
            tracing::info!(entries = w.manifest.superseded(), "finishing an interrupted merge");
            w.fenced(|w| w.manifest.remove_superseded(&w.root))?;
        }
        if shard.is_none() {
            w.manifest.vacuum_due(root)?;
            let swept = w.manifest.sweep_unlisted(root, &identity.tables)?;
            if swept > 0 {
                tracing::info!(
                    swept,
                    "removed data files no entry lists (a crashed or fenced writer's)"
                );
            }
            if let Some(r) = &w.remote {
                let removed = r.vacuum(&identity.tables, crate::manifest::retention())?;
                if removed > 0 {
                    tracing::info!(removed, "removed uploads no commit names from the store");
                }
            }
        }
        w.checkpoint_fenced_if_due()?;
        Ok(w)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Committed chunks (as of open, plus this writer's commits).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Re-reads the manifest (other shards may have committed).
    pub fn refresh(&mut self) -> Result<()> {
        if let Some(r) = &self.remote {
            r.sync_cache()?;
        }
        self.manifest = Manifest::load(&self.root)?;
        Ok(())
    }

    /// Appends a deep-reorg record (durably) for `status` and operators.
    pub fn record_deep_reorg(&self, record: &serde_json::Value) -> Result<()> {
        use std::io::Write as _;
        let p = self.root.join(DEEP_REORGS_FILE);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(Error::io("opening", &p))?;
        f.write_all(format!("{record}\n").as_bytes()).map_err(Error::io("writing", &p))?;
        f.sync_all().map_err(Error::io("fsync", &p))?;
        if let Some(r) = &self.remote {
            let all = std::fs::read(&p).map_err(Error::io("reading", &p))?;
            r.put_all(vec![(DEEP_REORGS_FILE.to_string(), all.into())])?;
        }
        Ok(())
    }

    /// Appends `actions` to the store's commit log (nothing for a local directory), fenced by
    /// the lease when this writer holds one.
    fn commit_remote(
        &self,
        actions: impl FnOnce() -> Vec<crate::remote::log::Action>,
    ) -> Result<()> {
        let Some(r) = &self.remote else { return Ok(()) };
        match &self.lease {
            Some(l) => l.fenced(|| r.append(l.epoch(), actions())),
            None => r.append(0, actions()),
        }
    }

    /// Writes the data file of `table` for `[start, end]` durably in place; its manifest
    /// record and its bytes (for the store, on object storage).
    fn write_data_file(
        &self,
        table: &str,
        start: u64,
        end: u64,
        bytes: Vec<u8>,
        rows: u64,
    ) -> Result<(FileEntry, bytes::Bytes)> {
        self.write_file_at(self.data_file(table, start, end), bytes, rows)
    }

    /// Writes a data file at `rel` (relative to the root) durably in place: its manifest record
    /// and its bytes.
    fn write_file_at(
        &self,
        rel: String,
        bytes: Vec<u8>,
        rows: u64,
    ) -> Result<(FileEntry, bytes::Bytes)> {
        write_atomic(&self.root.join(&rel), &bytes)?;
        let f = FileEntry {
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes: bytes.len() as u64,
            rows,
            path: rel,
        };
        Ok((f, bytes.into()))
    }

    /// Uploads files written into the replica, before the record naming them (nothing for a
    /// local directory).
    fn upload(&self, files: Vec<(String, bytes::Bytes)>) -> Result<()> {
        match &self.remote {
            Some(r) => r.put_all(files),
            None => Ok(()),
        }
    }

    /// Rolls cold storage back so no chunk ends after `keep_through` (`None`: remove every
    /// chunk), for a reorg deeper than the watermark. Blocking I/O.
    /// Derived-state snapshots above the new end go too.
    pub fn rollback(&mut self, keep_through: Option<u64>) -> Result<Vec<ChunkEntry>> {
        self.fenced(|w| w.rollback_unfenced(keep_through))
    }

    /// Runs a mutation, fenced by the lease when this writer holds one.
    fn fenced<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        match self.lease.clone() {
            Some(lease) => lease.fenced(|| f(self)),
            None => f(self),
        }
    }

    fn rollback_unfenced(&mut self, keep_through: Option<u64>) -> Result<Vec<ChunkEntry>> {
        let doomed: Vec<crate::remote::log::Action> = self
            .manifest
            .chunks()
            .iter()
            .filter(|c| keep_through.is_none_or(|k| c.end > k))
            .map(|c| crate::remote::log::Action::Remove { start: c.start, end: c.end })
            .collect();
        if !doomed.is_empty() {
            self.commit_remote(|| doomed)?;
        }
        let removed = self.manifest.rollback(&self.root, keep_through)?;
        self.checkpoint_if_due()?;
        let end = self.manifest.last().map(|c| c.end);
        crate::remove_snapshots_after(&self.root, end)?;
        Ok(removed)
    }

    /// Merges the committed chunks inside `[start, end]` into one chunk (one file per table), so
    /// a tail's small commits end up with a backfill's file sizes. Does nothing unless at least
    /// two chunks lie inside, the last ends at `end` and they leave no gap. Blocking I/O and CPU.
    pub fn merge(&mut self, start: u64, end: u64) -> Result<Option<ChunkEntry>> {
        let parts: Vec<ChunkEntry> = self
            .manifest
            .chunks()
            .iter()
            .filter(|c| start <= c.start && c.end <= end)
            .cloned()
            .collect();
        let contiguous = parts.last().is_some_and(|c| c.end == end)
            && parts.windows(2).all(|w| w[0].end + 1 == w[1].start);
        if parts.len() < 2 || !contiguous {
            return Ok(None);
        }
        let start = parts[0].start;
        let mut tables: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
        for c in &parts {
            for (table, f) in &c.tables {
                tables
                    .entry(table.clone())
                    .or_default()
                    .extend(crate::parquet_io::read_parquet(&self.root.join(&f.path))?);
            }
        }
        let mut files = BTreeMap::new();
        let mut uploads = Vec::new();
        for (table, batches) in tables {
            let schema = batches[0].schema();
            let batch = arrow::compute::concat_batches(&schema, &batches)
                .map_err(|e| Error::Parquet { path: PathBuf::from(&table), source: e.into() })?;
            let bytes = encode_parquet(&table, &batch)?;
            let (f, b) =
                self.write_data_file(&table, start, end, bytes, batch.num_rows() as u64)?;
            uploads.push((f.path.clone(), b));
            files.insert(table, f);
        }
        let merged = ChunkEntry {
            start,
            end,
            first_block_hash: parts[0].first_block_hash,
            last_block_hash: parts[parts.len() - 1].last_block_hash,
            tables: files,
        };
        self.upload(uploads)?;
        let mut actions = vec![crate::remote::log::Action::Add(merged.clone())];
        actions.extend(
            parts.iter().map(|c| crate::remote::log::Action::Remove { start: c.start, end: c.end }),
        );
        self.commit_remote(|| actions)?;
        self.fenced(|w| {
            w.manifest.replace(&w.root, merged.clone())?;
            w.checkpoint_if_due()
        })?;
        Ok(Some(merged))
    }

    /// Replaces the committed chunk of exactly `chunk`'s range with `chunk` (a backfill that
    /// learnt, after committing it, that answers had hidden logs of it): the new files (under new
    /// names: the old ones stay for readers until the retention is over), then one checkpoint
    /// without the old entry and with the new one (the commit point, as for a merge). Derived-state
    /// snapshots above the chunk's start go. Blocking I/O: call from `spawn_blocking`.
    pub fn replace(&mut self, chunk: ChunkCommit) -> Result<ChunkEntry> {
        let (start, end) = (chunk.start, chunk.end);
        if !self.manifest.chunks().iter().any(|c| c.start == start && c.end == end) {
            return Err(Error::NotCommitted { start, end });
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut tables = BTreeMap::new();
        let mut uploads = Vec::new();
        for (table, (bytes, rows)) in chunk.files {
            let base = self.data_file(&table, start, end);
            let rel = format!("{}-r{nanos:x}.parquet", base.trim_end_matches(".parquet"));
            let (f, b) = self.write_file_at(rel, bytes, rows)?;
            uploads.push((f.path.clone(), b));
            tables.insert(table, f);
        }
        let entry = ChunkEntry {
            start,
            end,
            first_block_hash: chunk.first_block_hash,
            last_block_hash: chunk.last_block_hash,
            tables,
        };
        self.upload(uploads)?;
        self.commit_remote(|| {
            vec![
                crate::remote::log::Action::Remove { start, end },
                crate::remote::log::Action::Add(entry.clone()),
            ]
        })?;
        self.fenced(|w| w.manifest.replace(&w.root, entry.clone()))?;
        crate::remove_snapshots_after(&self.root, start.checked_sub(1))?;
        Ok(entry)
    }

    /// Commits a chunk: every file durably in place, then the manifest entry (the commit
    /// point). Blocking I/O: call from `spawn_blocking`.
    pub fn commit(&mut self, chunk: ChunkCommit) -> Result<ChunkEntry> {
        if let Some(o) = self.manifest.overlapping(chunk.start, chunk.end) {
            return Err(Error::Overlap {
                start: chunk.start,
                end: chunk.end,
                other_start: o.start,
                other_end: o.end,
            });
        }
        let mut tables = BTreeMap::new();
        let mut uploads = Vec::new();
        for (table, (bytes, rows)) in chunk.files {
            let (f, b) = self.write_data_file(&table, chunk.start, chunk.end, bytes, rows)?;
            uploads.push((f.path.clone(), b));
            tables.insert(table, f);
        }
        let entry = ChunkEntry {
            start: chunk.start,
            end: chunk.end,
            first_block_hash: chunk.first_block_hash,
            last_block_hash: chunk.last_block_hash,
            tables,
        };
        // On object storage: the files, then the log record (the commit point); the replica's
        // entry follows.
        self.upload(uploads)?;
        self.commit_remote(|| vec![crate::remote::log::Action::Add(entry.clone())])?;
        // The commit point (the entry's rename), fenced: a writer that lost its lease never
        // lists its files. Only the rename runs under the lease's lock.
        let lease = self.lease.clone().filter(|_| self.remote.is_none());
        self.manifest.commit_with(&self.root, entry.clone(), |staged| match &lease {
            Some(l) => l.fenced(|| staged.rename()),
            None => staged.rename(),
        })?;
        self.checkpoint_fenced_if_due()?;
        Ok(entry)
    }

    /// The path of a data file, relative to the root. A lease holder's names carry its epoch,
    /// so a writer that lost the lease cannot overwrite a file of the new holder's.
    /// On object storage every name also carries this process's tag: uploads of writers that
    /// race (shards run twice, a paused leader) never replace each other's files.
    fn data_file(&self, table: &str, start: u64, end: u64) -> String {
        match (&self.lease, &self.remote) {
            (Some(l), Some(r)) => {
                format!("{table}/{start:012}-{end:012}-e{}-{}.parquet", l.epoch(), r.writer_tag())
            }
            (None, Some(r)) => format!("{table}/{start:012}-{end:012}-{}.parquet", r.writer_tag()),
            (Some(l), None) => format!("{table}/{start:012}-{end:012}-e{}.parquet", l.epoch()),
            (None, None) => format!("{table}/{start:012}-{end:012}.parquet"),
        }
    }

    /// [`Self::checkpoint_if_due`] fenced by the lease; the lease (a lock and a read of its
    /// record) is taken only when a checkpoint is due, not on every commit.
    fn checkpoint_fenced_if_due(&mut self) -> Result<()> {
        if !self.manifest.checkpoint_due() {
            return Ok(());
        }
        self.fenced(Self::checkpoint_if_due)
    }

    /// Writes the manifest checkpoint once [`crate::CHECKPOINT_EVERY`] entries are outside it
    /// (or a crash left entry files it absorbed), so opening the dataset reads a checkpoint and
    /// at most that many entry files per writer, however many chunks it has. A sharded writer
    /// does not see the other shards' commits as they happen: it writes its checkpoint from the
    /// folder as it is, read under the checkpoint lock, and goes on from that manifest.
    fn checkpoint_if_due(&mut self) -> Result<()> {
        if !self.manifest.checkpoint_due() {
            return Ok(());
        }
        match self.shard {
            None => self.manifest.write_checkpoint(&self.root),
            Some(_) => {
                self.manifest = Manifest::rewrite(&self.root, |_| {})?;
                Ok(())
            }
        }
    }
}

fn take_locks(root: &Path, shard: Option<Shard>) -> Result<Vec<File>> {
    let open = |name: String| crate::files::open_lock_file(root, &name);
    let locked = |lock: PathBuf| Error::Locked { path: root.to_path_buf(), lock };
    let (main, main_path) = open(LOCK_FILE.to_string())?;
    match shard {
        None => {
            main.try_lock().map_err(|_| locked(main_path))?;
            sync_dir(root)?;
            Ok(vec![main])
        }
        Some(s) => {
            main.try_lock_shared().map_err(|_| locked(main_path))?;
            let (own, own_path) = open(format!("{LOCK_FILE}.shard-{}-of-{}", s.index, s.count))?;
            own.try_lock().map_err(|_| locked(own_path))?;
            Ok(vec![main, own])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::UInt64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn schemas() -> BTreeMap<String, SchemaRef> {
        let s = Arc::new(Schema::new(vec![Field::new("block_number", DataType::UInt64, false)]));
        BTreeMap::from([("t".to_string(), s)])
    }

    fn chunk(start: u64, end: u64) -> ChunkCommit {
        let s = schemas()["t"].clone();
        let b = RecordBatch::try_new(s, vec![Arc::new(UInt64Array::from_iter_values(start..=end))])
            .unwrap();
        let bytes = encode_parquet("t", &b).unwrap();
        ChunkCommit {
            start,
            end,
            first_block_hash: tidewater_chain::B256::with_last_byte(start as u8),
            last_block_hash: tidewater_chain::B256::with_last_byte(end as u8),
            files: BTreeMap::from([("t".to_string(), (bytes, end - start + 1))]),
        }
    }

    fn open(dir: &Path) -> DatasetWriter {
        let id = Identity::new(1, "g".into(), serde_json::json!({}), vec!["t".into()]);
        DatasetWriter::open(dir, &id, &schemas(), None).unwrap()
    }

    /// Shards commit side by side and each writes checkpoints from the folder as it is: no
    /// shard's entry is lost to another's checkpoint, and the folder stays small.
    #[test]
    fn sharded_writers_checkpoint_side_by_side_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let id = Identity::new(1, "g".into(), serde_json::json!({}), vec!["t".into()]);
        let per_shard = crate::CHECKPOINT_EVERY as u64 * 2 + 40;
        let shards: Vec<_> = (0..2u32)
            .map(|index| {
                let (root, id) = (root.clone(), id.clone());
                std::thread::spawn(move || {
                    let shard = Some(Shard { index, count: 2 });
                    let mut w = DatasetWriter::open(&root, &id, &schemas(), shard).unwrap();
                    for i in 0..per_shard {
                        w.commit(chunk(i * 2 + u64::from(index), i * 2 + u64::from(index)))
                            .unwrap();
                    }
                })
            })
            .collect();
        for s in shards {
            s.join().unwrap();
        }
        let m = Manifest::load(&root).unwrap();
        assert_eq!(m.chunks().len() as u64, per_shard * 2);
        assert_eq!(m.gaps(0, per_shard * 2 - 1), vec![]);
        assert!(m.entry_files() < 2 * crate::CHECKPOINT_EVERY, "{} entry files", m.entry_files());
        assert_eq!(Manifest::load_summary(&root).unwrap(), m.summary());
        assert!(Dataset::open(&root).unwrap().verify().is_empty());
    }

    /// Shards started at once on a folder that does not exist yet all open it: whichever
    /// writes the identity first, the others find it (a shard once failed with "not a
    /// Tidewater data directory" when a sibling wrote it between two listings of the folder).
    #[test]
    fn shards_opening_a_new_folder_at_once_all_open_it() {
        let id = Identity::new(1, "g".into(), serde_json::json!({}), vec!["t".into()]);
        for _ in 0..100 {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("data");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let shards: Vec<_> = (0..4u32)
                .map(|index| {
                    let (root, id, barrier) = (root.clone(), id.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let shard = Some(Shard { index, count: 4 });
                        DatasetWriter::open(&root, &id, &schemas(), shard).map(|_| ())
                    })
                })
                .collect();
            for s in shards {
                s.join().unwrap().unwrap();
            }
        }
    }

    /// A committed chunk replaced by one of the same range with more rows: the dataset reads the
    /// new rows after reopening, its old file is no longer listed, and a range not committed as
    /// such (a part of a chunk, or none) is refused with the data untouched.
    #[test]
    fn a_chunk_replaced_is_read_with_its_new_rows_and_a_range_not_committed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = open(dir.path());
        w.commit(chunk(0, 3)).unwrap();
        w.commit(chunk(4, 9)).unwrap();
        let old = w.manifest().chunks()[0].tables["t"].path.clone();
        // The same range, two more rows (logs found hidden).
        let mut more = chunk(0, 3);
        let s = schemas()["t"].clone();
        let b = RecordBatch::try_new(s, vec![Arc::new(UInt64Array::from(vec![0, 1, 1, 2, 3, 3]))])
            .unwrap();
        more.files.insert("t".into(), (encode_parquet("t", &b).unwrap(), 6));
        let e = w.replace(more).unwrap();
        assert_eq!((e.start, e.end, e.rows("t")), (0, 3, 6));
        assert_ne!(e.tables["t"].path, old, "new files get new names");
        for bad in [(0, 2), (20, 29)] {
            let r = w.replace(chunk(bad.0, bad.1));
            assert!(matches!(r, Err(Error::NotCommitted { .. })), "{bad:?}: {r:?}");
        }
        drop(w);
        let ds = Dataset::open(dir.path()).unwrap();
        assert!(ds.verify().is_empty());
        assert_eq!(ds.manifest().rows("t"), 12);
        assert!(!ds.files("t").iter().any(|f| f.ends_with(&old)), "the old file is not listed");
        assert_eq!(ds.manifest().chunks().len(), 2);
    }

    #[test]
    fn merge_replaces_small_chunks_and_survives_an_interrupted_merge() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = open(dir.path());
        for (s, e) in [(0, 3), (4, 6), (7, 9)] {
            w.commit(chunk(s, e)).unwrap();
        }
        let merged = w.merge(0, 9).unwrap().unwrap();
        assert_eq!((merged.start, merged.end, merged.rows("t")), (0, 9, 10));
        assert_eq!(w.manifest().chunks().len(), 1);
        let ds = Dataset::open(dir.path()).unwrap();
        assert!(ds.verify().is_empty());
        assert_eq!(ds.files("t").len(), 1);

        // An earlier version's merge interrupted after its entry was written: the old entries
        // still on disk (a merge of this version is one checkpoint).
        w.commit(chunk(10, 12)).unwrap();
        w.commit(chunk(13, 19)).unwrap();
        let stale: Vec<_> = w.manifest().chunks()[1..].to_vec();
        w.merge(10, 19).unwrap().unwrap();
        drop(w);
        for c in &stale {
            let p =
                dir.path().join(crate::MANIFEST_DIR).join(ChunkEntry::file_name(c.start, c.end));
            std::fs::write(p, serde_json::to_vec(c).unwrap()).unwrap();
        }
        let m = Manifest::load(dir.path()).unwrap();
        assert_eq!(
            m.chunks().iter().map(|c| (c.start, c.end)).collect::<Vec<_>>(),
            [(0, 9), (10, 19)]
        );
        let w = open(dir.path());
        assert_eq!(w.manifest().rows("t"), 20);
        let entries = std::fs::read_dir(dir.path().join(crate::MANIFEST_DIR))
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with(['_', '.']))
            .count();
        assert_eq!(entries, 0, "superseded entries are cleaned up on open");
        assert_eq!(Manifest::load(dir.path()).unwrap().chunks(), m.chunks());
    }

    fn one_block(n: u64, salt: u8) -> ChunkCommit {
        let mut c = chunk(n, n);
        c.last_block_hash = tidewater_chain::B256::repeat_byte(salt);
        c
    }

    #[test]
    fn the_checkpoint_absorbs_the_entries_and_opening_reads_only_those_since() {
        let dir = tempfile::tempdir().unwrap();
        let m_dir = dir.path().join(crate::MANIFEST_DIR);
        let entry_files = || {
            std::fs::read_dir(&m_dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .filter(|e| !e.file_name().to_string_lossy().starts_with(['_', '.']))
                .count()
        };
        let mut w = open(dir.path());
        let n = 3 * crate::CHECKPOINT_EVERY as u64 + 10;
        for b in 0..n {
            w.commit(one_block(b, 1)).unwrap();
        }
        let cp = m_dir.join(crate::CHECKPOINT_FILE);
        assert!(cp.exists(), "no checkpoint after {n} commits");
        assert_eq!(entry_files(), 10, "the checkpoint's entries are still files");
        let loaded = Manifest::load(dir.path()).unwrap();
        assert_eq!(loaded.chunks(), w.manifest().chunks());
        assert_eq!(loaded.uncheckpointed(), 10, "only the entries after the checkpoint are read");
        // A rollback into the checkpoint's entries, then the same ranges with other blocks.
        w.rollback(Some(100)).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap().chunks().len(), 101);
        for b in 101..n {
            w.commit(one_block(b, 2)).unwrap();
        }
        let m = Manifest::load(dir.path()).unwrap();
        assert_eq!(m.chunks().len() as u64, n);
        assert!(m.chunks()[101..].iter().all(|c| c.last_block_hash.0[0] == 2));
        assert!(m.chunks()[..101].iter().all(|c| c.last_block_hash.0[0] == 1));
        assert!(entry_files() < crate::CHECKPOINT_EVERY);
        assert!(Dataset::open(dir.path()).unwrap().verify().is_empty());
        // `status` reads the checkpoint's head and the entries since: the same summary.
        let summary = Manifest::load_summary(dir.path()).unwrap();
        assert_eq!(summary, m.summary());
        assert_eq!((summary.chunks, summary.coverage), (n, vec![(0, n - 1)]));
        w.rollback(Some(n - 3)).unwrap();
        w.commit(one_block(n - 1, 3)).unwrap();
        let summary = Manifest::load_summary(dir.path()).unwrap();
        assert_eq!(summary, Manifest::load(dir.path()).unwrap().summary());
        assert_eq!(summary.gaps(), vec![(n - 2, n - 2)]);
        assert_eq!(summary.last, Some((n - 1, tidewater_chain::B256::repeat_byte(3))));
        w.commit(one_block(n - 2, 3)).unwrap();
        let m = Manifest::load(dir.path()).unwrap();
        // A writer opening an earlier version's dataset (an entry file per chunk, no checkpoint
        // of this format) absorbs them into one.
        drop(w);
        std::fs::remove_file(&cp).unwrap();
        for c in m.chunks() {
            let p = m_dir.join(ChunkEntry::file_name(c.start, c.end));
            std::fs::write(p, serde_json::to_vec(c).unwrap()).unwrap();
        }
        std::fs::write(&cp, b"TWCKPT02 an earlier version's cache").unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap().chunks(), m.chunks());
        let w = open(dir.path());
        assert_eq!(w.manifest().chunks(), m.chunks());
        assert_eq!(entry_files(), 0);
        assert_eq!(Manifest::load(dir.path()).unwrap().chunks(), m.chunks());
    }

    #[test]
    fn a_reader_of_an_older_manifest_reads_on_through_a_merge() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = open(dir.path());
        for (s, e) in [(0, 3), (4, 6), (7, 9)] {
            w.commit(chunk(s, e)).unwrap();
        }
        let reader = Dataset::open(dir.path()).unwrap();
        w.merge(0, 9).unwrap().unwrap();
        w.commit(chunk(10, 12)).unwrap();
        let rows: usize = reader
            .files("t")
            .iter()
            .map(|f| {
                crate::read_parquet(f).unwrap().iter().map(RecordBatch::num_rows).sum::<usize>()
            })
            .sum();
        assert_eq!(rows, 10, "the files the reader's manifest lists are still there");
        assert_eq!(Dataset::open(dir.path()).unwrap().files("t").len(), 2);
    }

    #[test]
    fn past_the_retention_superseded_files_are_vacuumed() {
        // SAFETY: nextest runs each test in its own process.
        std::env::set_var("TIDEWATER_RETENTION_SECS", "0");
        let dir = tempfile::tempdir().unwrap();
        let mut w = open(dir.path());
        for (s, e) in [(0, 3), (4, 6)] {
            w.commit(chunk(s, e)).unwrap();
        }
        let reader = Dataset::open(dir.path()).unwrap();
        w.merge(0, 6).unwrap().unwrap();
        assert!(reader.files("t").iter().all(|f| !f.exists()), "retired files were kept");
        assert_eq!(Dataset::open(dir.path()).unwrap().files("t").len(), 1);
    }

    #[test]
    fn rollback_removes_chunks_after_the_ancestor() {
        // SAFETY: nextest runs each test in its own process.
        std::env::set_var("TIDEWATER_RETENTION_SECS", "0");
        let dir = tempfile::tempdir().unwrap();
        let mut w = open(dir.path());
        for (s, e) in [(0, 3), (4, 6), (7, 9)] {
            w.commit(chunk(s, e)).unwrap();
        }
        let removed = w.rollback(Some(5)).unwrap();
        assert_eq!(removed.iter().map(|c| c.start).collect::<Vec<_>>(), [4, 7]);
        assert_eq!(Manifest::load(dir.path()).unwrap().gaps(0, 9), vec![(4, 9)]);
        assert!(!dir.path().join("t/000000000007-000000000009.parquet").exists());
        w.rollback(None).unwrap();
        assert!(Manifest::load(dir.path()).unwrap().chunks().is_empty());
    }

    #[test]
    fn files_no_entry_lists_are_swept_past_the_retention() {
        // SAFETY: nextest runs each test in its own process.
        std::env::set_var("TIDEWATER_RETENTION_SECS", "0");
        let dir = tempfile::tempdir().unwrap();
        let mut w = open(dir.path());
        w.commit(chunk(0, 3)).unwrap();
        drop(w);
        // What a leader fenced at its commit point leaves: its data file, no entry.
        let stray = dir.path().join("t/000000000004-000000000006-e1.parquet");
        std::fs::write(&stray, b"PAR1").unwrap();
        let w = open(dir.path());
        assert!(!stray.exists(), "an unlisted file survived the writer's open");
        assert_eq!(w.manifest().rows("t"), 4);
        assert!(Dataset::open(dir.path()).unwrap().verify().is_empty(), "a listed file went");
    }

    #[test]
    fn a_second_writer_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let _w = open(dir.path());
        let id = Identity::new(1, "g".into(), serde_json::json!({}), vec!["t".into()]);
        let err = DatasetWriter::open(dir.path(), &id, &schemas(), None).unwrap_err();
        assert!(err.is_usage(), "{err}");
    }
}
