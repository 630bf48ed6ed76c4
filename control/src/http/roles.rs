//! The roles of rollout-control's credentials, the access table (which role each
//! endpoint needs) and the credentials in force. The middleware that applies them is
//! [`crate::http::auth`] (its module doc has the role table).

use std::path::PathBuf;

use anyhow::bail;
use axum::http::Method;

use crate::util::token::TokenFile;

/// A credential's one role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Operator,
    Proxy,
    Feedback,
    Read,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Operator, Role::Proxy, Role::Feedback, Role::Read];

    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Proxy => "proxy",
            Role::Feedback => "feedback",
            Role::Read => "read",
        }
    }

    pub fn flag(self) -> String {
        format!("--{}-token-file", self.name())
    }
}

/// The token files of `serve`, one per role (each optional).
#[derive(Debug, Clone, Default)]
pub struct CredentialFiles {
    pub operator: Option<PathBuf>,
    pub proxy: Option<PathBuf>,
    pub feedback: Option<PathBuf>,
    pub read: Option<PathBuf>,
}

/// The credentials in force.
#[derive(Default)]
pub struct Credentials {
    files: Vec<(Role, TokenFile)>,
}

impl Credentials {
    /// Opens every configured file. A token found in two roles' files is refused: each
    /// credential has one role.
    pub fn open(files: &CredentialFiles) -> anyhow::Result<Credentials> {
        let mut out = Vec::new();
        for (role, path) in [
            (Role::Operator, &files.operator),
            (Role::Proxy, &files.proxy),
            (Role::Feedback, &files.feedback),
            (Role::Read, &files.read),
        ] {
            if let Some(p) = path {
                out.push((role, TokenFile::open(p)?));
            }
        }
        for (i, (ra, fa)) in out.iter().enumerate() {
            for (rb, fb) in out.iter().skip(i + 1) {
                let tb = fb.tokens();
                if fa.tokens().iter().any(|t| tb.contains(t)) {
                    bail!(
                        "the same token is in {} ({}) and {} ({}): each credential has one role",
                        fa.path().display(),
                        ra.flag(),
                        fb.path().display(),
                        rb.flag()
                    );
                }
            }
        }
        Ok(Credentials { files: out })
    }

    /// From token files already open (literal ones: [`TokenFile::fixed`]).
    pub fn from_files(files: Vec<(Role, TokenFile)>) -> Credentials {
        Credentials { files }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn has(&self, role: Role) -> bool {
        self.files.iter().any(|(r, _)| *r == role)
    }

    /// The role of a presented token; every configured token is compared.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let mut found = None;
        for (role, file) in &self.files {
            for t in file.tokens() {
                if constant_time_eq(presented, &t) && found.is_none() {
                    found = Some(*role);
                }
            }
        }
        found
    }
}

/// Who the middleware let through, for handlers whose effect depends on it (the plan
/// poll records a proxy only for [`Caller::may_identify_proxy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No credential is configured: everything is allowed.
    Unchecked,
    /// No valid token (on an open endpoint).
    Anonymous,
    Role(Role),
}

impl Caller {
    pub fn may_identify_proxy(self) -> bool {
        matches!(self, Caller::Unchecked | Caller::Role(Role::Proxy))
    }
}

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Open,
    /// The read role (or the operator's); open without a read credential.
    Read,
    Role(Role),
}

/// The access table. Unknown endpoints: reads need [`Need::Read`], anything else the
/// operator, so a new endpoint is closed until it is placed here.
pub fn need(method: &Method, path: &str) -> Need {
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    match (read, path) {
        (true, "/v1/plan" | "/live" | "/ready" | "/metrics") => Need::Open,
        (true, _) => Need::Read,
        (false, "/v1/shadow-records" | "/v1/assignments") => Need::Role(Role::Proxy),
        (false, "/v1/feedback") => Need::Role(Role::Feedback),
        (false, _) => Need::Role(Role::Operator),
    }
}

/// Byte-wise comparison whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        // Compare against b cyclically so the loop length depends on `a` only.
        let y = if b.is_empty() {
            0
        } else {
            b.get(i % b.len()).copied().unwrap_or(0)
        };
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secret2", b"secret"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(!constant_time_eq(b"x", b""));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn access_table() {
        assert_eq!(need(&Method::GET, "/v1/plan"), Need::Open);
        assert_eq!(need(&Method::PUT, "/v1/plan"), Need::Role(Role::Operator));
        assert_eq!(need(&Method::GET, "/v1/status"), Need::Read);
        assert_eq!(
            need(&Method::POST, "/v1/assignments"),
            Need::Role(Role::Proxy)
        );
        assert_eq!(
            need(&Method::POST, "/v1/shadow-records"),
            Need::Role(Role::Proxy)
        );
        assert_eq!(
            need(&Method::POST, "/v1/feedback"),
            Need::Role(Role::Feedback)
        );
        assert_eq!(
            need(&Method::POST, "/v1/experiments/x/reset"),
            Need::Role(Role::Operator)
        );
        assert_eq!(
            need(&Method::DELETE, "/v1/anything-new"),
            Need::Role(Role::Operator)
        );
    }
}
