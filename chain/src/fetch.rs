//! Fetching a block range completely: headers and logs, with adaptive `eth_getLogs` ranges and
//! completeness checks (block hashes agree, blooms agree, nothing removed, no hole).

use crate::error::{Error, Result};
use crate::range::BlockRange;
use crate::rpc::RpcClient;
use crate::{BlockRow, Header, Log, LogFilter};
use alloy_primitives::Address;
use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// First `eth_getLogs` span tried, in blocks. Large enough that a sparse range is one call;
/// dense ranges shrink it on the first "too many results".
pub const DEFAULT_LOG_RANGE: u64 = 2_000;
/// Largest span the sizer grows to.
pub const DEFAULT_MAX_LOG_RANGE: u64 = 10_000;

/// `eth_getLogs` calls in flight for one range (more come from ranges fetched side by side).
const PARTS_IN_FLIGHT: usize = 4;
/// Logs an `eth_getLogs` answer aims at, by default: spans shrink when an answer holds more
/// and grow while answers hold fewer. Hosted providers refuse larger answers anyway and bill
/// per call, so the largest answer they take is the cheapest; a node without a cap answers a
/// dense span with a body of hundreds of MB, built on one thread and held whole here.
pub const DEFAULT_ANSWER_LOGS: usize = 10_000;
/// Logs an answer aims at from a node on this machine, which bills nothing per call: anvil
/// serves the `dense` devnet's logs in 0.6 core-seconds as answers of ~1,000 logs and in 1.0 as
/// answers of ~10,000 (`scripts/bench-backfill.sh` with `BENCH_PRESET=dense`).
pub const LOCAL_ANSWER_LOGS: usize = 1_000;

/// Adapts the `eth_getLogs` span: shrinks to what the provider accepts, grows back by a quarter
/// after each success at full span.
#[derive(Debug)]
pub struct RangeSizer {
    size: AtomicU64,
    max: u64,
    /// The longest span the provider has not refused (`max` until it refuses one).
    cap: AtomicU64,
    answer_logs: usize,
    /// The last block a question may reach (the end of what is being fetched); without one, the
    /// end of the range being fetched.
    horizon: Option<u64>,
    /// Ranges a second answer found empty, per part of a filter ([`check_empty_spans`]): a
    /// later fetch's `[]` inside one is not asked again.
    confirmed_empty: std::sync::Mutex<HashMap<u64, Vec<BlockRange>>>,
    /// Held while a run with no log around it is asked again, per part of a filter, so that
    /// fetches running side by side ask once for what one answer confirms.
    reasking: std::sync::Mutex<HashMap<u64, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    /// A provider answered `[]` (or short) where logs were: from then on a caller checks every
    /// block ([`RangeSizer::caught_hiding`]).
    caught: std::sync::atomic::AtomicBool,
    /// A provider answered `[]` (or short) where logs were, near the head too
    /// ([`RangeSizer::saw_logs_hidden`]).
    hid: std::sync::atomic::AtomicBool,
    /// Logs seen in answers, a few per answer (selector and emitter only): a run of `[]` with
    /// no log of its part around it in the range being fetched is asked again reaching to one of
    /// these ([`check_empty_spans`]), in settled history only.
    known: std::sync::Mutex<std::collections::BTreeMap<LogKey, Log>>,
    /// Blocks below this are settled: a log seen there stays (no reorg takes it away).
    settled_below: u64,
    /// Runs of `[]` believed after plain questions only (question 4 of [`check_empty_spans`])
    /// before any provider was caught hiding logs, with the part of the filter they are for:
    /// asked again once one is seen hiding logs ([`recheck_believed_empty`]).
    believed: std::sync::Mutex<Vec<(LogFilter, Vec<BlockRange>)>>,
}

/// Most runs [`RangeSizer`] keeps for [`recheck_believed_empty`] (the oldest go first).
const BELIEVED_RUNS: usize = 4_096;

/// Most logs [`RangeSizer`] remembers as anchors (the lowest go first: a backfill moves up).
const KNOWN_LOGS: usize = 16_384;

/// Most ranges [`RangeSizer`] remembers as confirmed empty for one part of a filter.
const CONFIRMED_EMPTY_RANGES: usize = 1_024;

impl RangeSizer {
    /// Starts at `initial` blocks, never above `max`, aiming at answers of
    /// [`DEFAULT_ANSWER_LOGS`].
    pub fn new(initial: u64, max: u64) -> Self {
        let max = max.max(1);
        Self {
            size: AtomicU64::new(initial.clamp(1, max)),
            max,
            cap: AtomicU64::new(max),
            answer_logs: DEFAULT_ANSWER_LOGS,
            horizon: None,
            confirmed_empty: Default::default(),
            reasking: Default::default(),
            caught: Default::default(),
            hid: Default::default(),
            known: Default::default(),
            settled_below: 0,
            believed: Default::default(),
        }
    }

    /// Keeps `runs`, believed empty for `part` after plain questions, while no provider was
    /// caught hiding logs.
    fn believe(&self, part: &LogFilter, runs: &[BlockRange]) {
        if self.caught_hiding() {
            return;
        }
        let mut b = self.believed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if b.len() >= BELIEVED_RUNS {
            b.remove(0);
        }
        b.push((part.clone(), runs.to_vec()));
    }

    /// Logs below block `n` are settled: runs of `[]` there may be asked again against logs seen
    /// in other ranges' answers.
    pub fn with_settled_below(mut self, n: u64) -> Self {
        self.settled_below = n;
        self
    }

    /// Remembers `logs` (seen in answers, so real) as anchors for later questions, those in
    /// settled blocks only.
    pub fn remember<'a>(&self, logs: impl IntoIterator<Item = &'a Log>) {
        let mut known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for l in logs.into_iter().filter(|l| l.block_number < self.settled_below) {
            let slim = Log {
                topics: l.topics.first().copied().into_iter().collect(),
                data: Default::default(),
                ..l.clone()
            };
            known.insert(key(l), slim);
        }
        while known.len() > KNOWN_LOGS {
            known.pop_first();
        }
    }

    /// The first remembered log in or after `run` (else the nearest before it) that `selects`
    /// takes, with the run and it in at most `longest` blocks of settled history.
    fn known_near(
        &self,
        run: BlockRange,
        longest: u64,
        selects: impl Fn(&Log) -> bool,
    ) -> Option<LogKey> {
        if run.end >= self.settled_below || run.len() > longest {
            return None;
        }
        let known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Both bounds checked: `BTreeMap::range` panics on a range that ends before it starts.
        let last = run.start.saturating_add(longest - 1).min(self.settled_below - 1);
        let after = (run.start <= last).then_some((run.start, 0)..=(last, u64::MAX));
        let first = (run.end + 1).saturating_sub(longest);
        let before = (first < run.start).then_some((first, 0)..(run.start, 0));
        let found = after.and_then(|r| known.range(r).find(|(_, l)| selects(l)));
        found
            .or_else(|| before.and_then(|r| known.range(r).rev().find(|(_, l)| selects(l))))
            .map(|(k, _)| *k)
    }

    /// Questions reach no block past `end` (the end of what is being fetched).
    pub fn with_horizon(mut self, end: u64) -> Self {
        self.horizon = Some(end);
        self
    }

    /// Whether a provider was caught hiding logs (an answer of `[]`, or short, for blocks that
    /// hold them) during a fetch with this sizer: checks by answer ([`Checks::Spans`]) then stand
    /// on what it answers again, so a caller checks every block ([`Checks::Blocks`]) from then on.
    pub fn caught_hiding(&self) -> bool {
        self.caught.load(Ordering::Relaxed)
    }

    fn saw_hidden_logs(&self) {
        self.hid.store(true, Ordering::Relaxed);
        if !self.caught.swap(true, Ordering::Relaxed) {
            tracing::warn!("a provider hid logs; every block is checked from now on");
        }
    }

    /// A provider answered `[]` (or short) where logs were near the head, where a lagging node
    /// explains it: the checks stay as they are.
    fn saw_hidden_logs_near_head(&self) {
        self.hid.store(true, Ordering::Relaxed);
    }

    /// Whether a provider answered `[]` (or short) where logs were, anywhere, near the head too.
    pub fn saw_logs_hidden(&self) -> bool {
        self.hid.load(Ordering::Relaxed)
    }

    /// The lock taken while a run of the part keyed `part` is asked again.
    fn reasking_turn(&self, part: u64) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.reasking.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        turns.entry(part).or_default().clone()
    }

    /// Whether `r` lies in a range confirmed empty for the part keyed `part`.
    fn is_confirmed_empty(&self, part: u64, r: BlockRange) -> bool {
        let known = self.confirmed_empty.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        known.get(&part).is_some_and(|v| v.iter().any(|k| k.start <= r.start && r.end <= k.end))
    }

    /// `r` was confirmed empty for the part keyed `part`.
    fn confirm_empty(&self, part: u64, r: BlockRange) {
        let mut known =
            self.confirmed_empty.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let v = known.entry(part).or_default();
        if v.len() >= CONFIRMED_EMPTY_RANGES {
            v.remove(0);
        }
        v.push(r);
    }

    /// The same, aiming at answers of about `logs` logs.
    pub fn with_answer_logs(mut self, logs: usize) -> Self {
        self.answer_logs = logs.max(1);
        self
    }

    /// The span to try now.
    pub fn current(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// The longest span to ask for a few logs: the most the provider has not refused.
    pub fn longest(&self) -> u64 {
        self.cap.load(Ordering::Relaxed)
    }

    /// A span of `used` blocks succeeded with `logs` logs. A sparse answer (under a tenth of
    /// the aim) doubles the span (a dense stretch that shrank it is over); a fuller one grows it
    /// by at most a quarter, towards nine tenths of the aim; one over the aim shrinks it to nine
    /// tenths.
    pub fn on_success(&self, used: u64, logs: usize) {
        let aim = self.answer_logs;
        // Spans settle at nine tenths of the aim: growing by a quarter from an answer near the
        // aim overshot it every other answer (and the provider's cap, when the aim is the cap),
        // a refused call each time.
        let towards = u64::try_from(
            u128::from(used).saturating_mul(aim as u128 * 9 / 10) / logs.max(1) as u128,
        )
        .unwrap_or(u64::MAX);
        if logs > aim {
            self.size.fetch_min(towards.max(1), Ordering::Relaxed);
            return;
        }
        let cur = self.current();
        if used >= cur {
            let grown = if logs < aim / 10 { cur * 2 } else { towards.min(cur + cur / 4 + 1) };
            if grown <= cur {
                return;
            }
            let grown = grown.min(self.max);
            let _ = self.size.compare_exchange(cur, grown, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The provider accepted at most `len` blocks.
    pub fn on_too_large(&self, len: u64) {
        self.size.fetch_min(len.max(1), Ordering::Relaxed);
    }

    /// The provider refused `len` blocks for its span (not for the logs in it).
    pub fn on_span_refused(&self, len: u64) {
        self.cap.fetch_min(len.saturating_sub(1).max(1), Ordering::Relaxed);
    }
}

/// How long the next attempt at `failed` should be, given the provider's hint. Follows a hint
/// only when it is a strictly shorter prefix of the failed range (a hint equal to the request,
/// or elsewhere, would loop); halves otherwise.
pub fn next_span(failed: BlockRange, hint: Option<BlockRange>) -> u64 {
    match hint {
        Some(h) if h.start == failed.start && h.end < failed.end => h.len(),
        _ => (failed.len() / 2).max(1),
    }
}

/// Everything a block range holds for a filter.
#[derive(Debug, Clone, Default)]
pub struct RangeData {
    /// The headers fetched, in order: every block's with [`Checks::Blocks`]; with
    /// [`Checks::Spans`] the range's first block's and the last block's of each answer (the
    /// range's last block among them). Never empty for a non-empty range.
    pub headers: Vec<Header>,
    /// The `blocks` table's rows, in order: one per header, and one per other block with logs
    /// (from its logs: number, hash, timestamp).
    pub blocks: Vec<BlockRow>,
    /// The matching logs, ordered by (block_number, log_index).
    pub logs: Vec<Log>,
    /// Blocks whose logs were refetched by hash because the bloom disagreed with an empty answer.
    pub bloom_refetches: u64,
}

/// How a range fetch makes sure the node's answers are complete.
///
/// See `docs/design/mainnet-shape.md` for which check stands where a header is not fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checks {
    /// Every block's header (one billed call per block): hashes link from block to block,
    /// every log carries its block's hash, and a block whose bloom may match but came back
    /// empty is asked again by hash, then its receipts decide. For blocks near the head,
    /// where lagging nodes behind load balancers answer `[]` for blocks they have not seen.
    #[default]
    Blocks,
    /// The header of the range's first block and of the last block of every `eth_getLogs`
    /// answer (one billed call per answer, not per block): logs agree with those headers and
    /// with each other (one hash and timestamp per block, no duplicate, none removed), and an
    /// answer that stops short of its last block while that block's bloom may match is
    /// confirmed by hash; a disagreement refetches the range with [`Checks::Blocks`]. For
    /// settled history, where nodes have every block.
    Spans,
}

/// Logs for `range`, split adaptively. Sub-ranges are fetched concurrently (the client's
/// semaphore caps requests in flight); the result is sorted by (block_number, log_index).
pub async fn fetch_logs(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    sizer: &RangeSizer,
) -> Result<Vec<Log>> {
    Ok(span_logs(fetch_log_spans(rpc, filter, range, sizer).await?))
}

/// The logs of `spans`, ordered by (block_number, log_index).
fn span_logs(spans: Vec<(BlockRange, Vec<Log>)>) -> Vec<Log> {
    // Onto the first answer's logs (growing a large vector in place maps more pages onto it;
    // collecting into a new one wrote every log to fresh memory).
    let total = spans.iter().map(|(_, l)| l.len()).sum::<usize>();
    let mut spans = spans.into_iter().map(|(_, l)| l);
    let mut logs = spans.next().unwrap_or_default();
    logs.reserve_exact(total - logs.len());
    for mut more in spans {
        logs.append(&mut more);
    }
    // Nodes answer in order: sort (moving every log) only when one did not.
    if !logs.is_sorted_by_key(|l| (l.block_number, l.log_index)) {
        logs.sort_unstable_by_key(|l| (l.block_number, l.log_index));
    }
    logs
}

/// The answers for `range`, split adaptively: each sub-range the node answered, with its logs,
/// ordered by sub-range.
pub async fn fetch_log_spans(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    sizer: &RangeSizer,
) -> Result<Vec<(BlockRange, Vec<Log>)>> {
    fetch_log_spans_until(rpc, filter, range, sizer, u64::MAX).await
}

/// [`fetch_log_spans`] that sends no new part once `max_logs` logs are in, and keeps the
/// answers that tile a prefix of `range` from its start (never none: the first part is always
/// sent). Bounds the logs a fetch holds to about `max_logs` plus the parts in flight.
async fn fetch_log_spans_until(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    sizer: &RangeSizer,
    max_logs: u64,
) -> Result<Vec<(BlockRange, Vec<Log>)>> {
    let mut spans = Vec::new();
    let mut got: u64 = 0;
    let mut in_flight = FuturesUnordered::new();
    // Parts are cut as they are sent, each at the sizer's span of the moment, a few at a time:
    // a span shrunk by a dense stretch grows back within the range, not only in the next one.
    let mut uncut = std::collections::VecDeque::from([range]);
    let bound = PartBound::new(filter, sizer, max_logs);
    // Logs expected from the parts in flight, at the density answered so far in this fetch: a
    // fetch bounded by logs sends no part that would take it past its bound. Parts cut at a span
    // grown over a sparse stretch and sent side by side into a dense one each brought about half
    // of what the fetch may hold (a 500-block chunk of 130,000 logs where 62,500 were allowed,
    // on the `mainnet-shape` devnet's first dense blocks).
    let (mut answered, mut pending) = (0u64, 0u64);
    loop {
        // Until one part is answered the density is unknown: a bounded fetch sends one at a time.
        let parallel = if max_logs == u64::MAX || answered > 0 { PARTS_IN_FLIGHT } else { 1 };
        while in_flight.len() < parallel && got.saturating_add(pending) < max_logs {
            let Some(r) = uncut.pop_front() else { break };
            let (part, rest) = r.split_at_len(sizer.current().max(1));
            if let Some(rest) = rest {
                uncut.push_front(rest);
            }
            let expected = expected_logs(part, got, answered);
            pending = pending.saturating_add(expected);
            in_flight.push(fetch_one(rpc, filter, part, bound, expected));
        }
        let Some((part, expected, result)) = in_flight.next().await else { break };
        pending = pending.saturating_sub(expected);
        // A part cut again is sent at once (it was already counted in flight).
        let mut resend = |head: BlockRange, rest: Option<BlockRange>| {
            let expected = expected_logs(head, got, answered);
            pending = pending.saturating_add(expected);
            in_flight.push(fetch_one(rpc, filter, head, bound, expected));
            if let Some(rest) = rest {
                uncut.push_front(rest);
            }
        };
        match result {
            Ok(Answer::Overfull { fits, logs, asked, requests }) => {
                sizer.on_too_large(fits);
                tracing::debug!(%part, fits, logs, asked, requests, "part overfull, splitting");
                let (head, rest) = part.split_at_len(fits);
                resend(head, rest);
            }
            Ok(Answer::Logs { logs, load }) => {
                sizer.on_success(part.len(), load);
                got = got.saturating_add(logs.len() as u64);
                answered = answered.saturating_add(part.len());
                spans.push((part, logs));
            }
            Err(Error::RangeTooLarge { hint, message, .. }) => {
                if part.len() == 1 {
                    tracing::warn!(block = part.start, %message, "provider refuses a single block");
                    return Err(Error::BlockTooLarge { block: part.start });
                }
                let span = next_span(part, hint);
                sizer.on_too_large(span);
                tracing::debug!(%part, span, %message, "eth_getLogs range too large, splitting");
                let (head, rest) = part.split_at_len(span);
                resend(head, rest);
            }
            Err(e) => return Err(e),
        }
    }
    spans.sort_unstable_by_key(|(p, _)| p.start);
    // Stopped early: only the answers that follow one another from the range's start.
    let mut next = range.start;
    let tiled = spans
        .iter()
        .take_while(|(p, _)| {
            let follows = p.start == next;
            next = p.end.saturating_add(1);
            follows
        })
        .count();
    spans.truncate(tiled);
    Ok(spans)
}

/// Logs and headers of a prefix of `range`, fetched until about `max_logs` logs are in: the
/// prefix covered and its data, checked as [`fetch_range`] checks with `checks` (the headers
/// of [`Checks::Blocks`] are fetched for the prefix once its logs are in; a disagreement is
/// fetched again with [`Checks::Blocks`], as [`fetch_range_consistent`] does). A caller that
/// cuts ranges by an estimate of their density keeps its memory bounded when the estimate is
/// wrong (a dense stretch after an empty one): it fetches the rest next.
pub async fn fetch_prefix(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    sizer: &RangeSizer,
    checks: Checks,
    max_logs: u64,
) -> Result<(BlockRange, RangeData)> {
    let spans = fetch_log_spans_until(rpc, filter, range, sizer, max_logs.max(1)).await?;
    let end = spans.last().map_or(range.end, |(p, _)| p.end);
    let covered = BlockRange::new(range.start, end);
    let checked = match checks {
        Checks::Spans => check_spans(rpc, filter, covered, spans, sizer).await,
        // A question of the rechecks that no answer satisfies is a disagreement too: fetched
        // again below, not the end of the fetch.
        Checks::Blocks => {
            let headers = rpc.headers(covered).await?;
            check_blocks(rpc, filter, covered, headers, spans, sizer).await
        }
    };
    match checked {
        Err(e @ Error::Inconsistent { .. }) => {
            tracing::warn!(error = %e, "inconsistent answers, refetching the range");
            let data = fetch_range_consistent(rpc, filter, covered, sizer, Checks::Blocks).await?;
            Ok((covered, data))
        }
        other => other.map(|data| (covered, data)),
    }
}

async fn fetch_one(
    rpc: &RpcClient,
    filter: &LogFilter,
    part: BlockRange,
    bound: PartBound,
    expected: u64,
) -> (BlockRange, u64, Result<Answer>) {
    (part, expected, fetch_part(rpc, filter, part, bound).await)
}

/// Logs `part` should hold at `got` logs in `answered` blocks (none known: 0).
fn expected_logs(part: BlockRange, got: u64, answered: u64) -> u64 {
    if answered == 0 {
        return 0;
    }
    let e = u128::from(part.len()).saturating_mul(u128::from(got)) / u128::from(answered);
    u64::try_from(e).unwrap_or(u64::MAX)
}

/// A part's answer.
#[derive(Debug)]
enum Answer {
    /// Its logs, and its load for the sizer (see [`PartBound::load`]).
    Logs { logs: Vec<Log>, load: usize },
    /// Stopped before its last request, holding too many already (see [`PartBound`]): about
    /// `fits` blocks hold what a part may.
    Overfull { fits: u64, logs: usize, asked: usize, requests: usize },
}

/// The most logs a part asked in several requests (address groups, or selectors beside
/// addresses) gathers before the rest of its requests is left unsent.
///
/// A span grown over a sparse stretch can meet a dense one: one request is then bounded by the
/// provider's cap on an answer, but a part of G requests by G caps (on the `mainnet-shape`
/// devnet's first dense blocks, 11 groups of ~10,000 logs: 110,000 logs a part, four chunks of
/// it at once, 500-600 MiB). A part stops once it holds more than twice what its requests aim
/// at together, and never more than the fetch may hold; the requests already answered are paid
/// once per dense stretch met.
#[derive(Debug, Clone, Copy)]
struct PartBound {
    /// Logs one answer aims at (the sizer's aim).
    aim: usize,
    /// The most a part gathers before it stops.
    most: usize,
}

impl PartBound {
    fn new(filter: &LogFilter, sizer: &RangeSizer, max_logs: u64) -> Self {
        let aim = sizer.answer_logs;
        let together = aim.saturating_mul(filter.requests()).saturating_mul(2);
        Self { aim, most: together.min(usize::try_from(max_logs).unwrap_or(usize::MAX)).max(aim) }
    }

    /// What the sizer is told a part held, in logs of one answer: its fullest answer, or more
    /// when the whole part is past half the bound (so spans settle where parts hold about half
    /// of it, and a part stops early only where the density jumps).
    fn load(&self, fullest: usize, logs: usize) -> usize {
        let scaled = (logs as u128).saturating_mul(2 * self.aim as u128) / self.most.max(1) as u128;
        fullest.max(usize::try_from(scaled).unwrap_or(usize::MAX))
    }
}

/// The logs of `part` for `filter`, request by request; stops early once they are more than
/// `bound.most` with requests left, when the part spans more than one block.
async fn fetch_part(
    rpc: &RpcClient,
    filter: &LogFilter,
    part: BlockRange,
    bound: PartBound,
) -> Result<Answer> {
    let requests = filter.to_json(part.start, part.end);
    let n = requests.len();
    let mut logs = Vec::new();
    let mut fullest = 0;
    for (i, f) in requests.into_iter().enumerate() {
        let mut got = rpc.get_logs_json(None, f, part).await?;
        fullest = fullest.max(got.len());
        logs.append(&mut got);
        let asked = i + 1;
        if asked < n && logs.len() > bound.most && part.len() > 1 {
            // At this rate the whole part holds about `logs.len() * n / asked`: cut it to hold
            // about half the bound.
            let whole = (logs.len() as u128).saturating_mul(n as u128) / asked as u128;
            let fits = u128::from(part.len()).saturating_mul(bound.most as u128 / 2) / whole.max(1);
            let fits = u64::try_from(fits).unwrap_or(u64::MAX).clamp(1, part.len() - 1);
            return Ok(Answer::Overfull { fits, logs: logs.len(), asked, requests: n });
        }
    }
    let load = bound.load(fullest, logs.len());
    Ok(Answer::Logs { logs, load })
}

/// Headers and logs of `range`, checked for completeness:
/// - every log lies in the range, is not `removed`, and carries its block's header hash;
/// - no (block, log_index) appears twice;
/// - a block whose bloom may hold a match but that came back empty is refetched by hash.
///
/// A disagreement is [`Error::Inconsistent`] (retryable: the node was lagging or reorging).
/// `checks` says which headers are fetched and how an answer is checked against them.
pub async fn fetch_range(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    sizer: &RangeSizer,
    checks: Checks,
) -> Result<RangeData> {
    match checks {
        Checks::Blocks => {
            let (headers, spans) =
                futures::try_join!(rpc.headers(range), fetch_log_spans(rpc, filter, range, sizer))?;
            check_blocks(rpc, filter, range, headers, spans, sizer).await
        }
        Checks::Spans => {
            let spans = fetch_log_spans(rpc, filter, range, sizer).await?;
            check_spans(rpc, filter, range, spans, sizer).await
        }
    }
}

/// The checks of [`Checks::Blocks`] (the answers of `[]` asked again, then
/// [`check_and_repair`]), and a `blocks` row per header.
async fn check_blocks(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    headers: Vec<Header>,
    spans: Vec<(BlockRange, Vec<Log>)>,
    sizer: &RangeSizer,
) -> Result<RangeData> {
    // The blocks the answers held logs of, before the rechecks add any: a block none held a log
    // of is checked by hash even when a recheck of one part found logs there (the other parts'
    // answers may have hidden theirs too).
    let answered: foldhash::HashSet<u64> =
        spans.iter().flat_map(|(_, logs)| logs.iter().map(|l| l.block_number)).collect();
    let spans = with_empty_rechecked(rpc, filter, range, spans, Some(&headers), sizer).await?;
    let mut data =
        check_and_repair(rpc, filter, range, headers, span_logs(spans), &answered).await?;
    if data.bloom_refetches > 0 {
        sizer.saw_hidden_logs_near_head();
    }
    data.blocks = data.headers.iter().map(BlockRow::from).collect();
    Ok(data)
}

/// The checks of [`Checks::Spans`], and the rows of the `blocks` table.
async fn check_spans(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    spans: Vec<(BlockRange, Vec<Log>)>,
    sizer: &RangeSizer,
) -> Result<RangeData> {
    let inconsistent = |what: String| Error::Inconsistent { range, what };
    let mut wanted: Vec<u64> = spans.iter().map(|(p, _)| p.end).collect();
    wanted.push(range.start);
    wanted.sort_unstable();
    wanted.dedup();
    let (mut headers, spans) = futures::try_join!(
        rpc.headers_of(&wanted),
        with_empty_rechecked(rpc, filter, range, spans, None, sizer)
    )?;
    let mut short: Vec<&Header> = Vec::new();
    {
        let by_number: HashMap<u64, &Header> = headers.iter().map(|h| (h.number, h)).collect();
        for (part, logs) in &spans {
            let newest = logs.iter().map(|l| l.block_number).max();
            let end = by_number.get(&part.end).ok_or_else(|| {
                inconsistent(format!("no header for block {} in the answer", part.end))
            })?;
            if newest.is_none_or(|n| n < part.end) && filter.may_match(&end.logs_bloom) {
                short.push(end);
            }
        }
        // An answer that stops short of its last block, whose bloom says it may hold a match:
        // a lagging node's signature, or an honest gap. The block by hash decides, then its
        // receipts (at most once per answer, not per block).
        let confirmed = futures::future::try_join_all(short.iter().map(|h| async move {
            confirm_empty_block(rpc, filter, h).await.map(|got| (h.number, got))
        }))
        .await?;
        if let Some((n, got)) = confirmed.into_iter().find(|(_, got)| !got.is_empty()) {
            sizer.saw_hidden_logs();
            return Err(inconsistent(format!(
                "the answer missed {} logs of block {n} (found asking by hash)",
                got.len()
            )));
        }
    }
    let logs = span_logs(spans);
    // Blocks with logs but no timestamp in them (an older node): their headers, batched.
    let mut untimed: Vec<u64> =
        logs.iter().filter(|l| l.block_timestamp.is_none()).map(|l| l.block_number).collect();
    untimed.dedup();
    untimed.retain(|n| headers.binary_search_by_key(n, |h| h.number).is_err());
    if !untimed.is_empty() {
        headers.extend(rpc.headers_of(&untimed).await?);
        headers.sort_unstable_by_key(|h| h.number);
    }
    let mut blocks: Vec<BlockRow> = headers.iter().map(BlockRow::from).collect();
    let mut hi = 0;
    for (i, l) in logs.iter().enumerate() {
        if !range.contains(l.block_number) {
            return Err(inconsistent(format!("log at block {} outside the range", l.block_number)));
        }
        if l.removed {
            return Err(inconsistent(format!("removed log at block {}", l.block_number)));
        }
        if i > 0 {
            let p = &logs[i - 1];
            if (p.block_number, p.log_index) == (l.block_number, l.log_index) {
                return Err(inconsistent(format!(
                    "duplicate log {} in block {}",
                    l.log_index, l.block_number
                )));
            }
            if p.block_number == l.block_number
                && (p.block_hash != l.block_hash
                    || p.block_timestamp.zip(l.block_timestamp).is_some_and(|(a, b)| a != b))
            {
                return Err(inconsistent(format!(
                    "logs of block {} disagree on its hash or timestamp",
                    l.block_number
                )));
            }
        }
        while hi < headers.len() && headers[hi].number < l.block_number {
            hi += 1;
        }
        match headers.get(hi).filter(|h| h.number == l.block_number) {
            Some(h) if h.hash != l.block_hash => {
                return Err(inconsistent(format!(
                    "log at block {} has block hash {}, header says {}",
                    l.block_number, l.block_hash, h.hash
                )));
            }
            Some(_) => {}
            None if i > 0 && logs[i - 1].block_number == l.block_number => {}
            None => blocks.push(BlockRow {
                number: l.block_number,
                hash: l.block_hash,
                parent_hash: None,
                timestamp: l.block_timestamp.unwrap_or_default(),
                logs_bloom: None,
            }),
        }
    }
    blocks.sort_unstable_by_key(|b| b.number);
    Ok(RangeData { headers, blocks, logs, bloom_refetches: 0 })
}

/// `spans` with the logs [`check_empty_spans`] finds in the answers of `[]`.
async fn with_empty_rechecked(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    mut spans: Vec<(BlockRange, Vec<Log>)>,
    headers: Option<&[Header]>,
    sizer: &RangeSizer,
) -> Result<Vec<(BlockRange, Vec<Log>)>> {
    for l in check_empty_spans(rpc, filter, range, &spans, headers, sizer).await? {
        let key = (l.block_number, l.log_index);
        if let Some((_, logs)) = spans.iter_mut().find(|(p, _)| p.contains(l.block_number)) {
            if !logs.iter().any(|x| (x.block_number, x.log_index) == key) {
                let at = logs.partition_point(|x| (x.block_number, x.log_index) < key);
                logs.insert(at, l);
            }
        }
    }
    Ok(spans)
}

/// Times a run of `[]` answers with no log around it is asked again before a `[]` is believed
/// ([`check_empty_spans`]).
const PLAIN_REASKS: usize = 2;

/// [`PLAIN_REASKS`] once a provider was caught hiding logs ([`RangeSizer::caught_hiding`]): its
/// `[]` is worth less.
const CAUGHT_REASKS: usize = 4;

/// A run asked again with no log around it reaches ahead at most this many times the length of
/// the range being fetched ([`check_empty_spans`]).
const REACH_AHEAD_RANGES: u64 = 4;

/// Whether half or more of a bloom's bits are set: it says "maybe" to nearly anything.
fn bloom_is_full(bloom: &alloy_primitives::Bloom) -> bool {
    bloom.as_slice().iter().map(|b| b.count_ones()).sum::<u32>() >= 1024
}

/// Where a log is: (block number, log index).
type LogKey = (u64, u64);

fn key(l: &Log) -> LogKey {
    (l.block_number, l.log_index)
}

/// One question of [`check_empty_spans`].
struct EmptyRecheck {
    /// The part of the filter the spans came back empty for.
    part: usize,
    /// The runs of spans that came back without a log of the part.
    empty: Vec<BlockRange>,
    /// The range asked (the runs, and what lies between and around them).
    asked: BlockRange,
    /// Logs other answers hold that this question selects: an answer must hold them all.
    expected: Vec<LogKey>,
    /// What is asked for beside the part (one request), whose logs are `expected`.
    extra: Option<Extra>,
    /// The one block of `empty`, asked by hash, then its receipts decide.
    block: Option<Header>,
}

/// What a question of [`check_empty_spans`] asks for beside a part, to hold logs other parts'
/// answers hold.
#[derive(Debug, Clone, Copy)]
enum Extra {
    /// One more emitter, with the part's selectors (a part asking by address).
    Emitter(Address),
    /// One more selector, from any contract (the part of selectors from any contract).
    Selector(alloy_primitives::B256),
}

impl Extra {
    /// The one request of `part` with this beside it, over `asked`.
    fn request(self, part: &LogFilter, asked: BlockRange) -> Option<serde_json::Value> {
        let mut f = part.clone();
        match self {
            Self::Emitter(x) => {
                f.addresses.push(x);
                f.to_json_one(asked.start, asked.end)
            }
            Self::Selector(t) => {
                f.open_topic0s.push(t);
                let mut one = f.to_json(asked.start, asked.end);
                (one.len() == 1).then(|| one.pop()).flatten()
            }
        }
    }

    /// Whether `l` is one of the logs this selects.
    fn selects(self, part: &LogFilter, l: &Log) -> bool {
        match self {
            Self::Emitter(x) => l.address == x && part.selects_topic(l),
            Self::Selector(t) => l.topic0() == Some(&t),
        }
    }
}

/// Answers of `[]` are not taken on their word: a provider's lagging or broken backend answers
/// a whole request `[]`, and nothing in an empty answer tells it from an honest one. For each
/// part of the filter (each is its own request, so each can come back empty on its own), the
/// runs of spans that came back without a log of it are asked again, as few requests as the
/// provider's block span allows, each of which must hold logs other answers hold (no blanket
/// `[]` holds them) and is searched for logs of the part in the runs:
/// - the runs with the logs of the part between them and the nearest one after them (else
///   before them), in the range being fetched, else (in settled history) among the logs other
///   ranges' answers held ([`RangeSizer::remember`]);
/// - else, for a part asking by address, the runs with the part's addresses and the emitter of
///   the fewest logs other parts' answers hold there; for the part of selectors from any
///   contract, with the selector of the fewest of those logs;
/// - else, with the `headers` of every block ([`Checks::Blocks`]), each block of the runs
///   holding other parts' logs whose bloom may hold one of this part and is not full, by hash,
///   then its receipts decide (blocks no answer held a log of are [`check_and_repair`]'s);
/// - else (no log at all around, or full blooms) the runs reaching ahead to the sizer's span of
///   the moment, up to [`PLAIN_REASKS`] times, on another provider when there are several, until
///   an answer holds logs: that many `[]` in a row are believed, and the range is remembered in
///   `sizer` (later fetches' `[]` inside it are not asked again; one such question at a time).
///
/// Returns the logs found in the runs (real logs: a provider can hide logs, not make them up);
/// an answer missing a log it must hold is asked again with backoff, then is
/// [`Error::Inconsistent`]. See `docs/design/mainnet-shape.md`.
async fn check_empty_spans(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    spans: &[(BlockRange, Vec<Log>)],
    headers: Option<&[Header]>,
    sizer: &RangeSizer,
) -> Result<Vec<Log>> {
    let max_span = sizer.longest();
    let parts = filter.parts();
    let of = filter.parts_of();
    let np = of.count();
    // Whether each span holds logs of each part, and its first and last of each.
    let mut has = vec![false; spans.len() * np];
    let mut ends: Vec<Option<(&Log, &Log)>> = vec![None; spans.len() * np];
    for (s, (_, logs)) in spans.iter().enumerate() {
        for l in logs {
            of.each(l, |p| {
                if let (Some(h), Some(e)) = (has.get_mut(s * np + p), ends.get_mut(s * np + p)) {
                    *h = true;
                    *e = Some(e.map_or((l, l), |(first, _)| (first, l)));
                }
            });
        }
    }
    sizer.remember(ends.iter().flatten().flat_map(|(first, last)| [*first, *last]));
    let logs_in = |r: BlockRange| {
        spans
            .iter()
            .filter(move |(p, _)| p.end >= r.start && p.start <= r.end)
            .flat_map(|(_, logs)| logs)
            .filter(move |l| r.contains(l.block_number))
    };
    let mut asks: Vec<EmptyRecheck> = Vec::new();
    for (p, part) in parts.iter().enumerate() {
        let empty_at = |s: usize| !has.get(s * np + p).copied().unwrap_or(true);
        // Runs of empty spans, grouped while a group fits one request.
        let mut groups: Vec<Vec<BlockRange>> = Vec::new();
        let mut s = 0;
        while let Some(start) = (s..spans.len()).find(|&k| empty_at(k)) {
            let end = (start..spans.len()).find(|&k| !empty_at(k)).unwrap_or(spans.len());
            s = end;
            let (Some((first, _)), Some((last, _))) = (spans.get(start), spans.get(end - 1)) else {
                break;
            };
            let mut run = BlockRange::new(first.start, last.end);
            // A run longer than a request is cut.
            while run.len() > max_span {
                let (head, rest) = run.split_at_len(max_span);
                groups.push(vec![head]);
                let Some(rest) = rest else { break };
                run = rest;
            }
            match groups.last_mut() {
                Some(g) if g.first().is_some_and(|f| run.end - f.start < max_span) => g.push(run),
                _ => groups.push(vec![run]),
            }
        }
        let selects = part.matcher();
        for empty in groups {
            let (Some(first), Some(last)) = (empty.first().copied(), empty.last().copied()) else {
                continue;
            };
            let span = BlockRange::new(first.start, last.end);
            // The first log of the part between the runs or after them, else the nearest before
            // them. (Between: two runs of one group with the part's logs in the middle, each
            // alone with no log around it, were believed empty.)
            let after = BlockRange::try_new(first.start, range.end)
                .and_then(|r| logs_in(r).find(|l| selects(l)));
            let before = || {
                let before = BlockRange::try_new(range.start, first.start.checked_sub(1)?)?;
                logs_in(before).filter(|l| selects(l)).last()
            };
            let anchor = after.or_else(before).map(key);
            // Else a log of the part another range's answer held, not far: within the sizer's
            // span of the moment (what lies between may not be fetched yet, and be dense).
            let near = || sizer.known_near(span, sizer.current().max(span.len()), &selects);
            if let Some(k @ (n, _)) = anchor.or_else(near) {
                let asked = BlockRange::new(n.min(span.start), n.max(span.end));
                if asked.len() <= max_span {
                    let mut expected: Vec<LogKey> =
                        logs_in(asked).filter(|l| selects(l)).map(key).collect();
                    if !expected.contains(&k) {
                        expected.push(k);
                    }
                    let (extra, block) = (None, None);
                    asks.push(EmptyRecheck { part: p, empty, asked, expected, extra, block });
                    continue;
                }
            }
            let others = || empty.iter().flat_map(|r| logs_in(*r));
            let extra = if !part.addresses.is_empty() {
                fewest_of_one_emitter(others(), part).map(Extra::Emitter)
            } else if !part.open_topic0s.is_empty() {
                fewest_of_one_selector(others()).map(Extra::Selector)
            } else {
                None
            };
            if let Some(x) = extra {
                let expected = logs_in(span).filter(|l| x.selects(part, l)).map(key).collect();
                let (extra, block) = (Some(x), None);
                asks.push(EmptyRecheck { part: p, empty, asked: span, expected, extra, block });
                continue;
            }
            if let Some(known) = headers {
                let busy: foldhash::HashSet<u64> = others().map(|l| l.block_number).collect();
                let from = known.partition_point(|h| h.number < span.start);
                let blooms: Vec<&Header> = known
                    .get(from..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|h| h.number <= span.end)
                    .filter(|h| busy.contains(&h.number) && part.may_match(&h.logs_bloom))
                    .collect();
                if !blooms.iter().any(|h| bloom_is_full(&h.logs_bloom)) {
                    for h in blooms {
                        let one = BlockRange::new(h.number, h.number);
                        asks.push(EmptyRecheck {
                            part: p,
                            empty: vec![one],
                            asked: one,
                            expected: Vec::new(),
                            extra: None,
                            block: Some(h.clone()),
                        });
                    }
                    continue;
                }
            }
            // Asked again reaching ahead (at the sizer's span of the moment): later fetches'
            // `[]` inside what comes back empty are not asked again.
            let pk = part_key(part);
            if empty.iter().all(|r| sizer.is_confirmed_empty(pk, *r)) {
                continue;
            }
            // Not far: a dense stretch ahead would make the answer big (and a node without a
            // log index, anvil, scans every log there, holding up the fetches waiting on it).
            let reach = sizer.current().min(range.len().saturating_mul(REACH_AHEAD_RANGES)).max(1);
            let horizon = sizer.horizon.unwrap_or(range.end).max(range.end);
            let ahead = span.start.saturating_add(reach - 1).min(horizon);
            let asked = BlockRange::new(span.start, span.end.max(ahead));
            let (expected, extra, block) = (Vec::new(), None, None);
            asks.push(EmptyRecheck { part: p, empty, asked, expected, extra, block });
        }
    }
    let other = (rpc.provider_count() > 1).then(|| rpc.preferred() + 1);
    let parts = &parts;
    let answers = futures::future::try_join_all(asks.iter().map(|a| async move {
        let part = parts.get(a.part).unwrap_or(filter);
        if let Some(h) = &a.block {
            return confirm_empty_block(rpc, part, h).await;
        }
        let widened = a.extra.and_then(|x| x.request(part, a.asked));
        let ask = || async {
            let got = match &widened {
                Some(f) => rpc.get_logs_json(None, f.clone(), a.asked).await,
                None if a.expected.is_empty() => rpc.get_logs_on(other, part, a.asked).await,
                None => rpc.get_logs(part, a.asked).await,
            };
            match got {
                // Refused: the runs alone, in spans the provider takes.
                Err(Error::RangeTooLarge { .. }) => {
                    let least = BlockRange::new(
                        a.empty.first().map_or(a.asked.start, |r| r.start),
                        a.empty.last().map_or(a.asked.end, |r| r.end),
                    );
                    if a.expected.is_empty() && least != a.asked {
                        return fetch_logs(rpc, part, least, sizer).await;
                    }
                    sizer.on_span_refused(a.asked.len());
                    let sizer = RangeSizer::new(a.asked.len(), a.asked.len());
                    fetch_logs(rpc, part, a.asked, &sizer).await
                }
                other => other,
            }
        };
        if a.expected.is_empty() {
            let pk = part_key(part);
            let turn = sizer.reasking_turn(pk);
            let _one_at_a_time = turn.lock().await;
            if a.empty.iter().all(|r| sizer.is_confirmed_empty(pk, *r)) {
                return Ok(Vec::new());
            }
            // One question, then (when it comes back `[]`) the others side by side.
            let first = ask().await?;
            let mut answers = vec![first];
            if answers.iter().all(Vec::is_empty) {
                let reasks = if sizer.caught_hiding() { CAUGHT_REASKS } else { PLAIN_REASKS };
                let more = (1..reasks).map(|_| ask());
                answers.extend(futures::future::try_join_all(more).await?);
            }
            let Some(got) = answers.into_iter().find(|g| !g.is_empty()) else {
                sizer.confirm_empty(pk, a.asked);
                sizer.believe(part, &a.empty);
                return Ok(Vec::new());
            };
            if let Some(quiet) = got
                .iter()
                .map(|l| l.block_number)
                .min()
                .and_then(|n| n.checked_sub(1))
                .and_then(|e| BlockRange::try_new(a.asked.start, e))
            {
                sizer.confirm_empty(pk, quiet);
            }
            return Ok(got);
        }
        let mut attempt = 0;
        loop {
            let got = ask().await?;
            tracing::debug!(
                blocks = %a.asked, extra = ?a.extra, expected = a.expected.len(), got = got.len(),
                attempt, "[] asked again against logs it must hold"
            );
            let held: foldhash::HashSet<LogKey> = got.iter().map(key).collect();
            let Some((n, i)) = a.expected.iter().find(|k| !held.contains(k)).copied() else {
                return Ok(got);
            };
            if attempt >= INCONSISTENT_RETRIES {
                return Err(Error::Inconsistent {
                    range,
                    what: format!(
                        "blocks {} asked again without log {i} of block {n} another answer holds",
                        a.asked
                    ),
                });
            }
            attempt += 1;
            tokio::time::sleep(crate::backoff(
                attempt,
                crate::DEFAULT_BACKOFF_BASE,
                crate::DEFAULT_BACKOFF_MAX,
            ))
            .await;
        }
    }))
    .await?;
    let mut found = Vec::new();
    for (a, got) in asks.iter().zip(answers) {
        let selects = parts.get(a.part).unwrap_or(filter).matcher();
        let missed: Vec<Log> = got
            .into_iter()
            .filter(|l| a.empty.iter().any(|r| r.contains(l.block_number)) && selects(l))
            .collect();
        if let Some(l) = missed.first() {
            // In settled history (no headers) a node has every block: no lag explains it.
            if headers.is_none() {
                sizer.saw_hidden_logs();
            } else {
                sizer.saw_hidden_logs_near_head();
            }
            tracing::warn!(
                blocks = %a.asked,
                logs = missed.len(),
                block = l.block_number,
                "eth_getLogs answered [] for blocks that hold logs (found asking again)"
            );
        }
        found.extend(missed);
    }
    Ok(found)
}

/// Once a provider was seen hiding logs, near the head too ([`RangeSizer::saw_logs_hidden`]),
/// the runs of `[]` believed after plain questions only before it was caught in settled history
/// are asked again, a few side by side, up to [`CAUGHT_REASKS`] times each until an answer holds
/// logs: the logs of those runs that answers had hidden (empty when none was, or when no
/// provider hid any). A backfill asks at its end, and fetches again the chunks these logs
/// belong to: its plain questions' `[]` in a row were worth less than it took them for.
pub async fn recheck_believed_empty(rpc: &RpcClient, sizer: &RangeSizer) -> Result<Vec<Log>> {
    if !sizer.saw_logs_hidden() {
        return Ok(Vec::new());
    }
    let believed = std::mem::take(
        &mut *sizer.believed.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let ask = |(part, runs): (LogFilter, Vec<BlockRange>)| async move {
        let (Some(first), Some(last)) = (runs.first(), runs.last()) else {
            return Ok(Vec::new());
        };
        let span = BlockRange::new(first.start, last.end);
        for _ in 0..CAUGHT_REASKS {
            let got = fetch_logs(rpc, &part, span, sizer).await?;
            if got.is_empty() {
                continue;
            }
            let selects = part.matcher();
            let hidden: Vec<Log> = got
                .into_iter()
                .filter(|l| runs.iter().any(|r| r.contains(l.block_number)) && selects(l))
                .collect();
            if !hidden.is_empty() {
                tracing::warn!(
                    blocks = %span,
                    logs = hidden.len(),
                    "runs of [] believed before the provider was caught hiding logs hold logs"
                );
            }
            return Ok(hidden);
        }
        Ok(Vec::new())
    };
    let mut found: Vec<Log> = futures::stream::iter(believed)
        .map(ask)
        .buffer_unordered(PARTS_IN_FLIGHT)
        .try_concat()
        .await?;
    found.sort_unstable_by_key(key);
    found.dedup_by_key(|l| key(l));
    Ok(found)
}

/// A key for one part of a filter (for [`RangeSizer`]'s ranges confirmed empty).
fn part_key(part: &LogFilter) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0).hash_one((
        &part.addresses,
        &part.topic0s,
        &part.open_topic0s,
    ))
}

/// The emitter of `logs` (other parts' logs) with the fewest logs that `part`'s request with
/// one more address would select (the smallest answer). `None` when no log passes the part's
/// selectors.
fn fewest_of_one_emitter<'a>(
    logs: impl Iterator<Item = &'a Log>,
    part: &LogFilter,
) -> Option<Address> {
    let mut count: foldhash::HashMap<Address, usize> = Default::default();
    for l in logs.filter(|l| part.selects_topic(l)) {
        *count.entry(l.address).or_default() += 1;
    }
    count.into_iter().min_by_key(|(a, n)| (*n, *a)).map(|(a, _)| a)
}

/// The selector of `logs` (other parts' logs) with the fewest logs: asked for from any contract
/// beside the part of selectors from any contract, an answer must hold them. `None` without a
/// log with a selector.
fn fewest_of_one_selector<'a>(
    logs: impl Iterator<Item = &'a Log>,
) -> Option<alloy_primitives::B256> {
    let mut count: foldhash::HashMap<alloy_primitives::B256, usize> = Default::default();
    for t in logs.filter_map(Log::topic0) {
        *count.entry(*t).or_default() += 1;
    }
    count.into_iter().min_by_key(|(t, n)| (*n, *t)).map(|(t, _)| t)
}

/// Checks `logs` against `headers` (links, hashes, no duplicate, nothing removed), and asks by
/// hash for each block whose bloom may match and that no answer held a log of (`answered`) or
/// that has no log yet.
async fn check_and_repair(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    headers: Vec<Header>,
    mut logs: Vec<Log>,
    answered: &foldhash::HashSet<u64>,
) -> Result<RangeData> {
    let inconsistent = |what: String| Error::Inconsistent { range, what };
    for (i, h) in headers.iter().enumerate() {
        if i > 0 && h.parent_hash != headers[i - 1].hash {
            return Err(inconsistent(format!("block {} does not link to its parent", h.number)));
        }
    }
    // Whether each block of the range has logs.
    let mut with_logs = vec![false; headers.len()];
    for (i, l) in logs.iter().enumerate() {
        if !range.contains(l.block_number) {
            return Err(inconsistent(format!("log at block {} outside the range", l.block_number)));
        }
        if l.removed {
            return Err(inconsistent(format!("removed log at block {}", l.block_number)));
        }
        let at = (l.block_number - range.start) as usize;
        let (Some(h), Some(has)) = (headers.get(at), with_logs.get_mut(at)) else {
            return Err(inconsistent(format!("no header for block {}", l.block_number)));
        };
        *has = true;
        if h.hash != l.block_hash {
            return Err(inconsistent(format!(
                "log at block {} has block hash {}, header says {}",
                l.block_number, l.block_hash, h.hash
            )));
        }
        if i > 0
            && (logs[i - 1].block_number, logs[i - 1].log_index) == (l.block_number, l.log_index)
        {
            return Err(inconsistent(format!(
                "duplicate log {} in block {}",
                l.log_index, l.block_number
            )));
        }
    }
    let mut bloom_refetches = 0;
    let suspicious: Vec<&Header> = headers
        .iter()
        .zip(&with_logs)
        .filter(|(h, has)| {
            (!**has || !answered.contains(&h.number)) && filter.may_match(&h.logs_bloom)
        })
        .map(|(h, _)| h)
        .collect();
    if !suspicious.is_empty() {
        let confirmed = futures::future::try_join_all(
            suspicious.iter().map(|h| confirm_empty_block(rpc, filter, h)),
        )
        .await?;
        // Logs a recheck already found in those blocks are not added twice.
        let asked: foldhash::HashSet<u64> = suspicious.iter().map(|h| h.number).collect();
        let had: foldhash::HashSet<LogKey> =
            logs.iter().filter(|l| asked.contains(&l.block_number)).map(key).collect();
        for (h, got) in suspicious.iter().zip(confirmed) {
            let new: Vec<Log> = got.into_iter().filter(|l| !had.contains(&key(l))).collect();
            if !new.is_empty() {
                // The bloom was right and the range answer was short: a lagging node.
                tracing::warn!(
                    block = h.number,
                    logs = new.len(),
                    "range answer missed logs; recovered them"
                );
                bloom_refetches += 1;
                logs.extend(new);
            }
        }
        if bloom_refetches > 0 {
            logs.sort_unstable_by_key(|l| (l.block_number, l.log_index));
        }
    }
    Ok(RangeData { headers, blocks: Vec::new(), logs, bloom_refetches })
}

/// The logs `filter` selects in a block for which an answer came back empty although its bloom
/// may match. An empty answer is not believed twice from the same source: the block is asked
/// for again by hash (on another provider when there is one), part by part of the filter (each
/// part is its own request, and can come back empty on its own), and if a part whose bloom may
/// match is empty again, the block's receipts decide. An empty result means the bloom was a
/// false positive.
pub async fn confirm_empty_block(
    rpc: &RpcClient,
    filter: &LogFilter,
    header: &Header,
) -> Result<Vec<Log>> {
    let other = (rpc.provider_count() > 1).then(|| rpc.preferred() + 1);
    let mut got = Vec::new();
    let mut believed = true;
    for part in filter.parts() {
        let mut answer = rpc.get_logs_by_hash_on(other, &part, header.hash).await?;
        believed &= !answer.is_empty() || !part.may_match(&header.logs_bloom);
        got.append(&mut answer);
    }
    if !believed {
        let had = got.len();
        got = rpc.receipt_logs(filter, header.hash).await?;
        if got.len() > had {
            tracing::warn!(
                block = header.number,
                logs = got.len() - had,
                "eth_getLogs answered [] twice for a block whose receipts hold matching logs"
            );
        }
    }
    if got.iter().any(|l| l.block_hash != header.hash || l.block_number != header.number) {
        let range = BlockRange::new(header.number, header.number);
        return Err(Error::Inconsistent {
            range,
            what: format!("logs of another block in the answer for block {}", header.number),
        });
    }
    got.sort_unstable_by_key(|l| l.log_index);
    // A watched contract's log with a selector asked for from any contract is in two parts.
    got.dedup_by_key(|l| l.log_index);
    Ok(got)
}

/// Times a range whose answers disagree (a lagging node) is refetched before giving up.
pub const INCONSISTENT_RETRIES: u32 = 5;

/// [`fetch_range`], refetched with backoff while the node's answers disagree with each other:
/// first with `checks`, after a disagreement with [`Checks::Blocks`].
pub async fn fetch_range_consistent(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    sizer: &RangeSizer,
    mut checks: Checks,
) -> Result<RangeData> {
    let mut attempt = 0;
    loop {
        match fetch_range(rpc, filter, range, sizer, checks).await {
            Err(e @ Error::Inconsistent { .. }) if attempt < INCONSISTENT_RETRIES => {
                attempt += 1;
                checks = Checks::Blocks;
                tracing::warn!(error = %e, attempt, "inconsistent answers, refetching the range");
                let wait = crate::backoff(
                    attempt,
                    crate::DEFAULT_BACKOFF_BASE,
                    crate::DEFAULT_BACKOFF_MAX,
                );
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_equal_to_request_halves() {
        let r = BlockRange::new(100, 199);
        assert_eq!(next_span(r, Some(r)), 50);
        assert_eq!(next_span(r, Some(BlockRange::new(100, 119))), 20);
        assert_eq!(next_span(r, Some(BlockRange::new(150, 160))), 50);
        assert_eq!(next_span(r, None), 50);
        assert_eq!(next_span(BlockRange::new(5, 6), None), 1);
    }

    proptest::proptest! {
        /// Whatever the provider hints, the next attempt is strictly shorter than the range
        /// that failed (so splitting ends), and never empty.
        #[test]
        fn next_span_always_shrinks(
            start in 0u64..1_000_000, len in 2u64..100_000,
            hint in proptest::option::of((0u64..1_100_000, 0u64..200_000)),
        ) {
            let failed = BlockRange::new(start, start + len - 1);
            let hint = hint.and_then(|(a, l)| BlockRange::try_new(a, a + l));
            let next = next_span(failed, hint);
            proptest::prop_assert!(next >= 1 && next < failed.len(), "{failed} {hint:?} -> {next}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        /// The remembered log a run is asked again against is one the part selects, settled,
        /// and with the run within `longest` blocks; one inside the run comes first. Never a
        /// panic, whatever the run, the bound and the settled line.
        #[test]
        fn known_near_finds_a_settled_selected_log_within_reach(
            blocks in proptest::collection::vec(0u64..100, 0..20),
            start in 0u64..100, len in 1u64..50, beyond in -3i64..10, settled in 0u64..150,
        ) {
            // Runs about as long as the bound are the edge cases.
            let longest = len.saturating_add_signed(beyond).max(1);
            let sizer = RangeSizer::new(10, 10).with_settled_below(settled);
            let (watched, other) = (Address::repeat_byte(1), Address::repeat_byte(2));
            let logs: Vec<Log> = blocks
                .iter()
                .enumerate()
                .map(|(i, &b)| Log {
                    address: if i % 3 == 0 { other } else { watched },
                    topics: vec![alloy_primitives::B256::repeat_byte(7)],
                    data: Default::default(),
                    block_number: b,
                    block_hash: Default::default(),
                    transaction_hash: Default::default(),
                    transaction_index: 0,
                    log_index: i as u64,
                    removed: false,
                    block_timestamp: None,
                })
                .collect();
            sizer.remember(&logs);
            let run = BlockRange::new(start, start + len - 1);
            let selects = |l: &Log| l.address == watched;
            let got = sizer.known_near(run, longest, selects);
            let fits = |b: u64| b < settled && run.end < settled
                && b.max(run.end) - b.min(run.start) < longest;
            let candidates: Vec<&Log> =
                logs.iter().filter(|l| selects(l) && fits(l.block_number)).collect();
            match got {
                None => proptest::prop_assert!(candidates.is_empty(), "{run} missed {candidates:?}"),
                Some((b, i)) => {
                    let l = logs.iter().find(|l| (l.block_number, l.log_index) == (b, i));
                    proptest::prop_assert!(l.is_some_and(|l| selects(l) && fits(b)), "{run}: {b}");
                    let inside = candidates.iter().any(|l| run.contains(l.block_number));
                    proptest::prop_assert!(!inside || run.contains(b), "{run}: {b} before one inside");
                }
            }
        }
    }

    #[test]
    fn sizer_shrinks_and_grows() {
        let s = RangeSizer::new(1000, 2000);
        s.on_too_large(100);
        assert_eq!(s.current(), 100);
        s.on_success(50, 5_000);
        assert_eq!(s.current(), 100);
        s.on_success(100, 5_000);
        assert_eq!(s.current(), 126);
        s.on_success(126, 10);
        assert_eq!(s.current(), 252, "a sparse answer doubles the span");
        for _ in 0..100 {
            s.on_success(s.current(), 5_000);
        }
        assert_eq!(s.current(), 2000);
        // 90,000 logs in 2,000 blocks: the next span holds about 9,000 (nine tenths of the aim).
        s.on_success(2000, 90_000);
        assert_eq!(s.current(), 200, "a dense answer shrinks the span");
        s.on_success(200, 9_500);
        assert_eq!(s.current(), 200, "an answer near the aim does not grow the span past it");
        s.on_success(200, 8_000);
        assert_eq!(s.current(), 225, "towards nine tenths of the aim");
        s.on_success(225, 4_000);
        assert_eq!(s.current(), 282, "by a quarter at most");
        s.on_too_large(200);
        // Even from a part shorter than the span, and never to zero.
        s.on_success(10, 1_000_000);
        assert_eq!(s.current(), 1);
    }
}
