//! `recuerda balance`.

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct BalanceArgs {}

pub async fn run(_args: BalanceArgs, _config: Config) -> anyhow::Result<()> {
    anyhow::bail!("`recuerda balance` is not built yet")
}
