//! Field validators shared by every section of the configuration and the plan
//! (`plan`, `shadow`, `policy`, `experiment`, `control`, `config`) and by the wire
//! types: names, header names, values, percentages, JSON pointers, sizes, Envoy
//! clusters and authorities.
//!
//! Why a module of its own: the sections are compiled by `plan.rs`, so they must not
//! import it back; both import these checks from here instead. Every check names
//! the offending field (relative to the section; `ConfigError::within` adds the path
//! of the section) and says what a valid value looks like.

use crate::error::ConfigError;

/// Longest rollout, variant or check name.
pub const MAX_NAME_LEN: usize = 63;
/// Longest matched value (path prefix, header value, rule name).
pub const MAX_VALUE_LEN: usize = 256;
/// Longest Envoy cluster name.
pub const MAX_CLUSTER_LEN: usize = 255;
/// Longest salt.
pub const MAX_SALT_LEN: usize = 128;
/// Largest integer a JSON reader that uses doubles (JavaScript, jq) reads exactly:
/// 2^53 - 1. Plan versions stay at or below it.
pub const MAX_JSON_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A control character: any byte below 0x20 (CR, LF, NUL, tab...) or DEL (0x7f).
/// Never in a header name or value, an authority or a path: CR/LF would split a
/// header or a request line.
pub fn has_control(v: &str) -> bool {
    v.bytes().any(|b| b < 0x20 || b == 0x7f)
}

/// Refuses a value with a control character (see [`has_control`]).
pub fn check_no_control(field: &str, v: &str) -> Result<(), ConfigError> {
    if has_control(v) {
        return Err(ConfigError::new(
            field,
            format!("{v:?} contains a control character (CR, LF, NUL, tab or DEL)"),
        ));
    }
    Ok(())
}

/// An integer every JSON reader reads exactly (at most [`MAX_JSON_SAFE_INTEGER`]).
pub fn check_json_safe(field: &str, v: u64) -> Result<(), ConfigError> {
    if v > MAX_JSON_SAFE_INTEGER {
        return Err(ConfigError::new(
            field,
            format!("{v} is above 2^53 - 1 ({MAX_JSON_SAFE_INTEGER}), the largest integer JSON readers keep exactly"),
        ));
    }
    Ok(())
}

/// Rejects documents that are not a JSON object before serde sees them (serde
/// would accept an array for a struct and report a confusing index).
pub fn expect_object(bytes: &[u8], what: &str) -> Result<(), ConfigError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        None => Err(ConfigError::new("", format!("the {what} is empty"))),
        Some(_) => Err(ConfigError::new(
            "",
            format!("the {what} must be a JSON object"),
        )),
    }
}

/// A name usable in a header value and an Envoy stat name segment.
pub fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ConfigError::new(
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ConfigError::new(
            field,
            format!("{name:?} may only contain letters, digits, '-' and '_'"),
        ));
    }
    Ok(())
}

/// A lower-cased HTTP header name (no pseudo headers). Which names a role may use
/// is `crate::headers`.
pub fn check_header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    check_no_control(field, name)?;
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN * 2
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        return Err(ConfigError::new(
            field,
            format!("{name:?} is not a valid HTTP header name"),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// A cookie name (the subject cookie, a targeting condition's cookie).
pub fn check_cookie_name(field: &str, name: &str) -> Result<(), ConfigError> {
    check_no_control(field, name)?;
    if name.is_empty() || name.len() > MAX_NAME_LEN * 2 || name.contains([';', '=', ' ']) {
        return Err(ConfigError::new(
            field,
            format!("{name:?} is not a cookie name"),
        ));
    }
    Ok(())
}

/// A JWT claim name or a metadata key: a segment of a property path (non-empty, no
/// control character: a NUL would split the path).
pub fn check_claim_name(field: &str, name: &str) -> Result<(), ConfigError> {
    check_no_control(field, name)?;
    if name.is_empty() || name.len() > MAX_NAME_LEN * 4 {
        return Err(ConfigError::new(
            field,
            format!("{name:?}: 1 to {} bytes", MAX_NAME_LEN * 4),
        ));
    }
    Ok(())
}

/// A correlation id as the filter keeps or mints them (`correlation::is_valid`).
pub fn check_correlation_id(field: &str, id: &str) -> Result<(), ConfigError> {
    if !crate::correlation::is_valid(id) {
        return Err(ConfigError::new(
            field,
            format!("{id:?} is not a correlation id (8 to 128 characters of [A-Za-z0-9._:-])"),
        ));
    }
    Ok(())
}

/// A matched value (a header value, a path prefix): at most [`MAX_VALUE_LEN`] bytes
/// without control characters.
pub fn check_value(field: &str, v: &str) -> Result<(), ConfigError> {
    check_no_control(field, v)?;
    if v.len() > MAX_VALUE_LEN {
        return Err(ConfigError::new(
            field,
            format!("longer than {MAX_VALUE_LEN} bytes"),
        ));
    }
    Ok(())
}

/// Converts a percentage with at most two decimals to basis points.
pub fn weight_to_bp(field: &str, w: f64) -> Result<u16, ConfigError> {
    if !w.is_finite() || !(0.0..=100.0).contains(&w) {
        return Err(ConfigError::new(
            field,
            format!("{w} is not between 0 and 100"),
        ));
    }
    let scaled = w * 100.0;
    let bp = scaled.round();
    if (scaled - bp).abs() > 1e-6 {
        return Err(ConfigError::new(
            field,
            format!("{w} has more than two decimals (resolution is 0.01 %)"),
        ));
    }
    // 0 <= bp <= 10000 here.
    Ok(bp as u16)
}

/// A fraction between 0 and 1, when given.
pub fn check_rate(field: &str, v: Option<f64>) -> Result<(), ConfigError> {
    match v {
        Some(r) if !(r.is_finite() && (0.0..=1.0).contains(&r)) => Err(ConfigError::new(
            field,
            "must be a fraction between 0 and 1",
        )),
        _ => Ok(()),
    }
}

/// A JSON pointer (RFC 6901), at most 256 bytes.
pub fn check_pointer(field: &str, p: &str) -> Result<(), ConfigError> {
    if !(p.is_empty() || p.starts_with('/')) || p.len() > 256 {
        return Err(ConfigError::new(
            field,
            format!("{p:?} is not a JSON pointer (RFC 6901: empty or starting with '/')"),
        ));
    }
    Ok(())
}

/// A body size limit: 1 byte to 8 MiB.
pub fn check_size(field: &str, v: usize) -> Result<(), ConfigError> {
    if !(1..=(8 << 20)).contains(&v) {
        return Err(ConfigError::new(
            field,
            "must be between 1 and 8388608 bytes",
        ));
    }
    Ok(())
}

/// An Envoy cluster name.
pub fn check_cluster(field: &str, cluster: &str) -> Result<(), ConfigError> {
    if cluster.is_empty() || cluster.len() > MAX_CLUSTER_LEN {
        return Err(ConfigError::new(
            field,
            format!("must be 1 to {MAX_CLUSTER_LEN} characters"),
        ));
    }
    Ok(())
}

/// An `:authority`: `host[:port]`.
pub fn check_authority(field: &str, authority: &str) -> Result<(), ConfigError> {
    check_no_control(field, authority)?;
    if authority.is_empty() || authority.contains([' ', '/']) {
        return Err(ConfigError::new(field, "must be a host[:port]"));
    }
    Ok(())
}

/// A request `:path`.
pub fn check_path(field: &str, path: &str) -> Result<(), ConfigError> {
    check_no_control(field, path)?;
    if !path.starts_with('/') || path.contains(' ') {
        return Err(ConfigError::new(
            field,
            "must start with '/' and contain no spaces",
        ));
    }
    Ok(())
}

/// A callout timeout: 10 ms to 60 s.
pub fn check_timeout_ms(field: &str, ms: u64) -> Result<(), ConfigError> {
    if !(10..=60_000).contains(&ms) {
        return Err(ConfigError::new(field, "must be between 10 and 60000"));
    }
    Ok(())
}

/// A hashing salt: 1 to [`MAX_SALT_LEN`] characters.
pub fn check_salt(field: &str, salt: &str) -> Result<(), ConfigError> {
    check_no_control(field, salt)?;
    if salt.is_empty() || salt.len() > MAX_SALT_LEN {
        return Err(ConfigError::new(
            field,
            format!("must be 1 to {MAX_SALT_LEN} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_headers() {
        assert!(check_name("n", "canary-2_b").is_ok());
        assert_eq!(check_name("n", "").unwrap_err().field, "n");
        assert!(check_name("n", "a b").is_err());
        assert!(check_name("n", &"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert_eq!(check_header_name("h", "X-User-Id").unwrap(), "x-user-id");
        assert!(check_header_name("h", ":path").is_err());
        assert!(check_cookie_name("c", "uid").is_ok());
        for bad in ["", "a;b", "a=b", "a b"] {
            assert_eq!(check_cookie_name("c", bad).unwrap_err().field, "c");
        }
    }

    #[test]
    fn weights_in_basis_points() {
        assert_eq!(weight_to_bp("w", 12.34).unwrap(), 1234);
        assert_eq!(weight_to_bp("w", 100.0).unwrap(), 10_000);
        assert!(weight_to_bp("w", 0.005).is_err());
        assert!(weight_to_bp("w", -1.0).is_err());
        assert!(weight_to_bp("w", f64::NAN).is_err());
    }

    #[test]
    fn documents_must_be_objects() {
        assert!(expect_object(b" {}", "plan").is_ok());
        assert_eq!(
            expect_object(b"", "plan").unwrap_err().message,
            "the plan is empty"
        );
        assert!(expect_object(b"[1]", "plan").is_err());
    }

    #[test]
    fn endpoints() {
        assert!(check_cluster("c", "rollout_control").is_ok());
        assert!(check_cluster("c", "").is_err());
        assert!(check_authority("a", "models:8080").is_ok());
        assert!(check_authority("a", "a/b").is_err());
        assert!(check_path("p", "/v1/plan").is_ok());
        assert!(check_path("p", "v1").is_err());
        assert!(check_timeout_ms("t", 9).is_err());
        assert!(check_salt("s", "").is_err());
        assert!(check_rate("r", Some(1.5)).is_err());
        assert!(check_rate("r", None).is_ok());
        assert!(check_pointer("p", "outputs").is_err());
        assert!(check_size("s", 0).is_err());
    }

    #[test]
    fn control_characters_are_refused_everywhere() {
        for bad in ["a\rb", "a\nb", "a\0b", "a\tb", "a\u{7f}b", "a\u{1b}b"] {
            let checks: [(&str, Result<(), ConfigError>); 7] = [
                ("h", check_header_name("h", bad).map(|_| ())),
                ("v", check_value("v", bad)),
                ("a", check_authority("a", bad)),
                ("p", check_path("p", &format!("/{bad}"))),
                ("s", check_salt("s", bad)),
                ("c", check_cookie_name("c", bad)),
                ("n", check_no_control("n", bad)),
            ];
            for (field, r) in checks {
                let e = r.unwrap_err();
                assert_eq!(e.field, field, "{bad:?}");
                assert!(e.message.contains("control character"), "{e}");
            }
        }
        assert!(
            check_value("v", "caf\u{e9}").is_ok(),
            "non-ASCII is not control"
        );
    }

    #[test]
    fn json_safe_integers() {
        assert!(check_json_safe("version", MAX_JSON_SAFE_INTEGER).is_ok());
        assert_eq!(MAX_JSON_SAFE_INTEGER, 9_007_199_254_740_991);
        let e = check_json_safe("version", MAX_JSON_SAFE_INTEGER + 1).unwrap_err();
        assert_eq!(e.field, "version");
        assert!(check_json_safe("version", u64::MAX).is_err());
    }
}
