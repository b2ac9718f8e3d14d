//! `recuerda check`.

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {}

pub async fn run(_args: CheckArgs, _config: Config) -> anyhow::Result<()> {
    anyhow::bail!("`recuerda check` is not built yet")
}
