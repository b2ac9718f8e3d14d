//! `recuerda simulator`.

#[derive(Debug, clap::Args)]
pub struct SimulatorArgs {}

pub async fn run(_args: SimulatorArgs) -> anyhow::Result<()> {
    anyhow::bail!("`recuerda simulator` is not built yet")
}
