//! The RPC ceiling for benchmarks: plain concurrent `eth_getLogs` over a range, results read and
//! discarded (logs counted, nothing decoded or written).
//!
//! usage: rpc_ceiling URL FROM TO SPAN CONCURRENCY ADDRESS...
#![allow(missing_docs)]

use futures::stream::{self, StreamExt};
use std::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, from, to, span, conc, addrs @ ..] = args.as_slice() else {
        eprintln!("usage: rpc_ceiling URL FROM TO SPAN CONCURRENCY ADDRESS...");
        std::process::exit(2);
    };
    let (from, to, span, conc): (u64, u64, u64, usize) =
        (from.parse().unwrap(), to.parse().unwrap(), span.parse().unwrap(), conc.parse().unwrap());
    let http = reqwest::Client::new();
    let started = Instant::now();
    let ranges: Vec<(u64, u64)> =
        (from..=to).step_by(span as usize).map(|s| (s, (s + span - 1).min(to))).collect();
    let counts = stream::iter(ranges)
        .map(|(a, b)| {
            let http = http.clone();
            let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs",
                "params": [{"fromBlock": format!("{a:#x}"), "toBlock": format!("{b:#x}"), "address": addrs}]});
            async move {
                let bytes = http.post(url).json(&body).send().await.unwrap().bytes().await.unwrap();
                bytes.windows(10).filter(|w| w == b"\"logIndex\"").count()
            }
        })
        .buffer_unordered(conc)
        .fold(0usize, |acc, n| async move { acc + n })
        .await;
    let secs = started.elapsed().as_secs_f64();
    println!("{{\"logs\": {counts}, \"seconds\": {secs:.3}}}");
}
