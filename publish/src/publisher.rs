//! The publisher: follows the live state's stream and publishes every update to JetStream.
//!
//! ```text
//!   live state ──StreamEvent──▶ diff against the checkpoint (what consumers were told)
//!        │                          │ write the update's messages into the checkpoint (fsync)
//!        │                          ▼
//!        │                    publish pool messages, await acks; then the block marker
//!        └─ lagged past its history (16Ki events): resync (full state of every pool)
//! ```
//!
//! It runs on its own task and only reads the live state, so a slow or absent broker never
//! blocks the tail or the API: updates wait in the live state's stream history, the backlog
//! is a metric, and past the history the publisher resyncs from the state (hot buffer + cold
//! tier) once the broker is back.

use crate::checkpoint::{Checkpoint, PublishedBlock};
use crate::wire::{
    delta_messages, full_messages, hex_address, marker, msg_id, BlockRef, Outgoing, Subjects,
    WireStatus,
};
use alloy_primitives::{Address, B256};
use async_nats::jetstream;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidewater_chain::metrics::{Collector, DescriptorEncoder, Histogram, DELAY_BUCKETS};
use tidewater_state::live::{Status, StreamEvent, Subscription, View};
use tidewater_state::LiveReader;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// The NATS server (`nats://host:4222`; user and password in the URL are never printed).
    pub url: String,
    /// JetStream stream name (created when missing).
    pub stream: String,
    /// First subject token.
    pub prefix: String,
    /// How long the stream keeps messages.
    pub max_age: Duration,
    /// Largest size of the stream in bytes (-1: no limit).
    pub max_bytes: i64,
    /// The stream's duplicate window: a republish within it is dropped by id.
    pub duplicate_window: Duration,
}

impl PublishConfig {
    /// Defaults for `url`: stream `tidewater`, 7 days, no size limit, 10 minute dedup window.
    pub fn new(url: String) -> Self {
        Self {
            url,
            stream: "tidewater".into(),
            prefix: "tidewater".into(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: -1,
            duplicate_window: Duration::from_secs(600),
        }
    }

    /// The URL without user and password, for messages.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

/// `nats://user:pass@host` → `nats://***@host`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

/// Checks a `--publish` URL (bad input before anything starts).
pub fn validate_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .ok_or_else(|| format!("{}: expected nats://host:port", redact(url)))?;
    let host = rest.rsplit('@').next().unwrap_or(rest);
    if host.is_empty() || host.contains('/') {
        return Err(format!("{}: expected nats://host:port", redact(url)));
    }
    Ok(())
}

/// The publisher's numbers (a [`Collector`] for `/metrics`).
#[derive(Debug)]
pub struct PublishStats {
    /// Messages acknowledged by the broker (duplicates included).
    pub messages: AtomicU64,
    /// Messages the stream reported as duplicates (republished after a restart or retry).
    pub duplicates: AtomicU64,
    /// Updates published.
    pub updates: AtomicU64,
    /// Failed publish attempts.
    pub errors: AtomicU64,
    /// Retries of an update.
    pub retries: AtomicU64,
    /// Resyncs (full state of every pool).
    pub resyncs: AtomicU64,
    /// The newest live-state event whose update the broker acknowledged.
    pub acked_event: AtomicU64,
    /// The live state, to count the events not yet acknowledged when scraped.
    pub live: std::sync::OnceLock<LiveReader>,
    /// 1 after an acknowledged attempt, 0 after a failed one.
    pub connected: AtomicU64,
    /// The client, for its connection state when scraped.
    pub client: std::sync::Mutex<Option<async_nats::Client>>,
    /// From an update reaching the live state to the broker's ack.
    pub delay: Histogram,
    /// From the block's timestamp to the live state applying it (stage `live`; block
    /// timestamps have 1 s resolution).
    pub stage_live: Arc<Histogram>,
    /// From the block's timestamp to the broker's ack (stage `published`).
    pub stage_published: Arc<Histogram>,
    /// Stream sequence of the newest acknowledged pool message (a consumer whose cursor is
    /// there has everything).
    pub last_pool_sequence: AtomicU64,
    /// Pending messages per durable consumer of the stream (read from the broker).
    pub consumers: std::sync::Mutex<Vec<(String, u64)>>,
}

impl Default for PublishStats {
    fn default() -> Self {
        Self {
            messages: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            acked_event: AtomicU64::new(0),
            live: std::sync::OnceLock::new(),
            connected: AtomicU64::new(0),
            client: std::sync::Mutex::new(None),
            delay: Histogram::new(DELAY_BUCKETS),
            stage_live: Arc::new(Histogram::new(DELAY_BUCKETS)),
            stage_published: Arc::new(Histogram::new(DELAY_BUCKETS)),
            consumers: std::sync::Mutex::new(Vec::new()),
            last_pool_sequence: AtomicU64::new(0),
        }
    }
}

impl PublishStats {
    /// The stage histograms (`live`, `published`) for the tail's
    /// `tidewater_stage_delay_seconds` family.
    pub fn stages(&self) -> Vec<(String, Arc<Histogram>)> {
        vec![
            ("live".to_string(), self.stage_live.clone()),
            ("published".to_string(), self.stage_published.clone()),
        ]
    }

    /// Live-state events not yet acknowledged by the broker.
    pub fn backlog(&self) -> u64 {
        self.live.get().map_or(0, |r| {
            r.view().last_event_id().saturating_sub(self.acked_event.load(Ordering::Relaxed))
        })
    }
}

impl Collector for PublishStats {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> tidewater_chain::metrics::Result {
        use tidewater_chain::metrics::{counter, gauge};
        let e = &mut enc;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            e,
            "tidewater_publish_messages",
            "Messages acknowledged by the broker.",
            n(&self.messages),
        )?;
        counter(
            e,
            "tidewater_publish_duplicates",
            "Messages the stream dropped as duplicates (republished with the same id).",
            n(&self.duplicates),
        )?;
        counter(e, "tidewater_publish_updates", "Live updates published.", n(&self.updates))?;
        counter(e, "tidewater_publish_errors", "Failed publish attempts.", n(&self.errors))?;
        counter(
            e,
            "tidewater_publish_retries",
            "Updates sent again after a failure.",
            n(&self.retries),
        )?;
        counter(
            e,
            "tidewater_publish_resyncs",
            "Full-state resyncs (first publication, or a backlog past the live history).",
            n(&self.resyncs),
        )?;
        gauge(
            e,
            "tidewater_publish_backlog",
            "Live updates not yet acknowledged by the broker.",
            self.backlog() as f64,
        )?;
        let connected = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
            && n(&self.connected) == 1;
        gauge(
            e,
            "tidewater_publish_connected",
            "1 while connected to the broker and its last publish was acknowledged.",
            f64::from(u8::from(connected)),
        )?;
        gauge(
            e,
            "tidewater_publish_last_pool_sequence",
            "Stream sequence of the newest acknowledged pool message.",
            n(&self.last_pool_sequence) as f64,
        )?;
        self.delay.encode(
            e,
            "tidewater_publish_delay_seconds",
            "From an update reaching the live state to the broker's acknowledgement.",
        )?;
        let consumers =
            self.consumers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut m = e.encode_descriptor(
            "tidewater_broker_consumer_pending",
            "Messages of the stream a durable consumer has not yet received.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (name, pending) in consumers {
            use prometheus_client::encoding::EncodeMetric as _;
            prometheus_client::metrics::gauge::ConstGauge::new(pending as f64)
                .encode(m.encode_family(&vec![("consumer", name)])?)?;
        }
        Ok(())
    }
}

/// The connection, made again after failures.
struct Sink {
    cfg: PublishConfig,
    js: Option<jetstream::Context>,
    stats: Arc<PublishStats>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest wait for one attempt (all acks of an update).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

impl Sink {
    async fn context(&mut self) -> Result<jetstream::Context, String> {
        if let Some(js) = &self.js {
            return Ok(js.clone());
        }
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .connect(self.cfg.url.as_str())
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.cfg.redacted_url()))?;
        *self.stats.client.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(client.clone());
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_secs(5));
        let config = jetstream::stream::Config {
            name: self.cfg.stream.clone(),
            subjects: vec![format!("{}.>", self.cfg.prefix)],
            max_age: self.cfg.max_age,
            max_bytes: self.cfg.max_bytes,
            duplicate_window: self.cfg.duplicate_window,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        js.get_or_create_stream(config)
            .await
            .map_err(|e| format!("creating stream {}: {e}", self.cfg.stream))?;
        tracing::info!(url = %self.cfg.redacted_url(), stream = %self.cfg.stream, "publishing to NATS JetStream");
        self.stats.connected.store(1, Ordering::Relaxed);
        self.js = Some(js.clone());
        Ok(js)
    }

    /// Counts a failed attempt; `reconnect` drops the connection (an attempt that hung) so the
    /// next one starts afresh. (A failed connect leaves none to drop.)
    fn failed(&mut self, e: &str, reconnect: bool) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "publishing failed; retrying");
        self.stats.connected.store(0, Ordering::Relaxed);
        if reconnect {
            self.js = None;
        }
    }

    async fn attempt(&mut self, msgs: &[Outgoing]) -> Result<(), String> {
        let js = self.context().await?;
        // Pool messages first, the block marker (last) only once they are stored: a marker in
        // the stream means its whole update is.
        let (last, pools) = msgs.split_last().ok_or("empty update")?;
        for (is_pool, group) in [(true, pools), (false, std::slice::from_ref(last))] {
            let mut acks = Vec::with_capacity(group.len());
            for m in group {
                let msg = jetstream::message::PublishMessage::build()
                    .payload(m.payload.clone().into())
                    .message_id(&m.id);
                let ack = js
                    .send_publish(m.subject.clone(), msg)
                    .await
                    .map_err(|e| format!("publishing to {}: {e}", m.subject))?;
                acks.push(ack);
            }
            for ack in acks {
                let a = ack.await.map_err(|e| format!("awaiting an ack: {e}"))?;
                self.stats.messages.fetch_add(1, Ordering::Relaxed);
                if a.duplicate {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                if is_pool {
                    self.stats.last_pool_sequence.fetch_max(a.sequence, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// Sends `msgs` until every one is acknowledged (ids make retries harmless). False when
    /// cancelled first.
    async fn send(&mut self, msgs: &[Outgoing], cancel: &CancellationToken) -> bool {
        let mut backoff = BACKOFF_MIN;
        loop {
            let r = tokio::select! {
                r = tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt(msgs)) => r,
                _ = cancel.cancelled() => return false,
            };
            match r {
                Ok(Ok(())) => {
                    self.stats.connected.store(1, Ordering::Relaxed);
                    return true;
                }
                Ok(Err(e)) => self.failed(&e, false),
                Err(_) => self.failed("no acknowledgement in time", true),
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = cancel.cancelled() => return false,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// The id of the newest block marker in the stream (None when there is none, or no
    /// answer).
    async fn last_marker_id(&mut self, subject: &str) -> Option<String> {
        let js = self.context().await.ok()?;
        let stream = js.get_stream(&self.cfg.stream).await.ok()?;
        let m = stream.get_last_raw_message_by_subject(subject).await.ok()?;
        m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_string())
    }

    /// Reads how far behind each durable consumer is.
    async fn refresh_consumers(&self) {
        use futures::TryStreamExt as _;
        let Some(js) = &self.js else { return };
        let Ok(stream) = js.get_stream(&self.cfg.stream).await else { return };
        let mut out = Vec::new();
        let mut list = stream.consumers();
        while let Ok(Some(c)) = list.try_next().await {
            out.push((c.name.clone(), c.num_pending + c.num_ack_pending as u64));
        }
        *self.stats.consumers.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = out;
    }
}

/// Loads the publisher's checkpoint of `stream` under `root` (an error for a damaged file).
/// On object storage the checkpoint's copy in the store (compare-and-swap) is the one a new
/// leader on another host resumes from: it replaces the local one.
pub fn load_checkpoint(root: &Path, stream: &str) -> std::io::Result<Checkpoint> {
    let path = Checkpoint::path(root, stream);
    if let Some(remote) = tidewater_storage::attached(root) {
        if let Some((bytes, _)) =
            remote.record_get(&remote_key(stream)).map_err(std::io::Error::other)?
        {
            let c: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", remote_key(stream)),
                )
            })?;
            c.store(&path)?;
        }
    }
    Checkpoint::load(&path)
}

/// The key of a stream's checkpoint in the store (or coordinator) of a dataset on object storage.
fn remote_key(stream: &str) -> String {
    format!("_publish/{stream}.json")
}

/// Writes the checkpoint to the store after the local file: a compare-and-swap on the version
/// this publisher last wrote (read at its first write), so an instance that lost the lease
/// finds it changed and stops. [`tidewater_storage::Error::Fenced`] then.
fn store_remote(
    root: &Path,
    stream: &str,
    ck: &Checkpoint,
    version: &std::sync::Mutex<Option<tidewater_storage::remote::Version>>,
) -> tidewater_storage::Result<()> {
    let Some(remote) = tidewater_storage::attached(root) else { return Ok(()) };
    let key = remote_key(stream);
    let bytes = serde_json::to_vec(ck)
        .map_err(|source| tidewater_storage::Error::Json { path: key.clone().into(), source })?;
    let mut v = version.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if v.is_none() {
        *v = remote.record_get(&key)?.map(|(_, v)| v);
    }
    match remote.record_put(&key, bytes.into(), v.as_ref())? {
        Some(new) => {
            *v = Some(new);
            Ok(())
        }
        None => Err(tidewater_storage::Error::Fenced {
            path: key.into(),
            epoch: 0,
            now: Some((0, "another publisher wrote the checkpoint".into())),
        }),
    }
}

/// The publisher (see the module docs).
pub struct Publisher {
    cfg: PublishConfig,
    subjects: Subjects,
    root: PathBuf,
    path: PathBuf,
    ck: Checkpoint,
    sink: Sink,
    reader: LiveReader,
    stats: Arc<PublishStats>,
    /// With `run --ha`: the writer lease; the checkpoint is written only while it is held.
    lease: Option<Arc<tidewater_storage::lease::Lease>>,
    /// On object storage: the version of the checkpoint's copy in the store this publisher
    /// last wrote.
    remote_version: Arc<std::sync::Mutex<Option<tidewater_storage::remote::Version>>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("stream", &self.cfg.stream).finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher of the live state behind `reader`, whose dataset is at `root`, resuming
    /// from `ck` (see [`load_checkpoint`]).
    pub fn new(
        cfg: PublishConfig,
        chain_id: u64,
        root: PathBuf,
        ck: Checkpoint,
        reader: LiveReader,
        stats: Arc<PublishStats>,
    ) -> Self {
        let subjects = Subjects { prefix: cfg.prefix.clone(), chain_id };
        let path = Checkpoint::path(&root, &cfg.stream);
        let sink = Sink { cfg: cfg.clone(), js: None, stats: stats.clone() };
        let _ = stats.live.set(reader.clone());
        Self {
            cfg,
            subjects,
            root,
            path,
            ck,
            sink,
            reader,
            stats,
            lease: None,
            remote_version: Default::default(),
        }
    }

    /// Publishes only while `lease` is held (`run --ha`): each update's checkpoint is written
    /// fenced by it, so an instance that lost the lease neither writes the checkpoint the new
    /// leader's publisher resumes from nor sends a new update.
    pub fn with_lease(mut self, lease: Arc<tidewater_storage::lease::Lease>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Publishes until `cancel` (or the live state's stream closes). `sub` must be taken
    /// before the live state's writer starts, so that no update falls between the two.
    pub async fn run(mut self, sub: Subscription, cancel: CancellationToken) {
        // The update a previous process was publishing when it stopped: its marker in the
        // stream means all of it is there; else send it again (same ids: no duplicates).
        if let Some(last) = self.ck.intent.last().cloned() {
            if self.sink.last_marker_id(&self.subjects.blocks()).await.as_deref() != Some(&last.id)
            {
                let intent = self.ck.intent.clone();
                if !self.sink.send(&intent, &cancel).await {
                    return;
                }
            }
        }
        let Subscription { view, missed, mut rx } = sub;
        let mut last = view.last_event_id();
        if !self.reconcile(&view, false, &cancel).await {
            return;
        }
        for ev in missed {
            if !self.handle(&ev, &cancel).await {
                return;
            }
            last = ev.id;
        }
        let mut refresh = tokio::time::interval(Duration::from_secs(5));
        loop {
            self.stats.acked_event.store(last, Ordering::Relaxed);
            let r = tokio::select! {
                r = rx.recv() => r,
                _ = refresh.tick() => { self.sink.refresh_consumers().await; continue }
                _ = cancel.cancelled() => return,
            };
            let evs = match r {
                Ok(ev) => vec![ev],
                Err(broadcast::error::RecvError::Lagged(_)) => match self.reader.since(last) {
                    Ok(evs) => evs,
                    Err(oldest) => {
                        // The live history no longer holds what was not published: start again
                        // from the state, with the full state of every pool.
                        tracing::warn!(
                            oldest,
                            last,
                            "publisher fell behind the live history; resyncing"
                        );
                        let Ok(sub) = self.reader.subscribe(None) else { continue };
                        rx = sub.rx;
                        last = sub.view.last_event_id();
                        if !self.reconcile(&sub.view, true, &cancel).await {
                            return;
                        }
                        continue;
                    }
                },
                Err(broadcast::error::RecvError::Closed) => return,
            };
            for ev in evs {
                if ev.id <= last {
                    continue;
                }
                if !self.handle(&ev, &cancel).await {
                    return;
                }
                last = ev.id;
                self.stats.acked_event.store(last, Ordering::Relaxed);
            }
        }
    }

    /// Writes the checkpoint with `msgs` as the update in flight, then sends them.
    async fn commit(
        &mut self,
        msgs: Vec<Outgoing>,
        ev: Option<&StreamEvent>,
        cancel: &CancellationToken,
    ) -> bool {
        self.ck.seq += 1;
        self.ck.intent = msgs;
        let mut backoff = BACKOFF_MIN;
        loop {
            let (ck, path, lease) = (self.ck.clone(), self.path.clone(), self.lease.clone());
            let (root, stream, version) =
                (self.root.clone(), self.cfg.stream.clone(), self.remote_version.clone());
            let stored = tokio::task::spawn_blocking(move || {
                let store = || {
                    ck.store(&path).map_err(|source| tidewater_storage::Error::Io {
                        op: "writing",
                        path: path.clone(),
                        source,
                    })?;
                    store_remote(&root, &stream, &ck, &version)
                };
                match lease {
                    Some(l) => l.fenced(store),
                    None => store(),
                }
            })
            .await;
            match stored {
                Ok(Ok(())) => break,
                Ok(Err(e @ tidewater_storage::Error::Fenced { .. })) => {
                    tracing::warn!(error = %e, "not publishing: this instance lost the writer lease");
                    return false;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, path = %self.path.display(), "writing the publisher's checkpoint")
                }
                Err(e) => tracing::error!(error = %e, "writing the publisher's checkpoint"),
            }
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = cancel.cancelled() => return false,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        let intent = std::mem::take(&mut self.ck.intent);
        let ok = self.sink.send(&intent, cancel).await;
        self.ck.intent = intent;
        if ok {
            self.stats.updates.fetch_add(1, Ordering::Relaxed);
            if let Some(ev) = ev {
                self.stats.delay.observe(ev.received.elapsed().as_secs_f64());
                if let (Some(b), Status::Pending) = (&ev.block, ev.status) {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    let ts = b.header.timestamp as f64;
                    let live = now - ev.received.elapsed().as_secs_f64();
                    self.stats.stage_live.observe(live - ts);
                    self.stats.stage_published.observe(now - ts);
                }
            }
        }
        ok
    }

    /// Brings what consumers were told in line with `view`: reverts of published blocks that
    /// are no longer canonical, then a resync when consumers missed updates (or `force`), or
    /// the confirmation they did not get.
    async fn reconcile(&mut self, view: &View, force: bool, cancel: &CancellationToken) -> bool {
        let hot = view.hot_touched();
        let confirmed = view.confirmed();
        // The hash of block `n` on the chain `view` follows, when it knows it (the hot buffer,
        // the confirmed block, or the cold tier below it: read once, only if needed).
        let mut cold: Option<Option<tidewater_storage::Dataset>> = None;
        let mut canonical = |n: u64| -> Option<B256> {
            if let Some((b, _)) = hot.iter().find(|(b, _)| b.header.number == n) {
                return Some(b.header.hash);
            }
            let (c, h) = confirmed?;
            match n.cmp(&c) {
                std::cmp::Ordering::Equal => Some(h),
                std::cmp::Ordering::Greater => None,
                std::cmp::Ordering::Less => {
                    let ds = cold
                        .get_or_insert_with(|| tidewater_storage::Dataset::open(&self.root).ok())
                        .as_ref()?;
                    tidewater_state::pool_state::cold_block_hash(ds, n).ok().flatten()
                }
            }
        };
        let orphaned =
            self.ck.chain.iter().position(|b| canonical(b.number).is_some_and(|h| h != b.hash));
        if let Some(i) = orphaned {
            if !self.revert_published(i, view, cancel).await {
                return false;
            }
        }
        let published: BTreeSet<B256> = self.ck.chain.iter().map(|b| b.hash).collect();
        let missed_cold = match (self.ck.tip(), confirmed) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(t), Some((c, _))) => t < c,
        };
        let missed_hot = hot.iter().any(|(b, _)| {
            !published.contains(&b.header.hash)
                && self.ck.tip().is_none_or(|t| b.header.number <= t)
        }) || hot
            .first()
            .is_some_and(|(b, _)| self.ck.tip().is_some_and(|t| b.header.number > t + 1));
        if force || missed_cold || missed_hot {
            return self.resync(view, cancel).await;
        }
        if let Some((c, h)) = confirmed {
            if self.ck.confirmed.is_none_or(|k| k.0 < c) {
                let block =
                    BlockRef { number: c, hash: h, parent_hash: B256::ZERO, timestamp: None };
                let m = marker(
                    &self.subjects,
                    WireStatus::Confirmed,
                    &block,
                    [].iter(),
                    0,
                    self.ck.seq + 1,
                );
                self.ck.confirm(c, h);
                return self.commit(vec![m], None, cancel).await;
            }
        }
        true
    }

    /// Publishes the full state of every pool in `view`; consumers replace what they hold.
    async fn resync(&mut self, view: &View, cancel: &CancellationToken) -> bool {
        let st = view.head();
        let head = BlockRef {
            number: st.block,
            hash: st.block_hash,
            parent_hash: B256::ZERO,
            timestamp: None,
        };
        let seq = self.ck.seq + 1;
        let mut msgs = full_messages(
            &self.subjects,
            st,
            st.pools.keys(),
            WireStatus::Resync,
            &head,
            |p| format!("{}:{seq}", msg_id(&head.hash, WireStatus::Resync, &hex_address(p), 0)),
            seq,
        );
        let mut m = marker(&self.subjects, WireStatus::Resync, &head, st.pools.keys(), 0, seq);
        m.id = format!("{}:{seq}", m.id);
        msgs.push(m);
        self.ck.chain = view
            .hot_touched()
            .into_iter()
            .map(|(b, pools)| PublishedBlock {
                number: b.header.number,
                hash: b.header.hash,
                parent_hash: b.header.parent_hash,
                pools: pools.into_iter().collect(),
            })
            .collect();
        self.ck.confirmed = view.confirmed();
        self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
        tracing::info!(pools = st.pools.len(), block = st.block, "publishing a resync");
        self.commit(msgs, None, cancel).await
    }

    /// Reverts the published blocks from index `i` up, newest first, with the full state in
    /// `view` of the pools they touched (what each changed is no longer known after a restart).
    async fn revert_published(
        &mut self,
        i: usize,
        view: &View,
        cancel: &CancellationToken,
    ) -> bool {
        while self.ck.chain.len() > i {
            let Some(b) = self.ck.chain.pop() else { break };
            let gen = self.ck.generation(&b.hash);
            let block = BlockRef {
                number: b.number,
                hash: b.hash,
                parent_hash: b.parent_hash,
                timestamp: None,
            };
            let seq = self.ck.seq + 1;
            let mut msgs = full_messages(
                &self.subjects,
                view.head(),
                b.pools.iter(),
                WireStatus::Reverted,
                &block,
                |p| msg_id(&b.hash, WireStatus::Reverted, &hex_address(p), gen),
                seq,
            );
            msgs.push(marker(
                &self.subjects,
                WireStatus::Reverted,
                &block,
                b.pools.iter(),
                gen,
                seq,
            ));
            self.ck.reverted(b.number, b.hash);
            tracing::info!(block = b.number, hash = %b.hash, "reverting a block published before a restart");
            if !self.commit(msgs, None, cancel).await {
                return false;
            }
        }
        true
    }

    async fn handle(&mut self, ev: &StreamEvent, cancel: &CancellationToken) -> bool {
        match ev.status {
            Status::Pending => {
                if self.ck.chain.iter().any(|b| b.number == ev.number && b.hash == ev.hash) {
                    return true; // published before a restart, still canonical
                }
                if let Some(i) = self.ck.chain.iter().position(|b| b.number >= ev.number) {
                    let view = self.reader.view();
                    if !self.revert_published(i, &view, cancel).await {
                        return false;
                    }
                }
                let gen = self.ck.generation(&ev.hash);
                let msgs =
                    delta_messages(&self.subjects, ev, WireStatus::Pending, gen, self.ck.seq + 1);
                self.ck.chain.push(PublishedBlock {
                    number: ev.number,
                    hash: ev.hash,
                    parent_hash: ev.parent_hash,
                    pools: ev.touched.iter().copied().collect(),
                });
                self.commit(msgs, Some(ev), cancel).await
            }
            Status::Reverted => {
                // Newest first, as the live state reverts; a block never published (applied by
                // a previous process, or confirmed: a deep reorg) is reverted all the same.
                let pos = self.ck.chain.iter().position(|b| b.hash == ev.hash);
                if let Some(i) = pos {
                    if i + 1 < self.ck.chain.len() {
                        let view = self.reader.view();
                        if !self.revert_published(i + 1, &view, cancel).await {
                            return false;
                        }
                    }
                    self.ck.chain.truncate(i);
                }
                if self.ck.confirmed.is_some_and(|c| c.0 >= ev.number) {
                    self.ck.confirmed = self.reader.view().confirmed().filter(|c| c.0 < ev.number);
                }
                let gen = self.ck.generation(&ev.hash);
                let msgs =
                    delta_messages(&self.subjects, ev, WireStatus::Reverted, gen, self.ck.seq + 1);
                self.ck.reverted(ev.number, ev.hash);
                self.commit(msgs, Some(ev), cancel).await
            }
            Status::Confirmed => {
                if self.ck.confirmed.is_some_and(|c| c.0 >= ev.number) {
                    return true;
                }
                let block = BlockRef {
                    number: ev.number,
                    hash: ev.hash,
                    parent_hash: B256::ZERO,
                    timestamp: None,
                };
                let pools: Vec<Address> = ev.touched.iter().copied().collect();
                let m = marker(
                    &self.subjects,
                    WireStatus::Confirmed,
                    &block,
                    pools.iter(),
                    0,
                    self.ck.seq + 1,
                );
                self.ck.confirm(ev.number, ev.hash);
                self.commit(vec![m], Some(ev), cancel).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_never_print_their_password() {
        assert!(validate_url("nats://127.0.0.1:4222").is_ok());
        assert!(validate_url("nats://u:secret@host:4222").is_ok());
        assert!(validate_url("http://host").is_err());
        assert!(validate_url("nats://").is_err());
        let e = validate_url("http://u:secret@host").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert_eq!(redact("nats://u:secret@host:4222"), "nats://***@host:4222");
    }
}
