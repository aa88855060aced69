//! Table and column names of the dataset, and the Arrow schemas of the raw tables.
//!
//! Column names follow cryo's `logs` dataset so existing notebooks work unchanged.

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use std::sync::{Arc, LazyLock};

/// Raw logs of every watched contract.
pub const LOGS: &str = "logs";
/// Blocks of committed ranges: every block the tail saw, and of backfilled ranges the blocks
/// with watched logs plus the blocks whose headers the completeness checks fetched (each
/// chunk's first and last block at least). `parent_hash` and `logs_bloom` are null for a
/// block known only from its logs.
pub const BLOCKS: &str = "blocks";
/// Derived Uniswap V3 pool state at snapshot heights.
pub const POOL_SNAPSHOTS: &str = "pool_snapshots";
/// Derived initialized ticks at snapshot heights.
pub const TICK_SNAPSHOTS: &str = "tick_snapshots";
/// Derived position manager positions at snapshot heights.
pub const POSITION_SNAPSHOTS: &str = "position_snapshots";

/// Block number (UInt64).
pub const BLOCK_NUMBER: &str = "block_number";
/// Block hash (Binary, 32 bytes).
pub const BLOCK_HASH: &str = "block_hash";
/// Parent block hash (Binary, 32 bytes).
pub const PARENT_HASH: &str = "parent_hash";
/// Block timestamp, Unix seconds (UInt64).
pub const TIMESTAMP: &str = "timestamp";
/// Block logs bloom (Binary, 256 bytes).
pub const LOGS_BLOOM: &str = "logs_bloom";
/// Transaction index in the block (UInt32).
pub const TRANSACTION_INDEX: &str = "transaction_index";
/// Log index in the block (UInt32).
pub const LOG_INDEX: &str = "log_index";
/// Transaction hash (Binary, 32 bytes).
pub const TRANSACTION_HASH: &str = "transaction_hash";
/// Emitting contract (Binary, 20 bytes).
pub const ADDRESS: &str = "address";
/// Topics 0..3 (Binary, 32 bytes, null when absent).
pub const TOPICS: [&str; 4] = ["topic0", "topic1", "topic2", "topic3"];
/// ABI-encoded log data (Binary).
pub const DATA: &str = "data";
/// Chain id (UInt64).
pub const CHAIN_ID: &str = "chain_id";

/// The columns every decoded-event table starts with, in order.
pub const EVENT_KEY_COLUMNS: [&str; 6] =
    [BLOCK_NUMBER, BLOCK_HASH, TRANSACTION_INDEX, LOG_INDEX, TRANSACTION_HASH, ADDRESS];

/// Schema of the `logs` table.
pub fn logs_schema() -> SchemaRef {
    static S: LazyLock<SchemaRef> = LazyLock::new(|| {
        let mut fields = key_fields();
        for t in TOPICS {
            fields.push(Field::new(t, DataType::Binary, true));
        }
        fields.push(Field::new(DATA, DataType::Binary, false));
        fields.push(Field::new(CHAIN_ID, DataType::UInt64, false));
        Arc::new(Schema::new(fields))
    });
    S.clone()
}

/// Schema of the `blocks` table.
pub fn blocks_schema() -> SchemaRef {
    static S: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new(BLOCK_NUMBER, DataType::UInt64, false),
            Field::new(BLOCK_HASH, DataType::Binary, false),
            Field::new(PARENT_HASH, DataType::Binary, true),
            Field::new(TIMESTAMP, DataType::UInt64, false),
            Field::new(LOGS_BLOOM, DataType::Binary, true),
            Field::new(CHAIN_ID, DataType::UInt64, false),
        ]))
    });
    S.clone()
}

/// The key fields of every log-derived table.
pub fn key_fields() -> Vec<Field> {
    vec![
        Field::new(BLOCK_NUMBER, DataType::UInt64, false),
        Field::new(BLOCK_HASH, DataType::Binary, false),
        Field::new(TRANSACTION_INDEX, DataType::UInt32, false),
        Field::new(LOG_INDEX, DataType::UInt32, false),
        Field::new(TRANSACTION_HASH, DataType::Binary, false),
        Field::new(ADDRESS, DataType::Binary, false),
    ]
}
