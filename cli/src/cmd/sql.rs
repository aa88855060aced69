//! `tidewater sql`: DuckDB SQL over a data directory (read-only).

use super::open;
use crate::args::{OutputFormat, SqlArgs};
use crate::{usage, CmdResult, Failure};
use eyre::WrapErr;
use std::io::Write as _;
use tidewater_queries::{format_batches, Format, SqlSession};

pub(crate) async fn sql(a: SqlArgs) -> CmdResult {
    let ds = open(&a.data)?;
    let out = tokio::task::spawn_blocking(move || -> Result<String, Failure> {
        let session = SqlSession::open(&ds).wrap_err("preparing views")?;
        let batches = session.query(&a.query).map_err(usage)?;
        let format = match a.format {
            OutputFormat::Table => Format::Table,
            OutputFormat::Csv => Format::Csv,
            OutputFormat::Json => Format::Json,
        };
        Ok(format_batches(&batches, format)?)
    })
    .await
    .wrap_err("running the query")??;
    std::io::stdout().write_all(out.as_bytes()).wrap_err("writing the result")?;
    Ok(())
}
