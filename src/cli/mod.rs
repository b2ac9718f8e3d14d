//! The `recuerda` command line: parse, load the config, dispatch. Each subcommand's arguments
//! and handler live in their own file.

use crate::config::Config;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

pub mod balance;
pub mod bench;
pub mod check;
pub mod demo;
pub mod import;
pub mod log_sink;
pub mod preview;
pub mod sandbox;
pub mod send;
pub mod serve;
pub mod simulate;
pub mod simulator;
pub mod templates;

#[derive(Debug, Parser)]
#[command(
    name = "recuerda",
    version,
    about = "Appointment reminders and WhatsApp follow-ups for clinics"
)]
pub struct Cli {
    /// Config file (default: `recuerda.yaml` in the current folder, if present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the engine remind simulated patients, on its built-in simulator (start here).
    Demo(demo::DemoArgs),
    /// Run the engine: webhook, API, scheduler and dispatcher.
    Serve(serve::ServeArgs),
    /// Validate rules and templates; every problem with file:line:column.
    Check(check::CheckArgs),
    /// Show the exact WhatsApp text a rule would send for an appointment.
    Preview(preview::PreviewArgs),
    /// Send one template message through the provider.
    Send(send::SendArgs),
    /// Show the provider account's balance.
    Balance(balance::BalanceArgs),
    /// List the provider's templates, or pull their approved bodies into `templates/`.
    Templates(templates::TemplatesArgs),
    /// Run the fake provider on its own, for testing an integration.
    Simulator(simulator::SimulatorArgs),
    /// Import appointments from a clinic's CSV or JSON export into the running engine.
    Import(import::ImportArgs),
    /// Show what the rules would send over a period, on a fake clock, sending nothing.
    Simulate(simulate::SimulateArgs),
    /// Load benchmark: `serve` on a fresh store under the scenarios of issue 8, vs targets.
    Bench(bench::BenchArgs),
}

/// Loads the config named by `--config` (or the default file), with the environment's secrets.
pub fn load_config(cli_config: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(Config::load(cli_config)?)
}

/// Installs the log subscriber. Lines are written to stderr by a background thread in
/// batches (`log_sink`: one `write` per burst, no wake-up per line; a busy server logs two
/// lines per reply); none is dropped, and the returned guard writes out what is pending when
/// it is dropped, so `main` holds it until exit.
pub fn init_tracing(format: LogFormat, default_level: &str) -> log_sink::LogGuard {
    let (filter, bad) = log_filter(std::env::var("RECUERDA_LOG").ok().as_deref(), default_level);
    let (writer, guard) = log_sink::stderr_sink();
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(writer))
            .try_init(),
    };
    if let Some(bad) = bad {
        tracing::warn!("{bad}");
    }
    guard
}

/// The log filter from `RECUERDA_LOG` (`info`, `warn,recuerda=debug`, …), else `default_level`;
/// a value that is not a filter is reported (second value) rather than silently ignored.
///
/// `Targets` rather than `EnvFilter`: `EnvFilter` pulls in `matchers`, whose `dfa-build`
/// feature makes every `regex` in the process (rules, globs) build full DFAs at load —
/// ~9 MiB of idle memory with 200 rules — for span-field filters nobody here uses.
fn log_filter(
    value: Option<&str>,
    default_level: &str,
) -> (tracing_subscriber::filter::Targets, Option<String>) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let fallback = || {
        default_level
            .parse::<Targets>()
            .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO))
    };
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => (fallback(), None),
        Some(v) => match v.parse::<Targets>() {
            Ok(targets) => (targets, None),
            Err(e) => (
                fallback(),
                Some(format!(
                    "RECUERDA_LOG={v:?} is not a log filter ({e}); logging at `{default_level}`. \
                     Use a level (`error`, `warn`, `info`, `debug`, `trace`) or \
                     `target=level` pairs, e.g. `info,recuerda::engine=debug`"
                )),
            ),
        },
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = cli.config.as_deref();
    match cli.command {
        Command::Demo(args) => demo::run(args, load_config(config_path)?).await,
        Command::Serve(args) => serve::run(args, load_config(config_path)?).await,
        Command::Check(args) => check::run(args, load_config(config_path)?).await,
        Command::Preview(args) => preview::run(args, load_config(config_path)?).await,
        Command::Send(args) => send::run(args, load_config(config_path)?).await,
        Command::Balance(args) => balance::run(args, load_config(config_path)?).await,
        Command::Templates(args) => templates::run(args, load_config(config_path)?).await,
        Command::Simulator(args) => simulator::run(args, config_path).await,
        Command::Import(args) => import::run(args, load_config(config_path)?).await,
        Command::Simulate(args) => simulate::run(args, load_config(config_path)?).await,
        Command::Bench(args) => bench::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;
    use tracing::Level;

    #[test]
    fn log_filter_takes_levels_and_targets_and_reports_what_it_cannot_read() {
        let (f, bad) = log_filter(Some("warn,recuerda::engine=debug"), "info");
        assert!(bad.is_none());
        assert!(f.would_enable("recuerda::engine::dispatch", &Level::DEBUG));
        assert!(!f.would_enable("recuerda::http", &Level::INFO));
        assert!(f.would_enable("hyper", &Level::WARN));

        let (f, bad) = log_filter(None, "info");
        assert!(bad.is_none());
        assert!(f.would_enable("recuerda", &Level::INFO));
        assert!(!f.would_enable("recuerda", &Level::DEBUG));

        let (f, bad) = log_filter(Some("recuerda=loud"), "info");
        let bad = bad.expect("a bad filter is reported");
        assert!(bad.contains("RECUERDA_LOG=\"recuerda=loud\""), "{bad}");
        assert!(bad.contains("e.g. `info,recuerda::engine=debug`"), "{bad}");
        assert!(
            f.would_enable("recuerda", &Level::INFO),
            "falls back to the default"
        );
    }
}
