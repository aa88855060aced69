//! `eth_getLogs` answers parsed straight from the response bytes: no intermediate JSON values,
//! hex decoded in place, every log's `data` a slice of one buffer per answer. On a dense chain
//! this replaces most of the backfill's JSON cost (serde's string scanning, UTF-8 checks and
//! field matching were ~14% of its CPU).
//!
//! It takes only the plain shape of a successful answer: `{"jsonrpc", "id", "result": [logs]}`
//! with fields in any order, unknown fields skipped, hex values as `0x` and hex digits. Anything
//! else (an error object, a `null` result, escapes in a string, a duplicate field, hex without
//! `0x`, a malformed document) gives `None`, and the caller parses the answer with serde, which
//! accepts or refuses it with its own error. So this path never accepts an answer serde
//! refuses, and every answer it accepts gives the logs serde gives (`tests` check both).

use crate::Log;
use alloy_primitives::{hex, Address, Bytes, B256};

/// Nesting deeper than this in a skipped value goes to serde (its own limit is 128).
const MAX_DEPTH: usize = 64;

/// The logs of a successful `eth_getLogs` answer, or `None` when the answer is not in the plain
/// shape this parser takes (see the module docs).
pub(crate) fn parse_logs_answer(body: &[u8]) -> Option<Vec<Log>> {
    let mut p = Parser { b: body, i: 0, arena: Vec::with_capacity(body.len() / 4), spans: vec![] };
    let mut logs = None;
    let (mut seen_id, mut seen_jsonrpc, mut seen_error) = (false, false, false);
    p.expect(b'{')?;
    if !p.eat(b'}') {
        loop {
            match p.key()? {
                b"result" if logs.is_none() => logs = Some(p.logs()?),
                b"id" if !seen_id => {
                    seen_id = true;
                    p.id()?;
                }
                b"jsonrpc" if !seen_jsonrpc => {
                    seen_jsonrpc = true;
                    p.skip_value(0)?;
                }
                // `"error": null` is no error; any other error goes to serde.
                b"error" if !seen_error => {
                    seen_error = true;
                    p.literal(b"null")?;
                }
                b"result" | b"id" | b"jsonrpc" | b"error" => return None,
                _ => p.skip_value(0)?,
            }
            if !p.eat(b',') {
                break;
            }
        }
        p.expect(b'}')?;
    }
    p.ws();
    if p.i != p.b.len() {
        return None;
    }
    let mut logs = logs?;
    let arena = bytes::Bytes::from(p.arena);
    for (l, (start, end)) in logs.iter_mut().zip(p.spans) {
        l.data = Bytes(arena.slice(start..end));
    }
    Some(logs)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    /// Every log's data, decoded, one after the other.
    arena: Vec<u8>,
    /// Each log's data in `arena`, in log order.
    spans: Vec<(usize, usize)>,
}

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Skips whitespace, then consumes `c` if it comes next.
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.ws();
        let end = self.i.checked_add(word.len())?;
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A string without escapes or control characters, as its raw bytes (UTF-8 is checked
    /// only where the bytes are kept as text: keys of skipped fields, skipped strings).
    fn plain_str(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.i;
        let rest = self.b.get(start..)?;
        let len = memchr::memchr2(b'"', b'\\', rest)?;
        let s = rest.get(..len)?;
        if rest.get(len) != Some(&b'"') || s.iter().any(|c| *c < 0x20) {
            return None;
        }
        self.i = start + len + 1;
        Some(s)
    }

    /// An object key and its colon. Field names are letters and digits, taken at once; any
    /// other key is checked as any string.
    fn key(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.i;
        let rest = self.b.get(start..)?;
        let k = rest.get(..memchr::memchr(b'"', rest)?)?;
        if k.iter().all(u8::is_ascii_alphanumeric) {
            self.i = start + k.len() + 1;
        } else {
            self.i = start - 1;
            std::str::from_utf8(self.plain_str()?).ok()?;
        }
        self.expect(b':')?;
        Some(k)
    }

    /// The digits of a string of `0x` and hex digits (checked by whoever decodes them: a quote,
    /// escape or control character is no hex digit).
    fn hex_str(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.i;
        let rest = self.b.get(start..)?;
        let s = rest.get(..memchr::memchr(b'"', rest)?)?;
        self.i = start + s.len() + 1;
        s.strip_prefix(b"0x")
    }

    /// `0x` and exactly `2 * N` hex digits, decoded.
    fn hex_array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.expect(b'"')?;
        let start = self.i;
        let end = start + 2 + 2 * N;
        let digits = self.b.get(start..end)?.strip_prefix(b"0x")?;
        if self.b.get(end) != Some(&b'"') {
            return None;
        }
        self.i = end + 1;
        hex::decode_to_array::<_, N>(digits).ok()
    }

    /// A JSON-RPC quantity: `0x` and 1 to 16 hex digits.
    fn quantity(&mut self) -> Option<u64> {
        let s = self.hex_str()?;
        if s.is_empty() || s.len() > 16 {
            return None;
        }
        s.iter().try_fold(0u64, |acc, c| Some(acc << 4 | u64::from((*c as char).to_digit(16)?)))
    }

    /// The answer's id: an unsigned integer or null (what serde takes for `Option<u64>`).
    fn id(&mut self) -> Option<()> {
        if self.peek()? == b'n' {
            return self.literal(b"null");
        }
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        let digits = self.b.get(start..self.i)?;
        if digits.is_empty() || (digits.len() > 1 && digits.first() == Some(&b'0')) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
        // A fraction or exponent makes it no integer.
        (!matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E'))).then_some(())
    }

    fn logs(&mut self) -> Option<Vec<Log>> {
        self.expect(b'[')?;
        let mut logs = Vec::new();
        if self.eat(b']') {
            return Some(logs);
        }
        loop {
            logs.push(self.log()?);
            if !self.eat(b',') {
                break;
            }
        }
        self.expect(b']')?;
        Some(logs)
    }

    fn log(&mut self) -> Option<Log> {
        #[derive(Default)]
        struct Fields {
            address: Option<Address>,
            topics: Option<Vec<B256>>,
            data: Option<(usize, usize)>,
            block_number: Option<u64>,
            block_hash: Option<B256>,
            transaction_hash: Option<B256>,
            transaction_index: Option<u64>,
            log_index: Option<u64>,
            removed: Option<bool>,
            block_timestamp: Option<Option<u64>>,
        }
        /// Sets a field once; a second value for it goes to serde (which refuses it).
        fn once<T>(slot: &mut Option<T>, v: Option<T>) -> Option<()> {
            if slot.is_some() {
                return None;
            }
            *slot = Some(v?);
            Some(())
        }
        let mut f = Fields::default();
        self.expect(b'{')?;
        if !self.eat(b'}') {
            loop {
                match self.key()? {
                    b"address" => once(&mut f.address, self.hex_array().map(Address::from))?,
                    b"topics" => once(&mut f.topics, self.topics())?,
                    b"data" => once(&mut f.data, self.data())?,
                    b"blockNumber" => once(&mut f.block_number, self.quantity())?,
                    b"blockHash" => once(&mut f.block_hash, self.hex_array().map(B256::from))?,
                    b"transactionHash" => {
                        once(&mut f.transaction_hash, self.hex_array().map(B256::from))?
                    }
                    b"transactionIndex" => once(&mut f.transaction_index, self.quantity())?,
                    b"logIndex" => once(&mut f.log_index, self.quantity())?,
                    b"removed" => once(&mut f.removed, self.boolean())?,
                    b"blockTimestamp" => {
                        let v = if self.peek()? == b'n' {
                            self.literal(b"null").map(|()| None)
                        } else {
                            self.quantity().map(Some)
                        };
                        once(&mut f.block_timestamp, v)?
                    }
                    _ => self.skip_value(0)?,
                }
                if !self.eat(b',') {
                    break;
                }
            }
            self.expect(b'}')?;
        }
        self.spans.push(f.data?);
        Some(Log {
            address: f.address?,
            topics: f.topics?,
            // Filled from the arena once the whole answer is parsed.
            data: Bytes::new(),
            block_number: f.block_number?,
            block_hash: f.block_hash?,
            transaction_hash: f.transaction_hash?,
            transaction_index: f.transaction_index?,
            log_index: f.log_index?,
            removed: f.removed.unwrap_or(false),
            block_timestamp: f.block_timestamp.flatten(),
        })
    }

    fn topics(&mut self) -> Option<Vec<B256>> {
        self.expect(b'[')?;
        let mut topics = Vec::with_capacity(4);
        if self.eat(b']') {
            return Some(topics);
        }
        loop {
            topics.push(B256::from(self.hex_array::<32>()?));
            if !self.eat(b',') {
                break;
            }
        }
        self.expect(b']')?;
        Some(topics)
    }

    /// `0x` and an even number of hex digits, decoded onto the arena; its span there.
    fn data(&mut self) -> Option<(usize, usize)> {
        let s = self.hex_str()?;
        if s.len() % 2 != 0 {
            return None;
        }
        let start = self.arena.len();
        self.arena.resize(start + s.len() / 2, 0);
        if hex::decode_to_slice(s, self.arena.get_mut(start..)?).is_err() {
            return None;
        }
        Some((start, self.arena.len()))
    }

    fn boolean(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| true),
            _ => self.literal(b"false").map(|()| false),
        }
    }

    /// Skips one JSON value, checking its grammar; strings with escapes go to serde.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => {
                std::str::from_utf8(self.plain_str()?).ok()?;
            }
            b'{' => {
                self.i += 1;
                if !self.eat(b'}') {
                    loop {
                        self.key()?;
                        self.skip_value(depth + 1)?;
                        if !self.eat(b',') {
                            break;
                        }
                    }
                    self.expect(b'}')?;
                }
            }
            b'[' => {
                self.i += 1;
                if !self.eat(b']') {
                    loop {
                        self.skip_value(depth + 1)?;
                        if !self.eat(b',') {
                            break;
                        }
                    }
                    self.expect(b']')?;
                }
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            _ => self.number()?,
        }
        Some(())
    }

    /// A JSON number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let digits = |p: &mut Self| {
            let start = p.i;
            while p.b.get(p.i).is_some_and(u8::is_ascii_digit) {
                p.i += 1;
            }
            p.i - start
        };
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let int_start = self.i;
        let n = digits(self);
        if n == 0 || (n > 1 && self.b.get(int_start) == Some(&b'0')) {
            return None;
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What serde makes of an answer, as the RPC client parses it.
    fn serde_logs(body: &[u8]) -> Option<Vec<Log>> {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Answer {
            #[serde(default)]
            id: Option<u64>,
            #[serde(default)]
            result: Option<Vec<Log>>,
            #[serde(default)]
            error: Option<serde::de::IgnoredAny>,
        }
        let a: Answer = serde_json::from_slice(body).ok()?;
        if a.error.is_some() {
            return None;
        }
        a.result
    }

    fn log_strategy() -> impl Strategy<Value = Log> {
        (
            any::<[u8; 20]>(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..5),
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            (any::<u64>(), any::<u64>(), any::<bool>(), proptest::option::of(any::<u64>())),
        )
            .prop_map(|(a, t, d, n, bh, th, (ti, li, removed, ts))| Log {
                address: Address::from(a),
                topics: t.into_iter().map(B256::from).collect(),
                data: Bytes::from(d),
                block_number: n,
                block_hash: B256::from(bh),
                transaction_hash: B256::from(th),
                transaction_index: ti,
                log_index: li,
                removed,
                block_timestamp: ts,
            })
    }

    /// A log object as a provider might write it: fields in any order, some optional ones left
    /// out, extra fields, upper-case hex, whitespace between tokens.
    fn write_log(l: &Log, order: &[usize], ws: &str, upper: bool, extra: bool) -> String {
        let hx = |b: &[u8]| {
            let s = hex::encode(b);
            format!("\"0x{}\"", if upper { s.to_uppercase() } else { s })
        };
        let q = |v: u64| format!("\"{v:#x}\"");
        let topics: Vec<String> = l.topics.iter().map(|t| hx(t.as_slice())).collect();
        let mut fields = vec![
            format!("\"address\":{ws}{}", hx(l.address.as_slice())),
            format!("\"topics\":{ws}[{ws}{}{ws}]", topics.join(&format!(",{ws}"))),
            format!("\"data\":{ws}{}", hx(&l.data)),
            format!("\"blockNumber\":{}", q(l.block_number)),
            format!("\"blockHash\":{}", hx(l.block_hash.as_slice())),
            format!("\"transactionHash\":{}", hx(l.transaction_hash.as_slice())),
            format!("\"transactionIndex\":{}", q(l.transaction_index)),
            format!("\"logIndex\":{ws}{}", q(l.log_index)),
        ];
        if l.removed || extra {
            fields.push(format!("\"removed\":{}", l.removed));
        }
        match l.block_timestamp {
            Some(t) => fields.push(format!("\"blockTimestamp\":{}", q(t))),
            None if extra => fields.push("\"blockTimestamp\":null".into()),
            None => {}
        }
        if extra {
            fields.push(r#""logType":null,"x":{"a":[1,-2.5e3,true,false,"é"],"b":{}}"#.into());
        }
        let n = fields.len();
        let ordered: Vec<&String> = (0..n).map(|i| &fields[order[i % order.len()] % n]).collect();
        // A permutation: fall back to the plain order when `order` repeats an index.
        let mut seen = vec![false; n];
        let perm = ordered.len() == n
            && (0..n).all(|i| !std::mem::replace(&mut seen[order[i % order.len()] % n], true));
        let parts: Vec<&String> = if perm { ordered } else { fields.iter().collect() };
        let parts: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
        format!("{{{ws}{}{ws}}}", parts.join(&format!(",{ws}")))
    }

    proptest! {
        /// Every answer the fast path takes, it parses as serde does.
        #[test]
        fn equals_serde_on_any_log(
            logs in proptest::collection::vec(log_strategy(), 0..6),
            order in proptest::collection::vec(0usize..12, 1..12),
            ws in prop_oneof![Just(""), Just(" "), Just("\n  ")],
            upper in any::<bool>(),
            extra in any::<bool>(),
            id_first in any::<bool>(),
        ) {
            let items: Vec<String> =
                logs.iter().map(|l| write_log(l, &order, ws, upper, extra)).collect();
            let result = format!("\"result\":{ws}[{ws}{}{ws}]", items.join(&format!(",{ws}")));
            let head = format!("\"jsonrpc\":\"2.0\",{ws}\"id\":7");
            let body = if id_first {
                format!("{{{head},{result}}}")
            } else {
                format!("{ws}{{{result},{ws}{head}}}{ws}")
            };
            let fast = parse_logs_answer(body.as_bytes());
            prop_assert_eq!(fast.as_ref(), Some(&logs), "{}", body);
            prop_assert_eq!(serde_logs(body.as_bytes()), fast);
        }

        /// Whatever the bytes, the fast path never panics, and never accepts what serde refuses
        /// or parses it otherwise.
        #[test]
        fn never_disagrees_with_serde_on_mangled_answers(
            log in log_strategy(), cut in any::<prop::sample::Index>(),
            byte in any::<u8>(), how in 0u8..3,
        ) {
            let good = format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":[{}]}}",
                write_log(&log, &[0], "", false, true));
            let mut b = good.into_bytes();
            let at = cut.index(b.len());
            match how {
                0 => b[at] = byte,
                1 => b.truncate(at),
                _ => b.insert(at, byte),
            }
            if let Some(fast) = parse_logs_answer(&b) {
                prop_assert_eq!(serde_logs(&b), Some(fast));
            }
        }
    }

    #[test]
    fn odd_answers_go_to_serde() {
        let log = r#"{"address":"0x0000000000000000000000000000000000000001","topics":[],"data":"0x","blockNumber":"0x1","blockHash":"0x0000000000000000000000000000000000000000000000000000000000000002","transactionHash":"0x0000000000000000000000000000000000000000000000000000000000000003","transactionIndex":"0x0","logIndex":"0x0"}"#;
        let ok = format!(r#"{{"jsonrpc":"2.0","id":1,"result":[{log}]}}"#);
        assert_eq!(parse_logs_answer(ok.as_bytes()).unwrap().len(), 1);
        assert_eq!(parse_logs_answer(br#"{"id":1,"result":[]}"#), Some(vec![]));
        for odd in [
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"too many"}}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":1,"result":null}"#.into(),
            r#"{"jsonrpc":"2.0","id":"1","result":[]}"#.into(),
            r#"{"jsonrpc":"2.0","id":1,"result":[],"result":[]}"#.into(),
            r#"{"jsonrpc":"2.0","id":1,"result":[]} x"#.into(),
            r#"{"jsonrpc":"2.0","id":01,"result":[]}"#.into(),
            ok.replace(r#""data":"0x""#, r#""data":"0x0""#),
            ok.replace(r#""logIndex":"0x0""#, r#""logIndex":"0x""#),
            ok.replace(r#""logIndex":"0x0""#, r#""logIndex":null"#),
            ok.replace(r#""logIndex":"0x0""#, r#""logIndex":"0x10000000000000000""#),
            ok.replace(r#""blockNumber":"0x1","#, ""),
            ok.replace(r#""data":"0x""#, r#""data":"0x","data":"0x""#),
            ok.replace(r#""data":"0x""#, r#""d\u0061ta":"0x""#),
            ok.replace(
                "0x0000000000000000000000000000000000000001",
                "0000000000000000000000000000000000000001",
            ),
            ok.replace(r#""topics":[]"#, r#""topics":["0x01"]"#),
        ] {
            assert_eq!(parse_logs_answer(odd.as_bytes()), None, "{odd}");
        }
    }
}
