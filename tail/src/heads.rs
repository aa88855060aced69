//! New-head notifications from a WebSocket `eth_subscribe("newHeads")`, reconnecting with
//! backoff when the socket drops. A notification only wakes the tail early: blocks are still
//! fetched over HTTP in order, so a missed notification (or a dropped socket) loses nothing.

use futures::{SinkExt as _, StreamExt as _};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Longest wait before reconnecting a dropped socket.
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Watches `url` until cancelled, calling `notify_one` on every new head.
pub(crate) async fn watch_heads(
    url: tidewater_chain::ProviderUrl,
    notify: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        match subscribe(&url, &notify, &cancel).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(url = %url, error = %e, failures, "newHeads subscription failed; polling until it reconnects");
            }
        }
        let wait =
            tidewater_chain::backoff(failures.max(1), Duration::from_millis(200), RECONNECT_MAX);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        // Whatever happened while disconnected, the tail catches up on its next step.
        notify.notify_one();
    }
}

async fn subscribe(
    url: &tidewater_chain::ProviderUrl,
    notify: &Notify,
    cancel: &CancellationToken,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url.expose()).await?;
    let req = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]});
    ws.send(Message::text(req.to_string())).await?;
    tracing::info!(url = %url, "subscribed to newHeads");
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = ws.next() => m,
        };
        match msg {
            None => return Ok(()),
            Some(Err(e)) => return Err(e),
            Some(Ok(Message::Text(t))) if t.contains("eth_subscription") => notify.notify_one(),
            Some(Ok(Message::Ping(p))) => ws.send(Message::Pong(p)).await?,
            Some(Ok(Message::Close(_))) => return Ok(()),
            Some(Ok(_)) => {}
        }
    }
}
