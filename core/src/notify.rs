//! Notifications of a rollout, `rollouts[].notify` in the plan: the webhooks the
//! sidecar tells about the rollout's events, and the gate webhooks that must answer
//! 200 before the policy leaves a step (Flagger's confirm-promotion). The filter
//! ignores this section; only the sidecar reads it.
//!
//! Owned by whoever writes the plan (an operator). The signing secret is not part of
//! the plan: it is the sidecar's (`--webhook-secret-file`). Every list is bounded and
//! every refusal names its field:
//!
//! | field | rule |
//! |---|---|
//! | `webhooks[].url`, `gates[].url` | `http://host[:port]/path`, at most 512 bytes, no spaces or control characters (the sidecar speaks plain HTTP: reach an HTTPS receiver through a local relay or an Envoy egress route) |
//! | `webhooks[].format` | `json` (default, the documented payload) or `slack` (`{"text": ...}`, Slack's incoming-webhook shape) |
//! | `webhooks[].events` | event kinds ([`EventKind`]); empty or absent: every event |
//! | `gates[].name` | 1-63 characters of `[A-Za-z0-9_-]`, unique in the rollout |
//! | `gates[].on` | `step` (every step change and the promotion, default) or `promotion` (only the last) |
//! | at most | [`MAX_WEBHOOKS`] webhooks and [`MAX_GATES`] gates per rollout |

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::fields::check_name;

pub const MAX_WEBHOOKS: usize = 8;
pub const MAX_GATES: usize = 4;
pub const MAX_URL_LEN: usize = 512;

/// A rollout event: what the sidecar's policy engine did or saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The policy started the rollout at its first step.
    Started,
    /// The policy moved the rollout to its next step.
    StepAdvanced,
    /// A step with `gate: true` (or `auto_advance: false`) passed: waiting for `promote`.
    Waiting,
    /// A gate webhook keeps the rollout at its step (refused or unreachable).
    GateHolding,
    /// Inconclusive for too long (`on_inconclusive_limit: hold`).
    Holding,
    /// Rolled back, with the reason.
    RolledBack,
    /// The last step passed: the candidate was promoted.
    Promoted,
    /// A proxy's local trip stopped sending it to the candidate.
    LocalTrip,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Started,
        EventKind::StepAdvanced,
        EventKind::Waiting,
        EventKind::GateHolding,
        EventKind::Holding,
        EventKind::RolledBack,
        EventKind::Promoted,
        EventKind::LocalTrip,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::StepAdvanced => "step_advanced",
            EventKind::Waiting => "waiting",
            EventKind::GateHolding => "gate_holding",
            EventKind::Holding => "holding",
            EventKind::RolledBack => "rolled_back",
            EventKind::Promoted => "promoted",
            EventKind::LocalTrip => "local_trip",
        }
    }
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The documented JSON event.
    #[default]
    Json,
    /// `{"text": "..."}`: Slack's (and Mattermost's, Teams' legacy) incoming webhooks.
    Slack,
}

/// When a gate is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateOn {
    /// Before every step change and before the promotion.
    #[default]
    Step,
    /// Only before the promotion (leaving the last step).
    Promotion,
}

/// `rollouts[].notify`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateSpec>,
}

/// `rollouts[].notify.webhooks[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
    /// The events sent; empty: every event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventKind>,
}

impl WebhookSpec {
    /// Whether this webhook wants `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }
}

/// `rollouts[].notify.gates[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub on: GateOn,
}

impl GateSpec {
    /// Whether this gate must confirm leaving step `step` of `steps`.
    pub fn applies(&self, step: usize, steps: usize) -> bool {
        match self.on {
            GateOn::Step => true,
            GateOn::Promotion => step + 1 >= steps,
        }
    }
}

impl NotifySpec {
    /// Checks every field (paths relative to the section).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.webhooks.len() > MAX_WEBHOOKS {
            return Err(ConfigError::new(
                "webhooks",
                format!("at most {MAX_WEBHOOKS} webhooks"),
            ));
        }
        if self.gates.len() > MAX_GATES {
            return Err(ConfigError::new(
                "gates",
                format!("at most {MAX_GATES} gates"),
            ));
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            check_url(&format!("webhooks[{i}].url"), &w.url)?;
        }
        for (i, g) in self.gates.iter().enumerate() {
            check_name(&format!("gates[{i}].name"), &g.name)?;
            if self.gates.iter().take(i).any(|o| o.name == g.name) {
                return Err(ConfigError::new(
                    format!("gates[{i}].name"),
                    format!("duplicate gate name {:?}", g.name),
                ));
            }
            check_url(&format!("gates[{i}].url"), &g.url)?;
        }
        Ok(())
    }
}

/// `http://host[:port][/path]`.
pub fn check_url(field: &str, url: &str) -> Result<(), ConfigError> {
    if url.len() > MAX_URL_LEN {
        return Err(ConfigError::new(
            field,
            format!("at most {MAX_URL_LEN} bytes"),
        ));
    }
    if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ConfigError::new(
            field,
            "must not contain spaces or control characters",
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(ConfigError::new(
            field,
            format!(
                "{url:?} must start with http:// (the sidecar speaks plain HTTP; reach an \
                 HTTPS receiver through a local relay)"
            ),
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (name, port) = match host.rfind(':') {
        Some(i) if !host.get(i..).unwrap_or("").contains(']') => {
            (host.get(..i).unwrap_or(""), host.get(i + 1..))
        }
        _ => (host, None),
    };
    if name.is_empty() || host.contains('@') {
        return Err(ConfigError::new(
            field,
            format!("{url:?} has no host (http://host[:port]/path, no user info)"),
        ));
    }
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err(ConfigError::new(
            field,
            format!("{url:?}: the port must be 1-65535"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> NotifySpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn valid_sections() {
        let n = parse(
            r#"{"webhooks":[{"url":"http://127.0.0.1:9000/hook","format":"slack",
                "events":["rolled_back","promoted"]}],
                "gates":[{"name":"qa","url":"http://localhost/confirm","on":"promotion"}]}"#,
        );
        n.validate().unwrap();
        assert!(n.webhooks[0].wants(EventKind::Promoted));
        assert!(!n.webhooks[0].wants(EventKind::Started));
        assert!(!n.gates[0].applies(0, 3));
        assert!(n.gates[0].applies(2, 3));
        let all = parse(r#"{"webhooks":[{"url":"http://h/"}]}"#);
        all.validate().unwrap();
        assert!(EventKind::ALL.iter().all(|k| all.webhooks[0].wants(*k)));
        assert_eq!(all.webhooks[0].format, WebhookFormat::Json);
    }

    #[test]
    fn refusals_name_the_field() {
        for (json, field) in [
            (r#"{"webhooks":[{"url":"https://h/x"}]}"#, "webhooks[0].url"),
            (r#"{"webhooks":[{"url":"http:///x"}]}"#, "webhooks[0].url"),
            (
                r#"{"webhooks":[{"url":"http://h:0/x"}]}"#,
                "webhooks[0].url",
            ),
            (
                r#"{"webhooks":[{"url":"http://u@h/x"}]}"#,
                "webhooks[0].url",
            ),
            (
                r#"{"webhooks":[{"url":"http://h/a b"}]}"#,
                "webhooks[0].url",
            ),
            (
                r#"{"gates":[{"name":"a b","url":"http://h/"}]}"#,
                "gates[0].name",
            ),
            (
                r#"{"gates":[{"name":"a","url":"http://h/"},{"name":"a","url":"http://h/"}]}"#,
                "gates[1].name",
            ),
            (
                r#"{"gates":[{"name":"a","url":"ftp://h/"}]}"#,
                "gates[0].url",
            ),
        ] {
            assert_eq!(parse(json).validate().unwrap_err().field, field, "{json}");
        }
        let many = format!(
            r#"{{"webhooks":[{}]}}"#,
            [r#"{"url":"http://h/"}"#; MAX_WEBHOOKS + 1].join(",")
        );
        assert_eq!(parse(&many).validate().unwrap_err().field, "webhooks");
        assert!(serde_json::from_str::<NotifySpec>(
            r#"{"webhooks":[{"url":"http://h/","events":["nope"]}]}"#
        )
        .is_err());
    }
}
