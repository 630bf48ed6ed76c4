//! `rollout-control` binary: `serve` runs the sidecar; the other subcommands are its CLI.

use std::process::ExitCode;

use clap::Parser;
use std::time::Duration;

use rollout_control::cli::args::{Cli, Command, PolicyArgs};
use rollout_control::cli::run_client;
use rollout_control::engine::options::EngineOptions;
use rollout_control::engine::source::prometheus::PrometheusOptions;
use rollout_control::http::roles::CredentialFiles;
use rollout_control::serve::{serve, ServeOptions};

/// The engine's options from the `serve` flags; `None` without `--envoy-admin` and
/// `--prometheus-url`.
fn engine_options(args: &PolicyArgs) -> Option<EngineOptions> {
    let prometheus = args.prometheus_url.as_ref().map(|url| PrometheusOptions {
        url: url.clone(),
        timeout: Duration::from_millis(args.prometheus_timeout_ms),
        min_range_ms: args.prometheus_min_range_ms,
    });
    (!args.envoy_admin.is_empty() || prometheus.is_some()).then(|| EngineOptions {
        envoy_admin: args.envoy_admin.clone(),
        stats_format: args.stats_format,
        prometheus,
        tick: Duration::from_millis(args.analysis_tick_ms),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            let opts = ServeOptions {
                listen: args.listen,
                data: args.data,
                credentials: CredentialFiles {
                    // --token-file is the operator's (the CLI in the pod sends the same file).
                    operator: args.credentials.operator_token_file.or(cli.token_file),
                    proxy: args.credentials.proxy_token_file,
                    feedback: args.credentials.feedback_token_file,
                    read: args.credentials.read_token_file,
                },
                initial_plan: args.initial_plan,
                start_fresh: args.store.start_fresh,
                policy: engine_options(&args.policy),
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
