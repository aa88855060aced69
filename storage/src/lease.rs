//! The writer lease of a data directory (`run --ha`): one holder at a time, an epoch that
//! grows with every new holder, and fenced commits.
//!
//! The record (`.lock.lease.json`: epoch, holder, expiry in Unix milliseconds) is only read and
//! written while holding an exclusive `flock` on `.lock.lease`, held for the few microseconds
//! of a check-and-write, never while waiting. The holder renews the expiry every `ttl / 3`; a
//! standby takes the lease (epoch + 1) once the expiry has passed. Every mutation of the
//! manifest by a holder runs inside [`Lease::fenced`], which, under the same `flock`, checks
//! that the record still names this holder's epoch and has not expired (and that this process
//! renewed it within `ttl` by its own monotonic clock): a leader paused past its lease (SIGSTOP,
//! a long GC, a lost network to the shared disk) finds a higher epoch and its commit is
//! refused with [`Error::Fenced`].
//!
//! Expiry compares the holder's wall clock with the standby's: hosts sharing a directory must
//! keep their clocks in sync (NTP: milliseconds, against a ttl of seconds).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The lease record.
pub const LEASE_FILE: &str = ".lock.lease.json";
/// The file whose `flock` guards the record.
pub const LEASE_LOCK: &str = ".lock.lease";

/// What the record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Grows by one with every new holder; checked at every commit.
    pub epoch: u64,
    /// Who holds it (host, process id, a random part).
    pub holder: String,
    /// Until when, in Unix milliseconds.
    pub expires_unix_ms: u64,
}

impl LeaseRecord {
    /// Whether it is still held at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_unix_ms
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    /// On object storage: the store or coordinator holding the record, and the version this
    /// holder last wrote (renewals are compare-and-swap on it).
    remote: Option<(std::sync::Arc<crate::remote::Remote>, Mutex<crate::remote::cas::Version>)>,
    root: PathBuf,
    holder: String,
    ttl: Duration,
    epoch: u64,
    /// Until when this process may act as the holder, by its own clock.
    valid_until: Mutex<Instant>,
}

/// The guard of the record: an exclusive `flock` on [`LEASE_LOCK`].
struct Guard(File);

impl Guard {
    /// The holder's side: waits for the lock (held by others only for a check-and-write).
    fn take(root: &Path) -> Result<Self> {
        let (f, p) = crate::files::open_lock_file(root, LEASE_LOCK)?;
        f.lock().map_err(Error::io("locking", &p))?;
        Ok(Self(f))
    }

    /// A standby's side: never waits (the lock may be held by a holder paused inside a
    /// commit; that holder's lease is not taken over until it resumes and lets go).
    fn try_take(root: &Path) -> Result<Option<Self>> {
        let (f, p) = crate::files::open_lock_file(root, LEASE_LOCK)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(Self(f))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io("locking", &p)(e)),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Key of the lease record in the store or coordinator of a dataset on object storage.
const REMOTE_LEASE: &str = "_lease.json";

fn read_remote(
    remote: &crate::remote::Remote,
) -> Result<Option<(LeaseRecord, crate::remote::cas::Version)>> {
    let got = remote.record_get(REMOTE_LEASE)?;
    Ok(got.and_then(|(b, v)| serde_json::from_slice(&b).ok().map(|r| (r, v))))
}

/// Reads the lease record of `root`, if any (a damaged record reads as none: it is rewritten
/// by the next holder).
pub fn read_record(root: &Path) -> Option<LeaseRecord> {
    if let Some(remote) = crate::remote::attached(root) {
        return read_remote(&remote).ok().flatten().map(|(r, _)| r);
    }
    let bytes = std::fs::read(root.join(LEASE_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_record(root: &Path, r: &LeaseRecord) -> Result<()> {
    let bytes = serde_json::to_vec(r)
        .map_err(|source| Error::Json { path: root.join(LEASE_FILE), source })?;
    crate::files::write_atomic(&root.join(LEASE_FILE), &bytes)
}

impl Lease {
    /// Takes the lease of `root` for `holder` when nobody holds it (or it expired). `None`:
    /// another holder's lease is live.
    pub fn try_acquire(root: &Path, holder: &str, ttl: Duration) -> Result<Option<Self>> {
        if let Some(remote) = crate::remote::attached(root) {
            return Self::try_acquire_remote(remote, root, holder, ttl);
        }
        std::fs::create_dir_all(root).map_err(Error::io("creating", root))?;
        let Some(_g) = Guard::try_take(root)? else { return Ok(None) };
        let now = now_ms();
        let old = read_record(root);
        if old.as_ref().is_some_and(|r| r.live(now) && r.holder != holder) {
            return Ok(None);
        }
        let epoch = old.map_or(1, |r| r.epoch + 1);
        let start = Instant::now();
        write_record(
            root,
            &LeaseRecord {
                epoch,
                holder: holder.to_string(),
                expires_unix_ms: now + ttl.as_millis() as u64,
            },
        )?;
        Ok(Some(Self {
            remote: None,
            root: root.to_path_buf(),
            holder: holder.to_string(),
            ttl,
            epoch,
            valid_until: Mutex::new(start + ttl),
        }))
    }

    /// On object storage: compare-and-swap of the record (the store's or etcd's), then a
    /// takeover record in the commit log, which fences every earlier holder's commits.
    fn try_acquire_remote(
        remote: std::sync::Arc<crate::remote::Remote>,
        root: &Path,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Self>> {
        let now = now_ms();
        let old = read_remote(&remote)?;
        if old.as_ref().is_some_and(|(r, _)| r.live(now) && r.holder != holder) {
            return Ok(None);
        }
        let epoch = old.as_ref().map_or(1, |(r, _)| r.epoch + 1);
        let start = Instant::now();
        let rec = LeaseRecord {
            epoch,
            holder: holder.to_string(),
            expires_unix_ms: now + ttl.as_millis() as u64,
        };
        let bytes = bytes::Bytes::from(
            serde_json::to_vec(&rec)
                .map_err(|source| Error::Json { path: PathBuf::from(REMOTE_LEASE), source })?,
        );
        let Some(version) = remote.record_put(REMOTE_LEASE, bytes, old.as_ref().map(|(_, v)| v))?
        else {
            return Ok(None);
        };
        remote.append(epoch, vec![crate::remote::log::Action::Takeover])?;
        Ok(Some(Self {
            remote: Some((remote, Mutex::new(version))),
            root: root.to_path_buf(),
            holder: holder.to_string(),
            ttl,
            epoch,
            valid_until: Mutex::new(start + ttl),
        }))
    }

    fn fenced_err(&self, now: Option<LeaseRecord>) -> Error {
        Error::Fenced {
            path: self.root.clone(),
            epoch: self.epoch,
            now: now.map(|r| (r.epoch, r.holder)),
        }
    }

    fn write_remote(&self, expires_unix_ms: u64) -> Result<()> {
        let Some((remote, version)) = &self.remote else { return Ok(()) };
        let rec = LeaseRecord { epoch: self.epoch, holder: self.holder.clone(), expires_unix_ms };
        let bytes = bytes::Bytes::from(
            serde_json::to_vec(&rec)
                .map_err(|source| Error::Json { path: PathBuf::from(REMOTE_LEASE), source })?,
        );
        let mut v = version.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match remote.record_put(REMOTE_LEASE, bytes, Some(&v))? {
            Some(new) => {
                *v = new;
                Ok(())
            }
            None => Err(self.fenced_err(read_remote(remote)?.map(|(r, _)| r))),
        }
    }

    /// This holder's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The lease's time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether this holder's lease ran out by its own clock (no renewal went through within
    /// the ttl): another instance may hold it now.
    pub fn expired(&self) -> bool {
        Instant::now()
            >= *self.valid_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn check(&self) -> Result<()> {
        let mine = *self.valid_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = read_record(&self.root);
        let held = r.as_ref().is_some_and(|r| r.epoch == self.epoch && r.holder == self.holder);
        if !held || Instant::now() >= mine {
            return Err(Error::Fenced {
                path: self.root.clone(),
                epoch: self.epoch,
                now: r.map(|r| (r.epoch, r.holder)),
            });
        }
        Ok(())
    }

    /// Extends the lease by its ttl. [`Error::Fenced`] when it was lost (another holder took
    /// it, or this process did not renew in time).
    pub fn renew(&self) -> Result<()> {
        if self.remote.is_some() {
            let start = Instant::now();
            if start >= *self.valid_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
            {
                return Err(self.fenced_err(None));
            }
            self.write_remote(now_ms() + self.ttl.as_millis() as u64)?;
            *self.valid_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                start + self.ttl;
            return Ok(());
        }
        let _g = Guard::take(&self.root)?;
        self.check()?;
        let start = Instant::now();
        write_record(
            &self.root,
            &LeaseRecord {
                epoch: self.epoch,
                holder: self.holder.clone(),
                expires_unix_ms: now_ms() + self.ttl.as_millis() as u64,
            },
        )?;
        *self.valid_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            start + self.ttl;
        Ok(())
    }

    /// Runs a mutation of the dataset as the holder: refused with [`Error::Fenced`] unless this
    /// lease is still the one in the record and unexpired, checked under the record's lock and
    /// held through `f`, so no takeover can fall between the check and the commit. Keep `f`
    /// short (the manifest's rename): a holder paused inside it holds off the takeover.
    ///
    /// On object storage the check is this process's own clock; the commit log refuses the
    /// commit itself once a newer holder's takeover record is in it.
    pub fn fenced<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.remote.is_some() {
            if Instant::now()
                >= *self.valid_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
            {
                return Err(self.fenced_err(None));
            }
            return f();
        }
        let _g = Guard::take(&self.root)?;
        self.check()?;
        f()
    }

    /// Gives the lease up (a clean stop): a standby takes it at once.
    pub fn release(&self) -> Result<()> {
        if self.remote.is_some() {
            return self.write_remote(0);
        }
        let _g = Guard::take(&self.root)?;
        if self.check().is_ok() {
            write_record(
                &self.root,
                &LeaseRecord { epoch: self.epoch, holder: self.holder.clone(), expires_unix_ms: 0 },
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_a_lost_lease_cannot_commit() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_millis(300);
        let a = Lease::try_acquire(dir.path(), "a", ttl).unwrap().expect("free");
        assert_eq!(a.epoch(), 1);
        assert!(Lease::try_acquire(dir.path(), "b", ttl).unwrap().is_none(), "a holds it");
        a.renew().unwrap();
        assert_eq!(a.fenced(|| Ok(7)).unwrap(), 7);
        // a stops renewing (paused): past its ttl b takes over, and a's commits are refused.
        std::thread::sleep(ttl + Duration::from_millis(50));
        let b = Lease::try_acquire(dir.path(), "b", ttl).unwrap().expect("expired");
        assert_eq!(b.epoch(), 2);
        let mut ran = false;
        let r = a.fenced(|| {
            ran = true;
            Ok(())
        });
        assert!(matches!(r, Err(Error::Fenced { epoch: 1, .. })), "{r:?}");
        assert!(!ran, "a fenced commit never runs");
        assert!(a.renew().is_err(), "a lost lease is not renewed");
        b.fenced(|| Ok(())).unwrap();
        // A clean stop hands over at once.
        b.release().unwrap();
        let c = Lease::try_acquire(dir.path(), "c", ttl).unwrap().expect("released");
        assert_eq!(c.epoch(), 3);
    }

    #[test]
    fn a_holder_that_did_not_renew_in_time_refuses_itself() {
        let dir = tempfile::tempdir().unwrap();
        let a = Lease::try_acquire(dir.path(), "a", Duration::from_millis(100)).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(150));
        // Nobody took it, but a cannot know that no one did: it must renew first.
        assert!(a.fenced(|| Ok(())).is_err());
    }
}
