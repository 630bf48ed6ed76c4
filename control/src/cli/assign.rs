//! `assign --rollout R (--user U | --users-file F) [--plan-file F] [--bucket]`: the
//! variant a user gets, computed locally exactly like the filter
//! (`rollout_core::decide`), from the sidecar's plan or a plan file (offline).

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use rollout_core::decide::{decide, SubjectSource};
use rollout_core::request::RequestHeaders;
use rollout_core::{bucket, parse_plan, Plan, Rollout};
use serde::Serialize;

use crate::api::plan::parse_plan_document;
use crate::cli::client::Connect;

/// `assign`: the plan from `plan_file` (offline) or the sidecar.
#[allow(clippy::too_many_arguments)]
pub fn run(
    out: &mut impl Write,
    json: bool,
    connect: Connect,
    rollout: &str,
    user: Option<String>,
    users_file: Option<PathBuf>,
    plan_file: Option<PathBuf>,
    with_bucket: bool,
) -> anyhow::Result<()> {
    let plan = match plan_file {
        Some(f) => {
            let bytes =
                std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
            let spec = parse_plan_document(&bytes).map_err(|e| anyhow!("{}: {e}", f.display()))?;
            spec.compile()
                .map_err(|e| anyhow!("{}: {e}", f.display()))?
        }
        None => {
            let reply = connect(None)?.get("/v1/plan")?;
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
    assign(out, json, &plan, rollout, &users, with_bucket, single)
}

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

fn read_users(path: &Path) -> anyhow::Result<Vec<String>> {
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
        ..SubjectSource::default()
    };
    // A non-empty key never draws a random bucket.
    let d = decide(rollout, &subject, None, &mut OnlySubject(user), || 0);
    (d.variant, bucket(&rollout.salt, user), d.reason.as_str())
}

/// Prints the variant of each user.
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
