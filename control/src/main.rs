//! `rollout-control` binary: `serve` runs the sidecar; the other subcommands are its CLI.

use std::process::ExitCode;

use clap::Parser;
use std::time::Duration;

use rollout_control::cli::args::{Cli, Command, NotifyArgs, PolicyArgs, StoreArgs};
use rollout_control::cli::run_client;
use rollout_control::engine::options::EngineOptions;
use rollout_control::engine::source::prometheus::PrometheusOptions;
use rollout_control::http::roles::CredentialFiles;
use rollout_control::http::server::HttpLimits;
use rollout_control::notify::options::NotifyOptions;
use rollout_control::serve::{serve, ServeOptions};
use rollout_control::store::proxies::ProxyLimits;
use rollout_control::util::timefmt::now_unix_ms;
use rollout_core::notify::{check_url, WebhookFormat};

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
        wall_clock: now_unix_ms,
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

/// The HTTP limits from the `serve` flags.
fn http_limits(args: &StoreArgs) -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_millis(args.header_timeout_ms),
        body_timeout: Duration::from_millis(args.body_timeout_ms),
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
        heavy_reads: usize::try_from(args.heavy_reads).unwrap_or(usize::MAX),
        ingest_concurrency: usize::try_from(args.ingest_concurrency).unwrap_or(usize::MAX),
        max_record_bytes: usize::try_from(args.max_record_bytes).unwrap_or(usize::MAX),
        max_report_bytes: usize::try_from(args.max_report_bytes).unwrap_or(usize::MAX),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => notify_options(&args.notify).and_then(|notify| {
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
                data_budget: args.store.data_budget_bytes,
                history_keep: args.store.history_keep,
                limits: http_limits(&args.store),
                proxies: ProxyLimits {
                    capacity: usize::try_from(args.proxies.max_proxies).unwrap_or(usize::MAX),
                    expire_after: Duration::from_secs(args.proxies.proxy_expiry_s),
                },
                policy: engine_options(&args.policy),
                notify,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    let result = rt.block_on(serve(opts));
                    // A heavy read still running on a blocking thread does not hold
                    // the exit (the store is already closed or dropped).
                    rt.shutdown_timeout(Duration::from_secs(1));
                    result
                })
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
