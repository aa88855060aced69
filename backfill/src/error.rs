//! The backfill crate's error type.

use tidewater_chain::BlockRange;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a backfill stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Fetching from the node failed.
    #[error("fetching {range}")]
    Fetch {
        /// The chunk.
        range: BlockRange,
        /// Cause.
        #[source]
        source: tidewater_chain::Error,
    },
    /// Discovering pools failed.
    #[error("scanning the factory's PoolCreated logs over {range}")]
    Discover {
        /// The scanned range.
        range: BlockRange,
        /// Cause.
        #[source]
        source: tidewater_chain::Error,
    },
    /// Decoding a chunk failed.
    #[error("decoding {range}")]
    Decode {
        /// The chunk.
        range: BlockRange,
        /// Cause.
        #[source]
        source: tidewater_chain::Error,
    },
    /// Writing failed.
    #[error("committing {range}")]
    Storage {
        /// The chunk.
        range: BlockRange,
        /// Cause.
        #[source]
        source: tidewater_storage::Error,
    },
    /// A blocking commit task died (a bug or a panic in the writer).
    #[error("the commit task failed")]
    CommitTask(#[source] tokio::task::JoinError),
    /// A chunk's fetch or encode task panicked (a bug; the message says where).
    #[error("the task for {range} failed")]
    TaskPanicked {
        /// The chunk.
        range: BlockRange,
        /// The panic.
        #[source]
        source: tidewater_chain::Panicked,
    },
}
