//! A dataset on object storage (`--data s3://bucket/prefix`, `gs://`, `az://`).
//!
//! ```text
//!   bucket/prefix/dataset.json, _schema/, <table>/<start>-<end>-<writer>.parquet   data files
//!   bucket/prefix/_log/<seq>.json        the commit log (or in etcd: --coordinator)
//!   bucket/prefix/_log_checkpoints/       the log replayed, every 256 records
//!   bucket/prefix/_lease.json             the writer lease (or in etcd)
//!
//!   local cache (TIDEWATER_CACHE_DIR)     a replica of the committed files, laid out as a
//!                                         data directory: what readers and the writer open
//! ```
//!
//! A commit uploads its files (names unique to the writer, never overwritten), then appends a
//! log record with a create-only compare-and-swap (the commit point: see [`log`]), then
//! records the entry in the local replica. Files no record names are never read and are
//! removed by the next writer once older than the retention. A crash anywhere leaves the log a
//! prefix of commits; the next open brings the replica up to the log.
//!
//! Where compare-and-swap happens is chosen at open: the store's conditional puts when a
//! probe shows it honours them (AWS S3, R2, GCS, MinIO, moto), else a coordinator (etcd,
//! `TIDEWATER_COORDINATOR=etcd://host:2379`); a store that ignores them without a
//! coordinator is refused (a second create-only put succeeding would let two writers commit).

pub(crate) mod cas;
pub use cas::Version;
pub(crate) mod log;
mod profile;

use crate::error::{Error, Result};
use crate::manifest::{ChunkEntry, Manifest};
use bytes::Bytes;
use cas::Cas;
use futures::{StreamExt as _, TryStreamExt as _};
use log::{Action, LogState};
use object_store::path::Path as OPath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Schemes `--data` takes as object storage.
pub const SCHEMES: [&str; 5] = ["s3://", "s3a://", "gs://", "az://", "abfs://"];

/// Whether `data` names object storage rather than a local directory.
pub fn is_remote(data: &str) -> bool {
    SCHEMES.iter().any(|s| data.starts_with(s))
}

/// A dataset in a bucket, with its local replica.
#[derive(Debug)]
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: OPath,
    cas: Cas,
    cache: PathBuf,
    /// The store's runtime (taken only by `drop`) and its handle.
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    state: tokio::sync::Mutex<LogState>,
    /// This process's part of data file names (never two writers on one name).
    writer: String,
    /// The log position the replica was last brought to with its files (0: never): a follower
    /// polling an idle log skips reading the replica's entries.
    synced: std::sync::atomic::AtomicU64,
    /// Whether this process brought the replica up with its files (readers then read it, not
    /// the store).
    full: std::sync::atomic::AtomicBool,
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

static ATTACHED: Mutex<Vec<(PathBuf, Arc<Remote>)>> = Mutex::new(Vec::new());

/// Makes `remote` the origin of its cache directory for this process: writers, leases and
/// syncs of that directory go through it.
pub fn attach(remote: Arc<Remote>) {
    let mut a = ATTACHED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    a.retain(|(p, _)| p != &remote.cache);
    a.push((remote.cache.clone(), remote));
}

/// The remote a local directory replicates, if any.
pub fn attached(root: &Path) -> Option<Arc<Remote>> {
    let a = ATTACHED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    a.iter().find(|(p, _)| p == root).map(|(_, r)| r.clone())
}

fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: std::time::Duration::from_secs(15),
    }
}

impl Remote {
    /// Opens `url` (credentials and endpoint from the usual environment variables:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`, and the profile of `AWS_PROFILE` in `~/.aws/credentials` and
    /// `~/.aws/config` for what they leave unset; `GOOGLE_*`; `AZURE_*`), replicated into `cache`. `coordinator`:
    /// `etcd://host:port` (or `http://`), where the log and lease live when the store has no
    /// conditional puts. Probes the store, so a bad URL or credentials fail here.
    pub fn open(url: &str, cache: &Path, coordinator: Option<&str>) -> Result<Self> {
        let bad = |what: String| Error::BadLocation { url: url.to_string(), what };
        let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("no bucket in the URL".into()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad("credentials go in the environment, not in the URL".into()));
        }
        let clean = format!(
            "{}://{}{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or_default(),
            parsed.path().trim_end_matches('/')
        );
        // Timeouts set key by key: the environment's client settings (AWS_ALLOW_HTTP, a proxy)
        // stay.
        use object_store::ClientConfigKey::{ConnectTimeout, Timeout};
        let timeouts = [(Timeout, "10s"), (ConnectTimeout, "3s")];
        // One builder per cloud, each from its environment variables.
        macro_rules! build {
            ($builder:expr, $key:path) => {
                Arc::new(
                    timeouts
                        .into_iter()
                        .fold($builder, |b, (k, v)| b.with_config($key(k), v))
                        .with_url(url)
                        .with_retry(retry_config())
                        .build()
                        .map_err(|e| bad(e.to_string()))?,
                )
            };
        }
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" | "s3a" => {
                // The AWS profile's settings (AWS_PROFILE, ~/.aws/…) where the environment
                // has none.
                let profile = profile::aws_profile(&|k| std::env::var(k).ok()).map_err(bad)?;
                let from_env = profile
                    .into_iter()
                    .fold(object_store::aws::AmazonS3Builder::from_env(), |b, (k, v)| {
                        b.with_config(k, v)
                    });
                build!(from_env, object_store::aws::AmazonS3ConfigKey::Client)
            }
            "gs" => build!(
                object_store::gcp::GoogleCloudStorageBuilder::from_env(),
                object_store::gcp::GoogleConfigKey::Client
            ),
            "az" | "abfs" => build!(
                object_store::azure::MicrosoftAzureBuilder::from_env(),
                object_store::azure::AzureConfigKey::Client
            ),
            s => return Err(bad(format!("unknown scheme {s}:// (s3, gs, az)"))),
        };
        let prefix = OPath::parse(parsed.path().trim_matches('/'))
            .map_err(|e| bad(format!("bad prefix: {e}")))?;
        let cas = match coordinator {
            Some(c) => {
                let endpoint = c.replacen("etcd://", "http://", 1);
                if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                    return Err(bad(format!("coordinator {c}: etcd://host:port expected")));
                }
                Cas::etcd(&endpoint, format!("tidewater/{clean}"))?
            }
            None => Cas::Store { store: store.clone(), prefix: prefix.clone(), url: clean.clone() },
        };
        let me = Self::with_store(clean, store, prefix, cas, cache)?;
        me.probe(coordinator.is_some())?;
        Ok(me)
    }

    /// A remote on `store` under `prefix`, its log and lease in `cas`, replicated into `cache`
    /// (no probe).
    fn with_store(
        url: String,
        store: Arc<dyn ObjectStore>,
        prefix: OPath,
        cas: Cas,
        cache: &Path,
    ) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tidewater-store")
            .enable_all()
            .build()
            .map_err(Error::io("starting the object store runtime", cache))?;
        Ok(Self {
            url,
            store,
            prefix,
            cas,
            cache: cache.to_path_buf(),
            handle: rt.handle().clone(),
            rt: Some(rt),
            state: tokio::sync::Mutex::new(LogState::default()),
            writer: format!("{:08x}", rand::random::<u32>()),
            synced: std::sync::atomic::AtomicU64::new(0),
            full: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Lists the prefix (credentials, endpoint, bucket) and, without a coordinator, checks
    /// that conditional puts are real.
    fn probe(&self, coordinated: bool) -> Result<()> {
        let (store, prefix, url) = (self.store.clone(), self.prefix.clone(), self.url.clone());
        self.run(async move {
            let mut l = store.list(Some(&prefix));
            if let Some(Err(e)) = l.next().await {
                return Err(Error::BadLocation {
                    url: url.clone(),
                    what: format!("the store cannot be listed: {e}"),
                });
            }
            if !coordinated && !cas::store_honours_conditional_puts(&store, &prefix, &url).await? {
                return Err(Error::BadLocation {
                    url,
                    what: "this store ignores conditional writes (a second create-only put succeeded), \
                           so two writers could both commit: give a coordinator with \
                           TIDEWATER_COORDINATOR=etcd://host:2379 (or --coordinator)"
                        .into(),
                });
            }
            Ok(())
        })
    }

    /// Whether this process brought the replica up with its files: its readers read the
    /// replica; otherwise (`tidewater sql`) the store.
    pub fn has_files(&self) -> bool {
        self.full.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The dataset's URL (no credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The local replica.
    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// The object store and the dataset's prefix in it (for query engines).
    pub fn store(&self) -> (Arc<dyn ObjectStore>, OPath) {
        (self.store.clone(), self.prefix.clone())
    }

    /// Where the commit log and the lease live.
    pub fn coordinator(&self) -> String {
        self.cas.describe()
    }

    /// This process's writer tag (in data file names).
    pub(crate) fn writer_tag(&self) -> &str {
        &self.writer
    }

    /// Runs `fut` on the store's runtime from blocking code (any thread).
    pub(crate) fn run<T: Send>(&self, fut: impl std::future::Future<Output = T> + Send) -> T {
        let h = &self.handle;
        if tokio::runtime::Handle::try_current().is_err() {
            return h.block_on(fut);
        }
        std::thread::scope(|s| {
            s.spawn(|| h.block_on(fut)).join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn path(&self, rel: &str) -> OPath {
        rel.split('/').filter(|p| !p.is_empty()).fold(self.prefix.clone(), |p, part| p.join(part))
    }

    /// Uploads `bytes` to `rel` (plain put: names are unique to their writer).
    pub(crate) async fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(rel);
        self.store.put(&path, bytes.into()).await.map_err(Error::store(
            "uploading",
            &self.url,
            &path,
        ))?;
        Ok(())
    }

    /// Uploads several files at once.
    pub(crate) fn put_all(&self, files: Vec<(String, Bytes)>) -> Result<()> {
        self.run(async {
            futures::stream::iter(
                files.into_iter().map(|(rel, b)| async move { self.put(&rel, b).await }),
            )
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
        })
    }

    async fn get_opt(&self, rel: &str) -> Result<Option<Bytes>> {
        let path = self.path(rel);
        match self.store.get(&path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(Error::store("reading", &self.url, &path))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store("reading", &self.url, &path)(e)),
        }
    }

    /// The bytes of `rel`, if present.
    pub fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        self.run(self.get_opt(rel))
    }

    /// Size of `rel` in the store, if present.
    pub fn size(&self, rel: &str) -> Result<Option<u64>> {
        let path = self.path(rel);
        self.run(async {
            match self.store.head(&path).await {
                Ok(m) => Ok(Some(m.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(Error::store("reading", &self.url, &path)(e)),
            }
        })
    }

    /// Creates the identity and schema files in the bucket when absent; the identity found
    /// there otherwise (the caller compares).
    pub(crate) fn ensure_identity(
        &self,
        identity_json: Bytes,
        schema_files: Vec<(String, Bytes)>,
    ) -> Result<Bytes> {
        self.run(async {
            if let Some(found) = self.get_opt(crate::IDENTITY_FILE).await? {
                return Ok(found);
            }
            for (rel, b) in schema_files {
                self.put(&rel, b).await?;
            }
            // Two creators at once (shards): the first wins where puts are conditional, and
            // the identities are the same dataset's anyway (checked by the caller).
            let cas = Cas::Store {
                store: self.store.clone(),
                prefix: self.prefix.clone(),
                url: self.url.clone(),
            };
            let created = match cas.create(crate::IDENTITY_FILE, identity_json.clone()).await {
                Ok(c) => c.is_some(),
                Err(_) => {
                    self.put(crate::IDENTITY_FILE, identity_json.clone()).await?;
                    true
                }
            };
            if created {
                return Ok(identity_json);
            }
            Ok(self.get_opt(crate::IDENTITY_FILE).await?.unwrap_or(identity_json))
        })
    }

    /// Every object under `rel`.
    async fn list_dir(&self, rel: &str) -> Result<Vec<object_store::ObjectMeta>> {
        let dir = self.path(rel);
        self.store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(Error::store("listing", &self.url, &dir))
    }

    /// A small record kept where compare-and-swap is real (the publisher's checkpoint), with
    /// its version.
    pub fn record_get(&self, key: &str) -> Result<Option<(Bytes, Version)>> {
        self.run(self.cas.get(key))
    }

    /// Writes the record `key` if it is still at `expected` (absent: `None`); the new version,
    /// or `None` when another writer changed it since.
    pub fn record_put(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<&Version>,
    ) -> Result<Option<Version>> {
        self.run(async {
            match expected {
                Some(v) => self.cas.update(key, value, v).await,
                None => self.cas.create(key, value).await,
            }
        })
    }

    /// Reads the log up to its end (from the newest checkpoint the first time).
    async fn catch_up(&self, st: &mut LogState) -> Result<()> {
        if st.seq == 0 {
            let metas = self.list_dir(log::CHECKPOINT_DIR).await?;
            if let Some(newest) = metas.iter().map(|m| &m.location).max() {
                let bytes = self
                    .store
                    .get(newest)
                    .await
                    .map_err(Error::store("reading", &self.url, newest))?
                    .bytes()
                    .await
                    .map_err(Error::store("reading", &self.url, newest))?;
                *st = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                    path: PathBuf::from(newest.to_string()),
                    source,
                })?;
            }
        }
        log::catch_up(&self.cas, st).await
    }

    /// The committed entries, as of now.
    pub fn entries(&self) -> Result<Vec<ChunkEntry>> {
        self.run(async {
            let mut st = self.state.lock().await;
            self.catch_up(&mut st).await?;
            Ok(st.entries.values().cloned().collect())
        })
    }

    /// Appends a commit (see [`log::append`]); writes a log checkpoint when one is due.
    pub(crate) fn append(&self, epoch: u64, actions: Vec<Action>) -> Result<()> {
        self.run(async {
            let mut st = self.state.lock().await;
            if st.seq == 0 {
                self.catch_up(&mut st).await?;
            }
            let r = log::append(&self.cas, &mut st, epoch, &self.writer, actions).await?;
            if log::checkpoint_due(r.seq) {
                let bytes = serde_json::to_vec(&*st).map_err(|source| Error::Json {
                    path: PathBuf::from(log::CHECKPOINT_DIR),
                    source,
                })?;
                // Deterministic from the log: whoever writes it writes the same bytes.
                self.put(&format!("{}/{}", log::CHECKPOINT_DIR, log::key(r.seq)), bytes.into())
                    .await?;
            }
            Ok(())
        })
    }

    /// Brings the local replica up to the log: downloads the files of entries it lacks, writes
    /// their entries (files first), drops entries the log removed. Returns how many entries
    /// changed. Safe beside readers of the replica (the same order a writer commits in).
    pub fn sync_cache(&self) -> Result<usize> {
        self.sync_cache_with(true)
    }

    /// [`Remote::sync_cache`]; without `files`, only the entries (a reader that queries the
    /// store itself: `tidewater sql`). A later sync with files fetches whatever is missing.
    pub fn sync_cache_with(&self, files: bool) -> Result<usize> {
        std::fs::create_dir_all(&self.cache).map_err(Error::io("creating", &self.cache))?;
        for rel in [crate::IDENTITY_FILE.to_string(), crate::dataset::DEEP_REORGS_FILE.to_string()]
        {
            if let Some(b) = self.get(&rel)? {
                let p = self.cache.join(&rel);
                if std::fs::read(&p).ok().as_deref() != Some(&b[..]) {
                    crate::files::write_atomic(&p, &b)?;
                }
            }
        }
        let schema_dir = self.cache.join(crate::SCHEMA_DIR);
        if !schema_dir.exists() {
            let metas = self.run(self.list_dir(crate::SCHEMA_DIR))?;
            for m in metas {
                if let Some(name) = m.location.filename() {
                    let rel = format!("{}/{name}", crate::SCHEMA_DIR);
                    if let Some(b) = self.get(&rel)? {
                        crate::files::write_atomic(&self.cache.join(&rel), &b)?;
                    }
                }
            }
        }
        let (entries, removed, seq) = self.run(async {
            let mut st = self.state.lock().await;
            self.catch_up(&mut st).await?;
            Ok::<_, Error>((
                st.entries.values().cloned().collect::<Vec<_>>(),
                st.removed.clone(),
                st.seq,
            ))
        })?;
        let ordering = std::sync::atomic::Ordering::Relaxed;
        if files && seq > 0 && self.synced.load(ordering) == seq {
            return Ok(0);
        }
        let mut local = Manifest::load(&self.cache)?;
        let have: std::collections::HashMap<(u64, u64), &ChunkEntry> =
            local.chunks().iter().map(|c| ((c.start, c.end), c)).collect();
        let missing: Vec<ChunkEntry> =
            entries.iter().filter(|e| have.get(&(e.start, e.end)) != Some(e)).cloned().collect();
        let kept: std::collections::HashSet<(u64, u64)> =
            entries.iter().map(|e| (e.start, e.end)).collect();
        let gone: std::collections::HashSet<(u64, u64)> = local
            .chunks()
            .iter()
            .map(|c| (c.start, c.end))
            .filter(|r| !kept.contains(r) && removed.contains(r))
            .collect();
        // Files first, in parallel: of every entry (an earlier sync may have taken entries only).
        let download = files;
        let absent = |f: &&crate::FileEntry| {
            std::fs::metadata(self.cache.join(&f.path)).map(|m| m.len()).ok() != Some(f.bytes)
        };
        let files: Vec<String> = match download {
            true => entries
                .iter()
                .flat_map(|e| e.tables.values())
                .filter(absent)
                .map(|f| f.path.clone())
                .collect(),
            false => Vec::new(),
        };
        self.run(async {
            futures::stream::iter(files.into_iter().map(|rel| async move {
                let b = self.get_opt(&rel).await?.ok_or_else(|| Error::Corrupt {
                    path: PathBuf::from(format!("{}/{rel}", self.url)),
                    what: "a committed file is missing from the store".into(),
                })?;
                let p = self.cache.join(&rel);
                tokio::task::spawn_blocking(move || crate::files::write_atomic(&p, &b))
                    .await
                    .map_err(|e| Error::Coordinator { what: format!("writing the replica: {e}") })?
            }))
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await
        })?;
        // New ranges are entry files, as a writer commits them; anything else (a range the log
        // removed or replaced) goes through a checkpoint, the commit point of removals.
        let changed = missing.len() + gone.len();
        let only_new =
            gone.is_empty() && missing.iter().all(|e| local.overlapping(e.start, e.end).is_none());
        if only_new {
            for e in missing {
                local.add(&self.cache, e)?;
            }
            if local.checkpoint_due() {
                Manifest::rewrite(&self.cache, |_| {})?;
            }
        } else {
            Manifest::rewrite(&self.cache, |chunks| {
                chunks.retain(|c| {
                    !gone.contains(&(c.start, c.end))
                        && !missing.iter().any(|e| e.start <= c.end && c.start <= e.end)
                });
                chunks.extend(missing);
            })?;
        }
        if download {
            self.synced.store(seq, ordering);
            self.full.store(true, ordering);
        }
        Ok(changed)
    }

    /// Removes files under the tables' folders that no entry names and that are older than
    /// `retention` (uploads of writers that crashed or were fenced before their commit).
    pub(crate) fn vacuum(
        &self,
        tables: &[String],
        retention: std::time::Duration,
    ) -> Result<usize> {
        let entries = self.entries()?;
        let live: std::collections::HashSet<String> =
            entries.iter().flat_map(|e| e.tables.values().map(|f| f.path.clone())).collect();
        let cutoff = chrono_now() - retention.as_secs() as i64;
        self.run(async {
            let mut removed = 0;
            for t in tables {
                let metas = self.list_dir(t).await?;
                for m in metas {
                    let rel = m
                        .location
                        .as_ref()
                        .strip_prefix(&format!("{}/", self.prefix.as_ref()))
                        .unwrap_or(m.location.as_ref())
                        .to_string();
                    if live.contains(&rel) || m.last_modified.timestamp() > cutoff {
                        continue;
                    }
                    self.store.delete(&m.location).await.map_err(Error::store(
                        "removing",
                        &self.url,
                        &m.location,
                    ))?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkCommit, DatasetWriter, Identity};
    use arrow::array::UInt64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use std::collections::BTreeMap;

    /// A remote on an in-memory store (conditional puts honoured), replicated into `cache`.
    fn remote(store: &Arc<dyn ObjectStore>, cache: &Path) -> Arc<Remote> {
        let prefix = OPath::from("ds");
        let url = "memory://ds".to_string();
        let cas = Cas::Store { store: store.clone(), prefix: prefix.clone(), url: url.clone() };
        Arc::new(Remote::with_store(url, store.clone(), prefix, cas, cache).unwrap())
    }

    fn schemas() -> BTreeMap<String, arrow::datatypes::SchemaRef> {
        let s = Arc::new(Schema::new(vec![Field::new("block_number", DataType::UInt64, false)]));
        BTreeMap::from([("t".to_string(), s)])
    }

    fn block(n: u64, salt: u8) -> ChunkCommit {
        let s = schemas()["t"].clone();
        let b = RecordBatch::try_new(s, vec![Arc::new(UInt64Array::from(vec![n]))]).unwrap();
        ChunkCommit {
            start: n,
            end: n,
            first_block_hash: tidewater_chain::B256::repeat_byte(salt),
            last_block_hash: tidewater_chain::B256::repeat_byte(salt),
            files: BTreeMap::from([(
                "t".to_string(),
                (crate::encode_parquet("t", &b).unwrap(), 1),
            )]),
        }
    }

    /// A reader's replica follows the writer's commits, rollbacks and merges: new ranges as
    /// entry files, removals through its own checkpoint; after every sync it holds exactly the
    /// writer's entries, its summary adds up, and its folder stays small.
    #[test]
    fn a_replica_follows_commits_rollbacks_and_merges() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (w_dir, r_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        attach(remote(&store, w_dir.path()));
        let id = Identity::new(1, "g".into(), serde_json::json!({}), vec!["t".into()]);
        let mut w = DatasetWriter::open(w_dir.path(), &id, &schemas(), None).unwrap();
        let reader = remote(&store, r_dir.path());
        let same = |w: &DatasetWriter, what: &str| {
            reader.sync_cache().unwrap();
            let m = Manifest::load(r_dir.path()).unwrap();
            assert_eq!(m.chunks(), w.manifest().chunks(), "{what}");
            assert_eq!(Manifest::load_summary(r_dir.path()).unwrap(), m.summary(), "{what}");
            assert!(m.entry_files() <= crate::CHECKPOINT_EVERY, "{what}: {}", m.entry_files());
            assert!(crate::Dataset::open(r_dir.path()).unwrap().verify().is_empty(), "{what}");
        };
        for n in 0..100 {
            w.commit(block(n, 1)).unwrap();
        }
        same(&w, "first commits");
        for n in 100..300 {
            w.commit(block(n, 1)).unwrap();
        }
        same(&w, "past a checkpoint's worth");
        w.rollback(Some(149)).unwrap();
        same(&w, "a rollback into the replica's checkpoint");
        for n in 150..170 {
            w.commit(block(n, 2)).unwrap();
        }
        same(&w, "the same ranges again with other blocks");
        w.merge(0, 49).unwrap().unwrap();
        w.merge(160, 169).unwrap().unwrap();
        same(&w, "merges");
        assert_eq!(Manifest::load(r_dir.path()).unwrap().chunks().len(), 1 + 100 + 10 + 1);
    }
}
