//! The storage crate's error type.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong reading or writing the dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file of the dataset could not be read or written.
    #[error("{path} is not valid")]
    Json {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Parquet encoding or decoding failed.
    #[error("parquet {path}")]
    Parquet {
        /// The file (or table) involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Another process holds the writer lock.
    #[error("another writer is using {path} (lock {lock} is held)")]
    Locked {
        /// Data directory.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// This process no longer holds the writer lease (`run --ha`): another instance took it
    /// over, or this one did not renew it in time; the mutation was not made.
    #[error("lost the writer lease of {path} (held with epoch {epoch}; the lease is now {now:?})")]
    Fenced {
        /// Data directory.
        path: PathBuf,
        /// This process's epoch.
        epoch: u64,
        /// The current epoch and holder, if any.
        now: Option<(u64, String)>,
    },
    /// The data directory belongs to another chain or another set of sources.
    #[error("{path} holds a different dataset: {what}")]
    IdentityMismatch {
        /// Data directory.
        path: PathBuf,
        /// What differs.
        what: String,
    },
    /// The directory is not a Tidewater dataset.
    #[error("{path} is not a Tidewater data directory (no dataset.json)")]
    NotADataset {
        /// Data directory.
        path: PathBuf,
    },
    /// A committed file no longer matches its manifest entry.
    #[error("{path}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Decoding logs into tables failed.
    #[error("decoding blocks [{start}, {end}]")]
    Decode {
        /// First block.
        start: u64,
        /// Last block.
        end: u64,
        /// Cause.
        #[source]
        source: tidewater_chain::Error,
    },
    /// Derived state cannot be computed from this dataset at `block`: an event that is
    /// impossible given the state before it (a liquidity underflow, an overflow).
    #[error("deriving the Uniswap V3 state at block {block}: {what}")]
    Derived {
        /// The block of the offending log.
        block: u64,
        /// What was impossible.
        what: String,
    },
    /// The dataset does not hold every block the derived state needs.
    #[error("{path} cannot give the Uniswap V3 state: {what}")]
    NotCovered {
        /// Data directory.
        path: PathBuf,
        /// Which blocks are missing.
        what: String,
    },
    /// A chunk to commit lacks the headers of its first or last block (a bug in the caller).
    #[error("chunk [{start}, {end}] lacks the header of its first or last block")]
    EmptyChunk {
        /// Chunk start.
        start: u64,
        /// Chunk end.
        end: u64,
    },
    /// A file of the dataset (a committed Parquet file, a manifest entry, a snapshot) does not
    /// have the shape its writer gives it: it was damaged or written by something else.
    #[error("{path}: {what}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The object store failed (after its client's own retries): the store is down, slow, or
    /// refused the request.
    #[error("{op} {url} ({path})")]
    Store {
        /// What was being done.
        op: &'static str,
        /// The dataset's URL (no credentials).
        url: String,
        /// The object involved.
        path: String,
        /// Cause.
        #[source]
        source: Box<object_store::Error>,
    },
    /// The coordinator (etcd) that holds the commit log and the lease failed or was misused.
    #[error("coordinator: {what}")]
    Coordinator {
        /// What happened.
        what: String,
    },
    /// The `--data` URL or its settings are not usable (bad scheme, missing bucket, a store
    /// that ignores conditional writes without a coordinator).
    #[error("{url}: {what}")]
    BadLocation {
        /// The URL.
        url: String,
        /// What is wrong.
        what: String,
    },
    /// A chunk to replace is not committed with exactly that range.
    #[error("no committed chunk is [{start}, {end}] to replace")]
    NotCommitted {
        /// Chunk start.
        start: u64,
        /// Chunk end.
        end: u64,
    },
    /// A new chunk overlaps a committed one.
    #[error("chunk [{start}, {end}] overlaps committed chunk [{other_start}, {other_end}]")]
    Overlap {
        /// New chunk start.
        start: u64,
        /// New chunk end.
        end: u64,
        /// Committed chunk start.
        other_start: u64,
        /// Committed chunk end.
        other_end: u64,
    },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }

    pub(crate) fn store(
        op: &'static str,
        url: &str,
        path: &object_store::path::Path,
    ) -> impl FnOnce(object_store::Error) -> Self {
        let (url, path) = (url.to_string(), path.to_string());
        move |source| Self::Store { op, url, path, source: Box::new(source) }
    }

    /// Whether retrying later may succeed: the object store or the coordinator was
    /// unreachable or failing (nothing was committed, or the commit is read back on retry).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store { .. } | Self::Coordinator { .. })
    }

    /// Whether this is a bad-input error (wrong directory, held lock), not a runtime failure.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Locked { .. }
                | Self::IdentityMismatch { .. }
                | Self::NotADataset { .. }
                | Self::NotCovered { .. }
                | Self::BadLocation { .. }
        )
    }
}
