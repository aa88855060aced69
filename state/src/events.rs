//! The Uniswap V3 events the fold takes, typed. They come from two places: the decoded
//! batches a hot block carries on the bus (the tail decoded them once into the same tables
//! the cold tier stores: [`from_batches`]), and raw logs, for the cold fold over the `logs`
//! table ([`PoolEvent::decode`]). Both give the same events for the same logs (tested below).

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::{sol, SolEvent};
use arrow::array::{Array, BinaryArray, Int32Array, StringArray, UInt32Array, UInt64Array};
use arrow::record_batch::RecordBatch;
use std::collections::BTreeMap;
use tidewater_primitives::schema;

sol! {
    event PoolCreated(address indexed token0, address indexed token1, uint24 indexed fee, int24 tickSpacing, address pool);
    event Initialize(uint160 sqrtPriceX96, int24 tick);
    event Swap(address indexed sender, address indexed recipient, int256 amount0, int256 amount1, uint160 sqrtPriceX96, uint128 liquidity, int24 tick);
    event Mint(address sender, address indexed owner, int24 indexed tickLower, int24 indexed tickUpper, uint128 amount, uint256 amount0, uint256 amount1);
    event Burn(address indexed owner, int24 indexed tickLower, int24 indexed tickUpper, uint128 amount, uint256 amount0, uint256 amount1);
    event IncreaseLiquidity(uint256 indexed tokenId, uint128 liquidity, uint256 amount0, uint256 amount1);
    event DecreaseLiquidity(uint256 indexed tokenId, uint128 liquidity, uint256 amount0, uint256 amount1);
    event Transfer(address indexed from, address indexed to, uint256 indexed tokenId);
}

/// What one event does to the state (only the fields the fold reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolEvent {
    /// The factory created a pool.
    PoolCreated {
        /// token0.
        token0: Address,
        /// token1.
        token1: Address,
        /// Fee.
        fee: u32,
        /// Tick spacing.
        tick_spacing: i32,
        /// The new pool.
        pool: Address,
    },
    /// A pool's first price.
    Initialize {
        /// sqrt(price) Q64.96.
        sqrt_price_x96: U256,
        /// Tick.
        tick: i32,
    },
    /// A swap: the pool's state after it.
    Swap {
        /// sqrt(price) Q64.96.
        sqrt_price_x96: U256,
        /// In-range liquidity.
        liquidity: u128,
        /// Tick.
        tick: i32,
    },
    /// Liquidity added to a range.
    Mint {
        /// Owner (the position manager for its positions).
        owner: Address,
        /// Lower tick.
        tick_lower: i32,
        /// Upper tick.
        tick_upper: i32,
        /// Liquidity.
        amount: u128,
    },
    /// Liquidity removed from a range.
    Burn {
        /// Lower tick.
        tick_lower: i32,
        /// Upper tick.
        tick_upper: i32,
        /// Liquidity.
        amount: u128,
    },
    /// A position token changed hands (to zero: burned).
    PositionTransfer {
        /// New owner.
        to: Address,
        /// Token id.
        token_id: U256,
    },
    /// A position's liquidity grew.
    PositionIncrease {
        /// Token id.
        token_id: U256,
        /// Liquidity added.
        liquidity: u128,
    },
    /// A position's liquidity shrank.
    PositionDecrease {
        /// Token id.
        token_id: U256,
        /// Liquidity removed.
        liquidity: u128,
    },
}

/// Who emitted a log, as far as the fold cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The factory.
    Factory,
    /// A pool the factory created.
    Pool,
    /// The position manager.
    PositionManager,
}

/// One typed event at its place in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypedEvent {
    /// Block.
    pub block_number: u64,
    /// Index in the block.
    pub log_index: u32,
    /// Transaction.
    pub transaction_hash: B256,
    /// Emitter.
    pub address: Address,
    /// The event.
    pub event: PoolEvent,
}

impl PoolEvent {
    /// Decodes a raw log from `source` (None: not an event the fold takes, or it does not
    /// decode under its signature, as the tail's decoder skips it too).
    pub fn decode(source: Source, topics: &[B256], data: &[u8]) -> Option<Self> {
        let t0 = *topics.first()?;
        let topics = topics.iter().copied();
        Some(match source {
            Source::Factory if t0 == PoolCreated::SIGNATURE_HASH => {
                let e = PoolCreated::decode_raw_log_validate(topics, data).ok()?;
                Self::PoolCreated {
                    token0: e.token0,
                    token1: e.token1,
                    fee: e.fee.to::<u32>(),
                    tick_spacing: e.tickSpacing.as_i32(),
                    pool: e.pool,
                }
            }
            Source::Pool if t0 == Swap::SIGNATURE_HASH => {
                let e = Swap::decode_raw_log_validate(topics, data).ok()?;
                Self::Swap {
                    sqrt_price_x96: U256::from(e.sqrtPriceX96),
                    liquidity: e.liquidity,
                    tick: e.tick.as_i32(),
                }
            }
            Source::Pool if t0 == Initialize::SIGNATURE_HASH => {
                let e = Initialize::decode_raw_log_validate(topics, data).ok()?;
                Self::Initialize {
                    sqrt_price_x96: U256::from(e.sqrtPriceX96),
                    tick: e.tick.as_i32(),
                }
            }
            Source::Pool if t0 == Mint::SIGNATURE_HASH => {
                let e = Mint::decode_raw_log_validate(topics, data).ok()?;
                Self::Mint {
                    owner: e.owner,
                    tick_lower: e.tickLower.as_i32(),
                    tick_upper: e.tickUpper.as_i32(),
                    amount: e.amount,
                }
            }
            Source::Pool if t0 == Burn::SIGNATURE_HASH => {
                let e = Burn::decode_raw_log_validate(topics, data).ok()?;
                Self::Burn {
                    tick_lower: e.tickLower.as_i32(),
                    tick_upper: e.tickUpper.as_i32(),
                    amount: e.amount,
                }
            }
            Source::PositionManager if t0 == Transfer::SIGNATURE_HASH => {
                let e = Transfer::decode_raw_log_validate(topics, data).ok()?;
                Self::PositionTransfer { to: e.to, token_id: e.tokenId }
            }
            Source::PositionManager if t0 == IncreaseLiquidity::SIGNATURE_HASH => {
                let e = IncreaseLiquidity::decode_raw_log_validate(topics, data).ok()?;
                Self::PositionIncrease { token_id: e.tokenId, liquidity: e.liquidity }
            }
            Source::PositionManager if t0 == DecreaseLiquidity::SIGNATURE_HASH => {
                let e = DecreaseLiquidity::decode_raw_log_validate(topics, data).ok()?;
                Self::PositionDecrease { token_id: e.tokenId, liquidity: e.liquidity }
            }
            _ => return None,
        })
    }
}

/// Why a decoded batch could not be read as events (a table whose columns are not the
/// preset's: a bug or a catalog that redefines the preset's tables).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("decoded table {table}: {what}")]
pub struct BatchError {
    /// The table.
    pub table: String,
    /// What is wrong.
    pub what: String,
}

/// The fold's events in a block's decoded batches (the tables of the Uniswap V3 preset:
/// `pools_created`, `initializes`, `swaps`, `mints`, `burns`, `position_transfers`,
/// `position_increases`, `position_decreases`; other tables are not the fold's), in log order.
pub fn from_batches(
    batches: &BTreeMap<String, RecordBatch>,
) -> Result<Vec<TypedEvent>, BatchError> {
    let mut out = Vec::new();
    for (table, b) in batches {
        if b.num_rows() == 0 {
            continue;
        }
        let t = Table { name: table, b };
        match table.as_str() {
            "pools_created" => t.each(&mut out, |t, i| {
                Ok(PoolEvent::PoolCreated {
                    token0: t.address("token0", i)?,
                    token1: t.address("token1", i)?,
                    fee: t.u32("fee", i)?,
                    tick_spacing: t.i32("tick_spacing", i)?,
                    pool: t.address("pool", i)?,
                })
            })?,
            "initializes" => t.each(&mut out, |t, i| {
                Ok(PoolEvent::Initialize {
                    sqrt_price_x96: t.uint("sqrt_price_x96", i)?,
                    tick: t.i32("tick", i)?,
                })
            })?,
            "swaps" => t.each(&mut out, |t, i| {
                Ok(PoolEvent::Swap {
                    sqrt_price_x96: t.uint("sqrt_price_x96", i)?,
                    liquidity: t.u128("liquidity", i)?,
                    tick: t.i32("tick", i)?,
                })
            })?,
            "mints" => t.each(&mut out, |t, i| {
                Ok(PoolEvent::Mint {
                    owner: t.address("owner", i)?,
                    tick_lower: t.i32("tick_lower", i)?,
                    tick_upper: t.i32("tick_upper", i)?,
                    amount: t.u128("amount", i)?,
                })
            })?,
            "burns" => t.each(&mut out, |t, i| {
                Ok(PoolEvent::Burn {
                    tick_lower: t.i32("tick_lower", i)?,
                    tick_upper: t.i32("tick_upper", i)?,
                    amount: t.u128("amount", i)?,
                })
            })?,
            "position_transfers" => t.each(&mut out, |t, i| {
                Ok(PoolEvent::PositionTransfer {
                    to: t.address("to", i)?,
                    token_id: t.uint("token_id", i)?,
                })
            })?,
            "position_increases" => t.each(&mut out, |t, i| {
                Ok(PoolEvent::PositionIncrease {
                    token_id: t.uint("token_id", i)?,
                    liquidity: t.u128("liquidity", i)?,
                })
            })?,
            "position_decreases" => t.each(&mut out, |t, i| {
                Ok(PoolEvent::PositionDecrease {
                    token_id: t.uint("token_id", i)?,
                    liquidity: t.u128("liquidity", i)?,
                })
            })?,
            _ => {}
        }
    }
    out.sort_by_key(|e| (e.block_number, e.log_index));
    Ok(out)
}

/// One decoded batch, read column by column.
struct Table<'a> {
    name: &'a str,
    b: &'a RecordBatch,
}

impl Table<'_> {
    fn err(&self, what: String) -> BatchError {
        BatchError { table: self.name.to_string(), what }
    }

    fn col<T: 'static>(&self, name: &str) -> Result<&T, BatchError> {
        self.b
            .column_by_name(name)
            .and_then(|a| a.as_any().downcast_ref::<T>())
            .ok_or_else(|| self.err(format!("column {name} is missing or has another type")))
    }

    fn bytes<const N: usize>(&self, name: &str, i: usize) -> Result<[u8; N], BatchError> {
        let c: &BinaryArray = self.col(name)?;
        <[u8; N]>::try_from(c.value(i))
            .map_err(|_| self.err(format!("{name} has {} bytes, expected {N}", c.value(i).len())))
    }

    fn address(&self, name: &str, i: usize) -> Result<Address, BatchError> {
        self.bytes::<20>(name, i).map(Address::from)
    }

    fn u32(&self, name: &str, i: usize) -> Result<u32, BatchError> {
        Ok(self.col::<UInt32Array>(name)?.value(i))
    }

    fn i32(&self, name: &str, i: usize) -> Result<i32, BatchError> {
        Ok(self.col::<Int32Array>(name)?.value(i))
    }

    fn text(&self, name: &str, i: usize) -> Result<&str, BatchError> {
        Ok(self.col::<StringArray>(name)?.value(i))
    }

    fn uint(&self, name: &str, i: usize) -> Result<U256, BatchError> {
        let s = self.text(name, i)?;
        U256::from_str_radix(s, 10).map_err(|e| self.err(format!("{name} {s:?}: {e}")))
    }

    fn u128(&self, name: &str, i: usize) -> Result<u128, BatchError> {
        let s = self.text(name, i)?;
        s.parse().map_err(|e| self.err(format!("{name} {s:?}: {e}")))
    }

    /// Reads every row as (its key columns, `event(row)`) into `out`.
    fn each(
        &self,
        out: &mut Vec<TypedEvent>,
        event: impl Fn(&Self, usize) -> Result<PoolEvent, BatchError>,
    ) -> Result<(), BatchError> {
        let blocks: &UInt64Array = self.col(schema::BLOCK_NUMBER)?;
        let index: &UInt32Array = self.col(schema::LOG_INDEX)?;
        for i in 0..self.b.num_rows() {
            if blocks.is_null(i) {
                return Err(self.err(format!("row {i} has no block number")));
            }
            out.push(TypedEvent {
                block_number: blocks.value(i),
                log_index: index.value(i),
                transaction_hash: B256::from(self.bytes::<32>(schema::TRANSACTION_HASH, i)?),
                address: self.address(schema::ADDRESS, i)?,
                event: event(self, i)?,
            });
        }
        Ok(())
    }
}
