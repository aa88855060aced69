//! `tidewater run`: backfill up to the confirmed watermark, then follow the head, with the live
//! state and the API, in one process.

use super::backfill::Mode;
use crate::args::RunArgs;
use crate::progress::LogWriter;
use crate::CmdResult;

pub(crate) async fn run(a: RunArgs, log_writer: LogWriter) -> CmdResult {
    super::backfill::run(a.source, Some((Mode::Run, a.tail)), log_writer).await
}
