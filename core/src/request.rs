//! What the decision needs to know about a request, fetched lazily: the filter
//! implements `RequestHeaders` over host calls, tests over a map.

use crate::identity::{Claim, Peer};

/// Lower-case header lookups; each distinct header is fetched at most once. The
/// verified identity (`crate::identity`) is read only when a configuration names it;
/// a source without one (tests over headers alone) has none.
pub trait RequestHeaders {
    fn header(&mut self, name: &str) -> Option<String>;
    /// Claim `name` of the verified JWT payload, if the request carried a valid token.
    fn claim(&mut self, _name: &str) -> Option<Claim> {
        None
    }
    /// A field of the verified mTLS peer certificate.
    fn peer(&mut self, _field: Peer) -> Option<String> {
        None
    }
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b="2"`).
pub fn cookie_value<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    cookie_header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        if k.trim() != name {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(v);
        Some(v)
    })
}

/// A small, bounded cache of fetched headers for one request.
pub struct CachedHeaders<F: FnMut(&str) -> Option<String>> {
    fetch: F,
    seen: Vec<(String, Option<String>)>,
}

/// Distinct headers cached per request; beyond this they are fetched again.
const MAX_CACHED: usize = 16;

impl<F: FnMut(&str) -> Option<String>> CachedHeaders<F> {
    pub fn new(fetch: F) -> Self {
        CachedHeaders {
            fetch,
            seen: Vec::new(),
        }
    }
}

impl<F: FnMut(&str) -> Option<String>> RequestHeaders for CachedHeaders<F> {
    fn header(&mut self, name: &str) -> Option<String> {
        if let Some((_, v)) = self.seen.iter().find(|(n, _)| n == name) {
            return v.clone();
        }
        let v = (self.fetch)(name);
        if self.seen.len() < MAX_CACHED {
            self.seen.push((name.to_string(), v.clone()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies() {
        let h = "a=1; uid=\"u-42\"; b = 3";
        assert_eq!(cookie_value(h, "uid"), Some("u-42"));
        assert_eq!(cookie_value(h, "b"), Some("3"));
        assert_eq!(cookie_value(h, "c"), None);
        assert_eq!(cookie_value("xuid=1", "uid"), None);
    }

    #[test]
    fn cache_fetches_once() {
        let mut calls = 0;
        let mut c = CachedHeaders::new(|n: &str| {
            calls += 1;
            (n == "x").then(|| "1".to_string())
        });
        assert_eq!(c.header("x").as_deref(), Some("1"));
        assert_eq!(c.header("x").as_deref(), Some("1"));
        assert_eq!(c.header("y"), None);
        assert_eq!(c.header("y"), None);
        drop(c);
        assert_eq!(calls, 2);
    }
}
