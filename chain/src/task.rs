//! Spawning work that cannot leak and whose panics cannot escape: a [`SpawnedTask`] is aborted
//! when dropped (as DataFusion's `SpawnedTask`), and a panic inside it, or inside a job given to
//! [`run_on_rayon`], comes back as a [`Panicked`] error of that task, never as an abort of the
//! process or a lost answer.

use std::future::Future;

/// A task or rayon job panicked; the message says where, the task's owner decides what follows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a task panicked: {message}")]
pub struct Panicked {
    /// The panic's message.
    pub message: String,
}

impl Panicked {
    /// The error for a caught panic's payload (its `&str` or `String` message).
    pub fn from_payload(payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        Self { message }
    }
}

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

    /// Whether the task has ended (returned, panicked or was aborted).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(tokio::task::JoinHandle::is_finished)
    }

    /// Waits for the task; its panic becomes [`Panicked`].
    pub async fn join(mut self) -> Result<T, Panicked> {
        let Some(handle) = self.handle.take() else {
            return Err(Panicked { message: "joined twice".into() });
        };
        match handle.await {
            Ok(v) => Ok(v),
            Err(e) if e.is_panic() => Err(Panicked::from_payload(e.into_panic())),
            Err(e) => Err(Panicked { message: format!("task cancelled: {e}") }),
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

/// Runs CPU-bound `f` on the rayon pool and waits for it without blocking the runtime. A panic
/// in `f` is caught in the rayon thread (an uncaught one would abort the process) and returned.
pub async fn run_on_rayon<T, F>(f: F) -> Result<T, Panicked>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .map_err(Panicked::from_payload);
        let _ = tx.send(r);
    });
    rx.await.unwrap_or_else(|_| Err(Panicked { message: "the rayon job was dropped".into() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_become_errors() {
        let e = run_on_rayon(|| -> u32 { panic!("boom in rayon") }).await.unwrap_err();
        assert!(e.message.contains("boom in rayon"));
        assert_eq!(run_on_rayon(|| 7).await.unwrap(), 7);
        let e = SpawnedTask::spawn(async { panic!("boom in tokio {}", 1) }).join().await;
        assert!(e.unwrap_err().message.contains("boom in tokio 1"));
    }
}
