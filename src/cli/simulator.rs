//! `recuerda simulator`: the fake provider on its own, until Ctrl-C, for clinics to test an
//! integration (and to point `recuerda balance`/`send` at).

use crate::simulator::{SimConfig, Simulator, DEMO_LOGIN, DEMO_TOKEN};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, clap::Args)]
pub struct SimulatorArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,

    /// Where to POST callbacks; overrides the config's `webhook_url`.
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
}

/// `config` is the global `--config`: here a simulator config (`deploy/simulator.yaml`), not a
/// `recuerda.yaml`. Without it the demo account runs.
pub async fn run(args: SimulatorArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let (mut sim_config, demo) = match config {
        Some(path) => {
            let config = SimConfig::load(path).context(
                "cannot load the simulator config (shaped like `deploy/simulator.yaml`, not a `recuerda.yaml`)",
            )?;
            (config, false)
        }
        None => (SimConfig::demo(), true),
    };
    if args.webhook_url.is_some() {
        sim_config.webhook_url = args.webhook_url;
    }
    let logins: Vec<String> = sim_config
        .accounts
        .iter()
        .map(|a| format!("`{}`", a.login))
        .collect();
    let handle = Simulator::start(sim_config, args.listen)
        .await
        .context("cannot start the provider simulator")?;

    println!("provider simulator listening on {}", handle.origin());
    println!("  provider.base_url: {}", handle.base_url());
    println!(
        "  control API:       {}/requests, /callbacks, /sends, …",
        handle.control_url()
    );
    if demo {
        // The demo token is public (it is the provider document's example): safe to print.
        println!("  demo account:      login {DEMO_LOGIN}  token {DEMO_TOKEN}");
    } else {
        println!("  accounts:          {}", logins.join(", "));
    }
    match handle.webhook_url() {
        Some(url) => println!("  callbacks to:      {}", crate::simulator::mask_url(&url)),
        None => println!("  callbacks:         off until a webhook URL is set (PUT /_sim/webhook)"),
    }
    println!("press Ctrl-C to stop");

    wait_for_stop().await?;
    handle.shutdown().await;
    Ok(())
}

/// Ctrl-C, or SIGTERM where there is one (containers stop that way).
async fn wait_for_stop() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
            _ = term.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")
    }
}
