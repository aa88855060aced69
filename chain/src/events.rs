//! The event catalog: which contracts and events are watched, which table each event lands in,
//! and how its parameters map to Arrow columns.

use crate::error::{Error, Result};
use crate::schema::{key_fields, EVENT_KEY_COLUMNS};
use alloy_dyn_abi::DynSolType;
use alloy_json_abi::Event;
use alloy_primitives::{Address, B256};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The Uniswap V3 preset: a factory (whose `PoolCreated` defines which pools count) and,
/// optionally, the NonfungiblePositionManager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniswapV3 {
    /// UniswapV3Factory address.
    pub factory: Address,
    /// NonfungiblePositionManager address.
    pub position_manager: Option<Address>,
    /// Block to start looking for `PoolCreated` (the factory's deployment block; 0 if unknown).
    #[serde(default)]
    pub factory_start_block: u64,
}

/// A contract given by address with event signatures to decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractSource {
    /// Contract address.
    pub address: Address,
    /// Human-readable event signatures, e.g.
    /// `Transfer(address indexed from, address indexed to, uint256 value)`.
    pub events: Vec<String>,
}

/// Everything a dataset watches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sources {
    /// The Uniswap V3 preset, if enabled.
    pub uniswap_v3: Option<UniswapV3>,
    /// Other contracts.
    #[serde(default)]
    pub contracts: Vec<ContractSource>,
}

/// Who may emit an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Emitter {
    /// One fixed contract.
    Contract(Address),
    /// Any pool created by the configured factory.
    FactoryPools,
}

/// Solidity signatures of the Uniswap V3 events and their tables.
pub const UNISWAP_V3_FACTORY_EVENTS: [(&str, &str); 1] = [(
    "pools_created",
    "PoolCreated(address indexed token0, address indexed token1, uint24 indexed fee, int24 tickSpacing, address pool)",
)];
/// Pool events and their tables.
pub const UNISWAP_V3_POOL_EVENTS: [(&str, &str); 6] = [
    ("initializes", "Initialize(uint160 sqrtPriceX96, int24 tick)"),
    ("swaps", "Swap(address indexed sender, address indexed recipient, int256 amount0, int256 amount1, uint160 sqrtPriceX96, uint128 liquidity, int24 tick)"),
    ("mints", "Mint(address sender, address indexed owner, int24 indexed tickLower, int24 indexed tickUpper, uint128 amount, uint256 amount0, uint256 amount1)"),
    ("burns", "Burn(address indexed owner, int24 indexed tickLower, int24 indexed tickUpper, uint128 amount, uint256 amount0, uint256 amount1)"),
    ("collects", "Collect(address indexed owner, address recipient, int24 indexed tickLower, int24 indexed tickUpper, uint128 amount0, uint128 amount1)"),
    ("flashes", "Flash(address indexed sender, address indexed recipient, uint256 amount0, uint256 amount1, uint256 paid0, uint256 paid1)"),
];
/// The pool's other events: not decoded, but a pool's raw logs include them, so asking for pool
/// logs by selector must ask for these too.
pub const UNISWAP_V3_POOL_OTHER_EVENTS: [&str; 3] = [
    "IncreaseObservationCardinalityNext(uint16 observationCardinalityNextOld, uint16 observationCardinalityNextNew)",
    "SetFeeProtocol(uint8 feeProtocol0Old, uint8 feeProtocol1Old, uint8 feeProtocol0New, uint8 feeProtocol1New)",
    "CollectProtocol(address indexed sender, address indexed recipient, uint128 amount0, uint128 amount1)",
];
/// NonfungiblePositionManager events and their tables.
pub const UNISWAP_V3_POSITION_EVENTS: [(&str, &str); 4] = [
    ("position_increases", "IncreaseLiquidity(uint256 indexed tokenId, uint128 liquidity, uint256 amount0, uint256 amount1)"),
    ("position_decreases", "DecreaseLiquidity(uint256 indexed tokenId, uint128 liquidity, uint256 amount0, uint256 amount1)"),
    ("position_collects", "Collect(uint256 indexed tokenId, address recipient, uint256 amount0, uint256 amount1)"),
    ("position_transfers", "Transfer(address indexed from, address indexed to, uint256 indexed tokenId)"),
];

/// How a parameter is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// bool
    Bool,
    /// uint8..uint32
    U32,
    /// int8..int32
    I32,
    /// uint40..uint64
    U64,
    /// int40..int64
    I64,
    /// Wider integers, as exact decimal strings (cast in SQL: see the README).
    BigInt,
    /// address, bytes, bytesN
    Binary,
    /// string, arrays and tuples (arrays and tuples as their Solidity literal).
    Text,
}

impl ColumnKind {
    fn of(ty: &DynSolType) -> Self {
        match ty {
            DynSolType::Bool => Self::Bool,
            DynSolType::Uint(b) if *b <= 32 => Self::U32,
            DynSolType::Uint(b) if *b <= 64 => Self::U64,
            DynSolType::Int(b) if *b <= 32 => Self::I32,
            DynSolType::Int(b) if *b <= 64 => Self::I64,
            DynSolType::Uint(_) | DynSolType::Int(_) => Self::BigInt,
            DynSolType::Address | DynSolType::Bytes | DynSolType::FixedBytes(_) => Self::Binary,
            _ => Self::Text,
        }
    }

    /// The Arrow type of the column.
    pub fn data_type(self) -> DataType {
        match self {
            Self::Bool => DataType::Boolean,
            Self::U32 => DataType::UInt32,
            Self::I32 => DataType::Int32,
            Self::U64 => DataType::UInt64,
            Self::I64 => DataType::Int64,
            Self::BigInt | Self::Text => DataType::Utf8,
            Self::Binary => DataType::Binary,
        }
    }
}

/// One watched event and its table.
#[derive(Debug, Clone)]
pub struct EventDef {
    /// Table name.
    pub table: String,
    /// Parsed ABI event.
    pub event: Event,
    /// The event resolved for decoding, once (resolving per log re-parses every type string
    /// and re-hashes the signature: ~10% of a backfill's CPU).
    pub(crate) decoder: alloy_dyn_abi::DynSolEvent,
    /// topic0.
    pub selector: B256,
    /// Who may emit it.
    pub emitter: Emitter,
    /// Column kinds, in ABI order.
    pub(crate) kinds: Vec<ColumnKind>,
    /// Where each parameter's word is, when every parameter is a one-word value type (as in
    /// every Uniswap V3 event): such a log decodes without the generic ABI decoder.
    pub(crate) words: Option<WordPlan>,
    /// Arrow schema of the table.
    pub schema: SchemaRef,
}

/// A one-word ABI value type, as the word decodes (the generic decoder's rules: a bool is any
/// non-zero word, an address the word's last 20 bytes, `bytesN` its first N bytes, integers the
/// whole word, checked against their width before they are stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WordType {
    Bool,
    Uint(usize),
    Int(usize),
    Address,
    FixedBytes(usize),
}

/// Where a parameter's word is in a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WordAt {
    /// `topics[i]`.
    Topic(usize),
    /// The `i`th 32-byte word of `data`.
    Data(usize),
}

/// The layout of an event whose parameters are all one-word value types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WordPlan {
    /// Each parameter, in declaration order.
    pub(crate) params: Vec<(WordAt, WordType)>,
    /// Topics a log of this event has (the selector and one per indexed parameter).
    pub(crate) topics: usize,
    /// Words of `data` the event's body takes (a longer `data` decodes too, as in the generic
    /// decoder).
    pub(crate) data_words: usize,
}

impl WordPlan {
    fn new(event: &Event, types: &[DynSolType]) -> Option<Self> {
        let (mut topic, mut word) = (1, 0);
        let mut params = Vec::with_capacity(types.len());
        for (input, ty) in event.inputs.iter().zip(types) {
            let ty = match ty {
                DynSolType::Bool => WordType::Bool,
                DynSolType::Uint(b) => WordType::Uint(*b),
                DynSolType::Int(b) => WordType::Int(*b),
                DynSolType::Address => WordType::Address,
                DynSolType::FixedBytes(n) => WordType::FixedBytes(*n),
                _ => return None,
            };
            let at = if input.indexed {
                topic += 1;
                WordAt::Topic(topic - 1)
            } else {
                word += 1;
                WordAt::Data(word - 1)
            };
            params.push((at, ty));
        }
        Some(Self { params, topics: topic, data_words: word })
    }
}

/// Parses a human-readable event signature, with or without the `event` keyword.
pub fn parse_event(signature: &str) -> Result<Event> {
    let s = signature.trim();
    let s = s.strip_prefix("event ").unwrap_or(s).trim().trim_end_matches(';');
    let bad =
        |reason: String| Error::BadEventSignature { signature: signature.to_string(), reason };
    if !s.contains('(') || !s.ends_with(')') {
        return Err(bad("expected Name(type [indexed] name, ...)".into()));
    }
    let event = Event::parse(s).map_err(|e| bad(e.to_string()))?;
    for (i, p) in event.inputs.iter().enumerate() {
        p.ty.parse::<DynSolType>().map_err(|e| bad(format!("parameter {i} ({}): {e}", p.ty)))?;
    }
    Ok(event)
}

/// `sqrtPriceX96` → `sqrt_price_x96`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev: Option<char> = None;
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if matches!(prev, Some(p) if p.is_ascii_lowercase() || p.is_ascii_digit()) {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
        prev = Some(c);
    }
    out
}

impl EventDef {
    /// Builds the definition; `table` is the target table name.
    pub fn new(table: &str, signature: &str, emitter: Emitter) -> Result<Self> {
        let event = parse_event(signature)?;
        if event.anonymous {
            return Err(Error::BadEventSignature {
                signature: signature.into(),
                reason: "anonymous events have no selector to match".into(),
            });
        }
        let mut param_types = Vec::new();
        let mut fields = key_fields();
        let mut seen: Vec<String> = EVENT_KEY_COLUMNS.iter().map(|s| s.to_string()).collect();
        for (i, p) in event.inputs.iter().enumerate() {
            let ty: DynSolType =
                p.ty.parse().map_err(|e: alloy_dyn_abi::Error| Error::BadEventSignature {
                    signature: signature.into(),
                    reason: format!("parameter {i}: {e}"),
                })?;
            let mut name = if p.name.is_empty() { format!("arg{i}") } else { snake_case(&p.name) };
            if seen.contains(&name) {
                name = format!("arg_{name}");
            }
            seen.push(name.clone());
            let kind = ColumnKind::of(&ty);
            fields.push(Field::new(name, kind.data_type(), false));
            param_types.push(ty);
        }
        let kinds = param_types.iter().map(ColumnKind::of).collect();
        let words = WordPlan::new(&event, &param_types);
        drop(param_types);
        let decoder = alloy_dyn_abi::Specifier::resolve(&event).map_err(|e| {
            Error::BadEventSignature { signature: signature.into(), reason: e.to_string() }
        })?;
        Ok(Self {
            table: table.to_string(),
            decoder,
            selector: event.selector(),
            event,
            emitter,
            kinds,
            words,
            schema: Arc::new(Schema::new(fields)),
        })
    }
}

/// All watched events, looked up by (emitter, selector).
#[derive(Debug, Clone, Default)]
pub struct EventCatalog {
    defs: Vec<EventDef>,
    by_key: HashMap<(Emitter, B256), usize, foldhash::fast::RandomState>,
    /// Selectors of every event a factory pool emits, sorted (empty without a factory).
    pool_topic0s: Vec<B256>,
}

impl EventCatalog {
    /// The catalog for a set of sources.
    pub fn new(sources: &Sources) -> Result<Self> {
        let mut defs = Vec::new();
        if let Some(u) = &sources.uniswap_v3 {
            for (table, sig) in UNISWAP_V3_FACTORY_EVENTS {
                defs.push(EventDef::new(table, sig, Emitter::Contract(u.factory))?);
            }
            for (table, sig) in UNISWAP_V3_POOL_EVENTS {
                defs.push(EventDef::new(table, sig, Emitter::FactoryPools)?);
            }
            if let Some(pm) = u.position_manager {
                for (table, sig) in UNISWAP_V3_POSITION_EVENTS {
                    defs.push(EventDef::new(table, sig, Emitter::Contract(pm))?);
                }
            }
        }
        let mut tables: BTreeMap<String, B256> =
            defs.iter().map(|d| (d.table.clone(), d.selector)).collect();
        for c in &sources.contracts {
            for sig in &c.events {
                let event = parse_event(sig)?;
                let mut table = snake_case(&event.name);
                // The same name with another signature gets its own table.
                if tables.get(&table).is_some_and(|s| *s != event.selector()) {
                    table = format!("{table}_{}", hex_prefix(&event.selector()));
                }
                tables.insert(table.clone(), event.selector());
                defs.push(EventDef::new(&table, sig, Emitter::Contract(c.address))?);
            }
        }
        let by_key = defs.iter().enumerate().map(|(i, d)| ((d.emitter, d.selector), i)).collect();
        let mut pool_topic0s: Vec<B256> = defs
            .iter()
            .filter(|d| d.emitter == Emitter::FactoryPools)
            .map(|d| d.selector)
            .collect();
        if !pool_topic0s.is_empty() {
            for sig in UNISWAP_V3_POOL_OTHER_EVENTS {
                pool_topic0s.push(parse_event(sig)?.selector());
            }
        }
        pool_topic0s.sort();
        pool_topic0s.dedup();
        Ok(Self { defs, by_key, pool_topic0s })
    }

    /// Every definition.
    pub fn defs(&self) -> &[EventDef] {
        &self.defs
    }

    /// Distinct table names with their schemas (events sharing a table share a schema).
    pub fn tables(&self) -> BTreeMap<String, SchemaRef> {
        self.defs.iter().map(|d| (d.table.clone(), d.schema.clone())).collect()
    }

    /// The definition matching a log from `address` with `topic0`, where `is_pool` says whether
    /// the factory created `address`.
    pub fn lookup(&self, address: Address, topic0: &B256, is_pool: bool) -> Option<&EventDef> {
        self.lookup_index(address, topic0, || is_pool).and_then(|i| self.defs.get(i))
    }

    /// The index in [`EventCatalog::defs`] of the definition matching a log from `address` with
    /// `topic0`; `is_pool` is asked only when no fixed contract matches.
    pub(crate) fn lookup_index(
        &self,
        address: Address,
        topic0: &B256,
        is_pool: impl FnOnce() -> bool,
    ) -> Option<usize> {
        if let Some(i) = self.by_key.get(&(Emitter::Contract(address), *topic0)) {
            return Some(*i);
        }
        if self.pool_topic0s.is_empty() || !is_pool() {
            return None;
        }
        self.by_key.get(&(Emitter::FactoryPools, *topic0)).copied()
    }

    /// The same catalog decoding every log with the generic ABI decoder (tests compare both).
    #[cfg(test)]
    pub(crate) fn without_word_plans(&self) -> Self {
        let mut c = self.clone();
        for d in &mut c.defs {
            d.words = None;
        }
        c
    }

    /// The selectors of every event a factory pool emits (decoded or not); empty without a
    /// factory.
    pub fn pool_topic0s(&self) -> &[B256] {
        &self.pool_topic0s
    }

    /// Fixed contracts watched.
    pub fn contracts(&self) -> Vec<Address> {
        let mut v: Vec<Address> = self
            .defs
            .iter()
            .filter_map(|d| match d.emitter {
                Emitter::Contract(a) => Some(a),
                Emitter::FactoryPools => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

fn hex_prefix(b: &B256) -> String {
    b.as_slice()[..4].iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake() {
        assert_eq!(snake_case("sqrtPriceX96"), "sqrt_price_x96");
        assert_eq!(snake_case("tickLower"), "tick_lower");
        assert_eq!(snake_case("tokenId"), "token_id");
        assert_eq!(snake_case("amount0"), "amount0");
        assert_eq!(snake_case("Transfer"), "transfer");
    }

    #[test]
    fn parses_signatures() {
        let e = parse_event("Transfer(address indexed from, address indexed to, uint256 value)")
            .unwrap();
        assert_eq!(e.name, "Transfer");
        assert_eq!(
            e.selector().to_string(),
            "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
        );
        assert!(parse_event(
            "event Approval(address indexed owner, address indexed spender, uint256 value)"
        )
        .is_ok());
        assert!(parse_event("Transfer(address from").is_err());
        assert!(parse_event("Transfer(adress from)").is_err());
        assert!(parse_event("nonsense").is_err());
    }

    #[test]
    fn uniswap_selectors_match_the_contracts() {
        let u = UniswapV3 {
            factory: Address::repeat_byte(1),
            position_manager: Some(Address::repeat_byte(2)),
            factory_start_block: 0,
        };
        let c = EventCatalog::new(&Sources { uniswap_v3: Some(u), contracts: vec![] }).unwrap();
        let swap = c.defs().iter().find(|d| d.table == "swaps").unwrap();
        assert_eq!(
            swap.selector.to_string(),
            "0xc42079f94a6350d7e6235f29174924f928cc2ac818eb64fed8004e115fbcca67"
        );
        let pc = c.defs().iter().find(|d| d.table == "pools_created").unwrap();
        assert_eq!(
            pc.selector.to_string(),
            "0x783cca1c0412dd0d695e784568c96da2e9c22ff989357a2e8b1d9b2b4e6b7118"
        );
        let names: Vec<_> = swap.schema.fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            &names[6..],
            ["sender", "recipient", "amount0", "amount1", "sqrt_price_x96", "liquidity", "tick"]
        );
        // A spoofed Swap from a non-pool does not match.
        assert!(c.lookup(Address::repeat_byte(9), &swap.selector, false).is_none());
        assert!(c.lookup(Address::repeat_byte(9), &swap.selector, true).is_some());
    }
}
