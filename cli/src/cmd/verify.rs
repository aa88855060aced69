//! `tidewater verify`: checks every committed file of a data directory.

use super::open;
use crate::args::DataArgs;
use crate::{CmdResult, Failure};
use eyre::{eyre, WrapErr};

pub(crate) async fn verify(a: DataArgs) -> CmdResult {
    let ds = open(&a.data)?;
    let problems = tokio::task::spawn_blocking(move || ds.verify()).await.wrap_err("verifying")?;
    if problems.is_empty() {
        println!("ok: every committed file matches the manifest");
        return Ok(());
    }
    for p in &problems {
        eprintln!("corrupt: {:#}", eyre!(format!("{p}")));
    }
    Err(Failure::Runtime(eyre!("{} file(s) do not match the manifest", problems.len())))
}
