//! `tidewater sql`: DuckDB SQL over a data directory (read-only).

use super::open;
use crate::args::{OutputFormat, SqlArgs};
use crate::{usage, CmdResult, Failure};
use eyre::WrapErr;
use std::io::Write as _;
use tidewater_queries::{format_batches, Format, SqlSession};

pub(crate) async fn sql(a: SqlArgs) -> CmdResult {
    let ds = open(&a.data)?;
    let format = match a.format {
        OutputFormat::Table => Format::Table,
        OutputFormat::Csv => Format::Csv,
        OutputFormat::Json => Format::Json,
    };
    // On object storage: DataFusion reads the bucket itself. DuckDB would need its httpfs
    // extension, which it downloads at first use; this build downloads nothing.
    if let Some(r) = tidewater_storage::attached(&a.data) {
        eprintln!("engine: DataFusion, reading {} directly (DuckDB's S3 support is an extension download)", r.url());
        let limits = tidewater_queries::df_sql::SqlLimits {
            max_rows: usize::MAX,
            timeout: std::time::Duration::from_secs(24 * 3600),
            ..Default::default()
        };
        let batches =
            tidewater_queries::df_sql::run_sql(&a.data, Default::default(), &a.query, limits, None)
                .await
                .map_err(|e| match e {
                    tidewater_queries::df_sql::SqlError::Invalid(_)
                    | tidewater_queries::df_sql::SqlError::NotAllowed(_) => usage(e),
                    e => Failure::Runtime(eyre::eyre!(e)),
                })?;
        let out = format_batches(&batches, format)?;
        std::io::stdout().write_all(out.as_bytes()).wrap_err("writing the result")?;
        return Ok(());
    }
    let out = tokio::task::spawn_blocking(move || -> Result<String, Failure> {
        let session = SqlSession::open(&ds).wrap_err("preparing views")?;
        let batches = session.query(&a.query).map_err(usage)?;
        Ok(format_batches(&batches, format)?)
    })
    .await
    .wrap_err("running the query")??;
    std::io::stdout().write_all(out.as_bytes()).wrap_err("writing the result")?;
    Ok(())
}
