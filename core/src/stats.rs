//! Names of the filter's Envoy stats. Defined here, once, so the filter that emits
//! them and the sidecar that reads them agree.
//!
//! Envoy files every Wasm-defined stat under the `wasmcustom.` namespace. Our names
//! carry their labels as `key.value` segments; the `stats_tags` below (shipped in
//! every Envoy config of this project) turn them into Prometheus labels:
//! `wasmcustom.model_rollout.rollout.fraud.variant.canary.requests_total` is exported
//! as `model_rollout_requests_total{rollout="fraud",variant="canary"}`.

pub const PREFIX: &str = "model_rollout";
/// Envoy's namespace for Wasm-defined stats.
pub const ENVOY_NAMESPACE: &str = "wasmcustom";

/// Response classes counted per variant.
pub const CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "other"];

/// The class of an HTTP status code, as an index into `CLASSES`.
pub fn class_index(status: u32) -> usize {
    match status {
        200..=299 => 0,
        300..=399 => 1,
        400..=499 => 2,
        500..=599 => 3,
        _ => 4,
    }
}

pub fn variant_requests(rollout: &str, variant: &str) -> String {
    format!("{PREFIX}.rollout.{rollout}.variant.{variant}.requests_total")
}

pub fn variant_responses(rollout: &str, variant: &str, class: &str) -> String {
    format!("{PREFIX}.rollout.{rollout}.variant.{variant}.class.{class}.responses_total")
}

pub fn variant_latency(rollout: &str, variant: &str) -> String {
    format!("{PREFIX}.rollout.{rollout}.variant.{variant}.latency_ms")
}

/// `model_rollout.rollout.<r>.variant.<v>.bin.<i>.predictions_total`: the variant's
/// sampled predictions in bin `i` of `output.distribution` (`crate::distribution`).
pub fn variant_bin(rollout: &str, variant: &str, bin: usize) -> String {
    format!("{PREFIX}.rollout.{rollout}.variant.{variant}.bin.{bin}.predictions_total")
}

/// `model_rollout.rollout.<r>.bin.<i>.shadow_predictions_total`: the shadow's.
pub fn shadow_bin(rollout: &str, bin: usize) -> String {
    format!("{PREFIX}.rollout.{rollout}.bin.{bin}.shadow_predictions_total")
}

pub fn rollout_assignments(rollout: &str, reason: &str) -> String {
    format!("{PREFIX}.rollout.{rollout}.reason.{reason}.assignments_total")
}

/// `model_rollout.rollout.<r>.<metric>`: per-rollout shadow stats.
pub fn rollout_metric(rollout: &str, metric: &str) -> String {
    format!("{PREFIX}.rollout.{rollout}.{metric}")
}

/// `model_rollout.rollout.<r>.reason.<reason>.<metric>`.
pub fn rollout_reason_metric(rollout: &str, reason: &str, metric: &str) -> String {
    format!("{PREFIX}.rollout.{rollout}.reason.{reason}.{metric}")
}

/// `model_rollout.rollout.<r>.variant.<v>.<metric>` (and with a reason).
pub fn variant_metric(rollout: &str, variant: &str, metric: &str) -> String {
    format!("{PREFIX}.rollout.{rollout}.variant.{variant}.{metric}")
}

pub fn variant_reason_metric(rollout: &str, variant: &str, reason: &str, metric: &str) -> String {
    format!("{PREFIX}.rollout.{rollout}.variant.{variant}.reason.{reason}.{metric}")
}

/// Declares a reason enum: its variants in metric order (`ALL`), their names in
/// the metric (`as_str`) and their position in `ALL` (`index`).
macro_rules! reasons {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every reason, in metric order.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            /// The reason's label value in the metric name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The reason's position in `ALL` (declaration order).
            pub fn index(self) -> usize {
                self as usize
            }
        }
    };
}

reasons! {
    /// Why a sampled request was not shadowed, or its shadow not compared
    /// (`shadow_skipped_total`).
    ShadowSkip {
        /// The client went away before the copy was complete, or the primary never answered.
        Aborted => "aborted",
        /// The request body is larger than `shadow.max_body_bytes`.
        BodyTooLarge => "body_too_large",
        /// `shadow.max_in_flight` calls are in flight (or the job queue is full).
        InFlightLimit => "in_flight_limit",
        /// Envoy has no such cluster.
        NoCluster => "no_cluster",
        /// The worker's table of joins is full.
        JoinTableFull => "join_table_full",
        /// The callout could not be made.
        DispatchFailed => "dispatch_failed",
        /// An answer is larger than `compare.max_response_bytes`.
        ResponseTooLarge => "response_too_large",
    }
}

reasons! {
    /// Why a shadow call failed (`shadow_errors_total`).
    ShadowError {
        /// No answer (connection refused or reset, no healthy upstream).
        Unreachable => "unreachable",
        /// A status other than 2xx.
        Status => "status",
    }
}

reasons! {
    /// Why records or assignments were dropped instead of sent to the sidecar
    /// (`shadow_records_dropped_total`, `assignment_records_dropped_total`).
    RecordDrop {
        /// No `control` section: nowhere to send them.
        NoSidecar => "no_sidecar",
        /// The worker's buffer is full.
        BufferFull => "buffer_full",
        /// The post failed or the sidecar refused it.
        PostFailed => "post_failed",
    }
}

pub const SHADOW_RECORDS_SENT: &str = "model_rollout.shadow_records_sent_total";
/// Records whose predictions were cut to fit `wire::MAX_RECORD_BYTES` (still sent).
pub const SHADOW_RECORDS_TRUNCATED: &str = "model_rollout.shadow_records_truncated_total";

pub fn records_dropped(reason: &str) -> String {
    format!("{PREFIX}.reason.{reason}.shadow_records_dropped_total")
}

pub const ASSIGNMENT_RECORDS_SENT: &str = "model_rollout.assignment_records_sent_total";

pub fn assignment_records_dropped(reason: &str) -> String {
    format!("{PREFIX}.reason.{reason}.assignment_records_dropped_total")
}

pub const UNMATCHED: &str = "model_rollout.unmatched_total";
pub const OVERRIDE_REJECTED: &str = "model_rollout.override_rejected_total";
pub const CORRELATION_GENERATED: &str = "model_rollout.correlation_generated_total";
pub const HOST_ERRORS: &str = "model_rollout.host_errors_total";
pub const RANDOM_FALLBACK: &str = "model_rollout.random_fallback_total";
pub const PLAN_VERSION: &str = "model_rollout.plan_version";
pub const CONTROL_POLLS: &str = "model_rollout.control.polls_total";
pub const CONTROL_ACCEPTED: &str = "model_rollout.control.plans_accepted_total";
pub const CONTROL_STALENESS: &str = "model_rollout.control.staleness_seconds";

pub fn control_poll_errors(reason: &str) -> String {
    format!("{PREFIX}.control.reason.{reason}.poll_errors_total")
}

pub fn control_rejected(reason: &str) -> String {
    format!("{PREFIX}.control.reason.{reason}.plans_rejected_total")
}

/// `(tag name, regex)` pairs for Envoy's `stats_config.stats_tags`. The first
/// capture group is cut from the name, the second is the label value.
pub const STATS_TAGS: [(&str, &str); 5] = [
    (
        "rollout",
        r"^wasmcustom\.model_rollout\.(rollout\.([^.]+)\.)",
    ),
    (
        "variant",
        r"^wasmcustom\.model_rollout\.rollout\.[^.]+\.(variant\.([^.]+)\.)",
    ),
    ("class", r"\.(class\.([^.]+)\.)responses_total$"),
    ("reason", r"\.(reason\.([^.]+)\.)[^.]+$"),
    ("bin", r"\.(bin\.([^.]+)\.)[a-z_]*predictions_total$"),
];

/// A stat name split into metric and labels (the inverse of the builders above),
/// for readers of Envoy's JSON stats, which carry the full names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatName {
    pub metric: String,
    pub labels: Vec<(String, String)>,
}

impl StatName {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The label keys our names carry as `key.value` segments.
pub const LABEL_KEYS: [&str; 5] = ["rollout", "variant", "class", "reason", "bin"];

/// Parses `[wasmcustom.]model_rollout.<segments>`: a known label key followed by
/// its value is a label, every other segment is part of the metric name
/// (`model_rollout.control.reason.invalid.plans_rejected_total` is
/// `model_rollout_control_plans_rejected_total{reason="invalid"}`).
pub fn parse_stat_name(name: &str) -> Option<StatName> {
    let rest = name
        .strip_prefix("wasmcustom.")
        .unwrap_or(name)
        .strip_prefix("model_rollout.")?;
    let mut metric = String::from(PREFIX);
    let mut labels = Vec::new();
    let mut parts = rest.split('.');
    let mut last_plain = false;
    while let Some(seg) = parts.next() {
        if LABEL_KEYS.contains(&seg) {
            let value = parts.next()?;
            labels.push((seg.to_string(), value.to_string()));
            last_plain = false;
        } else {
            metric.push('_');
            metric.push_str(seg);
            last_plain = true;
        }
    }
    // A name must end in its metric, never in a label value.
    if !last_plain {
        return None;
    }
    Some(StatName { metric, labels })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        let n = variant_responses("fraud", "canary", "5xx");
        let p = parse_stat_name(&format!("wasmcustom.{n}")).unwrap();
        assert_eq!(p.metric, "model_rollout_responses_total");
        assert_eq!(p.label("rollout"), Some("fraud"));
        assert_eq!(p.label("variant"), Some("canary"));
        assert_eq!(p.label("class"), Some("5xx"));
        let p = parse_stat_name(UNMATCHED).unwrap();
        assert_eq!(p.metric, "model_rollout_unmatched_total");
        assert!(p.labels.is_empty());
        assert!(parse_stat_name("cluster.x.upstream_rq").is_none());
        // "control" is a plain segment, not a label
        let p = parse_stat_name(&format!("wasmcustom.{}", control_rejected("invalid"))).unwrap();
        assert_eq!(p.label("reason"), Some("invalid"));
        let p = parse_stat_name(&variant_bin("fraud", "canary", 7)).unwrap();
        assert_eq!(p.metric, "model_rollout_predictions_total");
        assert_eq!(
            (p.label("variant"), p.label("bin")),
            (Some("canary"), Some("7"))
        );
        let p = parse_stat_name(&shadow_bin("fraud", 0)).unwrap();
        assert_eq!(p.metric, "model_rollout_shadow_predictions_total");
        assert_eq!(
            (p.label("rollout"), p.label("bin")),
            (Some("fraud"), Some("0"))
        );
    }

    #[test]
    fn reasons_are_listed_in_index_order() {
        for (i, r) in ShadowSkip::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        for (i, r) in ShadowError::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        for (i, r) in RecordDrop::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert_eq!(ShadowSkip::ALL.len(), 7);
        assert_eq!(ShadowSkip::ResponseTooLarge.as_str(), "response_too_large");
        assert_eq!(RecordDrop::NoSidecar.as_str(), "no_sidecar");
    }

    #[test]
    fn classes() {
        assert_eq!(CLASSES[class_index(204)], "2xx");
        assert_eq!(CLASSES[class_index(503)], "5xx");
        assert_eq!(CLASSES[class_index(0)], "other");
    }
}
