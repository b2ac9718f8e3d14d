//! `recuerda bench`: the load benchmark of issue 8 (see `bench`): `recuerda serve` as a child
//! on a fresh store, a provider sink, the scenarios over loopback HTTP, figures vs targets.

use crate::bench::{Options, Scenario};
use anyhow::Context;
use clap::ValueEnum;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioArg {
    /// Delivery-status callbacks ingested.
    A,
    /// Replies → rule match → render → outbox → send.
    B,
    /// A cron fan-out over `--appointments`, then dispatch.
    C,
    /// Idle memory and start-up time with 200 rules.
    D,
    /// Reply matching cost with 1, 100 and 1,000 reply rules.
    E,
    All,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value_t = ScenarioArg::All)]
    pub scenario: ScenarioArg,
    /// Load time of (a) and (b) (`10s`); the waits of the others are bounded by a multiple.
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
    pub duration: Duration,
    /// Concurrent keep-alive HTTP clients.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Appointments in (c)'s cron fan-out.
    #[arg(long, default_value_t = 100_000)]
    pub appointments: u64,
    /// The server's `provider.concurrency` (sends in flight at once).
    #[arg(long, default_value_t = 64)]
    pub provider_concurrency: usize,
    /// The server's `provider.rate_per_second` (high: the benchmark measures the engine).
    #[arg(long, default_value_t = 100_000)]
    pub provider_rate: u32,
    /// The server's log level (`RECUERDA_LOG`); `info` is what production runs.
    #[arg(long, default_value = "info")]
    pub server_log: String,
    /// Run the scenarios this many times and judge each figure by its median (this kind of
    /// shared VM varies by ±15–25 % from run to run).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    crate::duration::parse_duration(text)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.provider_concurrency == 0 || args.provider_rate == 0 {
        anyhow::bail!(
            "`--connections`, `--provider-concurrency` and `--provider-rate` must be at least 1"
        );
    }
    if args.repeat == 0 {
        anyhow::bail!("`--repeat` must be at least 1");
    }
    if args.appointments == 0 {
        anyhow::bail!("`--appointments` must be at least 1");
    }
    let scenarios = match args.scenario {
        ScenarioArg::A => vec![Scenario::A],
        ScenarioArg::B => vec![Scenario::B],
        ScenarioArg::C => vec![Scenario::C],
        ScenarioArg::D => vec![Scenario::D],
        ScenarioArg::E => vec![Scenario::E],
        ScenarioArg::All => Scenario::ALL.to_vec(),
    };
    let options = Options {
        scenarios,
        duration: args.duration,
        connections: args.connections,
        appointments: args.appointments,
        provider_concurrency: args.provider_concurrency,
        provider_rate: args.provider_rate,
        server_log: args.server_log,
        repeat: args.repeat,
    };
    let mut stdout = std::io::stdout();
    crate::bench::run(&options, &mut stdout)
        .await
        .context("the benchmark stopped")?;
    Ok(())
}
