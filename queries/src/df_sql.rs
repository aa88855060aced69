//! Read-only SQL over the whole dataset with DataFusion: each table is one view of its cold
//! Parquet files (exactly those the manifest lists) plus the unconfirmed blocks of the hot
//! buffer, with a `confirmed` column telling them apart.
//!
//! Only queries run: DDL, DML (`COPY`, `INSERT`), `SET` and other statements are refused by the
//! planner, URL tables (`SELECT * FROM '/etc/passwd'`) are off, and each query has a row cap,
//! a time limit and a memory pool of fixed size.

use crate::chunk_table::{ChunkFile, ChunkTable};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{lit, SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tidewater_chain::{schema, HotBlock};
use tidewater_storage::Dataset;

/// Rows a query may return: 10,000 rows of logs is a few MiB of JSON; larger extracts belong
/// to `tidewater sql` or the Parquet files themselves.
pub const DEFAULT_MAX_ROWS: usize = 10_000;
/// Time a query may run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Memory a query's operators may hold (sorts, joins, aggregates): 256 MiB leaves the rest of
/// a small machine to the indexer.
pub const DEFAULT_MEMORY: usize = 256 << 20;
/// Queries running at once: each has the SQL runtime's threads; more would only share them.
pub const DEFAULT_CONCURRENCY: usize = 2;
/// Longest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 64 << 10;

/// Limits of one query.
#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    /// Rows returned.
    pub max_rows: usize,
    /// Wall time.
    pub timeout: Duration,
    /// Operator memory, bytes.
    pub memory: usize,
    /// Queries running at once (per service); more wait within their time limit.
    pub concurrency: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            max_rows: DEFAULT_MAX_ROWS,
            timeout: DEFAULT_TIMEOUT,
            memory: DEFAULT_MEMORY,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// Why a query was not answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// Not a read (DDL, DML, statements).
    #[error("only read queries are allowed: {0}")]
    NotAllowed(String),
    /// Parse or planning error, unknown table or column.
    #[error("{0}")]
    Invalid(String),
    /// The result or the work is over a limit.
    #[error("{0}")]
    TooLarge(String),
    /// Over the time limit.
    #[error("the query ran longer than {0:?}")]
    Timeout(Duration),
    /// Waited its whole time limit for one of the query slots.
    #[error("{0} SQL queries are running and none finished within {1:?}; retry later")]
    Busy(usize, Duration),
    /// Reading the dataset failed.
    #[error("reading the dataset")]
    Storage(#[from] tidewater_storage::Error),
    /// Anything else DataFusion reports at run time.
    #[error("query failed: {0}")]
    Execution(String),
}

fn classify(e: datafusion::error::DataFusionError) -> SqlError {
    use datafusion::error::DataFusionError as E;
    match e.find_root() {
        E::ResourcesExhausted(m) => {
            SqlError::TooLarge(format!("the query needs more memory than allowed: {m}"))
        }
        // Reading the dataset, or a bug in the engine: the server's side.
        E::IoError(..) | E::ParquetError(..) | E::ObjectStore(..) | E::Internal(..) => {
            SqlError::Execution(e.to_string())
        }
        // Everything else is about the query itself (a type error at run time, a function
        // given the wrong arguments, an arithmetic overflow): the caller's to fix.
        _ => SqlError::Invalid(e.to_string()),
    }
}

/// A panic inside the engine while running a query (arrow's "offset overflow" for a string
/// column built past 2 GiB, for one): an error of this query, never of the process.
fn panicked(p: tidewater_chain::Panicked) -> SqlError {
    let m = p.message.to_ascii_lowercase();
    if m.contains("overflow") || m.contains("capacity") || m.contains("alloc") {
        SqlError::TooLarge(format!(
            "the query builds a value larger than the engine can hold ({})",
            p.message
        ))
    } else {
        SqlError::Invalid(format!("the query failed inside the engine: {}", p.message))
    }
}

fn cold_schema(ds: &Dataset, table: &str) -> Result<SchemaRef, SqlError> {
    let path = ds.schema_file(table);
    let f = std::fs::File::open(&path).map_err(|source| {
        SqlError::Storage(tidewater_storage::Error::Io {
            op: "opening",
            path: path.clone(),
            source,
        })
    })?;
    let b = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| {
        SqlError::Storage(tidewater_storage::Error::Parquet {
            path: ds.schema_file(table),
            source: e,
        })
    })?;
    Ok(b.schema().clone())
}

/// The hot buffer's rows per table (blocks, logs and decoded events).
pub fn hot_batches(blocks: &[Arc<HotBlock>], chain_id: u64) -> BTreeMap<String, Vec<RecordBatch>> {
    let mut out: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
    if blocks.is_empty() {
        return out;
    }
    let headers: Vec<tidewater_chain::BlockRow> =
        blocks.iter().map(|b| tidewater_chain::BlockRow::from(&b.header)).collect();
    let logs: Vec<_> = blocks.iter().flat_map(|b| b.logs.iter().cloned()).collect();
    if let Ok(b) = tidewater_chain::encode::blocks_batch(&headers, chain_id) {
        out.entry(schema::BLOCKS.to_string()).or_default().push(b);
    }
    if let Ok(b) = tidewater_chain::encode::logs_batch(&logs, chain_id) {
        out.entry(schema::LOGS.to_string()).or_default().push(b);
    }
    for b in blocks {
        for (t, batch) in &b.events {
            out.entry(t.clone()).or_default().push(batch.clone());
        }
    }
    out
}

/// Runs one read-only query over the cold tier of the dataset at `root` plus `hot`.
pub async fn run_sql(
    root: &std::path::Path,
    hot: BTreeMap<String, Vec<RecordBatch>>,
    sql: &str,
    limits: SqlLimits,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Vec<RecordBatch>, SqlError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(SqlError::TooLarge(format!("the SQL text is over {MAX_SQL_BYTES} bytes")));
    }
    let root = root.to_path_buf();
    let ds = tokio::task::spawn_blocking(move || Dataset::open(&root))
        .await
        .map_err(|e| SqlError::Execution(e.to_string()))??;
    // No spilling: a query gets its memory pool and no disk.
    let runtime = RuntimeEnvBuilder::new()
        .with_cache_manager(shared_caches())
        .with_memory_limit(limits.memory, 1.0)
        .with_disk_manager_builder(
            datafusion::execution::disk_manager::DiskManagerBuilder::default()
                .with_mode(datafusion::execution::disk_manager::DiskManagerMode::Disabled),
        )
        .build_arc()
        .map_err(classify)?;
    let config = SessionConfig::new().with_target_partitions(2).with_information_schema(true);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let mut tables = ds.identity().tables.clone();
    tables.sort();
    tables.dedup();
    // Only the tables the query names are registered (a table of 20,000 files costs a file
    // entry and a schema read each); all of them when it reads the catalog or cannot be parsed here (planning then
    // reports the error).
    if let Some(named) = referenced_tables(&ctx, sql) {
        tables.retain(|t| named.contains(t));
    }
    // A dataset on object storage whose replica lacks files (`tidewater sql` syncs entries
    // only) is read from the store itself; a full replica (`run`, `serve`) is read locally:
    // a query then costs no round trips to the store (tens of ms each).
    let remote = tidewater_storage::attached(ds.root()).filter(|r| !r.has_files());
    if let Some(r) = &remote {
        let (store, _) = r.store();
        let base = r.url().split('/').take(3).collect::<Vec<_>>().join("/");
        let base = url::Url::parse(&base).map_err(|e| SqlError::Execution(e.to_string()))?;
        ctx.register_object_store(&base, store);
    }
    for table in tables {
        let schema = cold_schema(&ds, &table)?;
        let files: Vec<ChunkFile> = ds
            .manifest()
            .chunks()
            .iter()
            .filter_map(|c| c.tables.get(&table).map(|f| (c, f)))
            .map(|(c, f)| ChunkFile {
                location: match &remote {
                    Some(r) => format!("{}/{}", r.url(), f.path),
                    None => ds.root().join(&f.path).to_string_lossy().into_owned(),
                },
                bytes: f.bytes,
                rows: f.rows,
                sha256: f.sha256.clone(),
                blocks: (c.start, c.end),
            })
            .collect();
        let cold: Arc<dyn datafusion::catalog::TableProvider> =
            Arc::new(ChunkTable::try_new(schema.clone(), &files).map_err(classify)?);
        let mut df = ctx
            .read_table(cold)
            .map_err(classify)?
            .with_column("confirmed", lit(true))
            .map_err(classify)?;
        if let Some(batches) = hot.get(&table).filter(|b| !b.is_empty()) {
            let mem =
                MemTable::try_new(batches[0].schema(), vec![batches.clone()]).map_err(classify)?;
            let h = ctx
                .read_table(Arc::new(mem))
                .map_err(classify)?
                .with_column("confirmed", lit(false))
                .map_err(classify)?;
            df = df.union(h).map_err(classify)?;
        }
        ctx.register_table(table.as_str(), df.into_view()).map_err(classify)?;
    }
    let opts =
        SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let sql = sql.to_string();
    let work = async move {
        // The query's slot is held until its task ends, not until its caller gives up: a
        // query past its time limit keeps its slot until the abort reaches it.
        let _slot = slot;
        // Plan first, then check the plan's kind: a write is refused by what it is, not by the
        // wording of an error.
        let plan = ctx.state().create_logical_plan(&sql).await.map_err(classify)?;
        opts.verify_plan(&plan).map_err(|e| SqlError::NotAllowed(e.to_string()))?;
        let df = ctx.execute_logical_plan(plan).await.map_err(classify)?;
        let mut stream = df.execute_stream().await.map_err(classify)?;
        let mut out = Vec::new();
        let mut rows = 0;
        while let Some(b) = stream.next().await {
            let b = b.map_err(classify)?;
            rows += b.num_rows();
            if rows > limits.max_rows {
                return Err(SqlError::TooLarge(format!(
                    "the result has more than {} rows; add a LIMIT or aggregate",
                    limits.max_rows
                )));
            }
            out.push(b);
        }
        Ok(out)
    };
    // The query runs on a runtime of its own (a heavy query cannot starve the runtime that
    // follows the head and answers head reads), in a task of its own: a panic in the engine
    // ends that task only, and dropping it on the timeout aborts the query.
    let task = AbortOnDrop(sql_runtime()?.spawn(work));
    tokio::time::timeout(limits.timeout, task)
        .await
        .map_err(|_| SqlError::Timeout(limits.timeout))?
}

/// The bare names of the tables `sql` reads, or `None` when it reads the catalog
/// (`information_schema`, `SHOW`) or does not parse.
fn referenced_tables(ctx: &SessionContext, sql: &str) -> Option<std::collections::HashSet<String>> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).ok()?;
    let refs = state.resolve_table_references(&statement).ok()?;
    let mut named = std::collections::HashSet::new();
    for r in refs {
        if r.schema().is_some_and(|s| s.eq_ignore_ascii_case("information_schema")) {
            return None;
        }
        named.insert(r.table().to_string());
    }
    if named.is_empty() || sql.trim_start().to_ascii_lowercase().starts_with("show") {
        return None;
    }
    Some(named)
}

/// Parquet footers and file statistics kept across queries, bytes each: a table of 20,000
/// chunk files costs a read of 20,000 footers on its first query (seconds) and none after.
pub const FILE_CACHE_BYTES: usize = 64 << 20;

/// Every query's caches of Parquet footers and file statistics, shared by the process. Entries
/// are checked against the file's size and modification time before use, and a merge or
/// rollback writes new files (the manifest lists which are read), so a stale entry is never
/// used. The listing cache stays per query: a new query sees newly committed files.
fn shared_caches() -> datafusion::execution::cache::cache_manager::CacheManagerConfig {
    use datafusion::execution::cache::cache_manager::{
        CacheManagerConfig, FileMetadataCache, FileStatisticsCache,
    };
    use datafusion::execution::cache::file_statistics_cache::DefaultFileStatisticsCache;
    use datafusion::execution::cache::DefaultFilesMetadataCache;
    type Shared = (Arc<dyn FileMetadataCache>, Arc<dyn FileStatisticsCache>);
    static CACHES: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    let (meta, stats) = CACHES.get_or_init(|| {
        (
            Arc::new(DefaultFilesMetadataCache::new(FILE_CACHE_BYTES)),
            Arc::new(DefaultFileStatisticsCache::new(FILE_CACHE_BYTES)),
        )
    });
    CacheManagerConfig::default()
        .with_file_metadata_cache(Some(meta.clone()))
        .with_metadata_cache_limit(FILE_CACHE_BYTES)
        .with_file_statistics_cache(Some(stats.clone()))
        .with_file_statistics_cache_limit(FILE_CACHE_BYTES)
}

/// Worker threads of the SQL runtime; 0 until set: [`default_sql_threads`].
static SQL_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The SQL runtime's threads by default: every core but one, at least one. However heavy the
/// queries, a core stays for head reads and the tail (on 2 cores a query runs on one:
/// `scripts/bench-serve.sh` measures head reads while heavy SQL runs).
pub fn default_sql_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// Sets the SQL runtime's threads (before the first query; `--sql-threads`), at least one.
pub fn set_sql_threads(n: usize) {
    SQL_THREADS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

fn sql_threads() -> usize {
    match SQL_THREADS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => default_sql_threads(),
        n => n,
    }
}

/// The SQL threads' `nice` by default. Head reads preempt a heavy query sooner: measured with
/// `scripts/bench-serve.sh` and the same paced load on 2 cores (one SQL thread), head-read
/// p99 while heavy queries run back to back was 1.2-1.8 ms at 10 in five runs, 1.5-2.1 ms at
/// 5 and 1.5-2.5 ms at 0. A query still runs on a machine other processes keep busy, at about
/// a tenth of a core against each one at normal priority (`--sql-nice 0` where SQL matters
/// more than head reads); `SCHED_IDLE`, tried before, starved queries outright.
pub const DEFAULT_SQL_NICE: i32 = 10;

/// Scheduling priority (`nice`) of the SQL threads.
static SQL_NICE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(DEFAULT_SQL_NICE);

/// Sets the SQL threads' `nice`, 0 to 19 (before the first query; `--sql-nice`).
pub fn set_sql_nice(nice: i32) {
    SQL_NICE.store(nice.clamp(0, 19), std::sync::atomic::Ordering::Relaxed);
}

/// Lowers the calling thread's (an SQL worker's) priority to the configured `nice` (Linux: per
/// thread). Best effort: where it is refused, the query runs at normal priority.
fn lower_priority() {
    let nice = SQL_NICE.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(target_os = "linux")]
    if nice > 0 {
        // SAFETY: plain syscalls on the calling thread's own id; no memory is passed.
        let r =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
        if r != 0 {
            tracing::debug!("could not lower the SQL threads' priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

fn sql_runtime() -> Result<&'static tokio::runtime::Runtime, SqlError> {
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(sql_threads())
                .thread_name("tidewater-sql")
                .on_thread_start(lower_priority)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| SqlError::Execution(format!("cannot start the SQL runtime: {e}")))
}

/// A query task aborted when its answer is no longer awaited (time limit, client gone).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<Result<T, SqlError>> {
    type Output = Result<T, SqlError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(v) => v,
            Err(e) if e.is_panic() => {
                Err(panicked(tidewater_chain::Panicked::from_payload(e.into_panic())))
            }
            Err(e) => Err(SqlError::Execution(format!("the query task ended: {e}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use tidewater_storage::{ChunkCommit, DatasetWriter, Identity};

    fn schemas() -> BTreeMap<String, SchemaRef> {
        let s = Arc::new(Schema::new(vec![
            Field::new("block_number", DataType::UInt64, false),
            Field::new("v", DataType::UInt64, false),
        ]));
        BTreeMap::from([("t".to_string(), s)])
    }

    /// A chunk of blocks `start..=end`, one row each, whose `v` is the block plus `offset`.
    fn chunk(start: u64, end: u64, offset: u64) -> ChunkCommit {
        let b = RecordBatch::try_new(
            schemas()["t"].clone(),
            vec![
                Arc::new(UInt64Array::from_iter_values(start..=end)),
                Arc::new(UInt64Array::from_iter_values(start + offset..=end + offset)),
            ],
        )
        .unwrap();
        ChunkCommit {
            start,
            end,
            first_block_hash: tidewater_chain::B256::with_last_byte(start as u8),
            last_block_hash: tidewater_chain::B256::with_last_byte(end as u8),
            files: BTreeMap::from([(
                "t".to_string(),
                (tidewater_storage::encode_parquet("t", &b).unwrap(), end - start + 1),
            )]),
        }
    }

    async fn sum(root: &std::path::Path, filter: &str) -> Option<u64> {
        let sql = format!("SELECT sum(v) AS s FROM t {filter}");
        let out = run_sql(root, BTreeMap::new(), &sql, SqlLimits::default(), None).await.unwrap();
        let s = out[0].column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
        (!s.is_null(0)).then(|| s.value(0))
    }

    /// Kills the busy processes on drop.
    struct Hogs(Vec<std::process::Child>);

    impl Drop for Hogs {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// The SQL threads' lower priority never starves a query: with every core kept busy at
    /// normal priority by other processes, a heavy query still answers, with the right sum,
    /// within its time limit (a `SCHED_IDLE` thread, tried before, got no CPU at all there).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_heavy_query_on_a_machine_kept_busy_still_answers() {
        assert_eq!(SQL_NICE.load(std::sync::atomic::Ordering::Relaxed), DEFAULT_SQL_NICE);
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::new(1, "g".into(), serde_json::json!({}), vec!["t".into()]);
        let mut w = DatasetWriter::open(dir.path(), &id, &schemas(), None).unwrap();
        w.commit(chunk(0, 3, 0)).unwrap();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let _hogs = Hogs(
            (0..cores)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("spawning a busy loop")
                })
                .collect(),
        );
        let n: u64 = 60_000_000;
        let sql = format!("SELECT sum(a) AS s FROM generate_series(1, {n}) t(a)");
        let limits = SqlLimits { timeout: Duration::from_secs(60), ..SqlLimits::default() };
        let out = run_sql(dir.path(), BTreeMap::new(), &sql, limits, None).await.unwrap();
        let s = out[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
        assert_eq!(s.value(0) as u64, n * (n + 1) / 2);
    }

    /// The footers and statistics cached across queries are never used for a file that
    /// changed: a range rolled back and committed again with other rows, at the same path and
    /// of the same size, is read anew.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_share_file_caches_but_never_read_a_rewritten_file_from_them() {
        // SAFETY: nextest runs each test in its own process.
        unsafe { std::env::set_var("TIDEWATER_RETENTION_SECS", "0") };
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::new(1, "g".into(), serde_json::json!({}), vec!["t".into()]);
        let mut w = DatasetWriter::open(dir.path(), &id, &schemas(), None).unwrap();
        w.commit(chunk(0, 3, 0)).unwrap();
        w.commit(chunk(4, 6, 0)).unwrap();
        assert_eq!(sum(dir.path(), "").await, Some(21));
        // A second query, its footers from the cache: row groups pruned by their statistics.
        assert_eq!(sum(dir.path(), "WHERE v >= 100").await, None);
        // Files of chunks outside a block range are skipped, those inside read.
        assert_eq!(sum(dir.path(), "WHERE block_number BETWEEN 3 AND 4").await, Some(7));
        let file = Dataset::open(dir.path()).unwrap().files("t")[1].clone();
        let before = std::fs::metadata(&file).unwrap().len();
        w.rollback(Some(3)).unwrap();
        w.commit(chunk(4, 6, 100)).unwrap();
        let after = Dataset::open(dir.path()).unwrap().files("t")[1].clone();
        assert_eq!((&after, std::fs::metadata(&after).unwrap().len()), (&file, before));
        assert_eq!(sum(dir.path(), "").await, Some(6 + 104 + 105 + 106));
        assert_eq!(sum(dir.path(), "WHERE v >= 100").await, Some(104 + 105 + 106));
    }
}
