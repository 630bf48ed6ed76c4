//! `rollout-control` binary: `serve` runs the sidecar; the other subcommands are its CLI.

use std::process::ExitCode;

use clap::Parser;
use rollout_control::cli::{run_client, Cli, Command};
use rollout_control::serve::{serve, ServeOptions};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            let opts = ServeOptions {
                listen: args.listen,
                data: args.data,
                token_file: cli.token_file,
                initial_plan: args.initial_plan,
                policy: args.policy.options(),
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(serve(opts)))
        }
        _ => run_client(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, joined by ": ".
            eprintln!("rollout-control: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
