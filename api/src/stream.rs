//! `/v1/stream`: Server-Sent Events of every block's changes, resumable with `Last-Event-ID`.

use super::*;

struct StreamState {
    svc: Service,
    queue: VecDeque<Arc<StreamEvent>>,
    rx: broadcast::Receiver<Arc<StreamEvent>>,
    last_id: u64,
    filter: Option<HashSet<Address>>,
    first: Option<Event>,
    done: bool,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        self.svc.stats.stream_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Event ids on the wire carry this process's random tag in their upper bits: an id another
/// instance (or an earlier run of this one) issued is recognised as foreign and answered with
/// `resync`, never read as a position in this instance's history. Below 2^53, so JavaScript
/// holds them exactly.
fn id_base() -> u64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| u64::from(rand::random::<u16>().max(1)) << 32)
}

/// The wire id of a history id.
fn wire_id(id: u64) -> u64 {
    id_base() + id
}

/// The history id of a wire id; `None` for another instance's.
fn history_id(wire: u64) -> Option<u64> {
    wire.checked_sub(id_base()).filter(|id| *id < 1 << 32)
}

fn sse_event(ev: &StreamEvent, filter: Option<&HashSet<Address>>) -> Option<Event> {
    let data = ev.to_json(filter)?;
    Some(
        Event::default()
            .id(wire_id(ev.id).to_string())
            .event(ev.status.as_str())
            .data(data.to_string()),
    )
}

fn resync_event(oldest: u64) -> Event {
    Event::default().event("resync").data(
        json!({"error": "events since Last-Event-ID are not kept here (too old, or issued by another instance); reload the state", "oldest_id": wire_id(oldest)})
            .to_string(),
    )
}

/// The block of a stream event.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes the JSON that `StreamEvent::to_json` writes.
pub(super) struct StreamBlock {
    number: u64,
    hash: String,
    parent_hash: String,
}

/// The status of a block in a stream event.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(super) enum StreamStatus {
    Pending,
    Confirmed,
    Reverted,
}

/// One stream event (`pending`, `confirmed` or `reverted`): the block and what it changed, as
/// it is after the change (a tick with liquidity_gross "0" is gone; a position with `burned` is
/// gone). The first event of a new client is `snapshot`: the head state.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct StreamUpdate {
    id: u64,
    status: StreamStatus,
    block: StreamBlock,
    pools: Vec<tidewater_state::pool_state::PoolState>,
    #[schema(value_type = Vec<Object>)]
    ticks: Vec<()>,
    #[schema(value_type = Vec<Object>)]
    positions: Vec<()>,
}

/// Server-Sent Events: `snapshot` first (the head state), then `pending`, `confirmed` and
/// `reverted` updates with increasing ids. Reconnect with `Last-Event-ID` to receive what was
/// missed, reverts included; `resync` means the cursor is older than the history kept.
#[utoipa::path(get, path = "/v1/stream",
    params(("pools" = Option<String>, Query, description = "Comma-separated pool addresses"),
           ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received")),
    responses((status = 200, description = "Event stream", content_type = "text/event-stream", body = StreamUpdate),
        (status = 400, description = "Malformed pool address or Last-Event-ID", body = ErrorBody),
        (status = 404, description = "Unknown pool", body = ErrorBody),
        (status = 503, description = "The live state failed", body = ErrorBody)))]
pub(super) async fn stream(
    State(svc): State<Service>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<params::Stream>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filter = q.pools.map(|p| p.into_iter().collect::<HashSet<_>>());
    let last_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| bad("malformed Last-Event-ID: expected an event id"))?,
        ),
        None => None,
    };
    // Another instance's id: past any history here, so the subscription answers `resync`.
    let last_id = last_id.map(|w| history_id(w).unwrap_or(u64::MAX - 1));
    let (queue, rx, last, first) = {
        svc.live()?;
        let sub = svc.live.subscribe(last_id);
        let live = match &sub {
            Ok(s) => s.view.clone(),
            Err(_) => svc.live.view(),
        };
        if let Some(f) = &filter {
            if let Some(a) = f.iter().find(|a| !live.head().pools.contains_key(*a)) {
                return Err(missing(format!("unknown pool {a}")));
            }
        }
        match sub {
            Ok(Subscription { missed, rx, .. }) => {
                let last = last_id.unwrap_or(live.last_event_id());
                // A new client starts from the head state, then folds the events after it.
                let first = last_id.is_none().then(|| {
                    let st = live.head();
                    let keep = |a: &Address| filter.as_ref().is_none_or(|f| f.contains(a));
                    let snapshot = json!({
                        "block": block_json(st, live.is_confirmed(st.block)),
                        "pools": st.pools.values().filter(|p| keep(&p.address)).map(|p| {
                            let mut v = p.to_json();
                            v["ticks"] = ticks_json(st.ticks.get(&p.address));
                            v
                        }).collect::<Vec<_>>(),
                        "positions": st.positions.values().filter(|p| p.pool.is_none_or(|a| keep(&a))).map(|p| p.to_json()).collect::<Vec<_>>(),
                    });
                    Event::default().id(wire_id(last).to_string()).event("snapshot").data(snapshot.to_string())
                });
                (missed.into_iter().collect(), rx, last, first)
            }
            Err(oldest) => match svc.live.subscribe(None) {
                Ok(s) => {
                    (VecDeque::new(), s.rx, s.view.last_event_id(), Some(resync_event(oldest)))
                }
                Err(_) => {
                    return Err(ApiError(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the stream is unavailable".into(),
                    ))
                }
            },
        }
    };
    svc.stats.stream_clients.fetch_add(1, Ordering::Relaxed);
    let st = StreamState { svc, queue, rx, last_id: last, filter, first, done: false };
    let s = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(e) = st.first.take() {
            return Some((Ok(e), st));
        }
        loop {
            let ev = match st.queue.pop_front() {
                Some(ev) => ev,
                None => match tokio::select! {
                    r = st.rx.recv() => r,
                    // The server stops (a signal, a standby taking over): end the stream so
                    // the graceful shutdown does not wait for it; the client reconnects.
                    _ = st.svc.shutdown.cancelled() => return None,
                } {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow for the channel: catch up from the history.
                        match st.svc.live.since(st.last_id) {
                            Ok(evs) => {
                                st.queue.extend(evs);
                                continue;
                            }
                            Err(oldest) => {
                                st.done = true;
                                return Some((Ok(resync_event(oldest)), st));
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            if ev.id <= st.last_id {
                continue;
            }
            st.last_id = ev.id;
            if let Some(e) = sse_event(&ev, st.filter.as_ref()) {
                st.svc.stats.stream_delay.observe(ev.received.elapsed().as_secs_f64());
                return Some((Ok(e), st));
            }
        }
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_ids_round_trip_and_another_instances_are_foreign() {
        for id in [0, 1, 77, (1 << 32) - 1] {
            assert_eq!(history_id(wire_id(id)), Some(id));
        }
        assert!(wire_id(1 << 31) < 1 << 53, "JavaScript holds the ids exactly");
        // Another process's tag (a different upper half), or a bare counter of an old build.
        let other = (((id_base() >> 32) ^ 0x1) << 32) | 5;
        assert_eq!(history_id(other), None);
        assert_eq!(history_id(5), None);
    }
}
