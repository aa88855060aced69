//! Durable file writes: temp file, fsync, rename, fsync of the directory.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::Write as _;
use std::path::Path;

/// Writes `bytes` to `path` so that after a crash `path` holds either its old content or all of
/// `bytes`, never a prefix: write a temp file beside it, fsync it, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("invariant: dataset files live in a directory");
    fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let name = path.file_name().expect("invariant: file path has a name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut f = File::create(&tmp).map_err(Error::io("creating", &tmp))?;
        f.write_all(bytes).map_err(Error::io("writing", &tmp))?;
        f.sync_all().map_err(Error::io("fsync", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(Error::io("renaming into", path))?;
    sync_dir(dir)
}

/// A file written and fsynced beside its final path, not yet renamed into place.
#[derive(Debug)]
pub(crate) struct Staged {
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl Staged {
    /// Writes `bytes` to a temp file beside `path` and fsyncs it.
    pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<Self> {
        let dir = path.parent().expect("invariant: dataset files live in a directory");
        fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        let name = path.file_name().expect("invariant: file path has a name").to_string_lossy();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut f = File::create(&tmp).map_err(Error::io("creating", &tmp))?;
        f.write_all(bytes).map_err(Error::io("writing", &tmp))?;
        f.sync_all().map_err(Error::io("fsync", &tmp))?;
        Ok(Self { tmp, path: path.to_path_buf() })
    }

    /// Renames it into place (the commit point of a manifest entry).
    pub(crate) fn rename(&self) -> Result<()> {
        fs::rename(&self.tmp, &self.path).map_err(Error::io("renaming into", &self.path))
    }

    /// fsyncs the directory, so the rename survives power loss.
    pub(crate) fn sync(&self) -> Result<()> {
        sync_dir(self.path.parent().expect("invariant: dataset files live in a directory"))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Not renamed (a fenced commit): the temp file goes.
        let _ = fs::remove_file(&self.tmp);
    }
}

/// fsyncs a directory so a rename inside it survives power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("fsync", dir))
}

/// Removes temp files left by a crashed writer under `dir` (one level of subdirectories).
pub(crate) fn remove_temp_files(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let Ok(entries) = fs::read_dir(dir) else { return Ok(0) };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            removed += remove_temp_files_flat(&p)?;
        }
    }
    Ok(removed + remove_temp_files_flat(dir)?)
}

fn remove_temp_files_flat(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(Error::io("listing", dir))?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            fs::remove_file(entry.path()).map_err(Error::io("removing", entry.path()))?;
            removed += 1;
        }
    }
    Ok(removed)
}
