//! `tidewater-provider-sim`: a hosted provider's limits, errors and bill in front of a real
//! node. Prints its URL on the first line of stdout, serves the counts at `GET /stats`, and
//! prints them as JSON on stdout when stopped (SIGINT/SIGTERM).

use clap::Parser;
use tidewater_testkit::{Profile, ProviderSim};

/// A hosted provider's limits, errors and bill in front of a real node.
#[derive(Debug, Parser)]
#[command(name = "tidewater-provider-sim")]
struct Args {
    /// The node to forward to.
    #[arg(long)]
    upstream: String,
    /// alchemy, infura, quicknode or local.
    #[arg(long, default_value = "alchemy")]
    profile: String,
    /// Calls per second; beyond, 429 with Retry-After.
    #[arg(long)]
    rps: Option<f64>,
    /// Port to listen on (0: any free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> eyre::Result<()> {
    let a = Args::parse();
    let profile = Profile::named(&a.profile)?.with_rps(a.rps);
    let sim = ProviderSim::start_on(a.upstream, profile, a.port).await?;
    println!("{}", sim.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("{}", serde_json::to_string(&sim.stats())?);
    Ok(())
}
