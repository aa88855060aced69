//! One module per command. `backfill`, `run` and `tail` share the pipeline (`backfill.rs`
//! resolves flags and config into its plan); the rest read a data directory.

pub(crate) mod backfill;
pub(crate) mod consume;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod sql;
pub(crate) mod state;
pub(crate) mod status;
pub(crate) mod tail;
pub(crate) mod verify;

use crate::{usage, Failure};
use eyre::eyre;
use std::path::Path;
use tidewater_storage::Dataset;

/// Opens a data directory for reading: a directory that is not a dataset is bad input.
pub(crate) fn open(data: &Path) -> Result<Dataset, Failure> {
    open_with(data, Dataset::open)
}

/// [`open`] with another reader of the data directory (`status`: its summary alone).
pub(crate) fn open_with<T>(
    data: &Path,
    reader: impl FnOnce(&Path) -> tidewater_storage::Result<T>,
) -> Result<T, Failure> {
    reader(data).map_err(|e| match (&e, tidewater_storage::attached(data)) {
        (tidewater_storage::Error::NotADataset { .. }, Some(r)) => {
            usage(eyre!("{} is not a Tidewater dataset (no dataset.json)", r.url()))
        }
        _ if e.is_usage() => usage(e),
        _ => Failure::Runtime(eyre!(e)),
    })
}
