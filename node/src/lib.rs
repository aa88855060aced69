//! # tidewater-node
//!
//! The wiring of a running Tidewater: the live state loaded from a data directory and fed by
//! the tail's update bus, the HTTP API beside it ([`serve`]), serving a directory another
//! process writes, token metadata through the chain, and the process signals that stop it all
//! through one cancellation token. The `tidewater` binary parses arguments into these options
//! and maps [`Failure`] to exit codes; it holds no wiring of its own.
//!
//! ```text
//!   RpcClient ──▶ Backfill ──commits──▶ DatasetWriter ◀──compacts── Tail ──ChainUpdate bus──┐
//!                                            │                                             │
//!                                   load (snapshot + fold)                                 ▼
//!                                            └──────────▶ LiveState (writer thread) ──View──▶ API
//! ```
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod ha;
pub mod pipeline;
pub mod serve;
mod tokens;

pub use pipeline::{BlockBound, Mode, Observer, Plan, TailOptions};
pub use serve::{bind, load, serve_directory, start, ApiOptions, ServiceExt};
pub use tokens::token_lookup;

use eyre::WrapErr as _;

/// A failure with its kind: bad input (the caller's to fix; the binary exits 2 and nothing was
/// written) or a runtime failure (exit 1).
#[derive(Debug)]
pub enum Failure {
    /// Bad input: configuration, arguments, a data directory that is not this dataset.
    Usage(eyre::Report),
    /// Anything else.
    Runtime(eyre::Report),
}

impl<E: Into<eyre::Report>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::Runtime(e.into())
    }
}

/// Marks `e` as bad input.
pub fn usage(e: impl Into<eyre::Report>) -> Failure {
    Failure::Usage(e.into())
}

/// SIGINT and SIGTERM as one stream.
#[derive(Debug)]
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn new() -> eyre::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt()).wrap_err("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).wrap_err("installing the SIGTERM handler")?,
        })
    }

    /// The next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
