//! The command line: `serve` runs the sidecar; every other subcommand talks to a
//! running sidecar (`--server`), except `assign --plan-file`, which is offline.
//! Human-readable output by default, the server's JSON with `--json`; any failure
//! is one line on stderr and a non-zero exit.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use rollout_core::decide::{decide, SubjectSource};
use rollout_core::request::RequestHeaders;
use rollout_core::{bucket, parse_plan, Plan, Rollout};
use serde::Serialize;

use crate::api::change::{SwitchRequest, WeightsRequest, WriteResponse};
use crate::api::history::HistoryEntry;
use crate::api::plan::parse_plan_document;
use crate::api::status::{StatsFormat, Status};
use crate::client::Client;
use crate::util::ordered::OrderedMap;

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
    /// File holding the bearer token: `serve` requires it on writes, the other
    /// commands send it.
    #[arg(long, global = true, env = "ROLLOUT_CONTROL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: plan API on --listen, store in --data.
    Serve(ServeArgs),
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
    /// The progressive-delivery engine (`--envoy-admin`, `--stats-format`, `--analysis-tick-ms`).
    #[command(flatten)]
    pub policy: PolicyArgs,
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
    /// Read the Envoys (and run due evaluations) this often, in milliseconds.
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

fn default_author() -> String {
    match std::env::var("USER") {
        Ok(u) if !u.is_empty() => format!("cli:{u}"),
        _ => "cli".to_string(),
    }
}

/// Parses `stable=75,canary=25`.
pub fn parse_weights(text: &str) -> anyhow::Result<OrderedMap<f64>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("--weights: {part:?} is not VARIANT=WEIGHT"))?;
        let w: f64 = w
            .trim()
            .parse()
            .map_err(|_| anyhow!("--weights: {:?} is not a number", w.trim()))?;
        out.push((name.trim().to_string(), w));
    }
    if out.is_empty() {
        bail!("--weights: give VARIANT=WEIGHT pairs, e.g. stable=75,canary=25");
    }
    Ok(OrderedMap(out))
}

/// Runs a client subcommand (everything but `serve`).
pub fn run_client(cli: Cli) -> anyhow::Result<()> {
    let token = cli
        .token_file
        .as_deref()
        .map(crate::util::token::read_token)
        .transpose()?;
    let json = cli.json;
    let mk = |author: Option<String>| {
        Client::new(
            &cli.server,
            token.clone(),
            author.unwrap_or_else(default_author),
        )
    };
    let out = &mut std::io::stdout().lock();
    match cli.command {
        Command::Serve(_) => bail!("serve is not a client command"),
        Command::Status => {
            let reply = mk(None)?.get("/v1/status")?;
            if json {
                writeln!(out, "{}", reply.body)?;
            } else {
                print_status(out, &reply.json()?)?;
            }
        }
        Command::GetPlan => {
            let reply = mk(None)?.get("/v1/plan")?;
            if json {
                writeln!(out, "{}", reply.body)?;
            } else {
                // Pretty, in schema order; a plan this build cannot read is shown as sent.
                match serde_json::from_str::<rollout_core::PlanSpec>(&reply.body) {
                    Ok(plan) => writeln!(out, "{}", serde_json::to_string_pretty(&plan)?)?,
                    Err(_) => writeln!(out, "{}", reply.body)?,
                }
            }
        }
        Command::Apply {
            file,
            expect_version,
            write,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // Validate locally first: the same check the sidecar makes, named field and all.
            parse_plan_document(&bytes).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let client = mk(write.author)?;
            let reply = client.write_expecting(
                "PUT",
                "/v1/plan",
                Some(bytes),
                write.reason.as_deref(),
                expect_version,
            )?;
            print_write(out, json, &reply.body, None)?;
        }
        Command::SetWeight {
            rollout,
            variant,
            weight,
            weights,
            write,
        } => {
            let body = match (weights, variant, weight) {
                (Some(w), _, _) => WeightsRequest {
                    weights: Some(parse_weights(&w)?),
                    ..WeightsRequest::default()
                },
                (None, Some(variant), Some(weight)) => WeightsRequest {
                    variant: Some(variant),
                    weight: Some(weight),
                    ..WeightsRequest::default()
                },
                _ => bail!("give --variant and --weight, or --weights"),
            };
            let path = format!("/v1/rollouts/{}/weights", path_segment(&rollout)?);
            let reply = mk(write.author)?.write(
                "POST",
                &path,
                Some(serde_json::to_vec(&body)?),
                write.reason.as_deref(),
            )?;
            print_write(out, json, &reply.body, Some(&rollout))?;
        }
        Command::Switch { rollout, to, write } => {
            let body = serde_json::to_vec(&SwitchRequest { variant: to })?;
            let path = format!("/v1/rollouts/{}/switch", path_segment(&rollout)?);
            let reply =
                mk(write.author)?.write("POST", &path, Some(body), write.reason.as_deref())?;
            print_write(out, json, &reply.body, Some(&rollout))?;
        }
        Command::Promote { rollout, write } => simple(
            out,
            json,
            &mk(write.author)?,
            &rollout,
            "promote",
            write.reason,
        )?,
        Command::Rollback { rollout, write } => simple(
            out,
            json,
            &mk(write.author)?,
            &rollout,
            "rollback",
            write.reason,
        )?,
        Command::Pause { rollout, write } => simple(
            out,
            json,
            &mk(write.author)?,
            &rollout,
            "pause",
            write.reason,
        )?,
        Command::Resume { rollout, write } => simple(
            out,
            json,
            &mk(write.author)?,
            &rollout,
            "resume",
            write.reason,
        )?,
        Command::Restart { rollout, write } => simple(
            out,
            json,
            &mk(write.author)?,
            &rollout,
            "restart",
            write.reason,
        )?,
        Command::Analysis {
            rollout,
            limit,
            version,
        } => crate::policy::run_analysis(
            &mk(None)?,
            out,
            json,
            path_segment(&rollout)?,
            limit,
            version,
        )?,
        Command::History { limit } => {
            let reply = mk(None)?.get(&format!("/v1/history?limit={limit}"))?;
            if json {
                writeln!(out, "{}", reply.body)?;
            } else {
                let entries: Vec<HistoryEntry> = reply.json()?;
                print_history(out, &entries)?;
            }
        }
        Command::Restore { version, write } => {
            let reply = mk(write.author)?.write(
                "POST",
                &format!("/v1/plan/versions/{version}/restore"),
                None,
                write.reason.as_deref(),
            )?;
            print_write(out, json, &reply.body, None)?;
        }
        Command::Assign {
            rollout,
            user,
            users_file,
            plan_file,
            bucket,
        } => {
            let plan = match plan_file {
                Some(f) => {
                    let bytes = std::fs::read(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?;
                    let spec =
                        parse_plan_document(&bytes).map_err(|e| anyhow!("{}: {e}", f.display()))?;
                    spec.compile()
                        .map_err(|e| anyhow!("{}: {e}", f.display()))?
                }
                None => {
                    let reply = mk(None)?.get("/v1/plan")?;
                    parse_plan(reply.body.as_bytes())
                        .map_err(|e| anyhow!("the sidecar's plan is invalid: {e}"))?
                        .1
                }
            };
            let (users, single) = match (user, users_file) {
                (Some(u), _) => (vec![u], true),
                (None, Some(f)) => (read_users(&f)?, false),
                (None, None) => bail!("give --user or --users-file"),
            };
            assign(out, json, &plan, &rollout, &users, bucket, single)?;
        }
        Command::ValidateConfig { file } => {
            crate::validate::run(out, crate::validate::Kind::Config, &file)?
        }
        Command::ValidatePlan { file } => {
            crate::validate::run(out, crate::validate::Kind::Plan, &file)?
        }
        Command::ShadowReport {
            rollout,
            limit,
            since_ms,
        } => crate::records::run_report(&mk(None)?, out, json, &rollout, limit, since_ms)?,
        Command::Experiment { rollout } => {
            crate::experiments::run_experiment(&mk(None)?, out, json, &rollout)?
        }
        Command::ResetExperiment { rollout } => {
            crate::experiments::run_reset(&mk(None)?, out, json, &rollout)?
        }
        Command::Feedback { file } => {
            crate::experiments::run_feedback(&mk(None)?, out, json, &file)?
        }
    }
    out.flush()?;
    Ok(())
}

fn path_segment(name: &str) -> anyhow::Result<&str> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("{name:?} is not a rollout name (letters, digits, '-' and '_')");
    }
    Ok(name)
}

fn simple(
    out: &mut impl Write,
    json: bool,
    client: &Client,
    rollout: &str,
    op: &str,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let path = format!("/v1/rollouts/{}/{op}", path_segment(rollout)?);
    let reply = client.write("POST", &path, None, reason.as_deref())?;
    print_write(out, json, &reply.body, Some(rollout))
}

// ---------------------------------------------------------------------------
// Output

/// A weight as operators write it: `75`, `12.34`.
pub fn fmt_weight(w: f64) -> String {
    format!("{w}")
}

fn fmt_weights<'a>(variants: impl Iterator<Item = (&'a str, f64)>) -> String {
    variants
        .map(|(n, w)| format!("{n}={}", fmt_weight(w)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `5s`, `3m 12s`, `2h 5m`, `4d 3h`.
pub fn fmt_age(seconds: f64) -> String {
    let s = if seconds.is_finite() && seconds > 0.0 {
        seconds.round() as u64
    } else {
        0
    };
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (c, w) in cells.iter().zip(&widths) {
            s.push_str(c);
            let pad = w.saturating_sub(c.chars().count()) + 2;
            s.push_str(&" ".repeat(pad));
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

pub fn print_status(out: &mut impl Write, s: &Status) -> std::io::Result<()> {
    match (s.version, &s.updated) {
        (Some(v), Some(t)) => writeln!(
            out,
            "plan v{v}, updated {t} ({} ago)",
            fmt_age(s.age_seconds.unwrap_or(0.0))
        )?,
        _ => writeln!(out, "no plan stored yet")?,
    }
    if !s.rollouts.is_empty() {
        writeln!(out)?;
        let rows: Vec<Vec<String>> = s
            .rollouts
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    if r.paused { "yes" } else { "no" }.to_string(),
                    fmt_weights(r.variants.iter().map(|v| (v.name.as_str(), v.weight))),
                ]
            })
            .collect();
        table(out, &["ROLLOUT", "PAUSED", "WEIGHTS"], &rows)?;
        crate::policy::print_policies(out, &s.rollouts, s.policy_engine.as_ref())?;
    }
    writeln!(out)?;
    if s.proxies.is_empty() {
        writeln!(out, "no proxy has polled the plan yet")?;
    } else {
        let rows: Vec<Vec<String>> = s
            .proxies
            .iter()
            .map(|p| {
                vec![
                    p.id.clone(),
                    p.plan_version.map_or("-".to_string(), |v| format!("v{v}")),
                    p.behind.map_or("-".to_string(), |b| b.to_string()),
                    format!("{} ago", fmt_age(p.last_seen_seconds_ago)),
                ]
            })
            .collect();
        table(out, &["PROXY", "PLAN", "BEHIND", "LAST POLL"], &rows)?;
    }
    Ok(())
}

pub fn print_history(out: &mut impl Write, entries: &[HistoryEntry]) -> std::io::Result<()> {
    if entries.is_empty() {
        return writeln!(out, "no plan stored yet");
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let weights = e
                .weights
                .0
                .iter()
                .map(|(r, vs)| {
                    format!(
                        "{r}: {}",
                        fmt_weights(vs.0.iter().map(|(n, w)| (n.as_str(), *w)))
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            vec![
                format!("v{}", e.version),
                e.time.clone(),
                e.op.clone(),
                e.author.clone(),
                weights,
                e.reason.clone(),
            ]
        })
        .collect();
    table(
        out,
        &["VERSION", "TIME", "OP", "AUTHOR", "WEIGHTS", "REASON"],
        &rows,
    )
}

fn print_write(
    out: &mut impl Write,
    json: bool,
    body: &str,
    rollout: Option<&str>,
) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{body}")?;
        return Ok(());
    }
    let w: WriteResponse =
        serde_json::from_str(body).context("the server's answer is not the expected JSON")?;
    let rollouts = w
        .plan
        .rollouts
        .iter()
        .filter(|r| rollout.is_none_or(|name| r.name == name));
    writeln!(out, "plan v{} stored", w.version)?;
    for r in rollouts {
        writeln!(
            out,
            "  {}: {}{}",
            r.name,
            fmt_weights(r.variants.iter().map(|v| (v.name.as_str(), v.weight))),
            if r.paused { " (paused)" } else { "" }
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// assign

/// The one header the assignment sees: the subject key under a private name, so that
/// no targeting rule on a real header can match by accident.
const SUBJECT_HEADER: &str = "x-rollout-control-subject";

struct OnlySubject<'a>(&'a str);

impl RequestHeaders for OnlySubject<'_> {
    fn header(&mut self, name: &str) -> Option<String> {
        (name == SUBJECT_HEADER).then(|| self.0.to_string())
    }
}

#[derive(Debug, Serialize)]
struct Assignment<'a> {
    rollout: &'a str,
    user: &'a str,
    variant: &'a str,
    bucket: u16,
    /// `sticky`, or `targeted` when a rule matches a request with no other header.
    reason: &'static str,
}

fn read_users(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut users = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let u = line.trim();
        if !u.is_empty() {
            users.push(u.to_string());
        }
    }
    Ok(users)
}

fn find_rollout<'a>(plan: &'a Plan, name: &str) -> anyhow::Result<&'a Rollout> {
    plan.rollout_named(name)
        .map_err(|e| anyhow!("plan v{}: {e}", plan.version))
}

/// The variant `user` gets, exactly as the filter decides for a request carrying the
/// user's key and no other header: `rollout_core::decide` with no override.
pub fn assign_one(rollout: &Rollout, user: &str) -> (usize, u16, &'static str) {
    let subject = SubjectSource {
        header: Some(SUBJECT_HEADER.to_string()),
        cookie: None,
    };
    // A non-empty key never draws a random bucket.
    let d = decide(rollout, &subject, None, &mut OnlySubject(user), || 0);
    (d.variant, bucket(&rollout.salt, user), d.reason.as_str())
}

fn assign(
    out: &mut impl Write,
    json: bool,
    plan: &Plan,
    rollout: &str,
    users: &[String],
    with_bucket: bool,
    single: bool,
) -> anyhow::Result<()> {
    let r = find_rollout(plan, rollout)?;
    let mut cache: HashMap<usize, &str> = HashMap::new();
    let mut all = Vec::with_capacity(users.len());
    for user in users {
        if user.is_empty() {
            bail!("an empty user key is not a subject (the filter would assign it at random)");
        }
        let (v, b, reason) = assign_one(r, user);
        let variant = *cache.entry(v).or_insert_with(|| r.variant_name(v));
        all.push(Assignment {
            rollout,
            user,
            variant,
            bucket: b,
            reason,
        });
    }
    let mut out = std::io::BufWriter::new(out);
    if json {
        if single {
            if let Some(a) = all.first() {
                writeln!(out, "{}", serde_json::to_string(a)?)?;
            }
        } else {
            writeln!(out, "{}", serde_json::to_string(&all)?)?;
        }
    } else {
        for a in &all {
            match (single, with_bucket) {
                (true, false) => writeln!(out, "{}", a.variant)?,
                (true, true) => writeln!(out, "{}\t{}", a.variant, a.bucket)?,
                (false, false) => writeln!(out, "{}\t{}", a.user, a.variant)?,
                (false, true) => writeln!(out, "{}\t{}\t{}", a.user, a.variant, a.bucket)?,
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_flag() {
        let w = parse_weights("stable=75, canary=25.5").unwrap();
        assert_eq!(
            w.0,
            vec![("stable".to_string(), 75.0), ("canary".to_string(), 25.5)]
        );
        assert!(parse_weights("stable").is_err());
        assert!(parse_weights("stable=x").is_err());
        assert!(parse_weights("").is_err());
    }

    #[test]
    fn ages_and_tables() {
        assert_eq!(fmt_age(4.4), "4s");
        assert_eq!(fmt_age(192.0), "3m 12s");
        assert_eq!(fmt_age(7500.0), "2h 5m");
        assert_eq!(fmt_age(f64::NAN), "0s");
        assert_eq!(fmt_weight(75.0), "75");
        assert_eq!(fmt_weight(12.34), "12.34");
        let mut buf = Vec::new();
        table(
            &mut buf,
            &["A", "BB"],
            &[vec!["long-name".into(), "x".into()]],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "A          BB\nlong-name  x\n"
        );
    }

    #[test]
    fn assignment_matches_the_bucket_ranges() {
        let (_, plan) = parse_plan(
            br#"{"version":1,"rollouts":[{"name":"fraud","salt":"fraud-v2","variants":[
            {"name":"stable","weight":90},{"name":"canary","weight":10}],
            "targeting":[{"variant":"canary","when":[{"header":"x-tester","present":true}]}]}]}"#,
        )
        .unwrap();
        let r = &plan.rollouts[0];
        for i in 0..1000 {
            let u = format!("user-{i}");
            let (v, b, reason) = assign_one(r, &u);
            assert_eq!(b, bucket("fraud-v2", &u));
            assert_eq!(v, usize::from(b >= 9000));
            assert_eq!(reason, "sticky");
        }
    }
}
