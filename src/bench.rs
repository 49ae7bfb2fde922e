//! `tandem bench`: benchmark drivers (filled in below).

use clap::Subcommand;

use crate::settings::Common;

#[derive(Subcommand, Clone, Debug)]
pub enum Which {
    /// The command path vs pgbench single-row inserts, same Postgres, same concurrency.
    Commands,
}

pub async fn run(_common: &Common, which: &Which) -> anyhow::Result<()> {
    match which {
        Which::Commands => anyhow::bail!("not yet written"),
    }
}
