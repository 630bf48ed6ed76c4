//! The command line's definitions (clap): global flags, one variant per subcommand,
//! and the flags of `serve` (the sidecar, including its policy engine).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::api::status::StatsFormat;

#[derive(Debug, Parser)]
#[command(
    name = "rollout-control",
    version,
    about = "model-rollout control sidecar: plan API with durable history, and its CLI"
)]
pub struct Cli {
    /// Sidecar to talk to.
    #[arg(
        long,
        global = true,
        env = "ROLLOUT_CONTROL_SERVER",
        default_value = "http://127.0.0.1:9090"
    )]
    pub server: String,
    /// File holding the bearer token the commands send (the credential of the role
    /// the command needs: operator for changes, read for reads when reads are closed,
    /// feedback for `feedback`). For `serve` it is the operator's credential (the same
    /// as `--operator-token-file`).
    #[arg(long, global = true, env = "ROLLOUT_CONTROL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Seconds a command waits for the sidecar's whole answer (connect, send, read).
    /// The largest shadow report (100,000 records, 16 MiB listed) takes a few seconds
    /// from a release build; raise it for slow links or larger `--max-report-bytes`.
    #[arg(
        long,
        global = true,
        env = "ROLLOUT_CONTROL_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub timeout: u64,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: plan API on --listen, store in --data.
    Serve(Box<ServeArgs>),
    /// Plan version and age, weights per rollout, proxies and their plan versions.
    Status,
    /// Print the latest plan.
    GetPlan,
    /// Replace the plan with a file's content.
    Apply {
        /// The plan (JSON, schema of rollout_core::plan; `version` is assigned by the sidecar).
        #[arg(long)]
        file: PathBuf,
        /// Only apply if the latest version is N (If-Match).
        #[arg(long, value_name = "N")]
        expect_version: Option<u64>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Set one variant's weight (the first variant absorbs the difference), or all weights.
    #[command(group(clap::ArgGroup::new("how").required(true).args(["variant", "weights"])))]
    SetWeight {
        /// Rollout name (as in the plan).
        #[arg(long)]
        rollout: String,
        /// The variant to set (not the first one: it absorbs the difference).
        #[arg(long, requires = "weight")]
        variant: Option<String>,
        /// Percent, at most two decimals.
        #[arg(long, requires = "variant")]
        weight: Option<f64>,
        /// Every variant's weight: `stable=75,canary=25`.
        #[arg(long, conflicts_with_all = ["variant", "weight"])]
        weights: Option<String>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Blue/green: send 100 % to one variant.
    Switch {
        /// Rollout name (as in the plan).
        #[arg(long)]
        rollout: String,
        /// The variant that gets 100 %.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// The candidate (last variant) gets 100 % and becomes the first (stable) variant.
    Promote {
        /// Rollout name (as in the plan).
        #[arg(long)]
        rollout: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// The candidate (last variant) goes to 0 %; the first variant gets its share.
    Rollback {
        /// Rollout name (as in the plan).
        #[arg(long)]
        rollout: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Pause automatic changes to a rollout (routing is unaffected).
    Pause {
        /// Rollout name (as in the plan).
        #[arg(long)]
        rollout: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Resume automatic changes to a rollout (a holding policy progresses again).
    Resume {
        /// Rollout name (as in the plan).
        #[arg(long)]
        rollout: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Restart a rollout's policy at step 0 (e.g. after a rollback).
    Restart {
        /// Rollout name (as in the plan).
        #[arg(long)]
        rollout: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// The policy's recent decisions for a rollout: checks, values, thresholds, verdicts.
    Analysis {
        /// Rollout name (as in the plan).
        #[arg(long)]
        rollout: String,
        /// Most decisions to show (newest first).
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Only the decision that wrote this plan version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Plan versions, newest first.
    History {
        /// Most versions to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Make an earlier version's plan the latest again (as a new version).
    Restore {
        /// The version whose plan comes back.
        #[arg(long)]
        version: u64,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// The variant a user gets, computed like the filter (sticky bucket of the key).
    #[command(group(clap::ArgGroup::new("who").required(true).args(["user", "users_file"])))]
    Assign {
        /// Rollout name (as in the plan).
        #[arg(long)]
        rollout: String,
        /// The subject key (the value of the configured subject header or cookie).
        #[arg(long)]
        user: Option<String>,
        /// One user per line; prints `user<TAB>variant` lines.
        #[arg(long)]
        users_file: Option<PathBuf>,
        /// Use this plan instead of the sidecar's.
        #[arg(long)]
        plan_file: Option<PathBuf>,
        /// Also print the bucket in [0, 10000).
        #[arg(long)]
        bucket: bool,
    },
    /// Check a plugin configuration offline (exit 1 with `FIELD: message` if invalid).
    ValidateConfig {
        /// The configuration JSON; `-` reads stdin.
        file: PathBuf,
    },
    /// Check a plan document offline (exit 1 with `FIELD: message` if invalid).
    ValidatePlan {
        /// The plan JSON; `-` reads stdin.
        file: PathBuf,
    },
    /// Shadow comparisons of a rollout: agreement, latency, recent disagreements.
    ShadowReport {
        /// Rollout name (as in the plan).
        #[arg(long)]
        rollout: String,
        /// Most recent disagreements to list (server default 50, at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Only records at or after this time (unix milliseconds).
        #[arg(long, value_name = "UNIX_MS")]
        since_ms: Option<u64>,
    },
    /// The A/B verdict of a rollout's experiment.
    Experiment {
        /// Rollout name (as in the plan).
        #[arg(long)]
        rollout: String,
    },
    /// Delete a rollout's experiment data (assignments and outcomes) to start over.
    ResetExperiment {
        /// Rollout name.
        #[arg(long)]
        rollout: String,
    },
    /// Live view of a rollout: steps, state, checks, last events, redrawn in place.
    Watch {
        /// Rollout name.
        #[arg(long)]
        rollout: String,
        /// Exit when the rollout is finished: 0 promoted, 1 rolled back.
        #[arg(long)]
        until_done: bool,
        /// Refresh every N milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
        interval_ms: u64,
    },
    /// Post experiment outcomes from a JSON-lines file, in batches of 1,000.
    Feedback {
        /// One `{"correlation_id": "...", "reward": 1}` per line; `-` reads stdin.
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Directory of the store (`control.redb`).
    #[arg(long)]
    pub data: PathBuf,
    /// Plan stored as version 1 when the store is empty.
    #[arg(long)]
    pub initial_plan: Option<PathBuf>,
    /// Store and HTTP limits (`--start-fresh`, ...).
    #[command(flatten)]
    pub store: StoreArgs,
    /// The progressive-delivery engine (`--envoy-admin` or `--prometheus-url`,
    /// `--stats-format`, `--analysis-tick-ms`).
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Webhooks of the engine's events (`--webhook`, `--webhook-secret-file`, ...).
    #[command(flatten)]
    pub notify: NotifyArgs,
    /// One credential per role (README, "Security model").
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// The proxies table (`--max-proxies`, `--proxy-expiry-s`).
    #[command(flatten)]
    pub proxies: ProxyArgs,
}

/// `serve` flags of the table of polling proxies.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Proxies tracked at most (about 150 bytes each). When the table is full of live
    /// proxies a new one is not tracked and advancing holds (the gate cannot tell
    /// that every proxy runs the latest plan).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_proxies: u64,
    /// A proxy that has not polled for this many seconds is forgotten.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(31..=604_800))]
    pub proxy_expiry_s: u64,
}

/// `serve` flags of the credentials: each file holds its role's tokens, one a line
/// (several during a rotation), and is read again when it changes.
#[derive(Debug, Clone, Args)]
pub struct CredentialArgs {
    /// Operator: plan changes and operations (also accepted for reads). Without it,
    /// the global --token-file (ROLLOUT_CONTROL_TOKEN_FILE) is the operator's.
    #[arg(long)]
    pub operator_token_file: Option<PathBuf>,
    /// Proxy (the filter's `control.token`): shadow records, assignments, identified polls.
    #[arg(long)]
    pub proxy_token_file: Option<PathBuf>,
    /// Feedback (applications): POST /v1/feedback only.
    #[arg(long)]
    pub feedback_token_file: Option<PathBuf>,
    /// Read: status, history, reports. Without it reads stay open.
    #[arg(long)]
    pub read_token_file: Option<PathBuf>,
}

/// `serve` flags of the notifications (with the policy engine only).
#[derive(Debug, Clone, Args)]
pub struct NotifyArgs {
    /// Webhook told every rollout event as JSON (repeatable; `http://` only). Plans
    /// add their own per rollout (`notify.webhooks`).
    #[arg(long = "webhook", value_name = "URL")]
    pub webhook: Vec<String>,
    /// Webhook told every rollout event in Slack's `{"text"}` shape (repeatable).
    #[arg(long = "webhook-slack", value_name = "URL")]
    pub webhook_slack: Vec<String>,
    /// File holding the HMAC-SHA256 key that signs every webhook and gate request
    /// (`X-Rollout-Signature: sha256=<hex>`); without it requests are unsigned.
    #[arg(long, value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Deadline of each webhook or gate request, in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub webhook_timeout_ms: u64,
    /// Tries per event and webhook (the first included) before it is dropped.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub webhook_attempts: u32,
    /// Wait before the first retry, doubled each time (at most 30 s), in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub webhook_backoff_ms: u64,
    /// Events waiting per webhook; more are dropped and counted.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub webhook_queue: u64,
    /// How often a step's gate webhooks are asked until they answer 200, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub gate_interval_ms: u64,
}

/// `serve` flags of the store and its HTTP limits.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// An empty or damaged `control.redb` is refused at start; with this flag it is
    /// moved aside (`control.redb.refused-<unix_ms>`) and a new, empty store (new
    /// epoch) starts.
    #[arg(long)]
    pub start_fresh: bool,
    /// A request's headers must arrive within this many milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub header_timeout_ms: u64,
    /// A request's body must arrive within this many milliseconds (408 otherwise).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub body_timeout_ms: u64,
    /// Open connections at most; one more is closed at accept.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_connections: u64,
    /// On SIGTERM, wait this long for in-flight requests, then close them.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub shutdown_grace_ms: u64,
    /// Heavy reads (shadow and experiment reports, history) running at once; more wait.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub heavy_reads: u64,
    /// Ingestion POSTs (shadow records, assignments, feedback; up to 4 MiB each)
    /// read, parsed and stored at once. More wait up to 2 s for a permit, then get
    /// 503 with Retry-After: 1 (counted in rollout_control_ingest_refused_total).
    /// Each running one can take about 16 × its body in memory while parsed.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub ingest_concurrency: u64,
    /// A shadow record is stored within this many bytes of JSON: a larger one's
    /// predictions are replaced by `{"truncated_from_bytes": N, "prefix": ...}`
    /// (counted in rollout_control_shadow_records_truncated_total). The default is
    /// the filter's own cut, so what a filter posts is stored whole.
    #[arg(long, default_value_t = 131_072, value_parser = clap::value_parser!(u64).range(4096..=4_194_304))]
    pub max_record_bytes: u64,
    /// The recent disagreements of one shadow report, and one history page, hold at
    /// most this many bytes of JSON (older disagreements are left out and counted; a
    /// history page ends early with X-History-Next-Before); a report's memory is
    /// about twice this.
    #[arg(long, default_value_t = 16_777_216, value_parser = clap::value_parser!(u64).range(1_048_576..=268_435_456))]
    pub max_report_bytes: u64,
    /// Bytes shadow records, assignments and outcomes may hold together (default
    /// 1 GiB, at least 8 MiB). A write beyond it evicts the oldest data first, in the
    /// same transaction: records and assignments before any outcome (an experiment's
    /// evidence). Metrics: rollout_control_data_*. The file grows to about twice this.
    #[arg(long, default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range((8 << 20)..))]
    pub data_budget_bytes: u64,
    /// Plan versions kept: a new version deletes those older than the newest N (the
    /// plan in force, the newest, is never deleted); GET /v1/plan/versions/V of a
    /// dropped one answers 404 saying so.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub history_keep: u64,
}

/// `serve` flags of the engine.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Envoy admin base URL whose stats the policy engine reads (repeat for every
    /// Envoy the sidecar serves; their counters are added up). Without it the policy
    /// engine does not run.
    #[arg(long = "envoy-admin", value_name = "URL")]
    pub envoy_admin: Vec<String>,
    /// How to read the stats: `json` (Envoy's detailed histogram bins) or `prometheus`.
    #[arg(long, value_enum, default_value_t = StatsFormat::Json)]
    pub stats_format: StatsFormat,
    /// Read the fleet's figures from this Prometheus server (which scrapes every
    /// proxy's /stats/prometheus) instead of Envoy admin endpoints: the checks are
    /// judged on sums over every proxy. Without it and without --envoy-admin the
    /// policy engine does not run.
    #[arg(
        long = "prometheus-url",
        value_name = "URL",
        conflicts_with = "envoy_admin"
    )]
    pub prometheus_url: Option<String>,
    /// Bound of each Prometheus request and of a whole read, in milliseconds; a read
    /// that takes longer is inconclusive (and counted).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub prometheus_timeout_ms: u64,
    /// Shortest range Prometheus is queried over (`increase(...[R])`), in
    /// milliseconds: at least twice its scrape interval, so every range holds two
    /// scrapes of each proxy. Ticks in between add nothing; the next read covers them.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub prometheus_min_range_ms: u64,
    /// Read the metrics source (and run due evaluations) this often, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub analysis_tick_ms: u64,
}

#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Why (kept in the history).
    #[arg(long)]
    pub reason: Option<String>,
    /// Who (default `cli:$USER`).
    #[arg(long)]
    pub author: Option<String>,
}
