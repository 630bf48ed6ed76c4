//! `rollout-control validate-config FILE` and `validate-plan FILE` (`-`: stdin):
//! offline checks with exactly the parsers the filter and the sidecar use
//! (`rollout_core::parse_plugin_config`, `rollout_core::parse_plan`).
//!
//! Valid: exit 0, `ok: plan version N, K rollout(s)` on stdout. Invalid: exit 1,
//! `FIELD: message` (the `ConfigError`) on stderr, e.g.
//! `plan.rollouts[0].variants: weights sum to 90, they must sum to 100`.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use rollout_core::ConfigError;

/// A file's bytes; `-` reads stdin.
pub fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read stdin")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn ok_line(version: u64, rollouts: usize) -> String {
    format!("ok: plan version {version}, {rollouts} rollout(s)")
}

/// Checks a plugin configuration (Envoy `configuration` / Istio `pluginConfig`).
pub fn check_config(bytes: &[u8]) -> Result<String, ConfigError> {
    let c = rollout_core::parse_plugin_config(bytes)?;
    Ok(ok_line(c.plan.version, c.plan.rollouts.len()))
}

/// Checks a plan document (as `GET /v1/plan` serves it; `version` required).
pub fn check_plan(bytes: &[u8]) -> Result<String, ConfigError> {
    let (_, plan) = rollout_core::parse_plan(bytes)?;
    Ok(ok_line(plan.version, plan.rollouts.len()))
}

/// What to validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Config,
    Plan,
}

/// Runs a validation command: prints the ok line, or prints `FIELD: message` on
/// stderr and exits with status 1 (an unreadable file is an ordinary error).
pub fn run(out: &mut impl Write, kind: Kind, path: &Path) -> anyhow::Result<()> {
    let bytes = read_input(path)?;
    let result = match kind {
        Kind::Config => check_config(&bytes),
        Kind::Plan => check_plan(&bytes),
    };
    match result {
        Ok(line) => {
            writeln!(out, "{line}")?;
            Ok(())
        }
        Err(e) => {
            out.flush()?;
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_and_plan() {
        let plan = r#"{"version":3,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":100}]}]}"#;
        assert_eq!(
            check_plan(plan.as_bytes()).unwrap(),
            "ok: plan version 3, 1 rollout(s)"
        );
        let config = format!(r#"{{"plan":{plan}}}"#);
        assert_eq!(
            check_config(config.as_bytes()).unwrap(),
            "ok: plan version 3, 1 rollout(s)"
        );
        assert_eq!(
            check_config(br#"{"control":{"cluster":"c"}}"#).unwrap(),
            "ok: plan version 0, 0 rollout(s)"
        );
        let bad = r#"{"plan":{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":90}]}]}}"#;
        let e = check_config(bad.as_bytes()).unwrap_err();
        assert_eq!(e.field, "plan.rollouts[0].variants");
        assert!(e.to_string().starts_with("plan.rollouts[0].variants: "));
        assert_eq!(check_plan(b"{}").unwrap_err().field, "");
    }
}
