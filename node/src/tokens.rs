//! Token metadata (`symbol()`, `decimals()`) through the node, for the page's pairs and prices.

use std::sync::Arc;

/// `symbol()` and `decimals()` of a token through the node (for the page's pairs and prices).
pub fn token_lookup(rpc: tidewater_chain::RpcClient) -> tidewater_api::TokenFn {
    Arc::new(move |a: tidewater_chain::Address| {
        let rpc = rpc.clone();
        Box::pin(async move {
            let call = |selector: &'static str| {
                let rpc = rpc.clone();
                async move {
                    let out: String = rpc
                        .request(
                            "eth_call",
                            serde_json::json!([{"to": a, "data": selector}, "latest"]),
                        )
                        .await
                        .ok()?;
                    hex::decode(out.trim_start_matches("0x")).ok()
                }
            };
            let (symbol, decimals) = tokio::join!(call("0x95d89b41"), call("0x313ce567"));
            let decimals =
                decimals.filter(|d| d.len() == 32 && d[..31].iter().all(|b| *b == 0))?[31];
            let symbol = decode_symbol(&symbol?)?;
            Some(tidewater_api::TokenInfo { address: a, symbol, decimals })
        })
    })
}

/// An ABI `string` return value, or a `bytes32` one (old tokens such as MKR).
fn decode_symbol(b: &[u8]) -> Option<String> {
    if b.len() == 32 {
        let end = b.iter().position(|c| *c == 0).unwrap_or(32);
        return String::from_utf8(b[..end].to_vec()).ok();
    }
    let offset = usize::try_from(u64::from_be_bytes(b.get(24..32)?.try_into().ok()?)).ok()?;
    let len_at = b.get(offset + 24..offset + 32)?;
    let len = usize::try_from(u64::from_be_bytes(len_at.try_into().ok()?)).ok()?;
    let start = offset.checked_add(32)?;
    let text = b.get(start..start.checked_add(len)?)?;
    let s = String::from_utf8(text.to_vec()).ok()?;
    (!s.is_empty() && s.len() <= 32 && s.chars().all(|c| !c.is_control())).then_some(s)
}
