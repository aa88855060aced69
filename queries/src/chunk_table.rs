//! A DataFusion table over exactly the Parquet files the manifest lists, planned from the
//! manifest alone: no listing, no `HEAD` per file, no footer read to plan.
//!
//! DataFusion's `ListingTable` lists each path it is given and reads every file's footer for
//! its statistics before it plans: at 20,000 chunk files a `count(*)` took 5 s, almost all of
//! it there. The manifest already knows each file's size, rows and SHA-256: the rows are the
//! exact statistics (a `count(*)` is answered from them), and the SHA-256 stands in for the
//! modification time in the `ObjectMeta` that DataFusion's shared footer cache checks an entry
//! against, so a range rolled back and committed again at the same path is never read from a
//! stale entry.

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, ScalarValue, Statistics};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::TableType;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use std::sync::Arc;

/// One committed file of a table, as the manifest lists it.
#[derive(Debug, Clone)]
pub struct ChunkFile {
    /// Where it is: a local path, or a URL in an object store.
    pub location: String,
    /// Its size, bytes.
    pub bytes: u64,
    /// Its rows.
    pub rows: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// The chunk's first and last block.
    pub blocks: (u64, u64),
}

/// A table of chunk files, all of one schema, in one store.
#[derive(Debug)]
pub struct ChunkTable {
    schema: SchemaRef,
    store: ObjectStoreUrl,
    files: Vec<PartitionedFile>,
    /// Each file's chunk range, as `files`.
    ranges: Vec<(u64, u64)>,
    /// Whether the schema has a `block_number` column (`UInt64`).
    has_block_number: bool,
    rows: u64,
    bytes: u64,
}

impl ChunkTable {
    /// The table of `files` (all in one store), of `schema`.
    pub fn try_new(schema: SchemaRef, files: &[ChunkFile]) -> datafusion::common::Result<Self> {
        let mut store = ObjectStoreUrl::local_filesystem();
        let mut parts = Vec::with_capacity(files.len());
        // The chunk's range bounds its `block_number`s: a query on a block range opens only
        // the files whose chunks overlap it.
        let block_column = schema.fields().iter().position(|f| {
            f.name() == tidewater_chain::schema::BLOCK_NUMBER && f.data_type() == &DataType::UInt64
        });
        for f in files {
            let (url, path) = split_location(&f.location)?;
            store = url;
            let mut part = PartitionedFile::new(path, f.bytes);
            part.object_meta.last_modified = stamp_of(&f.sha256);
            let mut columns = vec![ColumnStatistics::new_unknown(); schema.fields().len()];
            if let Some(c) = block_column.and_then(|i| columns.get_mut(i)) {
                c.min_value = Precision::Inexact(ScalarValue::UInt64(Some(f.blocks.0)));
                c.max_value = Precision::Inexact(ScalarValue::UInt64(Some(f.blocks.1)));
            }
            parts.push(part.with_statistics(Arc::new(statistics(f.rows, f.bytes, columns))));
        }
        Ok(Self {
            ranges: files.iter().map(|f| f.blocks).collect(),
            has_block_number: block_column.is_some(),
            rows: files.iter().map(|f| f.rows).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            schema,
            store,
            files: parts,
        })
    }
}

/// The store and the path in it of a local path or an object-store URL.
fn split_location(location: &str) -> datafusion::common::Result<(ObjectStoreUrl, String)> {
    if !location.contains("://") {
        // A local path, made absolute (a data directory given as `--data data`).
        let path = std::path::absolute(location)?;
        return Ok((ObjectStoreUrl::local_filesystem(), path.to_string_lossy().into_owned()));
    }
    let url = url::Url::parse(location)
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    let base = format!("{}://{}", url.scheme(), url.authority());
    Ok((ObjectStoreUrl::parse(base)?, url.path().to_string()))
}

/// Exactly `rows` rows in about `bytes` bytes.
fn statistics(rows: u64, bytes: u64, columns: Vec<ColumnStatistics>) -> Statistics {
    Statistics {
        num_rows: Precision::Exact(usize::try_from(rows).unwrap_or(usize::MAX)),
        total_byte_size: Precision::Inexact(usize::try_from(bytes).unwrap_or(usize::MAX)),
        column_statistics: columns,
    }
}

/// A stand-in modification time from a file's SHA-256: the same content, the same time.
fn stamp_of(sha256: &str) -> chrono::DateTime<chrono::Utc> {
    let n = u64::from_str_radix(sha256.get(..15).unwrap_or("0"), 16).unwrap_or(0);
    chrono::DateTime::from_timestamp_nanos(n as i64)
}

#[async_trait::async_trait]
impl TableProvider for ChunkTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn statistics(&self) -> Option<Statistics> {
        let columns = vec![ColumnStatistics::new_unknown(); self.schema.fields().len()];
        Some(statistics(self.rows, self.bytes, columns))
    }

    // Filters are pushed into the Parquet scan by the physical optimizer (row groups and pages
    // pruned by their statistics); the rows it returns are filtered again.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let (lo, hi) = if self.has_block_number { block_bounds(filters) } else { (0, u64::MAX) };
        let kept: Vec<PartitionedFile> = self
            .files
            .iter()
            .zip(&self.ranges)
            .filter(|(_, (start, end))| *end >= lo && *start <= hi)
            .map(|(f, _)| f.clone())
            .collect();
        if kept.is_empty() {
            let schema = datafusion::common::project_schema(&self.schema, projection)?;
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let format = ParquetFormat::default();
        let source = format.file_source(self.schema.clone().into());
        let partitions = state.config_options().execution.target_partitions.max(1);
        let all = kept.len() == self.files.len();
        let groups = FileGroup::new(kept).split_files(partitions);
        let statistics = match self.statistics() {
            Some(s) if all => s,
            _ => Statistics::new_unknown(&self.schema),
        };
        let config = FileScanConfigBuilder::new(self.store.clone(), source)
            .with_file_groups(groups)
            .with_statistics(statistics)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}

/// The block range `filters` (a conjunction) confine `block_number` to: comparisons and
/// `BETWEEN` of the column with integer literals; anything else leaves the range open.
fn block_bounds(filters: &[Expr]) -> (u64, u64) {
    use datafusion::logical_expr::{Between, BinaryExpr, Operator};
    let is_block =
        |e: &Expr| matches!(e, Expr::Column(c) if c.name == tidewater_chain::schema::BLOCK_NUMBER);
    let value = |e: &Expr| match e {
        Expr::Literal(v, _) => match v {
            ScalarValue::UInt64(Some(n)) => Some(i128::from(*n)),
            ScalarValue::Int64(Some(n)) => Some(i128::from(*n)),
            ScalarValue::UInt32(Some(n)) => Some(i128::from(*n)),
            ScalarValue::Int32(Some(n)) => Some(i128::from(*n)),
            _ => None,
        },
        _ => None,
    };
    let (mut lo, mut hi) = (0i128, i128::from(u64::MAX));
    for f in filters {
        match f {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (op, v) = match (is_block(left), is_block(right)) {
                    (true, false) => (*op, value(right)),
                    (false, true) => match op.swap() {
                        Some(op) => (op, value(left)),
                        None => continue,
                    },
                    _ => continue,
                };
                let Some(v) = v else { continue };
                match op {
                    Operator::Eq => (lo, hi) = (lo.max(v), hi.min(v)),
                    Operator::Gt => lo = lo.max(v + 1),
                    Operator::GtEq => lo = lo.max(v),
                    Operator::Lt => hi = hi.min(v - 1),
                    Operator::LtEq => hi = hi.min(v),
                    _ => {}
                }
            }
            Expr::Between(Between { expr, negated: false, low, high }) if is_block(expr) => {
                if let (Some(a), Some(b)) = (value(low), value(high)) {
                    (lo, hi) = (lo.max(a), hi.min(b));
                }
            }
            _ => {}
        }
    }
    let clamp = |v: i128| v.clamp(0, i128::from(u64::MAX)) as u64;
    if lo > hi {
        // Nothing can match: no chunk ends at u64::MAX and starts at 0.
        return (u64::MAX, 0);
    }
    (clamp(lo), clamp(hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn block_bounds_take_comparisons_and_between_of_the_block_column_only() {
        let b = || col(tidewater_chain::schema::BLOCK_NUMBER);
        assert_eq!(block_bounds(&[]), (0, u64::MAX));
        assert_eq!(block_bounds(&[b().gt_eq(lit(10u64)), b().lt(lit(20u64))]), (10, 19));
        assert_eq!(block_bounds(&[lit(10u64).lt(b())]), (11, u64::MAX));
        assert_eq!(block_bounds(&[b().between(lit(5i64), lit(7i64))]), (5, 7));
        assert_eq!(block_bounds(&[b().eq(lit(9u64))]), (9, 9));
        assert_eq!(block_bounds(&[b().gt(lit(9u64)), b().lt(lit(5u64))]), (u64::MAX, 0));
        // Other columns, negations and disjunctions leave the range open.
        assert_eq!(block_bounds(&[col("v").gt(lit(9u64))]), (0, u64::MAX));
        assert_eq!(block_bounds(&[b().not_between(lit(5i64), lit(7i64))]), (0, u64::MAX));
        assert_eq!(block_bounds(&[b().eq(lit(1u64)).or(b().eq(lit(9u64)))]), (0, u64::MAX));
        assert_eq!(block_bounds(&[b().lt(lit(-3i64))]), (u64::MAX, 0));
    }

    #[test]
    fn local_paths_relative_or_not_and_store_urls_split_into_store_and_path() {
        let cwd = std::env::current_dir().unwrap();
        let (store, path) = split_location("data/blocks/x.parquet").unwrap();
        assert_eq!(store, ObjectStoreUrl::local_filesystem());
        assert_eq!(std::path::PathBuf::from(path), cwd.join("data/blocks/x.parquet"));
        let (_, path) = split_location("/d/blocks/x.parquet").unwrap();
        assert_eq!(path, "/d/blocks/x.parquet");
        let (store, path) = split_location("s3://bucket/pre/blocks/x.parquet").unwrap();
        assert_eq!(store, ObjectStoreUrl::parse("s3://bucket").unwrap());
        assert_eq!(path, "/pre/blocks/x.parquet");
    }
}
