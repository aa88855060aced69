//! The chain crate's error type, which classifies itself for retry loops.

use crate::provider_url::ProviderUrl;
use crate::range::BlockRange;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to a node or decoding what it said.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The HTTP request failed below JSON-RPC (connect, timeout, body).
    #[error("{method} on {provider}: transport failed")]
    Transport {
        /// Provider URL (redacted when printed).
        provider: ProviderUrl,
        /// JSON-RPC method.
        method: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The provider answered with an HTTP error status.
    #[error("{method} on {provider}: HTTP {status}")]
    HttpStatus {
        /// Provider URL (redacted when printed).
        provider: ProviderUrl,
        /// JSON-RPC method.
        method: String,
        /// HTTP status code.
        status: u16,
        /// The provider's `Retry-After`, when it sent one (a 429 or 503).
        retry_after: Option<std::time::Duration>,
    },
    /// The provider answered with a JSON-RPC error object.
    #[error("{method} on {provider}: JSON-RPC error {code}: {message}")]
    Rpc {
        /// Provider URL (redacted when printed).
        provider: ProviderUrl,
        /// JSON-RPC method.
        method: String,
        /// JSON-RPC error code.
        code: i64,
        /// JSON-RPC error message.
        message: String,
    },
    /// The answer did not have the expected shape.
    #[error("{method} on {provider}: unexpected response")]
    BadResponse {
        /// Provider URL (redacted when printed).
        provider: ProviderUrl,
        /// JSON-RPC method.
        method: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// `eth_getLogs` over `range` returned too much; `hint` is the provider's suggestion.
    #[error("eth_getLogs {range} on {provider}: range too large ({message})")]
    RangeTooLarge {
        /// Provider URL (redacted when printed).
        provider: ProviderUrl,
        /// The range that failed.
        range: BlockRange,
        /// The range the provider suggested, if it suggested one.
        hint: Option<BlockRange>,
        /// The provider's message.
        message: String,
    },
    /// A single block's logs are too many for the provider: the range cannot be split further.
    #[error("eth_getLogs for block {block}: too many logs even for one block")]
    BlockTooLarge {
        /// The block.
        block: u64,
    },
    /// The node does not (yet) have a block we asked for.
    #[error("block {block}{} not available from {provider}", block_hash.map(|h| format!(" ({h})")).unwrap_or_default())]
    MissingBlock {
        /// Provider URL (redacted when printed).
        provider: ProviderUrl,
        /// Block number (0 when asked by hash).
        block: u64,
        /// Block hash, when asked by hash.
        block_hash: Option<alloy_primitives::B256>,
    },
    /// The node's answers disagree with each other (lagging node, reorg under our feet).
    #[error("inconsistent data in {range}: {what}")]
    Inconsistent {
        /// The range being fetched.
        range: BlockRange,
        /// What disagreed.
        what: String,
    },
    /// All retries were used up.
    #[error("gave up after {attempts} attempts")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        #[source]
        source: Box<Self>,
    },
    /// An event signature could not be parsed.
    #[error("invalid event signature {signature:?}: {reason}")]
    BadEventSignature {
        /// The signature as given.
        signature: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Building an Arrow batch failed (a bug in the schema code).
    #[error("building Arrow batch for {table}")]
    Arrow {
        /// Table name.
        table: String,
        /// Cause.
        #[source]
        source: arrow::error::ArrowError,
    },
}

impl Error {
    /// Whether trying again (possibly on another provider) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::MissingBlock { .. } | Self::Inconsistent { .. } => true,
            Self::HttpStatus { status, .. } => *status == 429 || *status == 408 || *status >= 500,
            Self::Rpc { .. } => self.is_rate_limited() || self.is_server_fault(),
            Self::BadResponse { .. } => true,
            _ => false,
        }
    }

    /// Whether the failure is about the node's availability (down, overloaded, lagging), not
    /// about the request: a follower waits and tries again later.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::RetriesExhausted { source, .. } => source.is_transient(),
            other => other.is_retryable(),
        }
    }

    /// Whether the node does not know the method (it is not served by this provider).
    pub fn is_method_unsupported(&self) -> bool {
        match self {
            Self::Rpc { code, message, .. } => {
                let m = message.to_ascii_lowercase();
                *code == -32601
                    || m.contains("method not found")
                    || m.contains("not supported")
                    || m.contains("unsupported method")
                    || m.contains("does not exist")
            }
            Self::RetriesExhausted { source, .. } => source.is_method_unsupported(),
            _ => false,
        }
    }

    /// Whether the provider told us to slow down.
    pub fn is_rate_limited(&self) -> bool {
        match self {
            Self::HttpStatus { status, .. } => *status == 429,
            Self::Rpc { code, message, .. } => {
                let m = message.to_ascii_lowercase();
                *code == 429
                    || m.contains("rate limit")
                    || m.contains("too many requests")
                    || m.contains("request count")
                    || m.contains("capacity")
                    || (*code == -32005 && !is_range_message(&m))
            }
            _ => false,
        }
    }

    /// Whether the request asked for too much (the range must shrink, not be retried as is).
    pub fn is_range_too_large(&self) -> bool {
        matches!(self, Self::RangeTooLarge { .. })
    }

    fn is_server_fault(&self) -> bool {
        match self {
            Self::Rpc { code, message, .. } => {
                let m = message.to_ascii_lowercase();
                *code == -32603 || m.contains("timeout") || m.contains("temporarily")
            }
            _ => false,
        }
    }
}

/// Whether a JSON-RPC error message says the `eth_getLogs` request was too big.
pub(crate) fn is_range_message(m: &str) -> bool {
    let m = m.to_ascii_lowercase();
    if m.contains("rate limit") || m.contains("too many requests") {
        return false;
    }
    [
        "more than",
        "too many results",
        "too large",
        "response size",
        "exceed",
        "block range",
        "try with this block range",
        "retry with the range",
        "limited to",
    ]
    .iter()
    .any(|k| m.contains(k))
}

/// The range a provider suggests in a "too many results" message, if any.
///
/// Understands Infura/Alchemy's `[0xSTART, 0xEND]` and reth's `retry with the range S-E`.
pub fn parse_range_hint(message: &str) -> Option<BlockRange> {
    if let Some(open) = message.find('[') {
        let rest = &message[open + 1..];
        let close = rest.find(']')?;
        let mut parts = rest[..close].split(',').map(|p| parse_number(p.trim()));
        let (a, b) = (parts.next()??, parts.next()??);
        return BlockRange::try_new(a, b);
    }
    let lower = message.to_ascii_lowercase();
    let at = lower.find("range ")?;
    let rest = &lower[at + "range ".len()..];
    let token: String =
        rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == 'x').collect();
    let (a, b) = token.split_once('-')?;
    BlockRange::try_new(parse_number(a)?, parse_number(b)?)
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(code: i64, message: &str) -> Error {
        Error::Rpc {
            provider: ProviderUrl::parse("http://p").unwrap(),
            method: "eth_getLogs".into(),
            code,
            message: message.into(),
        }
    }

    #[test]
    fn hints_from_known_providers() {
        let infura =
            "query returned more than 10000 results. Try with this block range [0x10, 0x1F].";
        assert_eq!(parse_range_hint(infura), Some(BlockRange::new(16, 31)));
        let alchemy = "Log response size exceeded. ... this block range should work: [0x0, 0x2a]";
        assert_eq!(parse_range_hint(alchemy), Some(BlockRange::new(0, 42)));
        let reth = "query exceeds max results 20000, retry with the range 100-150";
        assert_eq!(parse_range_hint(reth), Some(BlockRange::new(100, 150)));
        assert_eq!(parse_range_hint("query returned more than 10000 results"), None);
    }

    #[test]
    fn range_errors_are_not_rate_limits() {
        let infura = rpc(-32005, "query returned more than 10000 results");
        assert!(!infura.is_rate_limited());
        assert!(!infura.is_retryable());
        assert!(is_range_message("query returned more than 10000 results"));
        let limited = rpc(-32005, "daily request count exceeded, request rate limited");
        assert!(limited.is_rate_limited());
        assert!(limited.is_retryable());
        assert!(!is_range_message("daily request count exceeded, request rate limited"));
    }

    proptest::proptest! {
        /// Any provider message: never a panic, a hint is a valid range, and a message is
        /// never both a rate limit and a range error.
        #[test]
        fn any_provider_message_is_classified_without_panicking(
            m in proptest::prop_oneof![
                ".{0,200}",
                "(rate limit|too many requests|more than|too many results|exceed|block range|limited to|range ) ?[\\[\\]0-9a-fx, -]{0,40}.{0,40}",
            ],
            code in -33000i64..-31000,
        ) {
            if let Some(r) = parse_range_hint(&m) {
                proptest::prop_assert!(r.start <= r.end);
            }
            let e = rpc(code, &m);
            proptest::prop_assert!(!(e.is_rate_limited() && e.is_range_too_large()), "{m}");
            let _ = (e.is_retryable(), e.is_transient(), e.is_method_unsupported());
        }

        /// The hints providers send are read back exactly, whatever the numbers.
        #[test]
        fn hints_round_trip(a in 0u64..1 << 40, len in 0u64..1 << 20, hex in proptest::bool::ANY) {
            let b = a + len;
            let m = if hex {
                format!("query returned more than 10000 results. Try with this block range [{a:#x}, {b:#x}].")
            } else {
                format!("query exceeds max results 20000, retry with the range {a}-{b}")
            };
            proptest::prop_assert_eq!(parse_range_hint(&m), Some(BlockRange::new(a, b)));
        }
    }

    #[test]
    fn http_statuses() {
        let e = |status| Error::HttpStatus {
            retry_after: None,
            provider: ProviderUrl::parse("http://p").unwrap(),
            method: "m".into(),
            status,
        };
        assert!(e(429).is_retryable() && e(429).is_rate_limited());
        assert!(e(503).is_retryable());
        assert!(!e(400).is_retryable());
    }
}
