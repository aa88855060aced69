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
    Dataset::open(data).map_err(|e| match (&e, tidewater_storage::attached(data)) {
        (tidewater_storage::Error::NotADataset { .. }, Some(r)) => {
            usage(eyre!("{} is not a Tidewater dataset (no dataset.json)", r.url()))
        }
        _ if e.is_usage() => usage(e),
        _ => Failure::Runtime(eyre!(e)),
    })
}
