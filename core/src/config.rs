//! The plugin configuration (Envoy `configuration` / Istio `pluginConfig`):
//! bytes -> serde -> validated `FilterConfig`. Errors name the field.

use serde::{Deserialize, Serialize};

use crate::control::ControlSpec;
use crate::decide::SubjectSource;
use crate::error::ConfigError;
use crate::fields::{check_cookie_name, check_header_name, expect_object};
use crate::plan::{Plan, PlanSpec};
use crate::trust::check_targeting_sources;

fn d_correlation() -> String {
    "x-request-id".into()
}
fn d_variant() -> String {
    "x-model-variant".into()
}
fn d_override() -> String {
    "x-model-override".into()
}
fn d_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfigSpec {
    #[serde(default)]
    pub subject: SubjectSpec,
    #[serde(default = "d_correlation")]
    pub correlation_header: String,
    #[serde(default = "d_variant")]
    pub variant_header: String,
    #[serde(default)]
    pub echo: EchoSpec,
    #[serde(default, rename = "override")]
    pub override_: OverrideSpec,
    /// The control sidecar to poll for live plans (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlSpec>,
    /// The static plan: in force until (and whenever) no newer plan came from the
    /// sidecar. Required without `control`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanSpec>,
    /// Headers a plan's targeting may read: removed from public traffic at the edge and
    /// set only by the proxy or from a verified identity (`crate::trust`). A plan whose
    /// targeting reads another header is refused, unless the condition is marked
    /// `client_controlled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_headers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectSpec {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoSpec {
    /// Return the correlation id to the client.
    #[serde(default = "d_true")]
    pub correlation_id: bool,
    /// Return the variant header to the client.
    #[serde(default = "d_true")]
    pub variant: bool,
    /// A response header to return the variant's model metadata in
    /// (`name:version`, e.g. `x-model-version: fraud-xgb:2.4.1`); off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Default for EchoSpec {
    fn default() -> Self {
        EchoSpec {
            correlation_id: true,
            variant: true,
            model: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideSpec {
    #[serde(default = "d_override")]
    pub header: String,
    /// Honour the header. When false it is removed from every matched request.
    #[serde(default)]
    pub enabled: bool,
}

impl Default for OverrideSpec {
    fn default() -> Self {
        OverrideSpec {
            header: d_override(),
            enabled: false,
        }
    }
}

/// The validated, compiled configuration the filter runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterConfig {
    pub subject: SubjectSource,
    pub correlation_header: String,
    pub variant_header: String,
    pub echo_correlation: bool,
    pub echo_variant: bool,
    /// The header that returns the variant's model `name:version` (`echo.model`).
    pub echo_model: Option<String>,
    pub override_header: String,
    pub override_enabled: bool,
    pub control: Option<ControlSpec>,
    pub plan: Plan,
    pub plan_spec: PlanSpec,
    /// `trusted_headers`, lower-case: what every plan's targeting may read.
    pub trusted_headers: Vec<String>,
}

/// Parses and validates the plugin configuration.
pub fn parse_plugin_config(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
    expect_object(bytes, "plugin configuration")?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let spec: PluginConfigSpec =
        serde_path_to_error::deserialize(&mut de).map_err(ConfigError::from_serde)?;
    de.end()
        .map_err(|e| ConfigError::new("", format!("trailing data after the configuration: {e}")))?;
    spec.compile()
}

impl PluginConfigSpec {
    pub fn compile(&self) -> Result<FilterConfig, ConfigError> {
        let subject = SubjectSource {
            header: self
                .subject
                .header
                .as_deref()
                .map(|h| check_header_name("subject.header", h))
                .transpose()?,
            cookie: self
                .subject
                .cookie
                .as_deref()
                .map(|c| check_cookie_name("subject.cookie", c).map(|()| c.to_string()))
                .transpose()?,
        };
        let correlation_header = check_header_name("correlation_header", &self.correlation_header)?;
        let variant_header = check_header_name("variant_header", &self.variant_header)?;
        let override_header = check_header_name("override.header", &self.override_.header)?;
        if variant_header == correlation_header {
            return Err(ConfigError::new(
                "variant_header",
                "must differ from correlation_header",
            ));
        }
        if override_header == variant_header || override_header == correlation_header {
            return Err(ConfigError::new(
                "override.header",
                "must differ from variant_header and correlation_header",
            ));
        }
        let echo_model = match &self.echo.model {
            None => None,
            Some(h) => {
                let h = check_header_name("echo.model", h)?;
                if [&variant_header, &correlation_header, &override_header].contains(&&h)
                    || h.starts_with(':')
                {
                    return Err(ConfigError::new(
                        "echo.model",
                        "must differ from variant_header, correlation_header and override.header",
                    ));
                }
                Some(h)
            }
        };
        if let Some(c) = &self.control {
            c.validate().map_err(|e| e.within("control"))?;
        }
        let plan_spec = match (&self.plan, &self.control) {
            (Some(p), _) => p.clone(),
            // With a sidecar and no static plan, requests pass untouched until the
            // first plan arrives.
            (None, Some(_)) => PlanSpec {
                schema_version: crate::plan::SCHEMA_VERSION,
                version: 0,
                rollouts: Vec::new(),
            },
            (None, None) => {
                return Err(ConfigError::new(
                    "plan",
                    "missing: give a static plan, a control endpoint, or both",
                ))
            }
        };
        let plan = plan_spec.compile().map_err(|e| e.within("plan"))?;
        let mut trusted_headers = Vec::with_capacity(self.trusted_headers.len());
        for (i, h) in self.trusted_headers.iter().enumerate() {
            trusted_headers.push(check_header_name(&format!("trusted_headers[{i}]"), h)?);
        }
        check_targeting_sources(&plan_spec, &trusted_headers).map_err(|e| e.within("plan"))?;
        Ok(FilterConfig {
            subject,
            correlation_header,
            variant_header,
            echo_correlation: self.echo.correlation_id,
            echo_variant: self.echo.variant,
            echo_model,
            override_header,
            override_enabled: self.override_.enabled,
            control: self.control.clone(),
            plan,
            plan_spec,
            trusted_headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"{
      "subject": {"header": "x-user-id", "cookie": "uid"},
      "correlation_header": "x-request-id",
      "variant_header": "x-model-variant",
      "plan": {
        "version": 1,
        "rollouts": [
          {"name": "fraud", "match": {"path_prefix": "/v2/models/fraud"}, "salt": "fraud-v2",
           "variants": [{"name": "stable", "weight": 90}, {"name": "canary", "weight": 10}]}
        ]
      }
    }"#;

    #[test]
    fn parses_documented_example() {
        let c = parse_plugin_config(ISSUE_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(c.subject.header.as_deref(), Some("x-user-id"));
        assert_eq!(c.plan.rollouts[0].variants[1].weight_bp, 1000);
        assert!(c.echo_correlation && c.echo_variant && !c.override_enabled);
        assert_eq!(c.override_header, "x-model-override");
    }

    #[test]
    fn control_without_static_plan_starts_empty() {
        let c = parse_plugin_config(br#"{"control":{"cluster":"rollout_control"}}"#).unwrap();
        assert_eq!(c.plan.version, 0);
        assert!(c.plan.rollouts.is_empty());
        let ctl = c.control.unwrap();
        assert_eq!(
            (ctl.path.as_str(), ctl.poll_interval_ms, ctl.timeout_ms),
            ("/v1/plan", 1000, 500)
        );
    }

    #[test]
    fn defaults() {
        let c = parse_plugin_config(br#"{"plan":{"version":1,"rollouts":[]}}"#).unwrap();
        assert_eq!(c.correlation_header, "x-request-id");
        assert_eq!(c.variant_header, "x-model-variant");
        assert_eq!(c.subject, SubjectSource::default());
        assert_eq!(c.echo_model, None, "the model header is off by default");
        let c = parse_plugin_config(
            br#"{"echo":{"model":"X-Model-Version"},"plan":{"version":1,"rollouts":[]}}"#,
        )
        .unwrap();
        assert_eq!(c.echo_model.as_deref(), Some("x-model-version"));
    }

    #[test]
    fn header_names_lowercased() {
        let c = parse_plugin_config(
            br#"{"subject":{"header":"X-User-Id"},"plan":{"version":1,"rollouts":[]}}"#,
        )
        .unwrap();
        assert_eq!(c.subject.header.as_deref(), Some("x-user-id"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"subjekt":{},"plan":{"version":1,"rollouts":[]}}"#,
                "subjekt",
            ),
            (
                r#"{"variant_header":"bad header","plan":{"version":1,"rollouts":[]}}"#,
                "variant_header",
            ),
            (
                r#"{"variant_header":"x-request-id","plan":{"version":1,"rollouts":[]}}"#,
                "variant_header",
            ),
            (
                r#"{"subject":{"cookie":"a;b"},"plan":{"version":1,"rollouts":[]}}"#,
                "subject.cookie",
            ),
            (
                r#"{"echo":{"variant":"yes"},"plan":{"version":1,"rollouts":[]}}"#,
                "echo.variant",
            ),
            (
                r#"{"plan":{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":60},{"name":"b","weight":30}]}]}}"#,
                "plan.rollouts[0].variants",
            ),
            (
                r#"{"plan":{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":100}]}]}} x"#,
                "",
            ),
            (
                r#"{"echo":{"model":"x-model-variant"},"plan":{"version":1,"rollouts":[]}}"#,
                "echo.model",
            ),
            (
                r#"{"echo":{"model":"x model"},"plan":{"version":1,"rollouts":[]}}"#,
                "echo.model",
            ),
            (r#"{}"#, "plan"),
            ("", ""),
            ("[1,2]", ""),
        ];
        for (json, field) in cases {
            let e = parse_plugin_config(json.as_bytes()).unwrap_err();
            assert_eq!(&e.field, field, "{json} -> {e}");
            assert!(!e.message.is_empty());
        }
        let e = parse_plugin_config(br#"{}"#).unwrap_err();
        assert_eq!(e.field, "plan");
        let e = parse_plugin_config(br#"{"control":{"cluster":"c","timeout_ms":0}}"#).unwrap_err();
        assert_eq!(e.field, "control.timeout_ms");
        let e = parse_plugin_config(br#"{"control":{"cluster":"c","pth":"/x"}}"#).unwrap_err();
        assert_eq!(e.field, "control.pth");
    }
}
