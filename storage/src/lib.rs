//! # tidewater-storage
//!
//! Owns the data directory: the layout of tables, atomic Parquet commits, the manifest of
//! committed chunks, the dataset identity and the writer lock. It does not talk to nodes (it
//! uses `tidewater-chain` only for block, log and table types).
//!
//! ```text
//!  RecordBatch per table ──encode (rayon)──▶ ChunkCommit
//!                                              │ commit (blocking I/O)
//!                                              ▼
//!   <data>/<table>/<start>-<end>.parquet   temp file, fsync, rename, fsync dir
//!                                              │ then
//!                                              ▼
//!   <data>/_manifest/<start>-<end>.json    the commit point: readers trust only listed files
//! ```
//!
//! Invariants:
//! - a file is visible to readers only once its manifest entry exists, and every entry's files
//!   were durable before the entry was written, so a crash at any instant leaves a dataset
//!   equal to some prefix of commits;
//! - one writer per directory (or per shard), enforced with a lock file;
//! - a directory holds one chain and one set of sources (`dataset.json`).
//!
//! ```no_run
//! let ds = tidewater_storage::Dataset::open(std::path::Path::new("./data")).unwrap();
//! println!("{} rows in logs", ds.manifest().rows("logs"));
//! ```
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod chunk;
mod dataset;
mod error;
mod files;
pub mod lease;
mod manifest;
mod parquet_io;
pub mod remote;
mod replay;
mod snapshot;

pub use chunk::{encode_chunk, EncodedChunk};
pub use dataset::{
    deep_reorgs, read_identity, ChunkCommit, Dataset, DatasetWriter, Identity, Shard,
    DEEP_REORGS_FILE, IDENTITY_FILE, SCHEMA_DIR,
};
pub use error::{Error, Result};
pub use files::{sync_dir, write_atomic};
pub use manifest::{
    ChunkEntry, FileEntry, Manifest, Summary, CHECKPOINT_EVERY, CHECKPOINT_FILE, DEFAULT_RETENTION,
    MANIFEST_DIR, RACY_STAMP, VACUUM_FILE,
};
pub use parquet_io::{
    encode_parquet, read_parquet, read_parquet_columns, writer_properties, DEFAULT_ROW_GROUP_ROWS,
    ZSTD_LEVEL,
};
pub use remote::{attach, attached, is_remote, Remote};
pub use replay::{cold_blocks, column, fixed};
pub use snapshot::{
    list_snapshots, remove_snapshots_after, with_snapshot_lock, write_snapshot, Snapshot,
    SNAPSHOT_DIR,
};
