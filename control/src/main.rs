//! `rollout-control` binary: `serve` runs the sidecar; the other subcommands are its CLI.

use std::process::ExitCode;

use clap::Parser;
use std::time::Duration;

use rollout_control::cli::args::{Cli, Command, NotifyArgs, PolicyArgs};
use rollout_control::cli::run_client;
use rollout_control::engine::options::EngineOptions;
use rollout_control::notify::options::NotifyOptions;
use rollout_control::serve::{serve, ServeOptions};
use rollout_core::notify::{check_url, WebhookFormat};

/// The engine's options from the `serve` flags; `None` without `--envoy-admin`.
fn engine_options(args: &PolicyArgs) -> Option<EngineOptions> {
    (!args.envoy_admin.is_empty()).then(|| EngineOptions {
        envoy_admin: args.envoy_admin.clone(),
        stats_format: args.stats_format,
        tick: Duration::from_millis(args.analysis_tick_ms),
    })
}

/// The notifier's options from the `serve` flags (the secret read from its file).
fn notify_options(args: &NotifyArgs) -> anyhow::Result<NotifyOptions> {
    let mut webhooks = Vec::new();
    for (urls, format, flag) in [
        (&args.webhook, WebhookFormat::Json, "--webhook"),
        (&args.webhook_slack, WebhookFormat::Slack, "--webhook-slack"),
    ] {
        for u in urls {
            check_url(flag, u).map_err(|e| anyhow::anyhow!("{e}"))?;
            webhooks.push((u.clone(), format));
        }
    }
    let secret = args
        .webhook_secret_file
        .as_deref()
        .map(rollout_control::util::token::read_token)
        .transpose()?
        .map(String::into_bytes);
    Ok(NotifyOptions {
        webhooks,
        secret,
        timeout: Duration::from_millis(args.webhook_timeout_ms),
        attempts: args.webhook_attempts,
        backoff: Duration::from_millis(args.webhook_backoff_ms),
        queue: usize::try_from(args.webhook_queue).unwrap_or(64),
        gate_interval: Duration::from_millis(args.gate_interval_ms),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => notify_options(&args.notify).and_then(|notify| {
            let opts = ServeOptions {
                listen: args.listen,
                data: args.data,
                token_file: cli.token_file,
                initial_plan: args.initial_plan,
                start_fresh: args.store.start_fresh,
                policy: engine_options(&args.policy),
                notify,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(serve(opts)))
        }),
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
