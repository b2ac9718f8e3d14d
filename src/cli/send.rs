//! `recuerda send`.

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct SendArgs {}

pub async fn run(_args: SendArgs, _config: Config) -> anyhow::Result<()> {
    anyhow::bail!("`recuerda send` is not built yet")
}
