//! What a webhook receives: the event as JSON (`format: json`, the documented
//! `api::events::RolloutEvent`), or one line of text for Slack's incoming webhooks
//! (`format: slack`: `{"text": "..."}`).

use rollout_core::notify::{EventKind, WebhookFormat};

use crate::api::events::RolloutEvent;

/// The body of `e` in `format`.
pub fn body(e: &RolloutEvent, format: WebhookFormat) -> Vec<u8> {
    match format {
        WebhookFormat::Json => serde_json::to_vec(e).unwrap_or_default(),
        WebhookFormat::Slack => {
            serde_json::to_vec(&serde_json::json!({ "text": slack_text(e) })).unwrap_or_default()
        }
    }
}

/// `:white_check_mark: *fraud* promoted: candidate v2 at 100 % (plan v9). <reason>`
pub fn slack_text(e: &RolloutEvent) -> String {
    let (icon, what) = match e.kind {
        EventKind::Started => (":arrow_forward:", format!("started at {}", e.step_label)),
        EventKind::StepAdvanced => (":arrow_up:", format!("advanced to {}", e.step_label)),
        EventKind::Waiting => (
            ":raised_hand:",
            format!("waiting for promote at {}", e.step_label),
        ),
        EventKind::GateHolding => (":no_entry:", format!("held by a gate at {}", e.step_label)),
        EventKind::Holding => (":pause_button:", format!("holding at {}", e.step_label)),
        EventKind::RolledBack => (
            ":rotating_light:",
            format!("ROLLED BACK at {}", e.step_label),
        ),
        EventKind::Promoted => (":white_check_mark:", "promoted".to_string()),
        EventKind::LocalTrip => (":warning:", format!("local trip at {}", e.step_label)),
    };
    let version = e
        .plan_version
        .map(|v| format!(", plan v{v}"))
        .unwrap_or_default();
    format!(
        "{icon} *{}* {what}: candidate `{}` at {} %{version}. {}",
        e.rollout, e.candidate, e.weight, e.reason
    )
}
