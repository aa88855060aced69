//! Spawning tokio tasks that cannot leak: a [`SpawnedTask`] is aborted when dropped, and a
//! panic inside it is re-raised in the task that joins it (as DataFusion's `SpawnedTask`).

use std::future::Future;

/// A spawned task owned by its handle.
#[derive(Debug)]
pub struct SpawnedTask<T> {
    handle: Option<tokio::task::JoinHandle<T>>,
}

impl<T: Send + 'static> SpawnedTask<T> {
    /// Spawns `f` on the current runtime.
    #[allow(clippy::disallowed_methods)] // the one place allowed to spawn: the handle aborts on drop
    pub fn spawn<F>(f: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        Self { handle: Some(tokio::task::spawn(f)) }
    }

    /// Waits for the task; re-raises its panic.
    pub async fn join(mut self) -> T {
        let handle = self.handle.take().expect("invariant: joined once");
        match handle.await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => unreachable!("invariant: only Drop aborts a SpawnedTask ({e})"),
        }
    }
}

impl<T> Drop for SpawnedTask<T> {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.abort();
        }
    }
}
