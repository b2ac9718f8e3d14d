//! `recuerda templates`.

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct TemplatesArgs {}

pub async fn run(_args: TemplatesArgs, _config: Config) -> anyhow::Result<()> {
    anyhow::bail!("`recuerda templates` is not built yet")
}
