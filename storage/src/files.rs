//! Durable file writes: temp file, fsync, rename, fsync of the directory.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that after a crash `path` holds either its old content or all of
/// `bytes`, never a prefix: write a temp file beside it, fsync it, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let staged = Staged::write(path, bytes)?;
    staged.rename()?;
    staged.sync()
}

/// A file written and fsynced beside its final path, not yet renamed into place.
#[derive(Debug)]
pub(crate) struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
}

impl Staged {
    /// Writes `bytes` to a temp file beside `path` and fsyncs it.
    pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<Self> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Error::io("writing", path)(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file path",
            )));
        };
        fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        // Unique per write (threads of one process may write the same path at once).
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{}.{}.{n}.tmp", name.to_string_lossy(), std::process::id()));
        let mut f = File::create(&tmp).map_err(Error::io("creating", &tmp))?;
        f.write_all(bytes).map_err(Error::io("writing", &tmp))?;
        f.sync_all().map_err(Error::io("fsync", &tmp))?;
        Ok(Self { tmp, path: path.to_path_buf(), dir: dir.to_path_buf() })
    }

    /// Renames it into place (the commit point of a manifest entry).
    pub(crate) fn rename(&self) -> Result<()> {
        fs::rename(&self.tmp, &self.path).map_err(Error::io("renaming into", &self.path))
    }

    /// fsyncs the directory, so the rename survives power loss.
    pub(crate) fn sync(&self) -> Result<()> {
        sync_dir(&self.dir)
    }
}

/// Opens (creating) a lock file under `root`, for `flock`.
pub(crate) fn open_lock_file(root: &Path, name: &str) -> Result<(File, PathBuf)> {
    let p = root.join(name);
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(Error::io("opening", &p))?;
    Ok((f, p))
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
