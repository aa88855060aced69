//! `tidewater verify`: checks every committed file of a data directory.

use super::open;
use crate::args::DataArgs;
use crate::{CmdResult, Failure};
use eyre::{eyre, WrapErr};

pub(crate) async fn verify(a: DataArgs) -> CmdResult {
    let ds = open(&a.data)?;
    let remote = tidewater_storage::attached(&a.data);
    let problems = tokio::task::spawn_blocking(move || {
        let mut problems = ds.verify();
        // On object storage the replica was checked; the store's copies must match too.
        if let Some(r) = remote {
            for c in ds.manifest().chunks() {
                for f in c.tables.values() {
                    match r.size(&f.path) {
                        Ok(Some(n)) if n == f.bytes => {}
                        Ok(found) => problems.push(tidewater_storage::Error::Corrupt {
                            path: format!("{}/{}", r.url(), f.path).into(),
                            what: format!(
                                "{found:?} bytes in the store, manifest says {}",
                                f.bytes
                            ),
                        }),
                        Err(e) => problems.push(e),
                    }
                }
            }
        }
        problems
    })
    .await
    .wrap_err("verifying")?;
    if problems.is_empty() {
        println!("ok: every committed file matches the manifest");
        return Ok(());
    }
    for p in &problems {
        eprintln!("corrupt: {:#}", eyre!(format!("{p}")));
    }
    Err(Failure::Runtime(eyre!("{} file(s) do not match the manifest", problems.len())))
}
