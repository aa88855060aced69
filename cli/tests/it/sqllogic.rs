//! The sqllogictest files of `cli/tests/slt/` (see its README) against both SQL engines, over a
//! dataset `tidewater run` wrote while following a real anvil: the DataFusion view of
//! `POST /v1/sql` while the newest blocks are still unconfirmed, then the DuckDB views of
//! `tidewater sql` over the same directory once the process is stopped.

use crate::serve::{random_op, wait_synced};
use crate::tail::start_tail;
use crate::util::*;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use rand::SeedableRng;
use serde_json::{json, Value};
use sqllogictest::{DBOutput, DefaultColumnType};
use std::path::{Path, PathBuf};

/// An engine's failure, as the runner reports it.
#[derive(Debug)]
struct EngineError(String);

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EngineError {}

/// `POST /v1/sql` of a running instance.
struct Api {
    url: String,
    http: reqwest::blocking::Client,
}

impl sqllogictest::DB for Api {
    type Error = EngineError;
    type ColumnType = DefaultColumnType;

    fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, EngineError> {
        let url = format!("{}/v1/sql", self.url);
        let r = self
            .http
            .post(&url)
            .json(&json!({ "sql": sql }))
            .send()
            .map_err(|e| EngineError(e.to_string()))?;
        let status = r.status().as_u16();
        let v: Value = r.json().map_err(|e| EngineError(e.to_string()))?;
        crate::openapi::check("POST", &url, status, &v);
        if status != 200 {
            return Err(EngineError(format!("{status}: {}", v["error"])));
        }
        let rows: Vec<Vec<String>> = v["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        r.as_object().map(|o| o.values().map(cell).collect()).unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let width = rows.first().map_or(0, Vec::len);
        Ok(DBOutput::Rows { types: vec![DefaultColumnType::Any; width], rows })
    }

    fn engine_name(&self) -> &str {
        "datafusion"
    }
}

/// A JSON cell as sqllogictest text.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The DuckDB views of a data directory.
struct Duck(tidewater_queries::SqlSession);

impl sqllogictest::DB for Duck {
    type Error = EngineError;
    type ColumnType = DefaultColumnType;

    fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, EngineError> {
        let batches = self.0.query(sql).map_err(|e| EngineError(format!("{e:#}: {e:?}")))?;
        let opts = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        let mut width = 0;
        for b in &batches {
            width = b.num_columns();
            let fmts: Vec<ArrayFormatter<'_>> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
                .collect::<Result<_, _>>()
                .map_err(|e| EngineError(e.to_string()))?;
            for i in 0..b.num_rows() {
                rows.push(fmts.iter().map(|f| f.value(i).to_string()).collect());
            }
        }
        Ok(DBOutput::Rows { types: vec![DefaultColumnType::Any; width], rows })
    }

    fn engine_name(&self) -> &str {
        "duckdb"
    }
}

/// The `.slt` files of `dirs` (under `cli/tests/slt/`), in name order.
fn slt_files(dirs: &[&str]) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files = Vec::new();
    for d in dirs {
        let mut here: Vec<PathBuf> = std::fs::read_dir(root.join(d))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "slt"))
            .collect();
        here.sort();
        assert!(!here.is_empty(), "no .slt file in {d}");
        files.extend(here);
    }
    files
}

/// Runs every file with a fresh connection from `make` (`$DATA` is the data directory where
/// a file turns substitution on); panics with every failure.
fn run_files<D: sqllogictest::DB<Error = EngineError> + Send + 'static>(
    files: &[PathBuf],
    data: &Path,
    make: impl Fn() -> D + Send + Sync + Clone + 'static,
) -> usize {
    let mut failures = Vec::new();
    for f in files {
        let m = make.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let db = m();
            async move { Ok::<_, EngineError>(db) }
        });
        runner.set_var("DATA".into(), data.display().to_string());
        if let Err(e) = runner.run_file(f) {
            failures.push(format!("{}", e.display(true)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    files.len()
}

#[test]
fn sqllogictest_files_hold_for_the_duckdb_views_and_the_datafusion_hot_and_cold_view() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let seed = std::env::var("TIDEWATER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(41u64);
    eprintln!("seed {seed} (TIDEWATER_SEED replays)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let child = start_tail(
        &t,
        &net,
        &[
            "--confirmations",
            "8",
            "--compact-blocks",
            "1",
            "--snapshot-interval",
            "8",
            "--listen",
            &listen,
        ],
    );
    let mut child = Running(Some(child));
    wait_synced(&api, &net);
    // Mints, burns, swaps and transfers: each op is a block; the last 8 stay unconfirmed.
    for _ in 0..24 {
        random_op(&net, &api, &mut rng);
        wait_synced(&api, &net);
    }
    let http = reqwest::blocking::Client::new();
    let url = api.clone();
    let data = t.path("data");
    let n = run_files(&slt_files(&["common", "datafusion"]), &data, move || Api {
        url: url.clone(),
        http: http.clone(),
    });
    eprintln!("{n} files passed on POST /v1/sql");
    drop(child.0.take().map(crate::tail::stop));
    let dir = data.clone();
    let n = run_files(&slt_files(&["common", "duckdb"]), &data, move || {
        let ds = tidewater_storage::Dataset::open(&dir).unwrap();
        Duck(tidewater_queries::SqlSession::open(&ds).unwrap())
    });
    eprintln!("{n} files passed on the DuckDB views");
    // The refused statements left the dataset as it was.
    let out = t.run(&s(&["verify", "--data", "data"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
