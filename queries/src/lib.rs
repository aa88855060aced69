//! # tidewater-queries
//!
//! Owns the SQL engines over the dataset: a DuckDB session with one view per table over exactly
//! the files the manifest lists (never a glob, so a file renamed into place by a writer that
//! crashed before its manifest entry is invisible) plus the derived-state snapshot tables; and
//! read-only DataFusion SQL over cold Parquet plus the hot buffer ([`df_sql`]), with its limits
//! (rows, memory, time, concurrency) and the read-only check of statements ([`read_only`]). It
//! does not own HTTP or the Uniswap V3 state (`tidewater-api`, `tidewater-state`).
//!
//! ```text
//!   manifest ──exact file list──▶ DuckDB views (logs, blocks, events, *_snapshots)
//!   manifest + hot blocks ──────▶ DataFusion: one view per table = cold ∪ hot, `confirmed`
//! ```
//!
//! Big integers (uint128, uint160, int256, uint256) are stored as exact decimal strings; cast
//! them in SQL: `amount0::HUGEINT` (int256 values within ±2^127), `liquidity::UHUGEINT`
//! (uint128), `sqrt_price_x96::DOUBLE` for charts, or `::DECIMAL(38,0)` where it fits.
//!
//! ```no_run
//! let ds = tidewater_storage::Dataset::open(std::path::Path::new("./data")).unwrap();
//! let s = tidewater_queries::SqlSession::open(&ds).unwrap();
//! let batches = s.query("SELECT count(*) FROM swaps").unwrap();
//! print!("{}", tidewater_queries::format_batches(&batches, tidewater_queries::Format::Table).unwrap());
//! ```
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod chunk_table;
pub mod df_sql;
pub mod read_only;

use arrow::record_batch::RecordBatch;
use tidewater_storage::Dataset;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// SQL failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Setting up the session (views) failed.
    #[error("creating view {table}")]
    View {
        /// Table.
        table: String,
        /// Cause.
        #[source]
        source: duckdb::Error,
    },
    /// DuckDB could not be started.
    #[error("opening DuckDB")]
    Open(#[source] duckdb::Error),
    /// The query failed (bad SQL, unknown table, ...).
    #[error("query failed")]
    Query(#[source] duckdb::Error),
    /// The statement would write into the dataset, or reach files or settings.
    #[error("refused")]
    Refused(#[source] read_only::Refused),
    /// Listing the state snapshots failed.
    #[error("listing state snapshots")]
    Snapshots(#[source] tidewater_storage::Error),
    /// Formatting the result failed.
    #[error("formatting the result")]
    Format(#[source] arrow::error::ArrowError),
}

/// Output formats of `tidewater sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An ASCII table.
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// A DuckDB session over one data directory.
#[derive(Debug)]
pub struct SqlSession {
    conn: duckdb::Connection,
    root: std::path::PathBuf,
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl SqlSession {
    /// An in-memory DuckDB with a view per table of `ds`.
    pub fn open(ds: &Dataset) -> Result<Self> {
        let conn = duckdb::Connection::open_in_memory().map_err(Error::Open)?;
        // An in-memory database spills to `.tmp` under the working directory, which may be
        // the data directory: spill to the system's temporary directory instead.
        let tmp = std::env::temp_dir().join("tidewater-duckdb");
        conn.execute_batch(&format!("SET temp_directory = {}", quote_str(&tmp.to_string_lossy())))
            .map_err(Error::Open)?;
        let mut tables = ds.identity().tables.clone();
        tables.sort();
        tables.dedup();
        for table in tables {
            let mut files = ds.files(&table);
            if files.is_empty() {
                files.push(ds.schema_file(&table));
            }
            let list = files
                .iter()
                .map(|p| quote_str(&p.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "CREATE VIEW {} AS SELECT * FROM read_parquet([{list}])",
                quote_ident(&table)
            );
            conn.execute_batch(&sql)
                .map_err(|source| Error::View { table: table.clone(), source })?;
        }
        // Derived-state snapshots: one view per table over every committed snapshot.
        let snaps = tidewater_storage::list_snapshots(ds.root()).map_err(Error::Snapshots)?;
        for table in [
            tidewater_chain::schema::POOL_SNAPSHOTS,
            tidewater_chain::schema::TICK_SNAPSHOTS,
            tidewater_chain::schema::POSITION_SNAPSHOTS,
        ] {
            let files: Vec<String> = snaps
                .iter()
                .map(|s| s.file(ds.root(), table))
                .filter(|p| p.exists())
                .map(|p| quote_str(&p.to_string_lossy()))
                .collect();
            if files.is_empty() {
                continue;
            }
            let sql = format!(
                "CREATE VIEW {} AS SELECT * FROM read_parquet([{}])",
                quote_ident(table),
                files.join(", ")
            );
            conn.execute_batch(&sql)
                .map_err(|source| Error::View { table: table.to_string(), source })?;
        }
        Ok(Self { conn, root: ds.root().to_path_buf() })
    }

    /// Runs one query and returns its rows.
    pub fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let cwd = std::env::current_dir().unwrap_or_default();
        read_only::check(sql, &self.root, &cwd).map_err(Error::Refused)?;
        let mut stmt = self.conn.prepare(sql).map_err(Error::Query)?;
        let batches = stmt.query_arrow([]).map_err(Error::Query)?.collect();
        Ok(batches)
    }
}

/// Binary columns as `0x…` hex strings (hashes and addresses read better that way).
pub fn hex_binary_columns(batch: &RecordBatch) -> Result<RecordBatch> {
    tidewater_chain::encode::hex_binary_columns(batch).map_err(Error::Format)
}

/// Formats query results.
pub fn format_batches(batches: &[RecordBatch], format: Format) -> Result<String> {
    let batches = batches.iter().map(hex_binary_columns).collect::<Result<Vec<_>>>()?;
    match format {
        Format::Table => Ok(format!(
            "{}\n",
            arrow::util::pretty::pretty_format_batches(&batches).map_err(Error::Format)?
        )),
        Format::Csv => {
            let mut out = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
                for b in &batches {
                    w.write(b).map_err(Error::Format)?;
                }
            }
            Ok(String::from_utf8(out).expect("invariant: CSV writer emits UTF-8"))
        }
        Format::Json => {
            let mut out = Vec::new();
            {
                let mut w = arrow::json::ArrayWriter::new(&mut out);
                let refs: Vec<&RecordBatch> = batches.iter().collect();
                w.write_batches(&refs).map_err(Error::Format)?;
                w.finish().map_err(Error::Format)?;
            }
            if out.is_empty() {
                out.extend_from_slice(b"[]");
            }
            out.push(b'\n');
            Ok(String::from_utf8(out).expect("invariant: JSON writer emits UTF-8"))
        }
    }
}
