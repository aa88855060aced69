//! Fetching a block range completely: headers and logs, with adaptive `eth_getLogs` ranges and
//! completeness checks (block hashes agree, blooms agree, nothing removed, no hole).

use crate::error::{Error, Result};
use crate::range::BlockRange;
use crate::rpc::RpcClient;
use crate::{Header, Log, LogFilter};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// First `eth_getLogs` span tried, in blocks. Large enough that a sparse range is one call;
/// dense ranges shrink it on the first "too many results".
pub const DEFAULT_LOG_RANGE: u64 = 2_000;
/// Largest span the sizer grows to.
pub const DEFAULT_MAX_LOG_RANGE: u64 = 10_000;

/// Adapts the `eth_getLogs` span: shrinks to what the provider accepts, grows back by a quarter
/// after each success at full span.
#[derive(Debug)]
pub struct RangeSizer {
    size: AtomicU64,
    max: u64,
}

impl RangeSizer {
    /// Starts at `initial` blocks, never above `max`.
    pub fn new(initial: u64, max: u64) -> Self {
        let max = max.max(1);
        Self { size: AtomicU64::new(initial.clamp(1, max)), max }
    }

    /// The span to try now.
    pub fn current(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// A span of `used` blocks succeeded.
    pub fn on_success(&self, used: u64) {
        let cur = self.current();
        if used >= cur {
            let grown = (cur + cur / 4 + 1).min(self.max);
            let _ = self.size.compare_exchange(cur, grown, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The provider accepted at most `len` blocks.
    pub fn on_too_large(&self, len: u64) {
        self.size.fetch_min(len.max(1), Ordering::Relaxed);
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
    /// One header per block, in order.
    pub headers: Vec<Header>,
    /// The matching logs, ordered by (block_number, log_index).
    pub logs: Vec<Log>,
    /// Blocks whose logs were refetched by hash because the bloom disagreed with an empty answer.
    pub bloom_refetches: u64,
}

/// Logs for `range`, split adaptively. Sub-ranges are fetched concurrently (the client's
/// semaphore caps requests in flight); the result is sorted by (block_number, log_index).
pub async fn fetch_logs(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    sizer: &RangeSizer,
) -> Result<Vec<Log>> {
    let mut logs = Vec::new();
    let mut in_flight = FuturesUnordered::new();
    for part in range.chunks(sizer.current()) {
        in_flight.push(fetch_one(rpc, filter, part));
    }
    while let Some((part, result)) = in_flight.next().await {
        match result {
            Ok(mut got) => {
                sizer.on_success(part.len());
                logs.append(&mut got);
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
                in_flight.push(fetch_one(rpc, filter, head));
                if let Some(rest) = rest {
                    for p in rest.chunks(span) {
                        in_flight.push(fetch_one(rpc, filter, p));
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    logs.sort_unstable_by_key(|l| (l.block_number, l.log_index));
    Ok(logs)
}

async fn fetch_one(
    rpc: &RpcClient,
    filter: &LogFilter,
    part: BlockRange,
) -> (BlockRange, Result<Vec<Log>>) {
    (part, rpc.get_logs(filter, part).await)
}

/// Headers and logs of `range`, checked for completeness:
/// - every log lies in the range, is not `removed`, and carries its block's header hash;
/// - no (block, log_index) appears twice;
/// - a block whose bloom may hold a match but that came back empty is refetched by hash.
///
/// A disagreement is [`Error::Inconsistent`] (retryable: the node was lagging or reorging).
pub async fn fetch_range(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    sizer: &RangeSizer,
) -> Result<RangeData> {
    let (headers, logs) =
        futures::try_join!(rpc.headers(range), fetch_logs(rpc, filter, range, sizer))?;
    check_and_repair(rpc, filter, range, headers, logs).await
}

async fn check_and_repair(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    headers: Vec<Header>,
    mut logs: Vec<Log>,
) -> Result<RangeData> {
    let inconsistent = |what: String| Error::Inconsistent { range, what };
    for (i, h) in headers.iter().enumerate() {
        if i > 0 && h.parent_hash != headers[i - 1].hash {
            return Err(inconsistent(format!("block {} does not link to its parent", h.number)));
        }
    }
    let mut per_block: HashMap<u64, usize> = HashMap::new();
    for (i, l) in logs.iter().enumerate() {
        if !range.contains(l.block_number) {
            return Err(inconsistent(format!("log at block {} outside the range", l.block_number)));
        }
        if l.removed {
            return Err(inconsistent(format!("removed log at block {}", l.block_number)));
        }
        let h = &headers[(l.block_number - range.start) as usize];
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
        *per_block.entry(l.block_number).or_default() += 1;
    }
    let mut bloom_refetches = 0;
    let suspicious: Vec<&Header> = headers
        .iter()
        .filter(|h| !per_block.contains_key(&h.number) && filter.may_match(&h.logs_bloom))
        .collect();
    if !suspicious.is_empty() {
        let confirmed = futures::future::try_join_all(
            suspicious.iter().map(|h| confirm_empty_block(rpc, filter, h)),
        )
        .await?;
        for (h, got) in suspicious.iter().zip(confirmed) {
            if !got.is_empty() {
                // The bloom was right and the range answer was short: a lagging node.
                tracing::warn!(
                    block = h.number,
                    logs = got.len(),
                    "range answer missed logs; recovered them"
                );
                bloom_refetches += 1;
                logs.extend(got);
            }
        }
        if bloom_refetches > 0 {
            logs.sort_unstable_by_key(|l| (l.block_number, l.log_index));
        }
    }
    Ok(RangeData { headers, logs, bloom_refetches })
}

/// The logs `filter` selects in a block for which an answer came back empty although its bloom
/// may match. An empty answer is not believed twice from the same source: the block is asked
/// for again by hash (on another provider when there is one), and if that is empty too, the
/// block's receipts decide. An empty result means the bloom was a false positive.
pub async fn confirm_empty_block(
    rpc: &RpcClient,
    filter: &LogFilter,
    header: &Header,
) -> Result<Vec<Log>> {
    let other = (rpc.provider_count() > 1).then(|| rpc.preferred() + 1);
    let mut got = rpc.get_logs_by_hash_on(other, filter, header.hash).await?;
    if got.is_empty() {
        got = rpc.receipt_logs(filter, header.hash).await?;
        if !got.is_empty() {
            tracing::warn!(
                block = header.number,
                logs = got.len(),
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
    Ok(got)
}

/// Times a range whose answers disagree (a lagging node) is refetched before giving up.
pub const INCONSISTENT_RETRIES: u32 = 5;

/// [`fetch_range`], refetched with backoff while the node's answers disagree with each other.
pub async fn fetch_range_consistent(
    rpc: &RpcClient,
    filter: &LogFilter,
    range: BlockRange,
    sizer: &RangeSizer,
) -> Result<RangeData> {
    let mut attempt = 0;
    loop {
        match fetch_range(rpc, filter, range, sizer).await {
            Err(e @ Error::Inconsistent { .. }) if attempt < INCONSISTENT_RETRIES => {
                attempt += 1;
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

    #[test]
    fn sizer_shrinks_and_grows() {
        let s = RangeSizer::new(1000, 2000);
        s.on_too_large(100);
        assert_eq!(s.current(), 100);
        s.on_success(50);
        assert_eq!(s.current(), 100);
        s.on_success(100);
        assert_eq!(s.current(), 126);
        for _ in 0..100 {
            s.on_success(s.current());
        }
        assert_eq!(s.current(), 2000);
    }
}
