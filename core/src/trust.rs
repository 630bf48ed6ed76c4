//! Which request inputs a plan's targeting and the subject key may read. A header is a
//! client's word unless the operator declares it trusted in the plugin configuration
//! (`trusted_headers`): removed from public traffic at the edge and set only by the
//! proxy itself or from a verified identity (e.g. `jwt_authn`'s `claim_to_headers`). A
//! cookie is always the client's. A verified identity read through properties
//! (`crate::identity`: a JWT claim, the mTLS peer certificate) is trusted; a claim needs
//! the plugin configuration to say where Envoy puts the payload (`jwt`). A condition on
//! anything else must say so (`"client_controlled": true`), or the plan is refused with
//! the field named: a client cannot pick its variant by sending a header nobody strips.

use crate::error::ConfigError;
use crate::plan::PlanSpec;

/// What the plugin configuration declares trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedSources {
    /// `trusted_headers`, lower-case.
    pub headers: Vec<String>,
    /// A verified JWT payload is available (`jwt.payload_in_metadata` is set).
    pub jwt: bool,
}

impl TrustedSources {
    pub fn header(&self, h: &str) -> bool {
        self.headers.iter().any(|x| x.eq_ignore_ascii_case(h))
    }
}

/// The error for a claim read without a configured JWT payload.
pub fn no_jwt(field: String, claim: &str) -> ConfigError {
    ConfigError::new(
        field,
        format!(
            "claim {claim} needs a verified token: set the plugin configuration's \
             jwt.payload_in_metadata (where Envoy's jwt_authn puts the payload)"
        ),
    )
}

/// Checks every targeting condition of `spec` against `trusted`.
pub fn check_targeting_sources(
    spec: &PlanSpec,
    trusted: &TrustedSources,
) -> Result<(), ConfigError> {
    for (i, r) in spec.rollouts.iter().enumerate() {
        for (j, t) in r.targeting.iter().enumerate() {
            for (k, c) in t.when.iter().enumerate() {
                let at = format!("rollouts[{i}].targeting[{j}].when[{k}]");
                if let Some(name) = &c.claim {
                    if !trusted.jwt {
                        return Err(no_jwt(format!("{at}.claim"), name));
                    }
                }
                if c.client_controlled {
                    continue;
                }
                if let Some(h) = &c.header {
                    if !trusted.header(h) {
                        return Err(ConfigError::new(
                            format!("{at}.header"),
                            format!(
                                "{h} is sent by clients: list it in the plugin configuration's \
                                 trusted_headers (stripped at the edge, set from a verified \
                                 identity) or mark the condition \"client_controlled\": true"
                            ),
                        ));
                    }
                }
                if let Some(name) = &c.cookie {
                    return Err(ConfigError::new(
                        format!("{at}.cookie"),
                        format!(
                            "cookie {name} is set by clients: mark the condition \
                             \"client_controlled\": true"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::parse_plan;

    fn plan(when: &str) -> PlanSpec {
        let doc = format!(
            r#"{{"version":1,"rollouts":[{{"name":"r","salt":"s",
            "variants":[{{"name":"a","weight":50}},{{"name":"b","weight":50}}],
            "targeting":[{{"variant":"b","when":[{{"header":"x-ok","present":true}},{when}]}}]}}]}}"#
        );
        parse_plan(doc.as_bytes()).unwrap().0
    }

    #[test]
    fn undeclared_headers_and_cookies_are_refused_with_the_field() {
        let trusted = TrustedSources {
            headers: vec!["x-ok".to_string(), "x-tester".to_string()],
            jwt: false,
        };
        assert!(check_targeting_sources(
            &plan(r#"{"header":"X-Tester","present":true}"#),
            &trusted
        )
        .is_ok());
        let e = check_targeting_sources(&plan(r#"{"header":"x-beta","present":true}"#), &trusted)
            .unwrap_err();
        assert_eq!(e.field, "rollouts[0].targeting[0].when[1].header");
        assert!(e.message.contains("x-beta"), "{e}");
        let e = check_targeting_sources(&plan(r#"{"cookie":"beta","equals":"1"}"#), &trusted)
            .unwrap_err();
        assert_eq!(e.field, "rollouts[0].targeting[0].when[1].cookie");
        let marked = r#"{"header":"x-beta","present":true,"client_controlled":true}"#;
        assert!(check_targeting_sources(&plan(marked), &trusted).is_ok());
        assert!(
            check_targeting_sources(&plan(marked), &TrustedSources::default()).is_err(),
            "x-ok is not trusted then"
        );
    }

    #[test]
    fn claims_need_a_configured_payload_and_peers_are_verified() {
        let mut trusted = TrustedSources {
            headers: vec!["x-ok".to_string()],
            jwt: false,
        };
        let groups = r#"{"claim":"groups","contains":"testers"}"#;
        let e = check_targeting_sources(&plan(groups), &trusted).unwrap_err();
        assert_eq!(e.field, "rollouts[0].targeting[0].when[1].claim");
        assert!(e.message.contains("jwt.payload_in_metadata"), "{e}");
        trusted.jwt = true;
        assert!(check_targeting_sources(&plan(groups), &trusted).is_ok());
        let peer = r#"{"peer":"uri_san","prefix":"spiffe://t/"}"#;
        assert!(check_targeting_sources(&plan(peer), &trusted).is_ok());
    }
}
