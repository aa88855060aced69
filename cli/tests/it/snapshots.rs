//! Snapshot tests (insta): what a person reads — `--help` of every command, the error messages
//! of bad input, the OpenAPI document and the metric names — is reviewed as a diff when it
//! changes (`cargo insta review`), never changed by accident. The snapshots live in
//! `cli/tests/it/snapshots/`; CI fails on a missing or different one.

use crate::util::*;

#[test]
fn help_of_every_command() {
    let t = TestCommand::new();
    let mut all = String::new();
    for cmd in [
        vec![],
        vec!["backfill"],
        vec!["run"],
        vec!["tail"],
        vec!["serve"],
        vec!["sql"],
        vec!["state"],
        vec!["status"],
        vec!["verify"],
    ] {
        let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        args.push("--help".into());
        let out = t.run(&args);
        assert!(out.status.success(), "{args:?}");
        all.push_str(&format!("$ tidewater {}\n", args.join(" ")));
        all.push_str(&String::from_utf8_lossy(&out.stdout));
        all.push('\n');
    }
    insta::assert_snapshot!(all);
}

#[test]
fn error_messages_of_bad_input() {
    let t = TestCommand::new();
    let rpc = format!("http://127.0.0.1:{}", free_port());
    let factory = "0x1f98431c8ad98523631ae4a59f267346ea31f984";
    let cases: Vec<Vec<&str>> = vec![
        vec!["backfill", "--data", "d", "--uniswap-v3-factory", factory],
        vec!["backfill", "--rpc", &rpc, "--data", "d"],
        vec!["backfill", "--rpc", &rpc, "--data", "d", "--uniswap-v3-factory", "0x123"],
        vec![
            "backfill",
            "--rpc",
            &rpc,
            "--data",
            "d",
            "--uniswap-v3-factory",
            factory,
            "--from",
            "9",
            "--to",
            "3",
        ],
        vec!["backfill", "--rpc", &rpc, "--data", "d", "--contract", factory],
        vec![
            "backfill",
            "--rpc",
            &rpc,
            "--data",
            "d",
            "--contract",
            factory,
            "--event",
            "Transfer(address",
        ],
        vec![
            "backfill",
            "--rpc",
            "ftp://example.invalid/key",
            "--data",
            "d",
            "--uniswap-v3-factory",
            factory,
        ],
        vec![
            "backfill",
            "--rpc",
            &rpc,
            "--data",
            "d",
            "--uniswap-v3-factory",
            factory,
            "--chunk-size",
            "0",
        ],
        vec![
            "backfill",
            "--rpc",
            &rpc,
            "--data",
            "d",
            "--uniswap-v3-factory",
            factory,
            "--shard",
            "2/2",
        ],
    ];
    let mut all = String::new();
    for args in cases {
        let out = t.run(&s(&args));
        let err = String::from_utf8_lossy(&out.stderr).replace(&rpc, "http://127.0.0.1:<port>");
        all.push_str(&format!(
            "$ tidewater {}\nexit {:?}\n{}\n",
            args.join(" ").replace(&rpc, "http://127.0.0.1:<port>"),
            out.status.code(),
            err.trim_end()
        ));
        all.push('\n');
    }
    insta::assert_snapshot!(all);
}

#[test]
fn the_openapi_document() {
    let doc = serde_json::to_string_pretty(&tidewater_api::openapi_document()).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    insta::assert_snapshot!(
        doc.replace(&format!("\"version\": \"{version}\""), "\"version\": \"<version>\"")
    );
}
