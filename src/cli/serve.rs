//! `recuerda serve`.

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

pub async fn run(_args: ServeArgs, _config: Config) -> anyhow::Result<()> {
    anyhow::bail!("`recuerda serve` is not built yet")
}
