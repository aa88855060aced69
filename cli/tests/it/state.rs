//! `tidewater state` (the fold over the cold tier, from snapshots when there are some) equals
//! the contracts' own view (`slot0`, `liquidity`, `ticks`, `positions`, `ownerOf` via eth_call)
//! at the head and at past blocks.

use crate::util::*;
use serde_json::Value;

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
    crate::serve::check_state(
        net,
        block,
        st["pools"].as_array().unwrap(),
        st["positions"].as_array().unwrap(),
    )
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
