//! Turning headers and logs into Arrow record batches: `blocks`, `logs` and one batch per
//! decoded-event table. CPU-bound: callers run it on rayon.

use crate::error::{Error, Result};
use crate::events::{ColumnKind, EventCatalog, EventDef};
use crate::schema::{blocks_schema, logs_schema, BLOCKS, LOGS};
use crate::types::{Header, Log};
use alloy_dyn_abi::DynSolValue;
use alloy_primitives::Address;
use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Int32Builder, Int64Builder, StringBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow::record_batch::RecordBatch;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The `blocks` batch for a run of headers.
pub fn blocks_batch(headers: &[Header], chain_id: u64) -> Result<RecordBatch> {
    let mut number = UInt64Builder::with_capacity(headers.len());
    let mut hash = BinaryBuilder::new();
    let mut parent = BinaryBuilder::new();
    let mut ts = UInt64Builder::with_capacity(headers.len());
    let mut bloom = BinaryBuilder::new();
    let mut chain = UInt64Builder::with_capacity(headers.len());
    for h in headers {
        number.append_value(h.number);
        hash.append_value(h.hash);
        parent.append_value(h.parent_hash);
        ts.append_value(h.timestamp);
        bloom.append_value(h.logs_bloom.as_slice());
        chain.append_value(chain_id);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(number.finish()),
        Arc::new(hash.finish()),
        Arc::new(parent.finish()),
        Arc::new(ts.finish()),
        Arc::new(bloom.finish()),
        Arc::new(chain.finish()),
    ];
    RecordBatch::try_new(blocks_schema(), cols)
        .map_err(|source| Error::Arrow { table: BLOCKS.into(), source })
}

/// Key columns shared by `logs` and every decoded table.
struct KeyBuilders {
    block_number: UInt64Builder,
    block_hash: BinaryBuilder,
    transaction_index: UInt32Builder,
    log_index: UInt32Builder,
    transaction_hash: BinaryBuilder,
    address: BinaryBuilder,
}

impl KeyBuilders {
    fn new() -> Self {
        Self {
            block_number: UInt64Builder::new(),
            block_hash: BinaryBuilder::new(),
            transaction_index: UInt32Builder::new(),
            log_index: UInt32Builder::new(),
            transaction_hash: BinaryBuilder::new(),
            address: BinaryBuilder::new(),
        }
    }

    fn push(&mut self, l: &Log) {
        self.block_number.append_value(l.block_number);
        self.block_hash.append_value(l.block_hash);
        self.transaction_index.append_value(l.transaction_index as u32);
        self.log_index.append_value(l.log_index as u32);
        self.transaction_hash.append_value(l.transaction_hash);
        self.address.append_value(l.address);
    }

    fn finish(mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.block_number.finish()),
            Arc::new(self.block_hash.finish()),
            Arc::new(self.transaction_index.finish()),
            Arc::new(self.log_index.finish()),
            Arc::new(self.transaction_hash.finish()),
            Arc::new(self.address.finish()),
        ]
    }
}

/// The `logs` batch (logs must already be ordered).
pub fn logs_batch(logs: &[Log], chain_id: u64) -> Result<RecordBatch> {
    let mut key = KeyBuilders::new();
    let mut topics: [BinaryBuilder; 4] = std::array::from_fn(|_| BinaryBuilder::new());
    let mut data = BinaryBuilder::new();
    let mut chain = UInt64Builder::with_capacity(logs.len());
    for l in logs {
        key.push(l);
        for (i, t) in topics.iter_mut().enumerate() {
            match l.topics.get(i) {
                Some(v) => t.append_value(v),
                None => t.append_null(),
            }
        }
        data.append_value(&l.data);
        chain.append_value(chain_id);
    }
    let mut cols = key.finish();
    for mut t in topics {
        cols.push(Arc::new(t.finish()));
    }
    cols.push(Arc::new(data.finish()));
    cols.push(Arc::new(chain.finish()));
    RecordBatch::try_new(logs_schema(), cols)
        .map_err(|source| Error::Arrow { table: LOGS.into(), source })
}

enum ColBuilder {
    Bool(BooleanBuilder),
    U32(UInt32Builder),
    I32(Int32Builder),
    U64(UInt64Builder),
    I64(Int64Builder),
    Text(StringBuilder),
    Binary(BinaryBuilder),
}

impl ColBuilder {
    fn new(kind: ColumnKind) -> Self {
        match kind {
            ColumnKind::Bool => Self::Bool(BooleanBuilder::new()),
            ColumnKind::U32 => Self::U32(UInt32Builder::new()),
            ColumnKind::I32 => Self::I32(Int32Builder::new()),
            ColumnKind::U64 => Self::U64(UInt64Builder::new()),
            ColumnKind::I64 => Self::I64(Int64Builder::new()),
            ColumnKind::BigInt | ColumnKind::Text => Self::Text(StringBuilder::new()),
            ColumnKind::Binary => Self::Binary(BinaryBuilder::new()),
        }
    }

    fn push(&mut self, v: &DynSolValue) {
        match (self, v) {
            (Self::Bool(b), DynSolValue::Bool(x)) => b.append_value(*x),
            (Self::U32(b), DynSolValue::Uint(x, _)) => b.append_value(x.to::<u32>()),
            (Self::U64(b), DynSolValue::Uint(x, _)) => b.append_value(x.to::<u64>()),
            (Self::I32(b), DynSolValue::Int(x, _)) => b.append_value(x.as_i32()),
            (Self::I64(b), DynSolValue::Int(x, _)) => b.append_value(x.as_i64()),
            (Self::Text(b), DynSolValue::Uint(x, _)) => b.append_value(x.to_string()),
            (Self::Text(b), DynSolValue::Int(x, _)) => b.append_value(x.to_string()),
            (Self::Text(b), DynSolValue::String(s)) => b.append_value(s),
            (Self::Text(b), other) => b.append_value(format!("{other:?}")),
            (Self::Binary(b), DynSolValue::Address(a)) => b.append_value(a),
            (Self::Binary(b), DynSolValue::FixedBytes(w, size)) => b.append_value(&w[..*size]),
            (Self::Binary(b), DynSolValue::Bytes(x)) => b.append_value(x),
            (_, other) => unreachable!("invariant: column kind follows the ABI type ({other:?})"),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Self::Bool(mut b) => Arc::new(b.finish()),
            Self::U32(mut b) => Arc::new(b.finish()),
            Self::I32(mut b) => Arc::new(b.finish()),
            Self::U64(mut b) => Arc::new(b.finish()),
            Self::I64(mut b) => Arc::new(b.finish()),
            Self::Text(mut b) => Arc::new(b.finish()),
            Self::Binary(mut b) => Arc::new(b.finish()),
        }
    }
}

struct TableBuilder<'a> {
    def: &'a EventDef,
    key: KeyBuilders,
    cols: Vec<ColBuilder>,
}

/// Decodes `logs` (ordered) into one batch per table of the catalog, including empty ones.
/// `is_pool` says whether an address was created by the configured factory at or before the
/// log's block; logs that match no definition (a spoofed emitter, an unwatched event) are
/// skipped here but stay in the `logs` table.
pub fn decode_batches(
    catalog: &EventCatalog,
    logs: &[Log],
    is_pool: impl Fn(Address, u64) -> bool,
) -> Result<BTreeMap<String, RecordBatch>> {
    let mut builders: BTreeMap<&str, TableBuilder<'_>> = BTreeMap::new();
    for def in catalog.defs() {
        builders.entry(def.table.as_str()).or_insert_with(|| TableBuilder {
            def,
            key: KeyBuilders::new(),
            cols: def.kinds.iter().map(|k| ColBuilder::new(*k)).collect(),
        });
    }
    for l in logs {
        let Some(topic0) = l.topic0() else { continue };
        let Some(def) = catalog.lookup(l.address, topic0, is_pool(l.address, l.block_number))
        else {
            continue;
        };
        let decoded =
            def.decoder.decode_log_parts(l.topics.iter().copied(), &l.data).map_err(|source| {
                Error::Decode {
                    event: def.event.name.clone(),
                    block: l.block_number,
                    log_index: l.log_index,
                    source: Box::new(source),
                }
            })?;
        let tb = builders.get_mut(def.table.as_str()).expect("invariant: every def has a builder");
        tb.key.push(l);
        let (mut indexed, mut body) = (decoded.indexed.iter(), decoded.body.iter());
        for (input, col) in def.event.inputs.iter().zip(tb.cols.iter_mut()) {
            let v = if input.indexed { indexed.next() } else { body.next() };
            col.push(v.expect("invariant: decoder returns every parameter"));
        }
    }
    builders
        .into_iter()
        .map(|(table, tb)| {
            let mut cols = tb.key.finish();
            cols.extend(tb.cols.into_iter().map(ColBuilder::finish));
            let batch = RecordBatch::try_new(tb.def.schema.clone(), cols)
                .map_err(|source| Error::Arrow { table: table.to_string(), source })?;
            Ok((table.to_string(), batch))
        })
        .collect()
}
