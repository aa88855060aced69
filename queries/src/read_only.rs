//! What `tidewater sql` lets DuckDB run: the dataset is read-only to it.
//!
//! DuckDB has no read-only-per-directory mode (its `allowed_directories` grant writes too), so
//! each statement of the SQL text is classified from its tokens (sqlparser's DuckDB tokenizer,
//! which knows strings and comments) before DuckDB sees any of it:
//! - reads run: `SELECT`, `WITH`, `FROM`, `VALUES`, `TABLE`, `SUMMARIZE`, `DESCRIBE`, `SHOW`,
//!   `PIVOT`, `UNPIVOT`, `EXPLAIN` (and `EXPLAIN ANALYZE` of a read);
//! - `COPY ... TO 'path'` and `EXPORT DATABASE 'path'` run when the path lies outside the
//!   data directory (that is what analysts do), and are refused inside it;
//! - statements on the in-memory database run (`CREATE`, `INSERT`, `UPDATE`, `DELETE`,
//!   `DROP`, `ALTER` of its own tables and views: no file is touched);
//! - everything else that can reach files or settings is refused (`ATTACH`, `DETACH`, `SET`,
//!   `PRAGMA`, `INSTALL`, `LOAD`, `IMPORT`, `CALL`, `CHECKPOINT`, `USE`, `VACUUM`, ...).

use datafusion::sql::sqlparser::dialect::DuckDbDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use std::path::{Component, Path, PathBuf};

/// Why a statement is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

const READS: &[&str] = &[
    "SELECT",
    "WITH",
    "FROM",
    "VALUES",
    "TABLE",
    "SUMMARIZE",
    "DESCRIBE",
    "DESC",
    "SHOW",
    "PIVOT",
    "UNPIVOT",
    "PIVOT_WIDER",
    "PIVOT_LONGER",
];
const IN_MEMORY: &[&str] = &["CREATE", "INSERT", "UPDATE", "DELETE", "DROP", "ALTER", "TRUNCATE"];
/// Statements that touch nothing outside the session.
const HARMLESS: &[&str] = &["BEGIN", "COMMIT", "ROLLBACK", "ABORT", "START", "END", "ANALYZE"];
/// DuckDB statements that reach files, extensions or settings.
const REFUSED: &[&str] = &[
    "ATTACH",
    "DETACH",
    "SET",
    "RESET",
    "PRAGMA",
    "INSTALL",
    "LOAD",
    "IMPORT",
    "CALL",
    "CHECKPOINT",
    "FORCE",
    "USE",
    "VACUUM",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "COMMENT",
    "MERGE",
];

/// Checks every statement of `sql` against the rules above, for a dataset at `root` (paths
/// relative to `cwd`).
pub fn check(sql: &str, root: &Path, cwd: &Path) -> Result<(), Refused> {
    let dialect = DuckDbDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize()
        .map_err(|e| Refused(format!("cannot read the SQL text: {e}")))?;
    let tokens: Vec<Token> =
        tokens.into_iter().filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF)).collect();
    for stmt in tokens.split(|t| matches!(t, Token::SemiColon)).filter(|s| !s.is_empty()) {
        check_statement(stmt, root, cwd)?;
    }
    Ok(())
}

fn word(t: &Token) -> Option<String> {
    match t {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn check_statement(stmt: &[Token], root: &Path, cwd: &Path) -> Result<(), Refused> {
    // A statement may open with parentheses: `(SELECT 1) UNION (SELECT 2)`.
    let start = stmt.iter().position(|t| !matches!(t, Token::LParen)).unwrap_or(0);
    let first = stmt.get(start).and_then(word).unwrap_or_default();
    let rest = &stmt[(start + 1).min(stmt.len())..];
    match first.as_str() {
        k if READS.contains(&k) => Ok(()),
        "EXPLAIN" => match rest.first().and_then(word).as_deref() {
            // EXPLAIN ANALYZE runs the statement.
            Some("ANALYZE") => check_statement(&rest[1..], root, cwd),
            _ => Ok(()),
        },
        "COPY" => {
            let to = target_after(rest, "TO");
            match to {
                Some(path) => outside(&path, root, cwd, "COPY"),
                // COPY table FROM 'file' reads a file into an in-memory table.
                None if target_after(rest, "FROM").is_some() => Ok(()),
                None => Err(Refused("COPY needs a file target: COPY (query) TO 'file'".into())),
            }
        }
        "EXPORT" => match rest.iter().find_map(string) {
            Some(path) => outside(&path, root, cwd, "EXPORT DATABASE"),
            None => Err(Refused("EXPORT DATABASE needs a directory".into())),
        },
        // Tables and views of the in-memory database: no file is named or touched.
        k if IN_MEMORY.contains(&k) => Ok(()),
        k if HARMLESS.contains(&k) => Ok(()),
        "" => Err(Refused("the SQL text has no statement keyword".into())),
        k if !REFUSED.contains(&k) => Err(Refused(format!(
            "syntax error at or near \"{k}\": not a statement (queries start with SELECT, WITH, FROM, ...)"
        ))),
        k => Err(Refused(format!(
            "tidewater sql is read-only over the dataset: {k} statements are refused (queries, and COPY ... TO a file outside the data directory, are allowed)"
        ))),
    }
}

fn string(t: &Token) -> Option<String> {
    match t {
        Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => Some(s.clone()),
        Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
        _ => None,
    }
}

/// The string right after keyword `kw` at parenthesis depth 0.
fn target_after(tokens: &[Token], kw: &str) -> Option<String> {
    let mut depth = 0i32;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ if depth == 0 && word(t).as_deref() == Some(kw) => {
                return tokens.get(i + 1).and_then(string);
            }
            _ => {}
        }
    }
    None
}

/// Refuses `path` when it lies inside the data directory `root`.
fn outside(path: &str, root: &Path, cwd: &Path, what: &str) -> Result<(), Refused> {
    if path.contains("://") {
        return Ok(()); // another store (s3://, https://): not the dataset's directory
    }
    let expanded = match path.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(rest),
        None => PathBuf::from(path),
    };
    let target = normalize(&cwd.join(expanded));
    let root = normalize(&cwd.join(root));
    if target.starts_with(&root) {
        return Err(Refused(format!(
            "{what} into the data directory {} is refused: the dataset is read-only to tidewater sql (write outside it)",
            root.display()
        )));
    }
    Ok(())
}

/// `p` with `.` and `..` resolved and the longest existing prefix canonicalized (symlinks).
fn normalize(p: &Path) -> PathBuf {
    let mut lexical = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other.as_os_str()),
        }
    }
    let mut existing = lexical.clone();
    let mut tail = Vec::new();
    while !existing.exists() {
        match existing.file_name() {
            Some(name) => tail.push(name.to_os_string()),
            None => break,
        }
        if !existing.pop() {
            break;
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    for name in tail.into_iter().rev() {
        out.push(name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pass_and_writes_into_the_dataset_do_not() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        std::fs::create_dir_all(root.join("logs")).unwrap();
        let cwd = d.path();
        let ok = |sql: &str| check(sql, &root, cwd).is_ok();
        assert!(ok("SELECT count(*) FROM swaps"));
        assert!(ok("  (SELECT 1) UNION (SELECT 2)"));
        assert!(ok("FROM swaps LIMIT 3"));
        assert!(ok("WITH t AS (SELECT 1) SELECT * FROM t"));
        assert!(ok("SUMMARIZE swaps"));
        assert!(ok("EXPLAIN SELECT 1"));
        assert!(ok("COPY (SELECT 1) TO 'out.csv'"));
        assert!(ok("COPY (SELECT 1) TO '/tmp/elsewhere.parquet' (FORMAT parquet)"));
        assert!(ok("SELECT 'COPY (SELECT 1) TO ''data/logs/x.parquet''' AS s"));
        assert!(ok("CREATE TABLE t AS SELECT 1; SELECT * FROM t"));
        for bad in [
            "COPY (SELECT 1) TO 'data/logs/x.parquet'",
            "COPY (SELECT 1) TO './data/../data/logs/x.parquet'",
            "SELECT 1; COPY swaps TO 'data/new.parquet'",
            "COPY (SELECT 1) TO 'data'",
            "EXPLAIN ANALYZE COPY (SELECT 1) TO 'data/x.csv'",
            "EXPORT DATABASE 'data/export'",
            "ATTACH 'data/x.duckdb' AS x",
            "SET temp_directory = 'data'",
            "PRAGMA enable_profiling",
            "INSTALL httpfs",
            "COPY swaps",
        ] {
            assert!(check(bad, &root, cwd).is_err(), "{bad} was allowed");
        }
        let abs = format!("COPY (SELECT 1) TO '{}/logs/y.parquet'", root.display());
        assert!(check(&abs, &root, cwd).unwrap_err().0.contains("read-only"));
    }
}
