//! `recuerda serve`: the engine, until SIGINT/SIGTERM; SIGHUP reloads the rules.

use crate::clock::SystemClock;
use crate::config::Config;
use anyhow::Context;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Listen address (overrides `listen` in the config).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

pub async fn run(args: ServeArgs, mut config: Config) -> anyhow::Result<()> {
    config.credentials()?;
    crate::app::ensure_webhook_secret(&mut config)?;
    if config.api.token.is_none() {
        tracing::warn!("no `api.token` (or RECUERDA_API_TOKEN): the /api/v1 endpoints answer 401 until one is set");
    }
    let listen = args.listen.unwrap_or(config.listen);
    let store = crate::app::open_store(&config)?;
    let rules = crate::app::load_rules(&config)?;
    let running = crate::app::start_with(config, store, rules, Arc::new(SystemClock), listen)
        .await
        .context("cannot start the engine")?;
    tracing::info!(addr = %running.addr, "recuerda is serving (webhook at /webhook/***)");
    release_startup_memory();
    // The engine's first round of background work (recovery, the first scheduler tick and
    // balance check) runs just after listening and faults in code of its own: release again
    // once it is over.
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        release_startup_memory();
    });
    wait_for_stop(&running.engine).await;
    tracing::info!("shutting down: finishing in-flight sends and flushing the store");
    running.shutdown().await;
    Ok(())
}

fn release_startup_memory() {
    crate::app::release_freed_memory();
    let released = crate::app::release_startup_code();
    tracing::debug!(bytes = released, "start-up memory released");
}

/// Waits for SIGINT or SIGTERM; reloads the rules on SIGHUP.
async fn wait_for_stop(engine: &crate::engine::Engine) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = term.recv() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading rules");
                    let _ = engine.reload_rules();
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = engine;
        let _ = tokio::signal::ctrl_c().await;
    }
}
