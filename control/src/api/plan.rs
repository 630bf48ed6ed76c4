//! The plan document as `PUT /v1/plan`, `apply` and `--initial-plan` read it: the
//! store assigns the version.

use rollout_core::{ConfigError, PlanSpec};

/// Parses and validates a plan document whose `version` belongs to the store: the
/// document's `version` may be missing or anything; it is replaced by 0 here and by
/// the stored version on commit. Every other field is validated by
/// `rollout_core::parse_plan`, and errors name the field.
pub fn parse_plan_document(bytes: &[u8]) -> Result<PlanSpec, ConfigError> {
    match rollout_core::parse_plan(bytes) {
        Ok((spec, _)) => Ok(spec),
        Err(e) if e.field == "version" || e.message.contains("missing field `version`") => {
            let Ok(serde_json::Value::Object(mut map)) =
                serde_json::from_slice::<serde_json::Value>(bytes)
            else {
                return Err(e);
            };
            map.insert("version".into(), serde_json::Value::from(0u64));
            let text = serde_json::to_vec(&map)
                .map_err(|err| ConfigError::new("", format!("cannot re-encode the plan: {err}")))?;
            rollout_core::parse_plan(&text).map(|(spec, _)| spec)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_optional_and_ignored() {
        let body =
            br#"{"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":100}]}]}"#;
        assert_eq!(parse_plan_document(body).unwrap().version, 0);
        let body = br#"{"version":"x","rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":100}]}]}"#;
        assert_eq!(parse_plan_document(body).unwrap().version, 0);
        let body = br#"{"version":7,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":100}]}]}"#;
        assert_eq!(parse_plan_document(body).unwrap().version, 7);
    }

    #[test]
    fn other_errors_name_the_field() {
        let body =
            br#"{"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":90}]}]}"#;
        assert_eq!(
            parse_plan_document(body).unwrap_err().field,
            "rollouts[0].variants"
        );
        let body = br#"{"version":1,"version":2,"rollouts":[]}"#;
        assert!(parse_plan_document(body).is_err());
        assert_eq!(parse_plan_document(b"[]").unwrap_err().field, "");
        assert_eq!(parse_plan_document(b"").unwrap_err().field, "");
    }
}
