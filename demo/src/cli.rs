//! Command line of the `rollout-demo` binary.

use crate::blackhole::{self, Mode};
use crate::faults::{check_rate, Faults};
use crate::model::{self, AppState, ModelConfig};
use crate::traffic::{self, TrafficArgs};
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;

/// Demo model server (Open Inference Protocol), failure servers and traffic
/// generator for model-rollout.
#[derive(Debug, Parser)]
#[command(name = "rollout-demo", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Demo model server speaking the Open Inference Protocol (KServe v2 REST).
    Model(ModelArgs),
    /// Raw TCP server that resets, hangs or closes every connection.
    Blackhole(BlackholeArgs),
    /// Traffic generator: sends infer requests and tallies variants.
    Traffic(TrafficArgs),
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    check_rate("rate", v).map_err(|_| "must be a number between 0 and 1".to_owned())
}

/// Flags of `rollout-demo model`.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: String,
    /// Model version label reported in responses (stable, canary, shadow, ...).
    #[arg(long, value_name = "NAME")]
    pub version: String,
    /// Delay added to every infer call, in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub latency_ms: u64,
    /// Extra uniform random delay in [0, N] milliseconds.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub latency_jitter_ms: u64,
    /// Fraction of infer calls answered 500 (0..1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, value_name = "F")]
    pub error_rate: f64,
    /// Fraction of predictions sent as NaN (0..1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, value_name = "F")]
    pub nan_rate: f64,
    /// Fraction of predictions sent as null (0..1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, value_name = "F")]
    pub null_rate: f64,
    /// Fraction of inputs (by FNV-1a hash of the body) answered with a
    /// prediction shifted by 0.5 (0..1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, value_name = "F")]
    pub disagree_rate: f64,
    /// Added to every prediction.
    #[arg(
        long,
        default_value_t = 0.0,
        allow_hyphen_values = true,
        value_name = "F"
    )]
    pub bias: f64,
    /// Added to the logit of every prediction: shifts the scores, keeps them in (0, 1).
    #[arg(
        long,
        default_value_t = 0.0,
        allow_hyphen_values = true,
        value_name = "LOGITS"
    )]
    pub score_shift: f64,
    /// Start with every infer call held unanswered.
    #[arg(long)]
    pub hang: bool,
    /// Start answering every infer call with this status and an error body.
    #[arg(long, value_name = "CODE")]
    pub status: Option<u16>,
    /// Seed of the random fault knobs.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub seed: u64,
    /// Include the received request headers in the infer response parameters.
    #[arg(long)]
    pub echo_headers: bool,
    /// Elements of the output tensor, each the prediction (large answers).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N")]
    pub output_len: u32,
    /// Also write the bound address (HOST:PORT) to this file.
    #[arg(long, value_name = "PATH")]
    pub addr_file: Option<PathBuf>,
}

impl ModelArgs {
    /// The server configuration these flags describe.
    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            version: self.version.clone(),
            faults: Faults {
                latency_ms: self.latency_ms,
                latency_jitter_ms: self.latency_jitter_ms,
                error_rate: self.error_rate,
                nan_rate: self.nan_rate,
                null_rate: self.null_rate,
                disagree_rate: self.disagree_rate,
                bias: self.bias,
                score_shift: self.score_shift,
                hang: self.hang,
                status: self.status,
            },
            seed: self.seed,
            echo_headers: self.echo_headers,
            log_capacity: model::REQUEST_LOG_CAPACITY,
            output_len: self.output_len as usize,
        }
    }
}

/// Flags of `rollout-demo blackhole`.
#[derive(Debug, Clone, Args)]
pub struct BlackholeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: String,
    /// What to do with each connection.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Also write the bound address (HOST:PORT) to this file.
    #[arg(long, value_name = "PATH")]
    pub addr_file: Option<PathBuf>,
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn write_addr_file(path: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{addr}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

async fn bind(listen: &str, addr_file: Option<&Path>) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    if let Some(path) = addr_file {
        write_addr_file(path, addr)?;
    }
    Ok((listener, addr))
}

/// Runs the selected subcommand to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Model(args) => {
            let state = AppState::new(args.config())?;
            let (listener, addr) = bind(&args.listen, args.addr_file.as_deref()).await?;
            println!(
                "rollout-demo model version={} listening on {addr}",
                state.version()
            );
            model::serve(listener, state, shutdown_signal()).await?;
            eprintln!("rollout-demo model: shut down");
        }
        Command::Blackhole(args) => {
            let (listener, addr) = bind(&args.listen, args.addr_file.as_deref()).await?;
            println!(
                "rollout-demo blackhole mode={} listening on {addr}",
                args.mode.as_str()
            );
            blackhole::serve(listener, args.mode, shutdown_signal()).await?;
        }
        Command::Traffic(args) => {
            traffic::run(args, shutdown_signal()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn model_flags_parse() {
        let cli = Cli::try_parse_from([
            "rollout-demo",
            "model",
            "--listen",
            "127.0.0.1:0",
            "--version",
            "canary",
            "--error-rate",
            "0.25",
            "--bias",
            "-0.1",
            "--score-shift",
            "-1.5",
            "--echo-headers",
            "--status",
            "503",
        ])
        .unwrap();
        let Command::Model(m) = cli.command else {
            panic!("not model")
        };
        let cfg = m.config();
        assert_eq!(cfg.version, "canary");
        assert_eq!(cfg.faults.error_rate, 0.25);
        assert_eq!(cfg.faults.bias, -0.1);
        assert_eq!(cfg.faults.score_shift, -1.5);
        assert_eq!(cfg.faults.status, Some(503));
        assert!(cfg.echo_headers);
    }

    #[test]
    fn rate_out_of_range_rejected() {
        let r = Cli::try_parse_from([
            "rollout-demo",
            "model",
            "--listen",
            "127.0.0.1:0",
            "--version",
            "v",
            "--nan-rate",
            "1.5",
        ]);
        assert!(r.is_err());
    }

    #[test]
    fn traffic_paths_repeat() {
        let cli = Cli::try_parse_from([
            "rollout-demo",
            "traffic",
            "--path",
            "/a",
            "--path",
            "/b",
            "--users",
            "0",
        ])
        .unwrap();
        let Command::Traffic(t) = cli.command else {
            panic!("not traffic")
        };
        assert_eq!(t.paths, vec!["/a".to_owned(), "/b".to_owned()]);
        assert_eq!(t.rps, 50.0);
        assert_eq!(t.concurrency, 4);
        let cli = Cli::try_parse_from(["rollout-demo", "traffic"]).unwrap();
        let Command::Traffic(t) = cli.command else {
            panic!("not traffic")
        };
        assert_eq!(t.paths, vec!["/v2/models/fraud/infer".to_owned()]);
    }
}
