//! The wire between the filter and the sidecar, defined once: both sides build and
//! read these types, so a field renamed on one side cannot silently go missing on
//! the other.
//!
//! - The plan poll: `GET <control.path>` with the request headers of
//!   [`PollRequest`] (who polls, which version it runs, the ETag it holds, its
//!   token); the sidecar answers 200 with the plan and `ETag:` [`etag`] (plus
//!   [`PLAN_VERSION_RESPONSE_HEADER`]), or 304 when `If-None-Match` holds that ETag.
//!   The sidecar reads the poller's identity with [`PollIdentity::from_headers`].
//! - Shadow comparisons: `POST` [`SHADOW_RECORDS_PATH`] with a [`ShadowRecordBatch`].
//! - A/B assignments: `POST` [`ASSIGNMENTS_PATH`] with an [`AssignmentBatch`].
//!
//! Field names are the JSON names stored by the sidecar and read by tests and
//! tools; they never change. Records ignore unknown fields (a newer filter may add
//! some); batches do not. The `validate` methods are the sidecar's checks of what
//! arrives, with errors naming the field (`records[3].verdict`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::answer::Verdict;
use crate::error::ConfigError;
use crate::fields::{check_cluster, check_correlation_id, check_name};

/// Request header naming the polling proxy.
pub const PROXY_HEADER: &str = "x-model-rollout-proxy";
/// Request header carrying the plan version in force at the polling proxy.
pub const PLAN_VERSION_HEADER: &str = "x-model-rollout-plan-version";
/// Response header of the plan with its version.
pub const PLAN_VERSION_RESPONSE_HEADER: &str = "x-plan-version";
/// The conditional poll: the ETag of the plan the proxy runs.
pub const IF_NONE_MATCH: &str = "if-none-match";
/// The ETag of the plan answered.
pub const ETAG: &str = "etag";
/// `Bearer <token>` on polls and posts when the sidecar needs a token.
pub const AUTHORIZATION: &str = "authorization";
/// Where the filter posts shadow comparison records.
pub const SHADOW_RECORDS_PATH: &str = "/v1/shadow-records";
/// Where the filter posts A/B assignments.
pub const ASSIGNMENTS_PATH: &str = "/v1/assignments";
/// Most records (or assignments) in one post.
pub const MAX_BATCH: usize = 1000;
/// Longest proxy id.
pub const MAX_PROXY_ID_LEN: usize = 256;

/// The ETag of a plan version: `"v12"`.
pub fn etag(version: u64) -> String {
    format!("\"v{version}\"")
}

/// The `Authorization` value for a token.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The token of an `Authorization: Bearer <token>` value (scheme case as sent by
/// common clients: `Bearer` or `bearer`).
pub fn bearer_token(value: &str) -> Option<&str> {
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
}

/// A proxy id: 1 to [`MAX_PROXY_ID_LEN`] printable ASCII characters.
pub fn is_valid_proxy_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_PROXY_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

fn header(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_string(), value.into())
}

/// One plan poll, as the filter sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest<'a> {
    pub path: &'a str,
    pub authority: &'a str,
    /// Names this proxy at the sidecar.
    pub proxy: &'a str,
    /// The plan version in force at the proxy.
    pub plan_version: u64,
    /// The ETag of the plan in force, when it came from the sidecar.
    pub etag: Option<&'a str>,
    pub token: Option<&'a str>,
}

impl PollRequest<'_> {
    /// The callout's headers.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            header(":method", "GET"),
            header(":path", self.path),
            header(":authority", self.authority),
            header("accept", "application/json"),
            header(PROXY_HEADER, self.proxy),
            header(PLAN_VERSION_HEADER, self.plan_version.to_string()),
        ];
        if let Some(e) = self.etag {
            h.push(header(IF_NONE_MATCH, e));
        }
        if let Some(t) = self.token {
            h.push(header(AUTHORIZATION, bearer(t)));
        }
        h
    }
}

/// What a polling proxy says about itself, as the sidecar reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollIdentity {
    pub proxy: String,
    /// `None` when the proxy sent no version, or one that is not a number.
    pub plan_version: Option<u64>,
}

impl PollIdentity {
    /// From the values of [`PROXY_HEADER`] and [`PLAN_VERSION_HEADER`]; `None`
    /// without a proxy header.
    pub fn from_headers(proxy: Option<&str>, plan_version: Option<&str>) -> Option<PollIdentity> {
        Some(PollIdentity {
            proxy: proxy?.trim().to_string(),
            plan_version: plan_version.and_then(|v| v.trim().parse::<u64>().ok()),
        })
    }
}

/// The headers of a records or assignments post.
pub fn post_headers(path: &str, authority: &str, token: Option<&str>) -> Vec<(String, String)> {
    let mut h = vec![
        header(":method", "POST"),
        header(":path", path),
        header(":authority", authority),
        header("content-type", "application/json"),
    ];
    if let Some(t) = token {
        h.push(header(AUTHORIZATION, bearer(t)));
    }
    h
}

// ---------------------------------------------------------------------------
// Shadow comparison records

/// One comparison of a primary answer with its shadow's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowRecord {
    pub correlation_id: String,
    pub rollout: String,
    /// The variant that served the primary request.
    pub variant: String,
    pub shadow_cluster: String,
    pub agree: bool,
    /// `agree`, `status` (status classes differ) or `prediction`.
    pub verdict: Verdict,
    pub primary_status: u32,
    pub shadow_status: u32,
    pub primary_latency_ms: u64,
    pub shadow_latency_ms: u64,
    /// The predictions at the compared pointers (a list, one per pointer).
    #[serde(default)]
    pub primary_prediction: Value,
    #[serde(default)]
    pub shadow_prediction: Value,
    pub unix_ms: u64,
    /// The proxy that sent the record (the batch's `proxy`), added by the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

fn check_status(field: &str, status: u32) -> Result<(), ConfigError> {
    if status > 999 {
        return Err(ConfigError::new(field, "not an HTTP status"));
    }
    Ok(())
}

impl ShadowRecord {
    /// The sidecar's checks of an arriving record; fields relative to the record.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_correlation_id("correlation_id", &self.correlation_id)?;
        check_name("rollout", &self.rollout)?;
        check_name("variant", &self.variant)?;
        check_cluster("shadow_cluster", &self.shadow_cluster)?;
        if self.agree != self.verdict.agrees() {
            return Err(ConfigError::new(
                "agree",
                format!(
                    "{} contradicts verdict {:?}",
                    self.agree,
                    self.verdict.as_str()
                ),
            ));
        }
        check_status("primary_status", self.primary_status)?;
        check_status("shadow_status", self.shadow_status)
    }
}

/// Body of `POST /v1/shadow-records`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowRecordBatch {
    #[serde(default)]
    pub proxy: Option<String>,
    pub records: Vec<ShadowRecord>,
}

impl ShadowRecordBatch {
    /// The proxy id, the batch size, then every record (`records[i].<field>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_batch(self.proxy.as_deref(), "records", &self.records, |r| {
            r.validate()
        })
    }
}

// ---------------------------------------------------------------------------
// A/B assignments

/// Which variant served a correlation id. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub correlation_id: String,
    pub rollout: String,
    pub variant: String,
    pub unix_ms: u64,
}

impl Assignment {
    /// The sidecar's checks of an arriving assignment; fields relative to it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_correlation_id("correlation_id", &self.correlation_id)?;
        check_name("rollout", &self.rollout)?;
        check_name("variant", &self.variant)
    }
}

/// Body of `POST /v1/assignments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentBatch {
    #[serde(default)]
    pub proxy: Option<String>,
    pub assignments: Vec<Assignment>,
}

impl AssignmentBatch {
    /// The proxy id, the batch size, then every assignment (`assignments[i].<field>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_batch(
            self.proxy.as_deref(),
            "assignments",
            &self.assignments,
            |a| a.validate(),
        )
    }
}

/// A batch: its proxy id, its size, then every item (`<field>[i].<item field>`).
fn validate_batch<T>(
    proxy: Option<&str>,
    field: &str,
    items: &[T],
    item: impl Fn(&T) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    check_proxy(proxy)?;
    check_batch(field, items.len())?;
    for (i, x) in items.iter().enumerate() {
        item(x).map_err(|e| e.within(&format!("{field}[{i}]")))?;
    }
    Ok(())
}

/// A batch's proxy id, when given (see [`is_valid_proxy_id`]).
pub fn check_proxy(proxy: Option<&str>) -> Result<(), ConfigError> {
    match proxy {
        Some(p) if !is_valid_proxy_id(p) => Err(ConfigError::new(
            "proxy",
            format!("must be 1 to {MAX_PROXY_ID_LEN} printable ASCII characters"),
        )),
        _ => Ok(()),
    }
}

/// A batch is at most [`MAX_BATCH`] items.
pub fn check_batch(field: &str, len: usize) -> Result<(), ConfigError> {
    if len > MAX_BATCH {
        return Err(ConfigError::new(
            field,
            format!("{len} items in one call; at most {MAX_BATCH}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> ShadowRecord {
        ShadowRecord {
            correlation_id: "cid-12345678".into(),
            rollout: "fraud".into(),
            variant: "stable".into(),
            shadow_cluster: "model_shadow".into(),
            agree: false,
            verdict: Verdict::PredictionMismatch,
            primary_status: 200,
            shadow_status: 200,
            primary_latency_ms: 3,
            shadow_latency_ms: 4,
            primary_prediction: json!([[0.5]]),
            shadow_prediction: json!([[0.7]]),
            unix_ms: 1_700_000_000_000,
            proxy: None,
        }
    }

    #[test]
    fn shadow_records_keep_their_field_names() {
        let v = serde_json::to_value(record()).unwrap();
        assert_eq!(
            v,
            json!({
                "correlation_id": "cid-12345678", "rollout": "fraud", "variant": "stable",
                "shadow_cluster": "model_shadow", "agree": false, "verdict": "prediction",
                "primary_status": 200, "shadow_status": 200, "primary_latency_ms": 3,
                "shadow_latency_ms": 4, "primary_prediction": [[0.5]],
                "shadow_prediction": [[0.7]], "unix_ms": 1_700_000_000_000_u64
            })
        );
        let back: ShadowRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, record());
        for (verdict, text) in [
            (Verdict::Agree, "agree"),
            (Verdict::StatusMismatch, "status"),
            (Verdict::PredictionMismatch, "prediction"),
        ] {
            assert_eq!(serde_json::to_value(verdict).unwrap(), json!(text));
            assert_eq!(verdict.as_str(), text);
        }
    }

    #[test]
    fn records_ignore_unknown_fields_and_batches_do_not() {
        let mut v = serde_json::to_value(record()).unwrap();
        v["future_field"] = json!(1);
        v.as_object_mut().unwrap().remove("shadow_prediction");
        let r: ShadowRecord = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(r.shadow_prediction, Value::Null);
        let batch = json!({"proxy": "p", "records": [v], "extra": 1});
        assert!(serde_json::from_value::<ShadowRecordBatch>(batch).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let batch = |r: ShadowRecord| ShadowRecordBatch {
            proxy: Some("envoy-1".into()),
            records: vec![record(), r],
        };
        assert!(batch(record()).validate().is_ok());
        let cases: Vec<(ShadowRecord, &str)> = vec![
            (
                ShadowRecord {
                    agree: true,
                    ..record()
                },
                "records[1].agree",
            ),
            (
                ShadowRecord {
                    correlation_id: "x".into(),
                    ..record()
                },
                "records[1].correlation_id",
            ),
            (
                ShadowRecord {
                    rollout: "a/b".into(),
                    ..record()
                },
                "records[1].rollout",
            ),
            (
                ShadowRecord {
                    shadow_cluster: String::new(),
                    ..record()
                },
                "records[1].shadow_cluster",
            ),
            (
                ShadowRecord {
                    shadow_status: 1000,
                    ..record()
                },
                "records[1].shadow_status",
            ),
        ];
        for (r, field) in cases {
            assert_eq!(batch(r).validate().unwrap_err().field, field);
        }
        let mut b = batch(record());
        b.proxy = Some("has space".into());
        assert_eq!(b.validate().unwrap_err().field, "proxy");
        let big = AssignmentBatch {
            proxy: None,
            assignments: vec![
                Assignment {
                    correlation_id: "cid-12345678".into(),
                    rollout: "r".into(),
                    variant: "v".into(),
                    unix_ms: 1,
                };
                MAX_BATCH + 1
            ],
        };
        assert_eq!(big.validate().unwrap_err().field, "assignments");
    }

    #[test]
    fn poll_headers_and_identity() {
        let req = PollRequest {
            path: "/v1/plan",
            authority: "rollout-control",
            proxy: "envoy-1",
            plan_version: 7,
            etag: Some(&etag(7)),
            token: Some("s3cret"),
        };
        let h = req.headers();
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get(PROXY_HEADER), Some("envoy-1"));
        assert_eq!(get(PLAN_VERSION_HEADER), Some("7"));
        assert_eq!(get(IF_NONE_MATCH), Some("\"v7\""));
        assert_eq!(get(AUTHORIZATION).and_then(bearer_token), Some("s3cret"));
        let id = PollIdentity::from_headers(get(PROXY_HEADER), get(PLAN_VERSION_HEADER));
        assert_eq!(
            id,
            Some(PollIdentity {
                proxy: "envoy-1".into(),
                plan_version: Some(7)
            })
        );
        assert_eq!(PollIdentity::from_headers(None, Some("7")), None);
        assert_eq!(
            PollIdentity::from_headers(Some(" p "), Some("x")),
            Some(PollIdentity {
                proxy: "p".into(),
                plan_version: None
            })
        );
        assert_eq!(bearer_token("bearer t"), Some("t"));
        assert_eq!(bearer_token("Basic t"), None);
        assert!(is_valid_proxy_id("envoy-1") && !is_valid_proxy_id(""));
    }
}
