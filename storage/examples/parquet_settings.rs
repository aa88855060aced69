//! Measures Parquet writer settings on a dataset's own tables: encode time and size per table,
//! for the settings Tidewater uses and a few alternatives.
//!
//! usage: parquet_settings DATA_DIR [TABLE...]   (default tables: logs swaps blocks)
#![allow(missing_docs)]

use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;
use std::time::Instant;

fn read_table(dir: &std::path::Path) -> RecordBatch {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("a table folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    let mut batches = Vec::new();
    for f in files {
        batches.extend(tidewater_storage::read_parquet(&f).expect("a readable file"));
    }
    arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("one schema")
}

fn encode(batch: &RecordBatch, props: WriterProperties) -> usize {
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    buf.len()
}

fn base() -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
        .set_max_row_group_row_count(Some(128 * 1024))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("usage: parquet_settings DATA_DIR"));
    let tables: Vec<String> = if args.len() > 2 {
        args[2..].to_vec()
    } else {
        vec!["logs".into(), "swaps".into(), "blocks".into()]
    };
    for t in tables {
        let batch = read_table(&dir.join(&t));
        // Encode in pieces of ~50,000 rows, as a backfill chunk does.
        let pieces: Vec<RecordBatch> = (0..batch.num_rows())
            .step_by(50_000)
            .map(|o| batch.slice(o, 50_000.min(batch.num_rows() - o)))
            .collect();
        let byte_cols: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .filter(|f| {
                matches!(
                    f.data_type(),
                    arrow::datatypes::DataType::Binary | arrow::datatypes::DataType::Utf8
                )
            })
            .map(|f| f.name().clone())
            .collect();
        // Byte columns without dictionary and/or statistics, the rest as `base`.
        let byte_columns = |no_dictionary: bool, no_statistics: bool| {
            byte_cols
                .iter()
                .fold(base(), |b, c| {
                    let path = || ColumnPath::from(c.as_str());
                    let b = if no_dictionary {
                        b.set_column_dictionary_enabled(path(), false)
                    } else {
                        b
                    };
                    if no_statistics {
                        b.set_column_statistics_enabled(path(), EnabledStatistics::None)
                    } else {
                        b
                    }
                })
                .build()
        };
        // Tidewater's settings with another codec.
        let ours = |codec| {
            tidewater_storage::writer_properties(&batch.schema())
                .into_builder()
                .set_compression(codec)
                .build()
        };
        let mut variants: Vec<(&str, WriterProperties)> = vec![
            ("dictionary everywhere, zstd 1", base().build()),
            ("tidewater's settings", tidewater_storage::writer_properties(&batch.schema())),
            ("no dictionary for byte columns", byte_columns(true, false)),
            ("no dictionary at all", base().set_dictionary_enabled(false).build()),
            (
                "statistics per chunk only",
                base().set_statistics_enabled(EnabledStatistics::Chunk).build(),
            ),
            ("no statistics for byte columns", byte_columns(false, true)),
            ("no stats, no dictionary: byte columns", byte_columns(true, true)),
            (
                "dictionary, no compression",
                base().set_compression(Compression::UNCOMPRESSED).build(),
            ),
            ("tidewater's settings, lz4_raw", ours(Compression::LZ4_RAW)),
            ("tidewater's settings, snappy", ours(Compression::SNAPPY)),
            ("tidewater's settings, uncompressed", ours(Compression::UNCOMPRESSED)),
        ];
        // Tidewater's settings without the dictionary of one column, column by column.
        let names: Vec<String> =
            byte_cols.iter().map(|c| format!("ours, no dictionary: {c}")).collect();
        for (c, name) in byte_cols.iter().zip(&names) {
            let props = tidewater_storage::writer_properties(&batch.schema())
                .into_builder()
                .set_column_dictionary_enabled(ColumnPath::from(c.as_str()), false)
                .build();
            variants.push((name.as_str(), props));
        }
        println!("{t}: {} rows in {} pieces", batch.num_rows(), pieces.len());
        for (name, props) in &variants {
            let mut times = Vec::new();
            let mut size = 0;
            for _ in 0..5 {
                let start = Instant::now();
                size = pieces.iter().map(|p| encode(p, props.clone())).sum();
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            println!("  {name:34} {:8.1} ms {:8.2} MB", times[2], size as f64 / 1e6);
        }
    }
}
