//! The commands that read or change the plan: `get-plan`, `apply`, `set-weight`,
//! `switch`, `promote`, `rollback`, `pause`, `resume`, `restart`, `restore`. Each
//! change prints the new version and the weights (`--json`: the server's answer).

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context};

use crate::api::change::{SwitchRequest, WeightsRequest, WriteResponse};
use crate::api::plan::parse_plan_document;
use crate::cli::args::WriteArgs;
use crate::cli::client::{Client, Connect};
use crate::cli::table::fmt_weights;
use crate::util::ordered::OrderedMap;

/// `get-plan`: pretty, in schema order; a plan this build cannot read is shown as sent.
pub fn get_plan(out: &mut impl Write, json: bool, client: &Client) -> anyhow::Result<()> {
    let reply = client.get("/v1/plan")?;
    if json {
        writeln!(out, "{}", reply.body)?;
    } else {
        match serde_json::from_str::<rollout_core::PlanSpec>(&reply.body) {
            Ok(plan) => writeln!(out, "{}", serde_json::to_string_pretty(&plan)?)?,
            Err(_) => writeln!(out, "{}", reply.body)?,
        }
    }
    Ok(())
}

/// `apply --file F [--expect-version N]`: validated locally first (the same check the
/// sidecar makes, named field and all), then `PUT /v1/plan`.
pub fn apply(
    out: &mut impl Write,
    json: bool,
    connect: Connect,
    file: &Path,
    expect_version: Option<u64>,
    write: WriteArgs,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    parse_plan_document(&bytes).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let client = connect(write.author)?;
    let reply = client.write_expecting(
        "PUT",
        "/v1/plan",
        Some(bytes),
        write.reason.as_deref(),
        expect_version,
    )?;
    print_write(out, json, &reply.body, None)
}

/// The body of `set-weight`: `--weights a=1,b=2`, or `--variant V --weight W`.
pub fn weights_request(
    variant: Option<String>,
    weight: Option<f64>,
    weights: Option<String>,
) -> anyhow::Result<WeightsRequest> {
    Ok(match (weights, variant, weight) {
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
    })
}

/// `set-weight --rollout R ...` with the body of [`weights_request`].
pub fn set_weight(
    out: &mut impl Write,
    json: bool,
    connect: Connect,
    rollout: &str,
    body: WeightsRequest,
    write: WriteArgs,
) -> anyhow::Result<()> {
    let path = format!("/v1/rollouts/{}/weights", path_segment(rollout)?);
    let reply = connect(write.author)?.write(
        "POST",
        &path,
        Some(serde_json::to_vec(&body)?),
        write.reason.as_deref(),
    )?;
    print_write(out, json, &reply.body, Some(rollout))
}

/// `switch --rollout R --to V`.
pub fn switch(
    out: &mut impl Write,
    json: bool,
    connect: Connect,
    rollout: &str,
    to: String,
    write: WriteArgs,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&SwitchRequest { variant: to })?;
    let path = format!("/v1/rollouts/{}/switch", path_segment(rollout)?);
    let reply = connect(write.author)?.write("POST", &path, Some(body), write.reason.as_deref())?;
    print_write(out, json, &reply.body, Some(rollout))
}

/// `promote`, `rollback`, `pause`, `resume`, `restart` (`op`) of `--rollout R`.
pub fn rollout_op(
    out: &mut impl Write,
    json: bool,
    connect: Connect,
    rollout: &str,
    op: &str,
    write: WriteArgs,
) -> anyhow::Result<()> {
    let client = connect(write.author)?;
    let path = format!("/v1/rollouts/{}/{op}", path_segment(rollout)?);
    let reply = client.write("POST", &path, None, write.reason.as_deref())?;
    print_write(out, json, &reply.body, Some(rollout))
}

/// `restore --version V`.
pub fn restore(
    out: &mut impl Write,
    json: bool,
    connect: Connect,
    version: u64,
    write: WriteArgs,
) -> anyhow::Result<()> {
    let reply = connect(write.author)?.write(
        "POST",
        &format!("/v1/plan/versions/{version}/restore"),
        None,
        write.reason.as_deref(),
    )?;
    print_write(out, json, &reply.body, None)
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

/// A `--rollout` value as a path segment.
pub fn path_segment(name: &str) -> anyhow::Result<&str> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("{name:?} is not a rollout name (letters, digits, '-' and '_')");
    }
    Ok(name)
}

/// A change's answer: the new version and the weights of `rollout` (all rollouts
/// without one); `--json`: the server's JSON.
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
}
