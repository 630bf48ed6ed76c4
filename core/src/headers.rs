//! Which HTTP headers the configuration may give a role, and why some never.
//!
//! The plugin configuration names headers the filter reads (the subject key, the
//! override, a targeting condition) and headers it writes (the correlation id and the
//! variant upstream and back to the client, the model metadata to the client; the
//! override header, which the filter also removes from requests when the override is
//! off). Some names must never take such a role:
//!
//! | refused | for | why |
//! |---|---|---|
//! | `:authority`, `:path`, any `:name` | every role | pseudo headers are the request line, not headers |
//! | `connection`, `keep-alive`, `te`, `trailer`, `transfer-encoding`, `upgrade`, `proxy-*` | every role | hop-by-hop: Envoy consumes them, they never reach the filter or the upstream as sent |
//! | `content-length`, `host`, `expect` | every role | message framing and routing, owned by Envoy (`host` is `:authority` in Envoy) |
//! | `authorization`, `cookie`, `set-cookie`, `www-authenticate` | written roles | credentials: the filter would overwrite, echo or strip them |
//! | `content-type`, `content-encoding`, `x-forwarded-*`, `x-envoy-*` | written roles | the body's meaning, the client's address and Envoy's own control headers |
//!
//! A header may take one role only: the filter writing a header it also reads as the
//! subject key (or removing the one it writes) would decide on its own output.
//!
//! Every refusal names the field: `correlation_header: "content-length" is a reserved
//! header (message framing, owned by Envoy)`.

use crate::error::ConfigError;
use crate::fields::check_header_name;

/// What the filter does with a header named in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Only read from requests (the subject key, a targeting condition).
    Read,
    /// Set, replaced or removed by the filter (correlation id, variant, override,
    /// model metadata).
    Write,
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1), plus `proxy-*` by prefix.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
/// Framing and routing, owned by Envoy.
const FRAMING: [&str; 3] = ["content-length", "host", "expect"];
/// Credentials, never written by the filter.
const CREDENTIALS: [&str; 4] = ["authorization", "cookie", "set-cookie", "www-authenticate"];
/// The body's meaning, never written by the filter.
const CONTENT: [&str; 2] = ["content-type", "content-encoding"];
/// Prefixes of headers Envoy owns or derives from the connection.
const WRITE_PREFIXES: [&str; 2] = ["x-envoy-", "x-forwarded-"];

/// Why `name` (lower case) may not take `role`, or `None` when it may.
pub fn refusal(name: &str, role: Role) -> Option<&'static str> {
    if name.starts_with(':') {
        return Some("is a pseudo header, not a header a role can use");
    }
    if HOP_BY_HOP.contains(&name) || name.starts_with("proxy-") {
        return Some("is a reserved header (hop-by-hop: Envoy consumes it)");
    }
    if FRAMING.contains(&name) {
        return Some("is a reserved header (message framing and routing, owned by Envoy)");
    }
    if role == Role::Read {
        return None;
    }
    if CREDENTIALS.contains(&name) {
        return Some("is a reserved header (credentials: the filter never writes them)");
    }
    if CONTENT.contains(&name) {
        return Some("is a reserved header (it describes the body)");
    }
    if WRITE_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Some("is a reserved header (owned by Envoy)");
    }
    None
}

/// A header name for `role`: a valid, non-reserved name, lower-cased.
pub fn check_role_header(field: &str, name: &str, role: Role) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    if let Some(why) = refusal(&lower, role) {
        return Err(ConfigError::new(field, format!("{lower:?} {why}")));
    }
    check_header_name(field, name)
}

/// Refuses the same header in two roles; `roles` are `(field, lower-case name)` in
/// the order the configuration is read, and the later field is named.
pub fn check_distinct(roles: &[(&str, &str)]) -> Result<(), ConfigError> {
    for (i, (field, name)) in roles.iter().enumerate() {
        let earlier = roles.get(..i).unwrap_or(&[]);
        if let Some((other, _)) = earlier.iter().find(|(_, n)| n == name) {
            return Err(ConfigError::new(
                *field,
                format!("{name:?} is already {other}: a header takes one role"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_for_every_role() {
        for name in [
            ":authority",
            ":path",
            "content-length",
            "Content-Length",
            "host",
            "connection",
            "transfer-encoding",
            "te",
            "upgrade",
            "keep-alive",
            "proxy-authorization",
            "proxy-connection",
        ] {
            for role in [Role::Read, Role::Write] {
                let e = check_role_header("f", name, role).unwrap_err();
                assert_eq!(e.field, "f");
                assert!(e.message.contains("reserved") || e.message.contains("pseudo"));
            }
        }
    }

    #[test]
    fn credentials_only_for_reading() {
        for name in [
            "authorization",
            "cookie",
            "set-cookie",
            "content-type",
            "x-envoy-upstream-rq-timeout-ms",
            "x-forwarded-for",
        ] {
            assert!(check_role_header("f", name, Role::Write).is_err(), "{name}");
            assert!(check_role_header("f", name, Role::Read).is_ok(), "{name}");
        }
        assert_eq!(
            check_role_header("f", "X-Request-Id", Role::Write).unwrap(),
            "x-request-id"
        );
        assert_eq!(
            check_role_header("correlation_header", "content-length", Role::Write)
                .unwrap_err()
                .to_string(),
            "correlation_header: \"content-length\" is a reserved header (message framing and routing, owned by Envoy)"
        );
    }

    #[test]
    fn one_role_per_header() {
        assert!(check_distinct(&[("a", "x"), ("b", "y")]).is_ok());
        let e = check_distinct(&[("a", "x"), ("b", "y"), ("c", "x")]).unwrap_err();
        assert_eq!(e.field, "c");
        assert!(e.message.contains("already a"));
    }
}
