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

    /// Approved templates from this folder (recuerda's `templates/` format), replacing the
    /// config's. Without `--config`, `templates/` is used when it exists, so the simulator
    /// knows exactly the templates the shipped rules send.
    #[arg(long, value_name = "DIR")]
    pub templates: Option<std::path::PathBuf>,
}

/// The templates in `dir` as the provider would hold them.
fn templates_from(dir: &Path) -> anyhow::Result<Vec<crate::simulator::SimTemplate>> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read templates folder `{}`", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read `{}`", path.display()))?;
            files.push((path, text));
        }
    }
    files.sort();
    let loaded =
        crate::rules::RuleSet::load_sources(&files, &[], &crate::config::Config::default())
            .map_err(|e| {
                anyhow::anyhow!(
                    "the templates in `{}` have errors (run `recuerda check`):\n{e}",
                    dir.display()
                )
            })?;
    Ok(loaded
        .set
        .templates
        .values()
        .map(|t| crate::simulator::SimTemplate {
            id: t.id,
            name: t.name.clone(),
            body: t.body.clone(),
            status: Default::default(),
        })
        .collect())
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
    let templates_dir = args.templates.clone().or_else(|| {
        let shipped = std::path::PathBuf::from("templates");
        (demo && shipped.is_dir()).then_some(shipped)
    });
    if let Some(dir) = &templates_dir {
        sim_config.templates = templates_from(dir)?;
        println!(
            "templates from `{}`: {}",
            dir.display(),
            sim_config.templates.len()
        );
    }
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
