//! Derived Uniswap V3 state equals the contracts' own view (`slot0`, `liquidity`, `ticks`,
//! `positions`, `ownerOf` via eth_call) at the head and at past blocks.

use crate::util::*;
use alloy_primitives::{I256, U256};
use serde_json::{json, Value};

fn call(net: &Devnet, to: &str, data: String, block: u64) -> Vec<String> {
    let out = rpc(&net.url, "eth_call", json!([{"to": to, "data": data}, format!("{block:#x}")]));
    let hex = out.as_str().unwrap().trim_start_matches("0x").to_string();
    (0..hex.len() / 64).map(|i| hex[i * 64..(i + 1) * 64].to_string()).collect()
}

fn uint(w: &str) -> U256 {
    U256::from_str_radix(w, 16).unwrap()
}

fn int(w: &str) -> I256 {
    I256::from_raw(uint(w))
}

fn word_i32(t: i64) -> String {
    format!("{:0>64}", format!("{:x}", I256::try_from(t).unwrap().into_raw()))
}

fn check_block(net: &Devnet, t: &TestCommand, block: u64) -> (usize, usize, usize) {
    let st: Value = serde_json::from_str(&t.ok(&s(&[
        "state",
        "--data",
        "data",
        "--block",
        &block.to_string(),
    ])))
    .unwrap();
    assert_eq!(st["block"].as_u64(), Some(block));
    let (mut pools, mut ticks, mut positions) = (0, 0, 0);
    for p in st["pools"].as_array().unwrap() {
        let addr = p["address"].as_str().unwrap();
        let slot0 = call(net, addr, "0x3850c7bd".into(), block);
        assert_eq!(
            p["sqrt_price_x96"].as_str().unwrap(),
            uint(&slot0[0]).to_string(),
            "sqrtPriceX96 of {addr} at {block}"
        );
        assert_eq!(
            p["tick"].as_i64().unwrap().to_string(),
            int(&slot0[1]).to_string(),
            "tick of {addr} at {block}"
        );
        let liq = call(net, addr, "0x1a686502".into(), block);
        assert_eq!(
            p["liquidity"].as_str().unwrap(),
            uint(&liq[0]).to_string(),
            "liquidity of {addr} at {block}"
        );
        let (mut sum_net, mut prefix) = (I256::ZERO, I256::ZERO);
        for tk in p["ticks"].as_array().unwrap() {
            let tick = tk["tick"].as_i64().unwrap();
            let got = call(net, addr, format!("0xf30dba93{}", word_i32(tick)), block);
            assert_eq!(
                tk["liquidity_gross"].as_str().unwrap(),
                uint(&got[0]).to_string(),
                "gross of tick {tick} of {addr}"
            );
            assert_eq!(
                tk["liquidity_net"].as_str().unwrap(),
                int(&got[1]).to_string(),
                "net of tick {tick} of {addr}"
            );
            let net_v: I256 = tk["liquidity_net"].as_str().unwrap().parse().unwrap();
            sum_net += net_v;
            if tick <= p["tick"].as_i64().unwrap() {
                prefix += net_v;
            }
            ticks += 1;
        }
        assert_eq!(sum_net, I256::ZERO, "liquidityNet of {addr} does not sum to 0");
        assert_eq!(
            prefix.to_string(),
            p["liquidity"].as_str().unwrap(),
            "liquidity of {addr} is not the prefix sum"
        );
        pools += 1;
    }
    let npm = net.position_manager();
    for pos in st["positions"].as_array().unwrap() {
        let id = U256::from_str_radix(pos["token_id"].as_str().unwrap(), 10).unwrap();
        let w = format!("{id:0>64x}");
        let got = call(net, &npm, format!("0x99fbab88{w}"), block);
        assert_eq!(
            pos["liquidity"].as_str().unwrap(),
            uint(&got[7]).to_string(),
            "liquidity of position {id}"
        );
        assert_eq!(pos["tick_lower"].as_i64().unwrap().to_string(), int(&got[5]).to_string());
        assert_eq!(pos["tick_upper"].as_i64().unwrap().to_string(), int(&got[6]).to_string());
        let owner = call(net, &npm, format!("0x6352211e{w}"), block);
        assert_eq!(
            pos["owner"].as_str().unwrap().to_lowercase(),
            format!("0x{}", &owner[0][24..]),
            "owner of {id}"
        );
        positions += 1;
    }
    (pools, ticks, positions)
}

#[test]
fn derived_state_equals_the_contracts_at_the_head_and_past_blocks() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(21);
    // anvil answers eth_call only for blocks it mined itself: add some, remember them.
    let mut blocks = Vec::new();
    for _ in 0..8 {
        crate::tail::swap(&net, &mut rng);
        blocks.push(net.head());
    }
    let mut args = s(&["backfill", "--data", "data"]);
    args.extend(net.uniswap_flags());
    t.ok(&args);
    let mut totals = (0, 0, 0);
    for b in blocks.iter().step_by(2).chain(std::iter::once(&net.head())) {
        let (p, tk, pos) = check_block(&net, &t, *b);
        totals = (totals.0 + p, totals.1 + tk, totals.2 + pos);
    }
    assert!(
        totals.0 >= 50 && totals.1 >= 200 && totals.2 >= 300,
        "too little was checked: {totals:?}"
    );
    // Bad input: a block outside the committed range.
    let out = t.run(&s(&["state", "--data", "data", "--block", &(net.head() + 100).to_string()]));
    assert_eq!(out.status.code(), Some(2));
}
