//! The command line: `serve` runs the sidecar; every other subcommand talks to a
//! running sidecar (`--server`) through [`client`], except `assign --plan-file` and
//! `validate-*`, which are offline. Human-readable output by default, the server's
//! JSON with `--json`; any failure is one line on stderr and a non-zero exit.
//!
//! The CLI reads the API's JSON shapes (`api/`) and nothing else of the sidecar;
//! all printing of the crate is here: [`table`] (tables, numbers), [`checks`] (a
//! policy's checks), and one file per command family. A new command: a variant in
//! [`args`], a function in the family's file (or a new one), a line in [`run_client`].

pub mod analysis;
pub mod args;
pub mod assign;
pub mod checks;
pub mod client;
pub mod experiment;
pub mod feedback;
pub mod history;
pub mod plan;
pub mod shadow;
pub mod status;
pub mod table;
pub mod validate;
pub mod watch;

use std::io::Write;
use std::time::Duration;

use anyhow::bail;

use crate::cli::args::{Cli, Command};
use crate::cli::client::Client;
use crate::cli::validate::Kind;
use crate::util::token::read_token;

fn default_author() -> String {
    match std::env::var("USER") {
        Ok(u) if !u.is_empty() => format!("cli:{u}"),
        _ => "cli".to_string(),
    }
}

/// Runs a client subcommand (everything but `serve`).
pub fn run_client(cli: Cli) -> anyhow::Result<()> {
    let token = cli.token_file.as_deref().map(read_token).transpose()?;
    let json = cli.json;
    let connect = |author: Option<String>| {
        Client::new(
            &cli.server,
            token.clone(),
            author.unwrap_or_else(default_author),
            Duration::from_secs(cli.timeout),
        )
    };
    let out = &mut std::io::stdout().lock();
    match cli.command {
        Command::Serve(_) => bail!("serve is not a client command"),
        Command::Status => status::run(out, json, &connect(None)?)?,
        Command::GetPlan => plan::get_plan(out, json, &connect(None)?)?,
        Command::Apply {
            file,
            expect_version,
            write,
        } => plan::apply(out, json, &connect, &file, expect_version, write)?,
        Command::SetWeight {
            rollout,
            variant,
            weight,
            weights,
            write,
        } => {
            let body = plan::weights_request(variant, weight, weights)?;
            plan::set_weight(out, json, &connect, &rollout, body, write)?
        }
        Command::Switch { rollout, to, write } => {
            plan::switch(out, json, &connect, &rollout, to, write)?
        }
        Command::Promote { rollout, write } => {
            plan::rollout_op(out, json, &connect, &rollout, "promote", write)?
        }
        Command::Rollback { rollout, write } => {
            plan::rollout_op(out, json, &connect, &rollout, "rollback", write)?
        }
        Command::Pause { rollout, write } => {
            plan::rollout_op(out, json, &connect, &rollout, "pause", write)?
        }
        Command::Resume { rollout, write } => {
            plan::rollout_op(out, json, &connect, &rollout, "resume", write)?
        }
        Command::Restart { rollout, write } => {
            plan::rollout_op(out, json, &connect, &rollout, "restart", write)?
        }
        Command::Analysis {
            rollout,
            limit,
            version,
        } => analysis::run_analysis(
            &connect(None)?,
            out,
            json,
            plan::path_segment(&rollout)?,
            limit,
            version,
        )?,
        Command::History { limit } => history::run(out, json, &connect(None)?, limit)?,
        Command::Restore { version, write } => plan::restore(out, json, &connect, version, write)?,
        Command::Assign {
            rollout,
            user,
            users_file,
            plan_file,
            bucket,
        } => assign::run(
            out, json, &connect, &rollout, user, users_file, plan_file, bucket,
        )?,
        Command::ValidateConfig { file } => validate::run(out, Kind::Config, &file)?,
        Command::ValidatePlan { file } => validate::run(out, Kind::Plan, &file)?,
        Command::ShadowReport {
            rollout,
            limit,
            since_ms,
        } => shadow::run_report(&connect(None)?, out, json, &rollout, limit, since_ms)?,
        Command::Experiment { rollout } => {
            experiment::run_experiment(&connect(None)?, out, json, &rollout)?
        }
        Command::ResetExperiment { rollout } => {
            experiment::run_reset(&connect(None)?, out, json, &rollout)?
        }
        Command::Feedback { file } => feedback::run_feedback(&connect(None)?, out, json, &file)?,
        Command::Watch {
            rollout,
            until_done,
            interval_ms,
        } => watch::run(
            out,
            &connect(None)?,
            &rollout,
            until_done,
            std::time::Duration::from_millis(interval_ms),
        )?,
    }
    out.flush()?;
    Ok(())
}
