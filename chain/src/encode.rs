//! Turning headers and logs into Arrow record batches: `blocks`, `logs` and one batch per
//! decoded-event table. CPU-bound: callers run it on rayon.

use crate::error::{Error, Result};
use crate::events::{ColumnKind, EventCatalog, EventDef, WordAt, WordPlan, WordType};
use crate::schema::{blocks_schema, logs_schema, BLOCKS, LOGS};
use crate::{BlockRow, Log};
use alloy_dyn_abi::DynSolValue;
use alloy_primitives::Address;
use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Int32Builder, Int64Builder, StringBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow::record_batch::RecordBatch;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The `blocks` batch for a run of rows.
pub fn blocks_batch(rows: &[BlockRow], chain_id: u64) -> Result<RecordBatch> {
    let mut number = UInt64Builder::with_capacity(rows.len());
    let mut hash = BinaryBuilder::new();
    let mut parent = BinaryBuilder::new();
    let mut ts = UInt64Builder::with_capacity(rows.len());
    let mut bloom = BinaryBuilder::new();
    let mut chain = UInt64Builder::with_capacity(rows.len());
    for h in rows {
        number.append_value(h.number);
        hash.append_value(h.hash);
        parent.append_option(h.parent_hash);
        ts.append_value(h.timestamp);
        bloom.append_option(h.logs_bloom.as_ref().map(|b| b.as_slice()));
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
    /// Builders sized for `rows` rows (growing them row by row copied every column a few
    /// times over).
    fn with_capacity(rows: usize) -> Self {
        Self {
            block_number: UInt64Builder::with_capacity(rows),
            block_hash: BinaryBuilder::with_capacity(rows, rows * 32),
            transaction_index: UInt32Builder::with_capacity(rows),
            log_index: UInt32Builder::with_capacity(rows),
            transaction_hash: BinaryBuilder::with_capacity(rows, rows * 32),
            address: BinaryBuilder::with_capacity(rows, rows * 20),
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
    let n = logs.len();
    let mut key = KeyBuilders::with_capacity(n);
    let mut topics: [BinaryBuilder; 4] = std::array::from_fn(|i| {
        let rows = logs.iter().filter(|l| l.topics.len() > i).count();
        BinaryBuilder::with_capacity(n, rows * 32)
    });
    let mut data = BinaryBuilder::with_capacity(n, logs.iter().map(|l| l.data.len()).sum());
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
    /// A builder sized for `rows` rows (byte columns for a word's worth each).
    fn with_capacity(kind: ColumnKind, rows: usize) -> Self {
        match kind {
            ColumnKind::Bool => Self::Bool(BooleanBuilder::with_capacity(rows)),
            ColumnKind::U32 => Self::U32(UInt32Builder::with_capacity(rows)),
            ColumnKind::I32 => Self::I32(Int32Builder::with_capacity(rows)),
            ColumnKind::U64 => Self::U64(UInt64Builder::with_capacity(rows)),
            ColumnKind::I64 => Self::I64(Int64Builder::with_capacity(rows)),
            ColumnKind::BigInt | ColumnKind::Text => {
                Self::Text(StringBuilder::with_capacity(rows, rows * 32))
            }
            ColumnKind::Binary => Self::Binary(BinaryBuilder::with_capacity(rows, rows * 32)),
        }
    }

    /// Appends `v`; the caller has checked it with [`check_value`].
    fn push(&mut self, v: &DynSolValue) {
        match (self, v) {
            (Self::Bool(b), DynSolValue::Bool(x)) => b.append_value(*x),
            (Self::U32(b), DynSolValue::Uint(x, _)) => b.append_option(u32::try_from(*x).ok()),
            (Self::U64(b), DynSolValue::Uint(x, _)) => b.append_option(u64::try_from(*x).ok()),
            (Self::I32(b), DynSolValue::Int(x, _)) => b.append_option(i32::try_from(*x).ok()),
            (Self::I64(b), DynSolValue::Int(x, _)) => b.append_option(i64::try_from(*x).ok()),
            (Self::Text(b), DynSolValue::Uint(x, _)) => b.append_value(x.to_string()),
            (Self::Text(b), DynSolValue::Int(x, _)) => b.append_value(x.to_string()),
            (Self::Text(b), DynSolValue::String(s)) => b.append_value(s),
            (Self::Text(b), other) => b.append_value(format!("{other:?}")),
            (Self::Binary(b), DynSolValue::Address(a)) => b.append_value(a),
            (Self::Binary(b), DynSolValue::FixedBytes(w, size)) => {
                b.append_value(&w[..(*size).min(32)])
            }
            (Self::Binary(b), DynSolValue::Bytes(x)) => b.append_value(x),
            // check_value refused every other pairing before anything was appended.
            (Self::Bool(b), _) => b.append_null(),
            (Self::U32(b), _) => b.append_null(),
            (Self::I32(b), _) => b.append_null(),
            (Self::U64(b), _) => b.append_null(),
            (Self::I64(b), _) => b.append_null(),
            (Self::Binary(b), _) => b.append_null(),
        }
    }

    /// Appends a word of type `ty` that [`word_fits`]; `kind` is [`ColumnKind::of`] the type.
    /// Writes what [`ColBuilder::push`] writes for the value the generic decoder makes of it.
    fn push_word(&mut self, ty: WordType, kind: ColumnKind, w: &[u8; 32]) {
        use std::fmt::Write as _;
        // The word's last 8 bytes; a value that fits 32 or 64 bits is all there.
        let low = u64::from_be_bytes(*w.last_chunk::<8>().unwrap_or(&[0; 8]));
        match (self, ty) {
            (Self::Bool(b), _) => b.append_value(w.iter().any(|x| *x != 0)),
            (Self::U32(b), _) => b.append_value(low as u32),
            (Self::U64(b), _) => b.append_value(low),
            (Self::I32(b), _) => b.append_value(low as u32 as i32),
            (Self::I64(b), _) => b.append_value(low as i64),
            (Self::Text(b), WordType::Uint(_)) => {
                let (high, low) = w.split_at(16);
                if let (true, Ok(low)) = (high.iter().all(|x| *x == 0), <[u8; 16]>::try_from(low)) {
                    let _ = write!(b, "{}", u128::from_be_bytes(low));
                } else {
                    let _ = write!(b, "{}", alloy_primitives::U256::from_be_bytes(*w));
                }
                b.append_value("");
            }
            (Self::Text(b), WordType::Int(_)) => {
                let v = alloy_primitives::I256::from_raw(alloy_primitives::U256::from_be_bytes(*w));
                match i128::try_from(v) {
                    Ok(v) => write!(b, "{v}"),
                    Err(_) => write!(b, "{v}"),
                }
                .unwrap_or(());
                b.append_value("");
            }
            (Self::Binary(b), WordType::Address) => {
                b.append_value(w.last_chunk::<20>().unwrap_or(&[0; 20]))
            }
            (Self::Binary(b), WordType::FixedBytes(n)) => b.append_value(w.get(..n).unwrap_or(w)),
            (col, _) => {
                debug_assert!(false, "a word of {ty:?} in a {kind:?} column");
                col.append_null();
            }
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::U32(b) => b.append_null(),
            Self::I32(b) => b.append_null(),
            Self::U64(b) => b.append_null(),
            Self::I64(b) => b.append_null(),
            Self::Text(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
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

/// Whether `v` fits the column `kind` and the width its ABI type declares. A log is input: a
/// non-canonical encoding, or a user's signature that declares `uint32` for a full word, gives
/// values wider than their type, which must be refused, never truncated or panicked on.
fn check_value(kind: ColumnKind, v: &DynSolValue) -> std::result::Result<(), String> {
    use alloy_primitives::U256;
    let fits_kind = match (kind, v) {
        (ColumnKind::Bool, DynSolValue::Bool(_)) => true,
        (ColumnKind::U32, DynSolValue::Uint(x, _)) => u32::try_from(*x).is_ok(),
        (ColumnKind::U64, DynSolValue::Uint(x, _)) => u64::try_from(*x).is_ok(),
        (ColumnKind::I32, DynSolValue::Int(x, _)) => i32::try_from(*x).is_ok(),
        (ColumnKind::I64, DynSolValue::Int(x, _)) => i64::try_from(*x).is_ok(),
        (ColumnKind::BigInt | ColumnKind::Text, _) => true,
        (ColumnKind::Binary, DynSolValue::Address(_) | DynSolValue::Bytes(_)) => true,
        (ColumnKind::Binary, DynSolValue::FixedBytes(_, size)) => *size <= 32,
        _ => false,
    };
    let fits_width = match v {
        DynSolValue::Uint(x, bits) => *bits >= 256 || (*x >> *bits) == U256::ZERO,
        DynSolValue::Int(x, bits) if (1..256).contains(bits) => {
            // Two's complement: every bit from the sign bit up equals the sign.
            let top = x.into_raw() >> (*bits - 1);
            top == U256::ZERO || top == (U256::MAX >> (*bits - 1))
        }
        _ => true,
    };
    match (fits_kind, fits_width) {
        (true, true) => Ok(()),
        _ => Err(format!("value {v:?} does not fit its declared type")),
    }
}

struct TableBuilder<'a> {
    def: &'a EventDef,
    key: KeyBuilders,
    cols: Vec<ColBuilder>,
}

/// A log that matched an event definition but did not decode under it. It stays in the raw
/// `logs` table; its decoded table has no row for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedLog {
    /// The decoded table it was meant for.
    pub table: String,
    /// Block number.
    pub block: u64,
    /// Log index in the block.
    pub log_index: u64,
    /// Why it did not decode.
    pub reason: String,
}

/// The decoded tables of a run of logs, and the logs that did not decode.
#[derive(Debug, Clone, Default)]
pub struct Decoded {
    /// One batch per table of the catalog, empty ones included.
    pub batches: BTreeMap<String, RecordBatch>,
    /// Logs skipped because they do not decode under their event's signature.
    pub skipped: Vec<SkippedLog>,
}

/// Decodes `logs` (ordered) into one batch per table of the catalog, including empty ones.
/// `is_pool` says whether an address was created by the configured factory at or before the
/// log's block; logs that match no definition (a spoofed emitter, an unwatched event) are
/// skipped here but stay in the `logs` table. A log that matches a definition but does not
/// decode under it (too short, a value wider than its type) is reported in
/// [`Decoded::skipped`] and left out of its table: a row with made-up or null values would
/// read as an event that happened, while the raw log keeps every byte for whoever needs it.
pub fn decode_batches(
    catalog: &EventCatalog,
    logs: &[Log],
    is_pool: impl Fn(Address, u64) -> bool,
) -> Result<Decoded> {
    // Each log's definition, first: the builders are then sized for their rows.
    let matched: Vec<(&Log, usize)> = logs
        .iter()
        .filter_map(|l| {
            let i = catalog
                .lookup_index(l.address, l.topic0()?, || is_pool(l.address, l.block_number))?;
            Some((l, i))
        })
        .collect();
    // One builder per table; `slot[i]` is the builder of definition `i`.
    let mut tables: Vec<(&EventDef, usize)> = Vec::new();
    let mut slot = Vec::with_capacity(catalog.defs().len());
    for def in catalog.defs() {
        let at = tables.iter().position(|(d, _)| d.table == def.table).unwrap_or_else(|| {
            tables.push((def, 0));
            tables.len() - 1
        });
        slot.push(at);
    }
    for (_, i) in &matched {
        if let Some((_, rows)) = slot.get(*i).and_then(|t| tables.get_mut(*t)) {
            *rows += 1;
        }
    }
    let mut builders: Vec<TableBuilder<'_>> = tables
        .into_iter()
        .map(|(def, rows)| TableBuilder {
            def,
            key: KeyBuilders::with_capacity(rows),
            cols: def.kinds.iter().map(|k| ColBuilder::with_capacity(*k, rows)).collect(),
        })
        .collect();
    let mut skipped = Vec::new();
    for (l, i) in matched {
        let (Some(def), Some(tb)) =
            (catalog.defs().get(i), slot.get(i).and_then(|t| builders.get_mut(*t)))
        else {
            continue;
        };
        if def.words.as_ref().is_some_and(|plan| push_words(plan, &def.kinds, l, tb)) {
            continue;
        }
        let values = match decode_values(def, l) {
            Ok(v) => v,
            Err(reason) => {
                tracing::warn!(
                    table = %def.table, block = l.block_number, log_index = l.log_index, %reason,
                    "log does not decode under its event signature; kept in the logs table only"
                );
                skipped.push(SkippedLog {
                    table: def.table.clone(),
                    block: l.block_number,
                    log_index: l.log_index,
                    reason,
                });
                continue;
            }
        };
        tb.key.push(l);
        for (v, col) in values.iter().zip(tb.cols.iter_mut()) {
            col.push(v);
        }
    }
    let batches = builders
        .into_iter()
        .map(|tb| {
            let table = tb.def.table.clone();
            let mut cols = tb.key.finish();
            cols.extend(tb.cols.into_iter().map(ColBuilder::finish));
            let batch = RecordBatch::try_new(tb.def.schema.clone(), cols)
                .map_err(|source| Error::Arrow { table: table.clone(), source })?;
            Ok((table, batch))
        })
        .collect::<Result<_>>()?;
    Ok(Decoded { batches, skipped })
}

/// The word of `l` at `at`, if the log has it.
fn word_at(l: &Log, at: WordAt) -> Option<&[u8; 32]> {
    match at {
        WordAt::Topic(i) => l.topics.get(i).map(|t| &t.0),
        WordAt::Data(i) => l.data.get(i * 32..i * 32 + 32)?.try_into().ok(),
    }
}

/// Whether a word fits its type's width (the checks of [`check_value`], on the word).
fn word_fits(ty: WordType, w: &[u8; 32]) -> bool {
    match ty {
        WordType::Uint(bits) if bits < 256 => {
            // Every bit from `bits` up is zero.
            let lead = w.iter().take_while(|b| **b == 0).count() * 8;
            let lead = lead + w.get(lead / 8).map_or(0, |b| b.leading_zeros() as usize);
            lead >= 256 - bits
        }
        WordType::Int(bits) if (1..256).contains(&bits) => {
            // Every bit from the sign bit up equals the sign.
            let fill = if w.first().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0u8 };
            let same = w.iter().take_while(|b| **b == fill).count() * 8;
            let same = same + w.get(same / 8).map_or(0, |b| (b ^ fill).leading_zeros() as usize);
            same > 256 - bits
        }
        _ => true,
    }
}

/// Appends `l`'s row through its event's word layout. False, with nothing appended, when the
/// layout does not apply (topic count, short data) or a value is wider than its type: the
/// generic decoder then decides, and says why in the skipped log.
fn push_words(plan: &WordPlan, kinds: &[ColumnKind], l: &Log, tb: &mut TableBuilder<'_>) -> bool {
    if l.topics.len() != plan.topics || l.data.len() < plan.data_words * 32 {
        return false;
    }
    if !plan.params.iter().all(|(at, ty)| word_at(l, *at).is_some_and(|w| word_fits(*ty, w))) {
        return false;
    }
    tb.key.push(l);
    for (((at, ty), kind), col) in plan.params.iter().zip(kinds).zip(tb.cols.iter_mut()) {
        // Every word is there: checked just above.
        if let Some(w) = word_at(l, *at) {
            col.push_word(*ty, *kind, w);
        }
    }
    true
}

/// The log's parameters in declaration order, each checked against its column.
fn decode_values(def: &EventDef, l: &Log) -> std::result::Result<Vec<DynSolValue>, String> {
    let decoded = def
        .decoder
        .decode_log_parts(l.topics.iter().copied(), &l.data)
        .map_err(|e| format!("ABI decoding failed: {e}"))?;
    let (mut indexed, mut body) = (decoded.indexed.into_iter(), decoded.body.into_iter());
    let mut out = Vec::with_capacity(def.event.inputs.len());
    for (input, kind) in def.event.inputs.iter().zip(def.kinds.iter()) {
        let v = if input.indexed { indexed.next() } else { body.next() };
        let v = v.ok_or_else(|| format!("parameter {} is missing", input.name))?;
        check_value(*kind, &v).map_err(|e| format!("parameter {}: {e}", input.name))?;
        out.push(v);
    }
    Ok(out)
}

/// Binary columns as `0x…` hex strings (hashes and addresses read better that way); a batch
/// of rows without columns keeps its row count.
pub fn hex_binary_columns(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::array::Array as _;
    let mut fields = Vec::new();
    let mut cols: Vec<arrow::array::ArrayRef> = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        match c.as_any().downcast_ref::<arrow::array::BinaryArray>() {
            Some(b) => {
                let mut sb = arrow::array::StringBuilder::new();
                for i in 0..b.len() {
                    if b.is_null(i) {
                        sb.append_null();
                    } else {
                        sb.append_value(format!("0x{}", hex_lower(b.value(i))));
                    }
                }
                fields.push(arrow::datatypes::Field::new(
                    f.name(),
                    arrow::datatypes::DataType::Utf8,
                    true,
                ));
                cols.push(Arc::new(sb.finish()));
            }
            None => {
                fields.push(f.as_ref().clone());
                cols.push(c.clone());
            }
        }
    }
    // `SELECT FROM t` has rows and no column: keep the row count.
    let opts =
        arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::new(arrow::datatypes::Schema::new(fields)), cols, &opts)
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ContractSource, Sources};
    use alloy_primitives::{Bytes, B256, I256, U256};
    use arrow::array::{Array, StringArray};
    use proptest::prelude::*;

    const EMITTER: Address = Address::repeat_byte(0x42);

    fn catalog() -> EventCatalog {
        EventCatalog::new(&Sources {
            uniswap_v3: None,
            contracts: vec![ContractSource {
                address: EMITTER,
                events: vec!["Foo(int256 a, uint160 b, uint128 c)".into()],
            }],
        })
        .unwrap()
    }

    fn log(catalog: &EventCatalog, words: [U256; 3], index: u64) -> Log {
        let selector = catalog.defs()[0].selector;
        let mut data = Vec::new();
        for w in words {
            data.extend_from_slice(&w.to_be_bytes::<32>());
        }
        Log {
            address: EMITTER,
            topics: vec![selector],
            data: Bytes::from(data),
            block_number: 1,
            block_hash: B256::ZERO,
            transaction_hash: B256::ZERO,
            transaction_index: 0,
            log_index: index,
            removed: false,
            block_timestamp: None,
        }
    }

    fn strings(b: &RecordBatch, col: &str) -> Vec<String> {
        let a = b.column_by_name(col).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        (0..a.len()).map(|i| a.value(i).to_string()).collect()
    }

    proptest! {
        /// int256, uint160 and uint128 values survive decoding as exact decimal strings that
        /// parse back to the same numbers; a value wider than its type is skipped, not cut.
        #[test]
        fn big_integers_round_trip_exactly(
            a in any::<[u8; 32]>(), b in any::<[u8; 20]>(), c in any::<u128>(), wide in any::<u64>(),
        ) {
            let cat = catalog();
            let a = I256::from_raw(U256::from_be_bytes(a));
            let mut b32 = [0u8; 32];
            b32[12..].copy_from_slice(&b);
            let b = U256::from_be_bytes(b32);
            let c = U256::from(c);
            let ok = log(&cat, [a.into_raw(), b, c], 0);
            // A uint128 with bits above 128: wider than its type.
            let too_wide = log(&cat, [a.into_raw(), b, (U256::from(wide) << 128) | U256::from(1)], 1);
            let d = decode_batches(&cat, &[ok, too_wide], |_, _| false).unwrap();
            let batch = &d.batches[&cat.defs()[0].table];
            prop_assert_eq!(batch.num_rows(), 1);
            let (sa, sb, sc) = (strings(batch, "a"), strings(batch, "b"), strings(batch, "c"));
            prop_assert_eq!(sa[0].parse::<I256>().unwrap(), a);
            prop_assert_eq!(sb[0].parse::<U256>().unwrap(), b);
            prop_assert_eq!(sc[0].parse::<U256>().unwrap(), c);
            prop_assert_eq!(d.skipped.len(), 1);
            prop_assert_eq!(d.skipped[0].log_index, 1);
        }

        /// A log decoded through its event's word layout gives the row the generic ABI decoder
        /// gives, for any one-word types, indexed or not, and any words (those wider than
        /// their type are skipped by both, with the generic decoder's reason).
        #[test]
        fn word_layout_decodes_as_the_generic_decoder(
            params in proptest::collection::vec((0usize..9, any::<bool>(), 1usize..33), 1..7),
            logs in proptest::collection::vec(
                (proptest::collection::vec((any::<[u8; 32]>(), 0u8..4), 0..8), 0usize..3, 0usize..40),
                1..12,
            ),
        ) {
            let mut indexed = 0;
            let sig_params: Vec<String> = params.iter().enumerate().map(|(i, (t, idx, n))| {
                let ty = match t {
                    0 => "bool".to_string(),
                    1 => format!("uint{}", n * 8),
                    2 => format!("int{}", n * 8),
                    3 => "address".into(),
                    4 => format!("bytes{n}"),
                    5 => "uint256".into(),
                    6 => "int256".into(),
                    7 => format!("uint{}", (n * 8).min(64)),
                    _ => format!("int{}", (n * 8).min(64)),
                };
                let idx = *idx && indexed < 3;
                indexed += usize::from(idx);
                format!("{ty}{} p{i}", if idx { " indexed" } else { "" })
            }).collect();
            let sig = format!("Ev({})", sig_params.join(", "));
            let fast = EventCatalog::new(&Sources {
                uniswap_v3: None,
                contracts: vec![ContractSource { address: EMITTER, events: vec![sig.clone()] }],
            }).unwrap();
            prop_assert!(fast.defs()[0].words.is_some(), "{sig}");
            let generic = fast.without_word_plans();
            let selector = fast.defs()[0].selector;
            let ls: Vec<Log> = logs.iter().enumerate().map(|(i, (words, drop_topics, cut))| {
                // Words as they come, or narrowed to small positive / negative values.
                let word = |(w, how): &([u8; 32], u8)| {
                    let mut w = *w;
                    match how {
                        0 => {}
                        1 => w[..28].fill(0),
                        2 => w[..28].fill(0xff),
                        _ => w[..31].fill(0),
                    }
                    B256::from(w)
                };
                let mut ws = words.iter().map(word);
                let mut topics = vec![selector];
                topics.extend(ws.by_ref().take(indexed));
                topics.truncate(topics.len().saturating_sub(*drop_topics % 2));
                let mut data: Vec<u8> = ws.flat_map(|w| w.0).collect();
                data.truncate(data.len().saturating_sub(*cut % 33));
                Log {
                    address: EMITTER, topics, data: Bytes::from(data), block_number: 1,
                    block_hash: B256::ZERO, transaction_hash: B256::ZERO, transaction_index: 0,
                    log_index: i as u64, removed: false, block_timestamp: None,
                }
            }).collect();
            let a = decode_batches(&fast, &ls, |_, _| false).unwrap();
            let b = decode_batches(&generic, &ls, |_, _| false).unwrap();
            prop_assert_eq!(&a.skipped, &b.skipped, "{}", sig);
            prop_assert_eq!(&a.batches, &b.batches, "{}", sig);
        }

        /// Arbitrary data under a signature never panics: each log decodes or is skipped.
        #[test]
        fn arbitrary_words_decode_or_are_skipped(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let cat = catalog();
            let mut l = log(&cat, [U256::ZERO; 3], 0);
            l.data = Bytes::from(data);
            let d = decode_batches(&cat, &[l], |_, _| false).unwrap();
            let rows = d.batches[&cat.defs()[0].table].num_rows();
            prop_assert_eq!(rows + d.skipped.len(), 1);
        }
    }
}
