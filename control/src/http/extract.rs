//! Reading requests: body limits, JSON bodies whose errors name the field, query
//! strings, path versions and limits. Every rejection is a 400 (413 for a body over
//! its limit) in the API's error shape.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::Query;
use axum::http::StatusCode;
use rollout_core::ConfigError;
use serde::de::DeserializeOwned;

use crate::http::error::ApiError;

/// Largest request body accepted (413 beyond), except on the ingestion calls.
pub const MAX_BODY: usize = 1024 * 1024;
/// Largest body of an ingestion call (shadow records, assignments, feedback): the
/// one constant the filter splits its batches under (`rollout_core::wire`).
pub const MAX_INGEST_BODY: usize = rollout_core::wire::MAX_INGEST_BODY;

/// The body, or 413 beyond `limit` (the router's body limit for the route).
fn body_within(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than {limit} bytes")
        } else {
            e.body_text()
        };
        ApiError::new(status, "", message)
    })
}

/// The body of a plan change, or 413 beyond [`MAX_BODY`].
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body_within(body, MAX_BODY)
}

/// The body of an ingestion call, or 413 beyond [`MAX_INGEST_BODY`].
pub fn ingest_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body_within(body, MAX_INGEST_BODY)
}

/// A JSON object body; errors name the field (`records[3].agree`).
pub fn parse_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::bad_request(
                "",
                "the request body is empty: a JSON object is expected",
            ))
        }
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "",
                "the request body must be a JSON object",
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| name_missing_field(ConfigError::from_serde(e)))?;
    de.end()
        .map_err(|e| ApiError::bad_request("", format!("trailing data after the JSON: {e}")))?;
    Ok(value)
}

/// serde reports a missing field at its parent (`records[2]`): name the field itself
/// (`records[2].unix_ms`).
fn name_missing_field(mut e: ConfigError) -> ConfigError {
    let missing = e
        .message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
        .map(str::to_string);
    if let Some(name) = missing {
        e.field = if e.field.is_empty() {
            name
        } else {
            format!("{}.{name}", e.field)
        };
        e.message = "missing".to_string();
    }
    e
}

/// 400 for a query the extractor refused.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("", e.body_text()))
}

/// An optional unsigned query parameter.
pub fn parse_u64_param(field: &str, raw: Option<&str>) -> Result<Option<u64>, ApiError> {
    raw.map(|s| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(field, format!("{s:?} is not a whole number")))
    })
    .transpose()
}

/// `?limit=` from 1 to `max`; `default` without it.
pub fn parse_limit(raw: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "limit",
                format!("{s:?} is not a number from 1 to {max}"),
            )),
        },
    }
}

/// A plan version in a path: `12` or `v12`.
pub fn parse_version(raw: &str) -> Result<u64, ApiError> {
    raw.strip_prefix('v')
        .unwrap_or(raw)
        .parse::<u64>()
        .map_err(|_| ApiError::bad_request("version", format!("{raw:?} is not a plan version")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_limits() {
        assert_eq!(parse_version("v12").unwrap(), 12);
        assert_eq!(parse_version("12").unwrap(), 12);
        assert_eq!(parse_version("x").unwrap_err().field, "version");
        assert_eq!(parse_limit(None, 20, 300).unwrap(), 20);
        assert_eq!(parse_limit(Some("300"), 20, 300).unwrap(), 300);
        assert_eq!(parse_limit(Some("0"), 20, 300).unwrap_err().field, "limit");
        assert_eq!(
            parse_limit(Some("301"), 20, 300).unwrap_err().field,
            "limit"
        );
    }
}
