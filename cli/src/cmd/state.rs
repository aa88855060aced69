//! `tidewater state`: the Uniswap V3 state at a block, folded from the cold tier.

use super::open;
use crate::args::StateArgs;
use crate::{usage, CmdResult};
use eyre::{eyre, WrapErr};

pub(crate) async fn state(a: StateArgs) -> CmdResult {
    let ds = open(&a.data)?;
    let sources: tidewater_chain::Sources = serde_json::from_value(ds.identity().sources.clone())
        .wrap_err("reading the dataset's sources")?;
    let u = sources
        .uniswap_v3
        .ok_or_else(|| usage(eyre!("{} does not index Uniswap V3", a.data.display())))?;
    tidewater_state::pool_state::check_coverage(&ds, &u).map_err(usage)?;
    let last = ds.manifest().last().map(|c| c.end);
    let first = ds.manifest().chunks().first().map(|c| c.start);
    if let (Some(b), Some(last), Some(first)) = (a.block, last, first) {
        if b > last || b < first {
            return Err(usage(eyre!(
                "block {b} is outside the committed blocks [{first}, {last}]"
            )));
        }
    }
    let block = a.block;
    let mut st = tokio::task::spawn_blocking(move || {
        tidewater_state::pool_state::fold_dataset(&ds, &u, block)
    })
    .await
    .wrap_err("folding state")?
    .wrap_err("reading the logs table")?;
    if let Some(p) = a.pool {
        if !st.pools.contains_key(&p) {
            return Err(usage(eyre!("no pool {p} was created by the factory")));
        }
        st.pools = st.pools.into_iter().filter(|(k, _)| *k == p).collect();
        st.ticks = st.ticks.into_iter().filter(|(k, _)| *k == p).collect();
        st.positions = st.positions.into_iter().filter(|(_, pos)| pos.pool == Some(p)).collect();
    }
    let out = st.to_json();
    println!("{}", serde_json::to_string_pretty(&out).wrap_err("serializing state")?);
    Ok(())
}
