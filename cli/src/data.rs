//! `--data` on object storage: `s3://bucket/prefix` (also `gs://`, `az://`) opens the bucket
//! and works on its local replica (see `tidewater_storage::remote`).

use crate::{usage, Failure};
use eyre::WrapErr as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// `--coordinator` and `--cache-dir`, set once from the command line.
static SETTINGS: OnceLock<(Option<String>, Option<PathBuf>)> = OnceLock::new();

pub(crate) fn init(coordinator: Option<String>, cache_dir: Option<PathBuf>) {
    let _ = SETTINGS.set((coordinator, cache_dir));
}

/// The replica of `url` when no `--cache-dir` is given: one per dataset URL under
/// `$TIDEWATER_HOME/cache` (instances on one host each need their own `--cache-dir`).
fn default_cache(url: &str) -> PathBuf {
    let home = std::env::var_os("TIDEWATER_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
            .join(".cache/tidewater")
    });
    let name: String =
        url.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    home.join("cache").join(name)
}

/// A local directory as it is; an object-store URL opened (credentials, bucket and, without a
/// coordinator, conditional writes are checked here) and replaced by its local replica.
/// Blocking (a probe of the store): called once at startup.
pub(crate) fn resolve(data: &Path) -> Result<PathBuf, Failure> {
    let url = data.to_string_lossy().to_string();
    if !tidewater_storage::is_remote(&url) {
        return Ok(data.to_path_buf());
    }
    let (coordinator, cache) = SETTINGS.get().cloned().unwrap_or_default();
    let cache = cache.unwrap_or_else(|| default_cache(&url));
    let remote = match tidewater_storage::Remote::open(&url, &cache, coordinator.as_deref()) {
        Ok(r) => r,
        Err(e) if e.is_usage() => return Err(usage(e)),
        Err(e) => return Err(Failure::Runtime(eyre::eyre!(e))),
    };
    tracing::info!(url = remote.url(), cache = %cache.display(), log = %remote.coordinator(), "dataset on object storage");
    tidewater_storage::attach(Arc::new(remote));
    Ok(cache)
}

/// Brings the replica of `data` up to the store, when it has one (readers: `sql`, `status`,
/// `verify`, `serve`, `state`).
pub(crate) async fn sync(data: &Path) -> Result<(), Failure> {
    sync_with(data, true).await
}

/// [`sync`]; without `files`, the entries only (see `Remote::sync_cache_with`).
async fn sync_with(data: &Path, files: bool) -> Result<(), Failure> {
    let Some(remote) = tidewater_storage::attached(data) else { return Ok(()) };
    let changed = tokio::task::spawn_blocking(move || remote.sync_cache_with(files))
        .await
        .wrap_err("syncing the replica")?
        .map_err(|e| {
            Failure::Runtime(eyre::eyre!(e).wrap_err("reading the dataset from the object store"))
        })?;
    tracing::debug!(changed, "replica in sync with the store");
    Ok(())
}

/// [`resolve`], then [`sync`] (with the files or without): what a reader of `data` opens.
pub(crate) async fn open(data: &Path, files: bool) -> Result<PathBuf, Failure> {
    let local = resolve(data)?;
    sync_with(&local, files).await?;
    Ok(local)
}
