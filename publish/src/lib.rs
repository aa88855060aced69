//! Publishing every live update to a message broker (NATS JetStream), and the reference
//! consumer that applies them exactly once.
//!
//! - [`publisher`]: follows the live state and publishes, per update, one message per pool
//!   it touched on `<prefix>.<chain_id>.uniswap_v3.<pool>` and a block marker on
//!   `<prefix>.<chain_id>.blocks`, each with a deterministic `Nats-Msg-Id`, with its own
//!   checkpoint beside the dataset's so a restart republishes rather than skips.
//! - [`consumer`]: a durable pull consumer folding pool updates into SQLite, with the stream
//!   sequence stored in the same transaction and the ack sent after the commit.
//! - [`wire`]: subjects, ids and the JSON (the SSE shape; see `docs/design/broker.md`).

pub mod checkpoint;
pub mod consumer;
pub mod publisher;
pub mod wire;

pub use publisher::{PublishConfig, PublishStats, Publisher};
