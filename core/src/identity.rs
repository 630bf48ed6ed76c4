//! Identity Envoy has verified, read through proxy-wasm properties: the claims of a
//! JWT that `jwt_authn` checked (`payload_in_metadata`, under the filter's dynamic
//! metadata) and the mTLS peer certificate of the downstream connection. A client
//! cannot set either: the claims exist only when the token's signature, issuer and
//! expiry held, the peer fields only when the TLS handshake verified the certificate.
//!
//! What the host returns is decoded here (pure): a string claim is its bytes; a list
//! claim (`groups`) is serialized by Envoy like a header map (`u32` count, then per
//! entry `u32` key length and `u32` value length, then each key and value followed by
//! a NUL byte) with the elements as keys and empty values. Values are bounded: a claim
//! longer than [`MAX_CLAIM_BYTES`] or with more than [`MAX_CLAIM_VALUES`] elements is
//! treated as absent.

use crate::error::ConfigError;

/// The dynamic-metadata namespace `jwt_authn` writes verified payloads under.
pub const JWT_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// The largest claim (as the host returns it) the filter reads.
pub const MAX_CLAIM_BYTES: usize = 4096;
/// The most elements of a list claim the filter reads.
pub const MAX_CLAIM_VALUES: usize = 64;

/// A field of the downstream peer's certificate (Envoy's connection attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The first URI SAN (a SPIFFE id in a mesh).
    UriSan,
    /// The first DNS SAN.
    DnsSan,
    /// The certificate's subject.
    Subject,
}

impl Peer {
    /// Parses a configured name (`uri_san`, `dns_san`, `subject`); errors name `field`.
    pub fn parse(field: &str, name: &str) -> Result<Peer, ConfigError> {
        match name {
            "uri_san" => Ok(Peer::UriSan),
            "dns_san" => Ok(Peer::DnsSan),
            "subject" => Ok(Peer::Subject),
            other => Err(ConfigError::new(
                field,
                format!("unknown peer field {other:?}: one of uri_san, dns_san, subject"),
            )),
        }
    }

    /// The property path the host answers it at.
    pub fn path(self) -> [&'static str; 2] {
        let attr = match self {
            Peer::UriSan => "uri_san_peer_certificate",
            Peer::DnsSan => "dns_san_peer_certificate",
            Peer::Subject => "subject_peer_certificate",
        };
        ["connection", attr]
    }
}

/// The property path of claim `claim` of the payload `jwt_authn` stored under `key`
/// (its provider's `payload_in_metadata`; under Istio's RequestAuthentication, the issuer).
pub fn claim_path<'a>(key: &'a str, claim: &'a str) -> [&'a str; 5] {
    ["metadata", "filter_metadata", JWT_NAMESPACE, key, claim]
}

/// A verified claim's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Text(String),
    List(Vec<String>),
}

impl Claim {
    /// Decodes what the host returned for a claim; `None` when absent, oversized or
    /// not text.
    pub fn decode(bytes: &[u8]) -> Option<Claim> {
        if bytes.len() > MAX_CLAIM_BYTES {
            return None;
        }
        if let Some(list) = decode_list(bytes) {
            return Some(Claim::List(list));
        }
        std::str::from_utf8(bytes)
            .ok()
            .map(|s| Claim::Text(s.to_string()))
    }

    /// The value as a subject key: a non-empty text claim only.
    pub fn as_key(&self) -> Option<&str> {
        match self {
            Claim::Text(s) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    /// A text claim equal to `v`, or a list claim with an element equal to `v`.
    pub fn contains(&self, v: &str) -> bool {
        match self {
            Claim::Text(s) => s == v,
            Claim::List(l) => l.iter().any(|x| x == v),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at.checked_add(4)?)?;
    let mut w = [0u8; 4];
    w.copy_from_slice(s);
    usize::try_from(u32::from_le_bytes(w)).ok()
}

/// Envoy's serialization of a list: a pairs map whose keys are the elements and whose
/// values are empty. Exact: every length must add up to the buffer, else it is not a
/// list (an object claim, serialized with values, is none either).
fn decode_list(b: &[u8]) -> Option<Vec<String>> {
    let n = u32_at(b, 0)?;
    if n > MAX_CLAIM_VALUES {
        return None;
    }
    let mut lens = Vec::with_capacity(n);
    for i in 0..n {
        let at = 4 + i * 8;
        lens.push((u32_at(b, at)?, u32_at(b, at + 4)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (k, v) in lens {
        let key = b.get(at..at.checked_add(k)?)?;
        at += k;
        if b.get(at) != Some(&0) {
            return None;
        }
        // a list's entries carry no value; a map (an object claim) is not a list
        if v != 0 {
            return None;
        }
        at += 1;
        if b.get(at) != Some(&0) {
            return None;
        }
        at += 1;
        out.push(std::str::from_utf8(key).ok()?.to_string());
    }
    (at == b.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(keys: &[&str]) -> Vec<u8> {
        let mut b = (keys.len() as u32).to_le_bytes().to_vec();
        for k in keys {
            b.extend((k.len() as u32).to_le_bytes());
            b.extend(0u32.to_le_bytes());
        }
        for k in keys {
            b.extend(k.as_bytes());
            b.extend([0, 0]);
        }
        b
    }

    #[test]
    fn text_and_list_claims() {
        assert_eq!(Claim::decode(b"alice"), Some(Claim::Text("alice".into())));
        let g = Claim::decode(&pairs(&["staff", "testers"])).unwrap();
        assert_eq!(g, Claim::List(vec!["staff".into(), "testers".into()]));
        assert!(g.contains("testers") && !g.contains("test") && g.as_key().is_none());
        assert_eq!(Claim::decode(&pairs(&[])), Some(Claim::List(vec![])));
        assert!(Claim::Text("x".into()).contains("x"));
        assert_eq!(Claim::Text(String::new()).as_key(), None);
    }

    #[test]
    fn bounded_and_exact() {
        assert_eq!(Claim::decode(&vec![b'a'; MAX_CLAIM_BYTES + 1]), None);
        let many: Vec<String> = (0..=MAX_CLAIM_VALUES).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        // too many elements: not read as a list (and not valid text either)
        assert!(!matches!(
            Claim::decode(&pairs(&refs)),
            Some(Claim::List(_))
        ));
        // an object claim (values present) is no list
        let mut map = 1u32.to_le_bytes().to_vec();
        map.extend(7u32.to_le_bytes());
        map.extend(1u32.to_le_bytes());
        map.extend(b"testers\0x\0");
        assert!(!matches!(Claim::decode(&map), Some(Claim::List(_))));
        // a truncated list is no list
        let mut b = pairs(&["a", "b"]);
        b.pop();
        assert!(!matches!(Claim::decode(&b), Some(Claim::List(_))));
        assert_eq!(Claim::decode(&[0xff, 0xfe]), None);
    }

    #[test]
    fn peer_fields() {
        assert_eq!(
            Peer::parse("p", "uri_san").unwrap().path(),
            ["connection", "uri_san_peer_certificate"]
        );
        let e = Peer::parse("subject.peer", "spiffe").unwrap_err();
        assert_eq!(e.field, "subject.peer");
    }
}
