//! `rollout-demo` binary: parses the command line and runs the subcommand.

use clap::Parser;
use rollout_demo::cli::{self, Cli};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(cli::run(cli))
}
