//! Parquet encoding with the dataset's settings.

use crate::error::{Error, Result};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::path::PathBuf;

/// Rows per row group: 128Ki rows lets DuckDB and DataFusion split a file across threads and
/// skip groups by block_number statistics, without the overhead of tiny groups.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 128 * 1024;
/// zstd level 1. Measured on the `dense` devnet's tables (231,039 logs, 228,900 swaps, written
/// with 128Ki-row groups by pyarrow's writer, same zstd): level 1 encodes in 203 / 219 ms into
/// 7.3 / 6.6 MB, level 3 in 268 / 333 ms into 7.2 / 7.1 MB. The columns are hashes, addresses and
/// small integers, which dictionary and plain encodings already shrink: higher levels buy
/// almost no size for a third more encoding CPU, and zstd was the backfill's largest CPU
/// item (13.7% of its samples at level 3).
pub const ZSTD_LEVEL: i32 = 1;

/// Encodes a batch (already sorted by block_number, log_index) as one Parquet file in memory.
pub fn encode_parquet(table: &str, batch: &RecordBatch) -> Result<Vec<u8>> {
    let err = |source| Error::Parquet { path: PathBuf::from(table), source };
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).map_err(err)?))
        .set_max_row_group_row_count(Some(DEFAULT_ROW_GROUP_ROWS))
        .set_created_by(concat!("tidewater ", env!("CARGO_PKG_VERSION")).to_string())
        .build();
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4 + 1024);
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).map_err(err)?;
    w.write(batch).map_err(err)?;
    w.close().map_err(err)?;
    Ok(buf)
}

/// Reads every row of a Parquet file (tests and `verify`).
pub fn read_parquet(path: &std::path::Path) -> Result<Vec<RecordBatch>> {
    let err = |source| Error::Parquet { path: path.to_path_buf(), source };
    let f = std::fs::File::open(path).map_err(Error::io("opening", path))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(err)?
        .build()
        .map_err(err)?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Parquet { path: path.to_path_buf(), source: e.into() })
}

/// Reads the named columns (all rows) of a Parquet file; unknown names are ignored.
pub fn read_parquet_columns(path: &std::path::Path, columns: &[&str]) -> Result<Vec<RecordBatch>> {
    let err = |source| Error::Parquet { path: path.to_path_buf(), source };
    let f = std::fs::File::open(path).map_err(Error::io("opening", path))?;
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).map_err(err)?;
    let mask =
        parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    let reader = builder.with_projection(mask).with_batch_size(64 * 1024).build().map_err(err)?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Parquet { path: path.to_path_buf(), source: e.into() })
}
