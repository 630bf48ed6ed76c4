//! Model metadata: what a variant serves, `rollouts[].variants[].model` in the plan.
//! It travels with the plan, so it is recorded in the sidecar's history with every
//! version, shown by status and the reports, and (with `echo.model` in the plugin
//! configuration) returned to clients as a response header whose value is
//! precomputed here: `name:version`.
//!
//! Owned by whoever writes the plan (an operator through the sidecar's API, or the
//! static plan); nothing a client or a model sends can change it. Every field is
//! bounded and checked, each refusal names its field:
//!
//! | field | rule |
//! |---|---|
//! | `name` | required, 1-128 characters of `[A-Za-z0-9._/-]` |
//! | `version` | required, 1-64 characters of `[A-Za-z0-9._+-]` |
//! | `uri` | optional, at most 512 bytes, no spaces or control characters, scheme one of [`URI_SCHEMES`] (`s3://bucket/model`, `models:/fraud/3` for MLflow's registry) |
//! | `image_digest` | optional, `sha256:` and 64 lower-case hex digits |
//! | `created` | optional, an RFC 3339 date-time (`2025-06-01T12:00:00Z`, offsets and fractions allowed) |
//! | `notes` | optional, at most 1024 bytes, no control characters but newlines and tabs |

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

pub const MAX_MODEL_NAME_LEN: usize = 128;
pub const MAX_MODEL_VERSION_LEN: usize = 64;
pub const MAX_URI_LEN: usize = 512;
pub const MAX_NOTES_LEN: usize = 1024;
/// The artifact URI schemes accepted: object stores, HTTPS, OCI registries, the
/// Hugging Face hub, Kubernetes volumes (KServe's `pvc://`), MLflow's registry.
pub const URI_SCHEMES: [&str; 8] = ["s3", "gs", "az", "https", "oci", "hf", "pvc", "models"];

/// `rollouts[].variants[].model`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

impl ModelSpec {
    /// Checks every field; returns the value of the echoed header (`name:version`).
    pub fn compile(&self) -> Result<String, ConfigError> {
        check_chars("name", &self.name, MAX_MODEL_NAME_LEN, b"._/-")?;
        check_chars("version", &self.version, MAX_MODEL_VERSION_LEN, b"._+-")?;
        if let Some(u) = &self.uri {
            check_uri("uri", u)?;
        }
        if let Some(d) = &self.image_digest {
            check_digest("image_digest", d)?;
        }
        if let Some(c) = &self.created {
            if !is_rfc3339(c) {
                return Err(ConfigError::new(
                    "created",
                    format!("{c:?} is not an RFC 3339 date-time (e.g. 2025-06-01T12:00:00Z)"),
                ));
            }
        }
        if let Some(n) = &self.notes {
            if n.len() > MAX_NOTES_LEN
                || n.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
            {
                return Err(ConfigError::new(
                    "notes",
                    format!(
                        "must be at most {MAX_NOTES_LEN} bytes without control characters (newlines and tabs allowed)"
                    ),
                ));
            }
        }
        Ok(format!("{}:{}", self.name, self.version))
    }
}

fn check_chars(field: &str, v: &str, max: usize, extra: &[u8]) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if !ok {
        let allowed: String = extra.iter().map(|b| char::from(*b)).collect();
        return Err(ConfigError::new(
            field,
            format!("{v:?} must be 1 to {max} characters of letters, digits and {allowed:?}"),
        ));
    }
    Ok(())
}

fn check_uri(field: &str, u: &str) -> Result<(), ConfigError> {
    if u.len() > MAX_URI_LEN || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            field,
            format!("must be at most {MAX_URI_LEN} bytes without spaces or control characters"),
        ));
    }
    let scheme = u.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    let rest = u.split_once(':').map_or("", |(_, r)| r);
    let known = scheme.as_deref().is_some_and(|s| URI_SCHEMES.contains(&s));
    // `models:/name/3` (MLflow) has one slash, the others an authority (`//`).
    let shaped = match scheme.as_deref() {
        Some("models") => rest.starts_with('/') && rest.len() > 1,
        _ => rest.starts_with("//") && rest.len() > 2,
    };
    if !known || !shaped {
        return Err(ConfigError::new(
            field,
            format!(
                "{u:?} is not a URI with one of the schemes {} (scheme://...)",
                URI_SCHEMES.join(", ")
            ),
        ));
    }
    Ok(())
}

fn check_digest(field: &str, d: &str) -> Result<(), ConfigError> {
    let hex = d.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ConfigError::new(
            field,
            format!("{d:?} is not sha256:<64 lower-case hex digits>"),
        ));
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)`, with the calendar checked (month
/// lengths, leap years); `t`/`z` in lower case and a space for `T` are allowed, as
/// RFC 3339 section 5.6 notes. Leap seconds (`:60`) are accepted.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter()
            .try_fold(0u32, |acc, d| Some(acc * 10 + u32::from(d - b'0')))
    };
    let at = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    let (Some(year), Some(month), Some(day)) = (num(0, 4), num(5, 2), num(8, 2)) else {
        return false;
    };
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ")) {
        return false;
    }
    let (Some(hour), Some(minute), Some(second)) = (num(11, 2), num(14, 2), num(17, 2)) else {
        return false;
    };
    if !(at(13, b":") && at(16, b":")) {
        return false;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days || hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let mut i = 19;
    if at(i, b".") {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            let (Some(oh), Some(om)) = (num(i + 1, 2), num(i + 4, 2)) else {
                return false;
            };
            at(i + 3, b":") && oh <= 23 && om <= 59 && i + 6 == b.len()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(json: &str) -> Result<String, ConfigError> {
        serde_json::from_str::<ModelSpec>(json).unwrap().compile()
    }

    #[test]
    fn a_full_model_compiles_to_its_header_value() {
        let header = model(
            r#"{"name":"fraud-xgb","version":"2.4.1","uri":"s3://models/fraud/2.4.1",
                "image_digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "created":"2025-06-01T12:00:00.123+02:00","notes":"retrained on May data\nAUC 0.91"}"#,
        )
        .unwrap();
        assert_eq!(header, "fraud-xgb:2.4.1");
        assert_eq!(
            model(r#"{"name":"org/model","version":"3","uri":"models:/fraud/3"}"#).unwrap(),
            "org/model:3"
        );
    }

    #[test]
    fn every_invalid_field_is_named() {
        let digest = "0123456789abcdef".repeat(4);
        let cases = [
            (r#"{"name":"","version":"1"}"#.to_string(), "name"),
            (r#"{"name":"a b","version":"1"}"#.to_string(), "name"),
            (r#"{"name":"a:b","version":"1"}"#.to_string(), "name"),
            (
                format!(r#"{{"name":"{}","version":"1"}}"#, "a".repeat(129)),
                "name",
            ),
            (r#"{"name":"a","version":"1 2"}"#.to_string(), "version"),
            (
                r#"{"name":"a","version":"1","uri":"http://x/m"}"#.to_string(),
                "uri",
            ),
            (
                r#"{"name":"a","version":"1","uri":"javascript:alert(1)"}"#.to_string(),
                "uri",
            ),
            (
                r#"{"name":"a","version":"1","uri":"s3:/bucket"}"#.to_string(),
                "uri",
            ),
            (
                r#"{"name":"a","version":"1","uri":"s3://b/m x"}"#.to_string(),
                "uri",
            ),
            (
                format!(
                    r#"{{"name":"a","version":"1","uri":"s3://{}"}}"#,
                    "b".repeat(600)
                ),
                "uri",
            ),
            (
                format!(r#"{{"name":"a","version":"1","image_digest":"{digest}"}}"#),
                "image_digest",
            ),
            (
                format!(
                    r#"{{"name":"a","version":"1","image_digest":"sha256:{}"}}"#,
                    digest.to_uppercase()
                ),
                "image_digest",
            ),
            (
                format!(
                    r#"{{"name":"a","version":"1","image_digest":"sha256:{}0"}}"#,
                    digest
                ),
                "image_digest",
            ),
            (
                r#"{"name":"a","version":"1","created":"2025-02-29T00:00:00Z"}"#.to_string(),
                "created",
            ),
            (
                r#"{"name":"a","version":"1","created":"2025-06-01"}"#.to_string(),
                "created",
            ),
            (
                r#"{"name":"a","version":"1","created":"2025-06-01T25:00:00Z"}"#.to_string(),
                "created",
            ),
            (
                r#"{"name":"a","version":"1","created":"2025-06-01T12:00:00"}"#.to_string(),
                "created",
            ),
            (
                r#"{"name":"a","version":"1","notes":"bell\u0007"}"#.to_string(),
                "notes",
            ),
            (
                format!(
                    r#"{{"name":"a","version":"1","notes":"{}"}}"#,
                    "n".repeat(1025)
                ),
                "notes",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(model(&json).unwrap_err().field, field, "{json}");
        }
        let e = serde_json::from_str::<ModelSpec>(r#"{"name":"a","version":"1","sha":"x"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        assert!(serde_json::from_str::<ModelSpec>(r#"{"name":"a"}"#).is_err());
    }

    #[test]
    fn rfc3339_dates() {
        for ok in [
            "2024-02-29T23:59:59Z",
            "2025-06-01t12:00:00z",
            "2025-06-01 12:00:00+00:00",
            "2025-12-31T23:59:60.5-08:30",
            "1999-01-01T00:00:00.000000001Z",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "",
            "2025-13-01T00:00:00Z",
            "2025-04-31T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2025-06-01T12:00:00.Z",
            "2025-06-01T12:00:00+0200",
            "2025-06-01T12:00:00Zjunk",
            "2025-6-01T12:00:00Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}
