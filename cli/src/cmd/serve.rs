//! `tidewater serve`: the API over a data directory that another process writes.

use crate::args::ServeArgs;
use crate::CmdResult;

pub(crate) async fn serve(a: ServeArgs) -> CmdResult {
    let poll = std::time::Duration::from_millis(a.poll_interval_ms);
    // On object storage the replica follows the store; the API follows the replica.
    let _follow = tidewater_storage::attached(&a.data).map(|_| {
        let data = a.data.clone();
        tidewater_chain::SpawnedTask::spawn(async move {
            loop {
                tokio::time::sleep(poll).await;
                if let Err(e) = crate::data::sync(&data).await {
                    tracing::warn!(error = ?e, "following the store; retrying");
                }
            }
        })
    });
    tidewater_node::serve_directory(a.data, a.api.options(), poll).await
}
