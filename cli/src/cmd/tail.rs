//! `tidewater tail`: follow the head from the data directory's checkpoint (or `--from`), with
//! the live state and the API.

use super::backfill::Mode;
use crate::args::RunArgs;
use crate::progress::LogWriter;
use crate::CmdResult;

pub(crate) async fn tail(a: RunArgs, log_writer: LogWriter) -> CmdResult {
    super::backfill::run(a.source, Some((Mode::Tail, a.tail)), log_writer).await
}
