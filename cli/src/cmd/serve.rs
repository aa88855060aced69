//! `tidewater serve`: the API over a data directory that another process writes.

use crate::args::ServeArgs;
use crate::CmdResult;

pub(crate) async fn serve(a: ServeArgs) -> CmdResult {
    let poll = std::time::Duration::from_millis(a.poll_interval_ms);
    tidewater_node::serve_directory(a.data, a.api.options(), poll).await
}
