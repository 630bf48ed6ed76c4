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
/// Largest body the sidecar reads on an ingestion call (shadow records, assignments,
/// feedback); it answers 413 beyond. The sidecar's body limit is this constant.
pub const MAX_INGEST_BODY: usize = 4 * 1024 * 1024;
/// Largest body the filter posts: half the sidecar's limit, so a batch never meets
/// the 413 whatever the envelope adds. Batches are split by bytes to stay under it
/// ([`batch_len`]).
pub const MAX_POST_BYTES: usize = MAX_INGEST_BODY / 2;
/// Bytes of a batch outside its items: `{"proxy":"<id>","records":[...]}` with a
/// proxy id of [`MAX_PROXY_ID_LEN`] characters, each escaped (at most 2 bytes).
pub const BATCH_ENVELOPE_BYTES: usize = 2 * MAX_PROXY_ID_LEN + 64;
/// Largest serialized shadow record: beyond it the record's predictions are cut
/// ([`ShadowRecord::fit`]) and the cut counted by the filter.
pub const MAX_RECORD_BYTES: usize = 128 * 1024;
/// Longest proxy id.
pub const MAX_PROXY_ID_LEN: usize = 256;

/// The ETag of a plan version: `"v12"`.
pub fn etag(version: u64) -> String {
    format!("\"v{version}\"")
}

/// The ETag of a plan version served by a store of `epoch`: `"v12.<epoch>"` (a
/// restored backup's version 12 is another entity than the original's).
pub fn epoch_etag(version: u64, epoch: Option<&str>) -> String {
    match epoch {
        Some(e) => format!("\"v{version}.{e}\""),
        None => etag(version),
    }
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

/// The length of `v` as JSON, without building the text (`usize::MAX` if it
/// cannot be serialized).
pub fn json_len<T: Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}

/// How many of the leading items, of these JSON sizes, one post carries: at most
/// [`MAX_BATCH`], the body (envelope, items, commas) at most [`MAX_POST_BYTES`], and
/// at least one item when there is any (a single item is never larger than
/// [`MAX_RECORD_BYTES`]).
pub fn batch_len(sizes: impl IntoIterator<Item = usize>) -> usize {
    let budget = MAX_POST_BYTES - BATCH_ENVELOPE_BYTES;
    let mut used = 0usize;
    let mut n = 0usize;
    for size in sizes.into_iter().take(MAX_BATCH) {
        let next = used.saturating_add(size).saturating_add(usize::from(n > 0));
        if n > 0 && next > budget {
            break;
        }
        used = next;
        n += 1;
    }
    n
}

impl ShadowRecord {
    /// Keeps the record within `max` bytes of JSON: when it is larger, each
    /// prediction is replaced by `{"truncated_from_bytes": N, "prefix": "<its JSON,
    /// cut>"}`. Returns the record's JSON size and whether it was cut.
    pub fn fit(&mut self, max: usize) -> (usize, bool) {
        let len = json_len(self);
        if len <= max {
            return (len, false);
        }
        let primary = std::mem::take(&mut self.primary_prediction);
        let shadow = std::mem::take(&mut self.shadow_prediction);
        let base = json_len(self);
        // Each prediction gets half of what is left; its JSON text, quoted again as a
        // string, is at most twice as long (`"` and `\` are escaped), plus the
        // marker's own keys.
        let each = max.saturating_sub(base) / 2;
        let keep = each.saturating_sub(64) / 2;
        self.primary_prediction = truncated(&primary, keep);
        self.shadow_prediction = truncated(&shadow, keep);
        let len = json_len(self);
        if len > max {
            self.primary_prediction = truncated(&primary, 0);
            self.shadow_prediction = truncated(&shadow, 0);
        }
        (json_len(self), true)
    }
}

/// The marker that replaces a cut prediction: its size and the first `keep` bytes
/// of its JSON (cut on a character boundary).
fn truncated(v: &Value, keep: usize) -> Value {
    let text = v.to_string();
    let mut end = keep.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    serde_json::json!({
        "truncated_from_bytes": text.len(),
        "prefix": text.get(..end).unwrap_or(""),
    })
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
    fn oversize_records_are_cut_to_fit() {
        let mut r = record();
        assert_eq!(r.fit(MAX_RECORD_BYTES), (json_len(&record()), false));
        assert_eq!(r, record());
        let big = json!([(0..40_000).map(|i| f64::from(i) / 7.0).collect::<Vec<_>>()]);
        let quotes = json!(["\"\\".repeat(100_000)]);
        for (p, s) in [(big.clone(), big.clone()), (quotes.clone(), json!([[0.5]]))] {
            let mut r = ShadowRecord {
                primary_prediction: p.clone(),
                shadow_prediction: s,
                ..record()
            };
            let (len, cut) = r.fit(MAX_RECORD_BYTES);
            assert!(cut);
            assert_eq!(len, serde_json::to_vec(&r).unwrap().len());
            assert!(len <= MAX_RECORD_BYTES, "{len}");
            let from = r.primary_prediction["truncated_from_bytes"]
                .as_u64()
                .unwrap();
            assert_eq!(from as usize, p.to_string().len());
            let prefix = r.primary_prediction["prefix"].as_str().unwrap();
            assert!(prefix.len() > 1000 && p.to_string().starts_with(prefix));
            // Everything else is intact.
            assert_eq!(
                (r.correlation_id.as_str(), r.verdict),
                ("cid-12345678", Verdict::PredictionMismatch)
            );
        }
        // Smaller than the record's own fields: the predictions go, the rest stays.
        let mut r = ShadowRecord {
            primary_prediction: big,
            ..record()
        };
        let (len, cut) = r.fit(10);
        assert!(cut && len > 10);
        assert_eq!(r.primary_prediction["prefix"], "");
    }

    #[test]
    fn batches_are_split_by_bytes_below_the_sidecar_limit() {
        const _: () = assert!(MAX_POST_BYTES < MAX_INGEST_BODY);
        const _: () = assert!(MAX_RECORD_BYTES + BATCH_ENVELOPE_BYTES < MAX_POST_BYTES);
        assert_eq!(batch_len([]), 0);
        assert_eq!(batch_len([10; 5]), 5);
        assert_eq!(batch_len(vec![10; MAX_BATCH + 5]), MAX_BATCH);
        let n = batch_len(vec![MAX_RECORD_BYTES; 100]);
        assert_eq!(
            n,
            (MAX_POST_BYTES - BATCH_ENVELOPE_BYTES + 1) / (MAX_RECORD_BYTES + 1)
        );
        // Whatever the sizes, the body of the leading `n` fits.
        let records: Vec<ShadowRecord> = (0..60)
            .map(|i| {
                let mut r = ShadowRecord {
                    primary_prediction: json!(["x".repeat(2000 * i)]),
                    ..record()
                };
                r.fit(MAX_RECORD_BYTES);
                r
            })
            .collect();
        let mut rest = records.as_slice();
        let mut posts = 0;
        while !rest.is_empty() {
            let n = batch_len(rest.iter().map(json_len));
            assert!(n >= 1);
            let (head, tail) = rest.split_at(n);
            let body = serde_json::to_vec(&ShadowRecordBatch {
                proxy: Some("p".repeat(MAX_PROXY_ID_LEN)),
                records: head.to_vec(),
            })
            .unwrap();
            assert!(body.len() <= MAX_POST_BYTES, "{}", body.len());
            rest = tail;
            posts += 1;
        }
        assert!(
            posts > 1,
            "60 records of up to 118 kB need more than one post"
        );
        // Assignments are bounded by their fields: a full batch of the largest fits.
        let largest = Assignment {
            correlation_id: "c".repeat(crate::correlation::MAX_LEN),
            rollout: "r".repeat(crate::fields::MAX_NAME_LEN),
            variant: "v".repeat(crate::fields::MAX_NAME_LEN),
            unix_ms: u64::MAX,
        };
        let body = serde_json::to_vec(&AssignmentBatch {
            proxy: Some("p".repeat(MAX_PROXY_ID_LEN)),
            assignments: vec![largest; MAX_BATCH],
        })
        .unwrap();
        assert!(body.len() <= MAX_POST_BYTES, "{}", body.len());
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
