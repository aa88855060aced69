//! `POST /v1/sql`: read-only DataFusion SQL over cold Parquet plus the hot buffer.

use super::*;

/// The answer to a query.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct SqlAnswer {
    /// Rows returned.
    row_count: usize,
    /// The rows, one object per row (big integers as decimal strings).
    #[schema(value_type = Vec<Object>)]
    rows: Value,
}

/// Read-only SQL (DataFusion) over every table: cold Parquet plus the hot buffer, with a
/// `confirmed` column. The body is `{"sql": "..."}` or the SQL as plain text.
#[utoipa::path(post, path = "/v1/sql", request_body(content = String, description = "`{\"sql\": \"SELECT ...\"}` or plain SQL"),
    responses((status = 200, body = SqlAnswer),
        (status = 400, description = "Bad SQL", body = ErrorBody),
        (status = 403, description = "Not a read", body = ErrorBody),
        (status = 408, description = "Over the time limit", body = ErrorBody),
        (status = 413, description = "Over the row, memory or text limit", body = ErrorBody),
        (status = 429, description = "Every query slot stayed busy for the whole time limit", body = ErrorBody),
        (status = 500, description = "Reading the dataset failed", body = ErrorBody),
        (status = 503, description = "The live state failed", body = ErrorBody)))]
pub(super) async fn sql(State(svc): State<Service>, body: String) -> ApiResult {
    svc.stats.sql_queries.fetch_add(1, Ordering::Relaxed);
    let text =
        match serde_json::from_str::<Value>(&body) {
            Ok(v) => v.get("sql").and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
                bad("expected a JSON body {\"sql\": \"SELECT ...\"} or plain SQL")
            })?,
            Err(_) => body,
        };
    if text.trim().is_empty() {
        return Err(bad("empty SQL"));
    }
    let (root, hot, chain_id) = {
        let live = svc.live()?;
        (live.root().to_path_buf(), live.hot_blocks(), live.chain_id())
    };
    // At most `concurrency` queries run; the others wait for a slot within their time limit.
    let limits = svc.limits;
    let slot = tokio::time::timeout(limits.timeout, svc.sql_slots.clone().acquire_owned())
        .await
        .map_err(|_| {
            let e = SqlError::Busy(limits.concurrency, limits.timeout);
            ApiError(StatusCode::TOO_MANY_REQUESTS, e.to_string())
        })?
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
    let hot = hot_batches(&hot, chain_id);
    let batches = run_sql(&root, hot, &text, limits, Some(slot)).await.map_err(|e| match e {
        SqlError::NotAllowed(_) => ApiError(StatusCode::FORBIDDEN, e.to_string()),
        SqlError::Invalid(_) => bad(e.to_string()),
        SqlError::TooLarge(_) => ApiError(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        SqlError::Timeout(_) => ApiError(StatusCode::REQUEST_TIMEOUT, e.to_string()),
        e => ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    })?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let text = tidewater_queries::format_batches(&batches, tidewater_queries::Format::Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let rows_json: Value = serde_json::from_str(&text)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(json_response(&SqlAnswer { row_count: rows, rows: rows_json }))
}
