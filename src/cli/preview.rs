//! `recuerda preview`.

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct PreviewArgs {}

pub async fn run(_args: PreviewArgs, _config: Config) -> anyhow::Result<()> {
    anyhow::bail!("`recuerda preview` is not built yet")
}
