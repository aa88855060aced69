//! The `tidewater` binary: argument parsing, configuration, wiring and exit codes.
//!
//! Exit codes: 0 success (and on a broken pipe), 2 usage or configuration errors (nothing is
//! written), 1 runtime failures.

mod args;
mod cmd;
mod config;
mod data;
mod progress;

use clap::Parser as _;
use std::process::ExitCode;

/// A failure with its exit code: bad input (2) or a runtime failure (1).
pub(crate) use tidewater_node::{usage, Failure};

pub(crate) type CmdResult = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let writer = progress::LogWriter::default();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone())
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("invariant: tokio runtime starts");
    data::init(cli.coordinator.clone(), cli.cache_dir.clone());
    let mut command = cli.command;
    let result = rt.block_on(async move {
        // Readers of an object-store dataset work on its replica, brought up to the store.
        if let Some((d, files)) = command.reader_data_mut() {
            *d = data::open(d, files).await?;
        }
        match command {
            args::Command::Backfill(a) => cmd::backfill::run(*a, None, writer).await,
            args::Command::Run(a) => cmd::run::run(*a, writer).await,
            args::Command::Tail(a) => cmd::tail::tail(*a, writer).await,
            args::Command::Sql(a) => cmd::sql::sql(a).await,
            args::Command::State(a) => cmd::state::state(a).await,
            args::Command::Status(a) => cmd::status::status(a).await,
            args::Command::Verify(a) => cmd::verify::verify(a).await,
            args::Command::Serve(a) => cmd::serve::serve(a).await,
            args::Command::Consume(a) => cmd::consume::consume(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
