//! Command-line arguments.

use alloy_primitives::Address;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Tidewater indexes EVM contract events: a parallel, resumable backfill into Parquet, a
/// reorg-aware tail that follows the head, SQL over the dataset (DuckDB, DataFusion), and a
/// live Uniswap V3 pool, tick and position service (HTTP API, SSE stream, liquidity page).
#[derive(Debug, Parser)]
#[command(
    name = "tidewater",
    version,
    about = "Tidewater: an indexer of EVM contract events into Parquet, with a live Uniswap V3 state service",
    long_about = None,
    propagate_version = true,
    args_override_self = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log filter (tracing syntax), e.g. `info` or `tidewater_chain=debug`.
    #[arg(long, global = true, env = "TIDEWATER_LOG", default_value = "info")]
    pub(crate) log: String,
    /// With `--data s3://…` on a store without conditional writes (Garage, many self-hosted
    /// stores): etcd holding the commit log and the writer lease, `etcd://host:2379`
    #[arg(long, global = true, env = "TIDEWATER_COORDINATOR")]
    pub(crate) coordinator: Option<String>,
    /// With `--data s3://…`: the local replica of the dataset [default:
    /// $TIDEWATER_HOME/cache/<url>]; instances on one host need one each
    #[arg(long, global = true, env = "TIDEWATER_CACHE_DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
}

impl Command {
    /// The `--data` of the commands that only read it (`sql`, `state`, `status`, `verify`,
    /// `serve`), and whether they read its files from a local replica (`sql` reads them from
    /// the store).
    pub(crate) fn reader_data_mut(&mut self) -> Option<(&mut PathBuf, bool)> {
        match self {
            Self::Sql(a) => Some((&mut a.data, false)),
            Self::State(a) => Some((&mut a.data, true)),
            Self::Status(a) => Some((&mut a.data.data, true)),
            Self::Verify(a) => Some((&mut a.data, true)),
            Self::Serve(a) => Some((&mut a.data, true)),
            Self::Backfill(_) | Self::Run(_) | Self::Tail(_) | Self::Consume(_) => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Fetch a block range into the Parquet dataset (resumable, exactly once).
    Backfill(Box<BackfillArgs>),
    /// Backfill up to the confirmed watermark, then follow the head (one process).
    Run(Box<RunArgs>),
    /// Follow the head from the checkpoint (or --from on an empty directory).
    Tail(Box<RunArgs>),
    /// Uniswap V3 state (pools, ticks, positions) folded from the cold tier, as JSON.
    State(StateArgs),
    /// Run SQL (DuckDB) over every table of a data directory.
    Sql(SqlArgs),
    /// Show what a data directory holds: checkpoint, coverage, gaps, rows; with --rpc, head,
    /// watermark and lag.
    Status(StatusArgs),
    /// Check every committed file against the manifest (size, SHA-256, Parquet footer, rows).
    Verify(DataArgs),
    /// Serve the HTTP API (state, stream, SQL, metrics) over a data directory another process
    /// writes; `run` and `tail` serve the same API with the live hot buffer.
    Serve(ServeArgs),
    /// Fold the pool updates `run --publish` puts on NATS JetStream into a SQLite database,
    /// exactly once (the reference consumer).
    Consume(ConsumeArgs),
}

pub(crate) use tidewater_node::BlockBound;

pub(crate) fn parse_bound(s: &str) -> Result<BlockBound, String> {
    match s {
        "latest" => Ok(BlockBound::Latest),
        "finalized" => Ok(BlockBound::Finalized),
        _ => s
            .parse()
            .map(BlockBound::Number)
            .map_err(|_| format!("expected a block number, `latest` or `finalized`, got {s:?}")),
    }
}

pub(crate) fn parse_address(s: &str) -> Result<Address, String> {
    tidewater_primitives::parse_address(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_shard(s: &str) -> Result<(u32, u32), String> {
    let err = || format!("expected I/N with 0 <= I < N, got {s:?}");
    let (i, n) = s.split_once('/').ok_or_else(err)?;
    let (i, n): (u32, u32) = (i.parse().map_err(|_| err())?, n.parse().map_err(|_| err())?);
    if n == 0 || i >= n {
        return Err(err());
    }
    Ok((i, n))
}

#[derive(Debug, Args)]
pub(crate) struct BackfillArgs {
    /// JSON-RPC URL; repeat for failover providers [env: ETH_RPC_URL]
    #[arg(long, help_heading = "Source")]
    pub(crate) rpc: Vec<String>,
    /// Data directory (one per chain) [default: from the config file, else ./data]
    #[arg(long, help_heading = "Source")]
    pub(crate) data: Option<PathBuf>,
    /// Config file [default: ./tidewater.toml if present]
    #[arg(long, help_heading = "Source")]
    pub(crate) config: Option<PathBuf>,
    /// First block, inclusive
    #[arg(long, default_value = "0", value_parser = parse_bound, help_heading = "Source")]
    pub(crate) from: BlockBound,
    /// Last block, inclusive: a number, `latest` or `finalized`
    #[arg(long, default_value = "latest", value_parser = parse_bound, help_heading = "Source")]
    pub(crate) to: BlockBound,
    /// Uniswap V3 factory: index it and every pool it creates
    #[arg(long, value_parser = parse_address, help_heading = "Source")]
    pub(crate) uniswap_v3_factory: Option<Address>,
    /// Uniswap V3 NonfungiblePositionManager (needs --uniswap-v3-factory)
    #[arg(long, value_parser = parse_address, help_heading = "Source")]
    pub(crate) uniswap_v3_position_manager: Option<Address>,
    /// Block where the factory was deployed (where the pool scan starts)
    #[arg(long, help_heading = "Source")]
    pub(crate) factory_start_block: Option<u64>,
    /// Another contract to index; repeatable. Each gets every --event
    #[arg(long, value_parser = parse_address, help_heading = "Source")]
    pub(crate) contract: Vec<Address>,
    /// Event signature for --contract, e.g. "Transfer(address indexed from, address indexed to, uint256 value)"
    #[arg(long, help_heading = "Source")]
    pub(crate) event: Vec<String>,
    /// Expected chain id; refuse to run against another chain
    #[arg(long, help_heading = "Source")]
    pub(crate) chain_id: Option<u64>,
    /// RPC requests in flight at most [default: 16]
    #[arg(long, help_heading = "Tuning")]
    pub(crate) concurrency: Option<usize>,
    /// RPC calls per second per provider, each call of a batch counted [default: unlimited]
    #[arg(long, help_heading = "Tuning")]
    pub(crate) rps: Option<f64>,
    /// Longest wait for one RPC answer, in milliseconds, before it is retried [default: 30000]
    #[arg(long, help_heading = "Tuning")]
    pub(crate) rpc_timeout_ms: Option<u64>,
    /// Blocks per chunk (one Parquet file per table per chunk) [default: 500]
    #[arg(long, help_heading = "Tuning")]
    pub(crate) chunk_size: Option<u64>,
    /// Chunks fetched and encoded at once [default: 4]
    #[arg(long, help_heading = "Tuning")]
    pub(crate) chunks_in_flight: Option<usize>,
    /// Watched logs a chunk aims to hold: denser chunks are cut into pieces of about this many
    /// (memory is bounded by logs in flight, not blocks) [default: 50000]
    #[arg(long, help_heading = "Tuning")]
    pub(crate) chunk_logs: Option<u64>,
    /// Logs an eth_getLogs answer aims at: spans shrink over it and grow under it [default:
    /// 1000 when every provider is on this machine (no bill per call; a node serves small
    /// answers with less CPU), else 10000 (the largest answer hosted providers take is the
    /// cheapest)]
    #[arg(long, help_heading = "Tuning")]
    pub(crate) answer_logs: Option<u64>,
    /// First eth_getLogs span in blocks; adapts to the provider [default: 2000]
    #[arg(long, help_heading = "Tuning")]
    pub(crate) log_range: Option<u64>,
    /// Largest eth_getLogs span in blocks [default: 10000]
    #[arg(long, help_heading = "Tuning")]
    pub(crate) max_log_range: Option<u64>,
    /// How the factory's pools are asked for: by address (in groups of 500), by their events'
    /// selectors from any contract (one request whatever the number of pools; others' logs are
    /// dropped), or auto (addresses while they fit one request) [default: auto]
    #[arg(long, value_parser = ["auto", "addresses", "topics"], help_heading = "Tuning")]
    pub(crate) filter_mode: Option<String>,
    /// Blocks this close to the head are checked with a header per block; older ranges with a
    /// header per eth_getLogs answer [default: 1024]
    #[arg(long, help_heading = "Tuning")]
    pub(crate) block_checks_depth: Option<u64>,
    /// Only this shard's chunks, as I/N (N processes split the range by chunk)
    #[arg(long, value_parser = parse_shard, help_heading = "Tuning")]
    pub(crate) shard: Option<(u32, u32)>,
    /// Print the final summary as JSON on stdout
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum OutputFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct SqlArgs {
    /// Data directory
    #[arg(long, default_value = "data")]
    pub(crate) data: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value = "table")]
    pub(crate) format: OutputFormat,
    /// The query
    pub(crate) query: String,
}

#[derive(Debug, Args)]
pub(crate) struct DataArgs {
    /// Data directory
    #[arg(long, default_value = "data")]
    pub(crate) data: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--empty-checks` (see [`tidewater_tail::EmptyChecks`]).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum EmptyChecksArg {
    Auto,
    AtOnce,
    Deferred,
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// WebSocket URL for newHeads notifications (polling stays on as the fallback)
    #[arg(long, help_heading = "Following the head")]
    pub(crate) ws: Option<String>,
    /// Poll the node for new heads every this many milliseconds
    #[arg(long, default_value = "250", help_heading = "Following the head")]
    pub(crate) poll_interval_ms: u64,
    /// Watermark = head minus this many blocks [default: the node's finalized block, else 64]
    #[arg(long, help_heading = "Following the head")]
    pub(crate) confirmations: Option<u64>,
    /// Confirmed blocks gathered per compaction commit
    #[arg(long, default_value = "100", help_heading = "Following the head")]
    pub(crate) compact_blocks: u64,
    /// Compact confirmed blocks at least this often, in seconds
    #[arg(long, default_value = "30", help_heading = "Following the head")]
    pub(crate) compact_interval_secs: u64,
    /// Merge cold chunks per this many blocks (one file per table per cell, as a backfill writes)
    #[arg(long, default_value = "500", help_heading = "Following the head")]
    pub(crate) merge_blocks: u64,
    /// When an empty answer for a block whose bloom may hold a watched log is asked again: at
    /// once, at compaction (one ranged request per run of such blocks; until then the live
    /// state and the stream carry the block as answered), or auto (at compaction when the bloom
    /// is so full it says maybe by chance and --no-serve, at once otherwise)
    #[arg(long, value_enum, default_value = "auto", help_heading = "Following the head")]
    pub(crate) empty_checks: EmptyChecksArg,
    /// Print every chain update (pending, reverted, confirmed) as a JSON line on stdout
    #[arg(long, help_heading = "Following the head")]
    pub(crate) print_updates: bool,
    /// Do not serve the HTTP API
    #[arg(long, help_heading = "Following the head")]
    pub(crate) no_serve: bool,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    #[command(flatten)]
    pub(crate) publish: PublishArgs,
    /// Run as one of several instances on the same --data: one holds the writer lease and
    /// writes, the others stand by (serving the API) and take over when it dies
    #[arg(long, help_heading = "High availability")]
    pub(crate) ha: bool,
    /// Writer lease time to live in milliseconds: a standby takes over this long after the
    /// leader stopped renewing
    #[arg(long, default_value = "3000", help_heading = "High availability")]
    pub(crate) ha_lease_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct PublishArgs {
    /// Publish every update to this NATS server (JetStream), e.g. nats://127.0.0.1:4222 [also
    /// publish.url in tidewater.toml]
    #[arg(long, help_heading = "Publishing")]
    pub(crate) publish: Option<String>,
    /// JetStream stream to publish to (created when missing) [default: tidewater]
    #[arg(long, help_heading = "Publishing")]
    pub(crate) publish_stream: Option<String>,
    /// How long the stream keeps messages, in seconds [default: 7 days]
    #[arg(long, help_heading = "Publishing")]
    pub(crate) publish_max_age_secs: Option<u64>,
    /// Largest size of the stream, in MiB [default: no limit]
    #[arg(long, help_heading = "Publishing")]
    pub(crate) publish_max_mib: Option<u64>,
    /// The stream's duplicate window in seconds: a republish within it is dropped by its id
    /// [default: 600]
    #[arg(long, help_heading = "Publishing")]
    pub(crate) publish_dedup_window_secs: Option<u64>,
}

impl PublishArgs {
    /// Flags over the `[publish]` section of the config file.
    pub(crate) fn config(
        &self,
        file: &crate::config::PublishConfig,
    ) -> Option<tidewater_publish::PublishConfig> {
        let url = self.publish.clone().or(file.url.clone())?;
        let mut c = tidewater_publish::PublishConfig::new(url);
        if let Some(s) = self.publish_stream.clone().or(file.stream.clone()) {
            c.stream = s;
        }
        if let Some(s) = self.publish_max_age_secs.or(file.max_age_secs) {
            c.max_age = std::time::Duration::from_secs(s.max(1));
        }
        if let Some(m) = self.publish_max_mib.or(file.max_mib) {
            c.max_bytes = i64::try_from(m.saturating_mul(1 << 20)).unwrap_or(i64::MAX);
        }
        if let Some(s) = self.publish_dedup_window_secs.or(file.dedup_window_secs) {
            c.duplicate_window = std::time::Duration::from_secs(s.max(1));
        }
        Some(c)
    }
}

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    /// NATS server
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub(crate) nats: String,
    /// JetStream stream `run --publish` writes
    #[arg(long, default_value = "tidewater")]
    pub(crate) stream: String,
    /// Durable consumer name (a partition appends -I-of-N)
    #[arg(long, default_value = "tidewater-consume")]
    pub(crate) durable: String,
    /// Only these pools (comma-separated addresses) [default: every pool]
    #[arg(long, value_delimiter = ',', value_parser = parse_address)]
    pub(crate) pools: Vec<Address>,
    /// Only the pools of partition I of N (pool address modulo N); run N processes to share
    /// the pools, each pool applied by one of them, in order
    #[arg(long, value_parser = parse_shard)]
    pub(crate) partition: Option<(u32, u32)>,
    /// Where to fold the updates: sqlite://PATH
    #[arg(long)]
    pub(crate) into: String,
    /// Messages per transaction
    #[arg(long, default_value = "256")]
    pub(crate) batch: usize,
    /// Serve Prometheus metrics (applied, redelivered, delay from block to commit) here
    #[arg(long)]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ApiArgs {
    /// Address the HTTP API listens on (port 0 picks a free one; the log says which)
    #[arg(long, default_value = tidewater_api::DEFAULT_LISTEN, help_heading = "API")]
    pub(crate) listen: std::net::SocketAddr,
    /// Write a derived-state snapshot every this many blocks of confirmed data (0: none)
    #[arg(long, default_value_t = tidewater_state::pool_state::DEFAULT_SNAPSHOT_INTERVAL, help_heading = "API")]
    pub(crate) snapshot_interval: u64,
    /// Stream events kept for clients reconnecting with Last-Event-ID (and for --publish to
    /// catch up after a broker outage; beyond it, a resync)
    #[arg(long, default_value_t = tidewater_state::live::DEFAULT_STREAM_HISTORY, help_heading = "API")]
    pub(crate) stream_history: usize,
    /// Most rows a POST /v1/sql answer may hold
    #[arg(long, default_value_t = tidewater_queries::df_sql::DEFAULT_MAX_ROWS, help_heading = "API")]
    pub(crate) sql_max_rows: usize,
    /// Time limit of a POST /v1/sql query, in milliseconds
    #[arg(long, default_value = "10000", help_heading = "API")]
    pub(crate) sql_timeout_ms: u64,
    /// Memory limit of a POST /v1/sql query, in MiB
    #[arg(long, default_value = "256", help_heading = "API")]
    pub(crate) sql_memory_mib: usize,
    /// POST /v1/sql queries run at once; more wait (within their time limit), then get 429
    #[arg(long, default_value = "2", help_heading = "API")]
    pub(crate) sql_concurrency: usize,
    /// Scheduling priority (nice, 0-19) of the SQL threads: the higher, the sooner head reads
    /// preempt heavy queries, and the longer those take on a busy machine
    #[arg(long, default_value_t = tidewater_queries::df_sql::DEFAULT_SQL_NICE, help_heading = "API",
        value_parser = clap::value_parser!(i32).range(0..=19))]
    pub(crate) sql_nice: i32,
    /// Threads that run POST /v1/sql queries [default: every core but one, at least one]
    #[arg(long, help_heading = "API",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub(crate) sql_threads: Option<usize>,
}

impl TailArgs {
    /// The tail's options, as the node takes them.
    pub(crate) fn options(self) -> tidewater_node::TailOptions {
        tidewater_node::TailOptions {
            ws: self.ws,
            poll_interval_ms: self.poll_interval_ms,
            confirmations: self.confirmations,
            compact_blocks: self.compact_blocks,
            compact_interval_secs: self.compact_interval_secs,
            merge_blocks: self.merge_blocks,
            empty_checks: match self.empty_checks {
                EmptyChecksArg::Auto => tidewater_tail::EmptyChecks::Auto,
                EmptyChecksArg::AtOnce => tidewater_tail::EmptyChecks::AtOnce,
                EmptyChecksArg::Deferred => tidewater_tail::EmptyChecks::Deferred,
            },
            print_updates: self.print_updates,
            no_serve: self.no_serve,
            api: self.api.options(),
            publish: None,
        }
    }
}

impl ApiArgs {
    /// The API's options, as the node takes them.
    pub(crate) fn options(&self) -> tidewater_node::ApiOptions {
        tidewater_queries::df_sql::set_sql_nice(self.sql_nice);
        if let Some(n) = self.sql_threads {
            tidewater_queries::df_sql::set_sql_threads(n);
        }
        tidewater_node::ApiOptions {
            listen: self.listen,
            snapshot_interval: self.snapshot_interval,
            stream_history: self.stream_history,
            limits: tidewater_queries::df_sql::SqlLimits {
                max_rows: self.sql_max_rows,
                timeout: std::time::Duration::from_millis(self.sql_timeout_ms.max(1)),
                memory: self.sql_memory_mib.max(1) << 20,
                concurrency: self.sql_concurrency.max(1),
            },
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Data directory
    #[arg(long, default_value = "data")]
    pub(crate) data: PathBuf,
    /// Look for newly committed blocks this often, in milliseconds
    #[arg(long, default_value = "1000")]
    pub(crate) poll_interval_ms: u64,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) source: BackfillArgs,
    #[command(flatten)]
    pub(crate) tail: TailArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// Also ask this node for its head and finalized block
    #[arg(long)]
    pub(crate) rpc: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct StateArgs {
    /// Data directory
    #[arg(long, default_value = "data")]
    pub(crate) data: PathBuf,
    /// State as of this block [default: the last committed block]
    #[arg(long)]
    pub(crate) block: Option<u64>,
    /// Only this pool
    #[arg(long, value_parser = parse_address)]
    pub(crate) pool: Option<Address>,
}
