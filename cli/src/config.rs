//! `tidewater.toml`: every setting a flag can give, flags override the file.

use eyre::{Result, WrapErr};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tidewater_chain::{ContractSource, UniswapV3};

/// The file's shape. Unknown keys are errors, so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// Data directory.
    pub(crate) data: Option<PathBuf>,
    #[serde(default)]
    pub(crate) chain: ChainConfig,
    #[serde(default)]
    pub(crate) sources: SourcesConfig,
    #[serde(default)]
    pub(crate) tuning: TuningConfig,
    #[serde(default)]
    pub(crate) publish: PublishConfig,
    #[serde(default)]
    pub(crate) ha: HaConfig,
}

/// `[ha]`: `run --ha` (flags override).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HaConfig {
    pub(crate) enabled: Option<bool>,
    pub(crate) lease_ms: Option<u64>,
}

/// `[publish]`: the broker `run`/`tail` publish to (flags `--publish*` override).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishConfig {
    pub(crate) url: Option<String>,
    pub(crate) stream: Option<String>,
    pub(crate) max_age_secs: Option<u64>,
    pub(crate) max_mib: Option<u64>,
    pub(crate) dedup_window_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChainConfig {
    /// RPC URLs in order of preference.
    #[serde(default)]
    pub(crate) rpc: Vec<String>,
    /// Expected chain id (checked against the node).
    pub(crate) chain_id: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourcesConfig {
    pub(crate) uniswap_v3: Option<UniswapV3>,
    #[serde(default)]
    pub(crate) contracts: Vec<ContractSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TuningConfig {
    pub(crate) concurrency: Option<usize>,
    pub(crate) rps: Option<f64>,
    pub(crate) rpc_timeout_ms: Option<u64>,
    pub(crate) chunk_size: Option<u64>,
    pub(crate) chunks_in_flight: Option<usize>,
    pub(crate) chunk_logs: Option<u64>,
    pub(crate) answer_logs: Option<u64>,
    pub(crate) log_range: Option<u64>,
    pub(crate) max_log_range: Option<u64>,
    pub(crate) filter_mode: Option<tidewater_chain::FilterMode>,
    pub(crate) block_checks_depth: Option<u64>,
}

/// Default config file looked for in the working directory.
pub(crate) const DEFAULT_CONFIG: &str = "tidewater.toml";

/// Loads `path`, or `./tidewater.toml` when no path is given and it exists.
pub(crate) fn load(path: Option<&Path>) -> Result<FileConfig> {
    let (path, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    if !required && !path.exists() {
        return Ok(FileConfig::default());
    }
    let text =
        std::fs::read_to_string(&path).wrap_err_with(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).wrap_err_with(|| format!("parsing {}", path.display()))
}
