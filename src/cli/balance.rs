//! `recuerda balance`: the provider account's balance.

use crate::config::Config;
use crate::provider::Client;
use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct BalanceArgs {}

pub async fn run(_args: BalanceArgs, config: Config) -> anyhow::Result<()> {
    let client = Client::new(&config.provider)?;
    let balance = client
        .balance()
        .await
        .context("asking the provider for the balance")?;
    println!("{balance}");
    Ok(())
}
