//! Offline checks of plugin configurations and plans, with exactly the parsers the
//! filter and the sidecar use (`rollout_core::parse_plugin_config`,
//! `rollout_core::parse_plan`): the `ok` line, or the `ConfigError` naming the field
//! (e.g. `plan.rollouts[0].variants: weights sum to 90, they must sum to 100`).
//! The commands `validate-config` / `validate-plan` are `cli::validate`.

use rollout_core::ConfigError;

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
