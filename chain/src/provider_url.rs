//! Provider URLs, redacted where they enter the program.
//!
//! Hosted providers put API keys in the path (`/v2/<key>`), the query (`?apikey=`) or the
//! userinfo (`user:pass@`). A [`ProviderUrl`] keeps the full URL for the HTTP client only; its
//! `Display` and `Debug` show the scheme, host and port, with `/…` where a path or query was
//! dropped, so no error, log line, summary, metric label or file can carry a key.

use std::fmt;
use std::sync::Arc;

/// A provider URL whose printed form hides everything that may hold a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderUrl {
    full: Arc<str>,
    shown: Arc<str>,
}

/// A URL that is not a usable provider URL (the message never repeats the URL itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("provider URL {shown} {reason}")]
pub struct BadProviderUrl {
    /// The redacted form of what was given.
    pub shown: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ProviderUrl {
    /// Parses `url`, accepting only the given schemes (`http`, `https`, `ws`, `wss`, ...).
    pub fn parse_with(url: &str, schemes: &[&str]) -> Result<Self, BadProviderUrl> {
        let shown = redact(url);
        let bad = |reason| BadProviderUrl { shown: shown.clone(), reason };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad("has no scheme (expected http:// or https://)"));
        };
        if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
            return Err(bad(match schemes.first() {
                Some(&"ws") => "must start with ws:// or wss://",
                _ => "must start with http:// or https://",
            }));
        }
        let host = host_of(rest);
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        Ok(Self { full: url.into(), shown: shown.into() })
    }

    /// Parses an HTTP(S) JSON-RPC URL.
    pub fn parse(url: &str) -> Result<Self, BadProviderUrl> {
        Self::parse_with(url, &["http", "https"])
    }

    /// The full URL, secrets included: for the HTTP/WebSocket client, never for printing.
    pub fn expose(&self) -> &str {
        &self.full
    }

    /// The printable form.
    pub fn redacted(&self) -> &str {
        &self.shown
    }

    /// Whether the host is this machine (`localhost`, `127.0.0.0/8`, `[::1]`): a node of one's
    /// own, with no bill per call.
    pub fn is_loopback(&self) -> bool {
        let rest = self.full.split_once("://").map_or("", |(_, r)| r);
        let host = host_of(rest);
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The scheme, lower case.
    pub fn scheme(&self) -> String {
        self.full.split("://").next().unwrap_or_default().to_ascii_lowercase()
    }
}

impl fmt::Display for ProviderUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for ProviderUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProviderUrl({})", self.shown)
    }
}

/// `host[:port]` of what follows `scheme://`, without userinfo.
fn host_of(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority.rsplit('@').next().unwrap_or(authority)
}

/// The printable form of any URL: scheme, host and port; `/…` when a path, query or fragment
/// was dropped. Userinfo is always dropped. Text without `://` is shown as `<redacted>`.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = host_of(rest);
            let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let tail = &rest[authority_len..];
            let dropped = !(tail.is_empty() || tail == "/");
            format!("{scheme}://{host}{}", if dropped { "/…" } else { "" })
        }
        None => "<redacted>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn loopback_hosts_are_this_machine() {
        for (url, local) in [
            ("http://127.0.0.1:8545", true),
            ("http://127.3.2.1", true),
            ("http://localhost:8545/path?k=1", true),
            ("http://LOCALHOST", true),
            ("http://[::1]:8545", true),
            ("http://user:pw@127.0.0.1:1/x", true),
            ("http://10.0.0.2:8545", false),
            ("https://eth-mainnet.example.com/v2/key", false),
            ("http://localhost.example.com", false),
            ("http://[2001:db8::1]:8545", false),
        ] {
            assert_eq!(ProviderUrl::parse(url).unwrap().is_loopback(), local, "{url}");
        }
    }

    #[test]
    fn keys_never_show() {
        let cases = [
            (
                "https://eth-mainnet.g.alchemy.com/v2/SECRETKEY",
                "https://eth-mainnet.g.alchemy.com/…",
            ),
            ("https://api.example/rpc?apikey=SECRETKEY", "https://api.example/…"),
            ("https://user:SECRETKEY@host.example:8545", "https://host.example:8545"),
            ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
            ("http://127.0.0.1:8545/", "http://127.0.0.1:8545"),
            ("wss://mainnet.infura.io/ws/v3/SECRETKEY", "wss://mainnet.infura.io/…"),
        ];
        for (url, shown) in cases {
            let u = ProviderUrl::parse_with(url, &["http", "https", "ws", "wss"]).unwrap();
            assert_eq!(u.to_string(), shown);
            assert!(!format!("{u:?}").contains("SECRETKEY"));
            assert_eq!(u.expose(), url);
        }
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        let e = ProviderUrl::parse("ftp://user:SECRETKEY@host/x").unwrap_err();
        assert!(!e.to_string().contains("SECRETKEY"), "{e}");
        assert!(e.to_string().contains("http://"), "{e}");
        assert!(ProviderUrl::parse("SECRETKEY").unwrap_err().to_string().contains("<redacted>"));
        assert!(ProviderUrl::parse("http:///path").is_err());
    }

    proptest! {
        #[test]
        fn redaction_never_keeps_path_query_or_userinfo(
            user in "[a-z]{1,8}", key in "[A-Za-z0-9]{12,32}", host in "[a-z]{1,10}\\.[a-z]{2,3}",
            shape in 0u8..3,
        ) {
            let url = match shape {
                0 => format!("https://{host}/v2/{key}"),
                1 => format!("https://{host}/?apikey={key}"),
                _ => format!("https://{user}:{key}@{host}/"),
            };
            prop_assert!(!redact(&url).contains(&key));
        }
    }
}
