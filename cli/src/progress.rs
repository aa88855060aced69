//! Progress: a bar on a terminal, periodic log lines otherwise; log lines never garble the bar.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidewater_backfill::Progress;

/// A tracing writer to stderr that suspends the progress bar, if one is shown, while it writes.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogWriter {
    bar: Arc<Mutex<Option<ProgressBar>>>,
}

impl LogWriter {
    fn set_bar(&self, bar: Option<ProgressBar>) {
        *self.bar.lock().expect("invariant: log writer lock not poisoned") = bar;
    }
}

pub(crate) struct LogLine {
    bar: Option<ProgressBar>,
    buf: Vec<u8>,
}

impl std::io::Write for LogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let emit = || {
            use std::io::Write as _;
            let _ = std::io::stderr().write_all(&buf);
        };
        match &self.bar {
            Some(bar) => bar.suspend(emit),
            None => emit(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine {
            bar: self.bar.lock().expect("invariant: log writer lock not poisoned").clone(),
            buf: Vec::new(),
        }
    }
}

/// How often progress is reported without a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Reports a running backfill's progress until dropped.
pub(crate) struct Reporter {
    progress: Arc<Progress>,
    bar: Option<ProgressBar>,
    writer: LogWriter,
    started: Instant,
    last_log: Instant,
}

impl Reporter {
    pub(crate) fn new(progress: Arc<Progress>, writer: LogWriter, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} blocks  {msg}  ETA {eta}",
                )
                .expect("invariant: progress template is valid"),
            );
            bar
        });
        writer.set_bar(bar.clone());
        let now = Instant::now();
        Self { progress, bar, writer, started: now, last_log: now }
    }

    pub(crate) fn tick(&mut self) {
        let p = &self.progress;
        let blocks = p.blocks_done.load(Ordering::Relaxed);
        let total = p.blocks_total.load(Ordering::Relaxed);
        let logs = p.logs_done.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rates =
            format!("{:.0} blocks/s, {:.0} logs/s", blocks as f64 / secs, logs as f64 / secs);
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(blocks);
                bar.set_message(rates);
            }
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                tracing::info!(
                    blocks,
                    total,
                    chunks = p.chunks_done.load(Ordering::Relaxed),
                    chunks_total = p.chunks_total.load(Ordering::Relaxed),
                    logs,
                    "progress: {rates}"
                );
            }
            None => {}
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.writer.set_bar(None);
    }
}
