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

/// The writer settings of a table with `schema`:
/// - byte columns (hashes, addresses, `data`, decimal strings) get no min/max statistics: over
///   random hashes they prune nothing, and computing them per page was a fifth of the encoding;
///   integer columns keep theirs (`block_number` prunes row groups and pages);
/// - `data` and text columns (the decimal strings of wide integers: amounts, prices) get no
///   dictionary: nearly every value is distinct, so the dictionary is built and thrown away;
///   hashes and addresses repeat in runs and keep theirs.
///
/// Measured with `cargo run --release -p tidewater-storage --example parquet_settings` on the
/// `dense` devnet's tables (231,039 logs, 228,900 swaps, 50,000-row files): against
/// dictionaries and statistics everywhere, 67.8 / 70.1 ms instead of 82.5 / 93.7 ms to encode,
/// 7.27 / 6.68 MB instead of 7.34 / 6.83 MB.
pub fn writer_properties(schema: &arrow::datatypes::Schema) -> WriterProperties {
    use arrow::datatypes::DataType;
    use parquet::file::properties::EnabledStatistics;
    use parquet::schema::types::ColumnPath;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD_LEVEL).expect("invariant: level 1 is a zstd level"),
        ))
        .set_max_row_group_row_count(Some(DEFAULT_ROW_GROUP_ROWS))
        .set_created_by(concat!("tidewater ", env!("CARGO_PKG_VERSION")).to_string());
    for f in schema.fields() {
        let path = || ColumnPath::from(f.name().as_str());
        let text = matches!(f.data_type(), DataType::Utf8);
        if text || matches!(f.data_type(), DataType::Binary) {
            b = b.set_column_statistics_enabled(path(), EnabledStatistics::None);
        }
        if text || f.name() == "data" {
            b = b.set_column_dictionary_enabled(path(), false);
        }
    }
    b.build()
}

/// Encodes a batch (already sorted by block_number, log_index) as one Parquet file in memory.
pub fn encode_parquet(table: &str, batch: &RecordBatch) -> Result<Vec<u8>> {
    let err = |source| Error::Parquet { path: PathBuf::from(table), source };
    let props = writer_properties(&batch.schema());
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
