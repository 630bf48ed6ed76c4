//! Errors of rollout-core.
//!
//! - [`ConfigError`]: configuration, plan and input validation. Every error names the
//!   offending field by its JSON path (`plan.rollouts[0].variants[1].weight`).
//! - [`UnknownRollout`]: a rollout name that is not in the plan. A type of its own
//!   because callers answer it differently (the sidecar's API: 404, not 400).
//! - [`OpError`]: what a plan transition (`crate::transitions`) fails with: one of
//!   the two above.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the offending field; empty for the document itself.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, seen from a document that embeds this one under `prefix`.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = join_path(prefix, &self.field);
        self
    }

    /// Converts a serde error that carries its path into a `ConfigError`.
    pub fn from_serde(err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = err.path().to_string();
        let field = if path == "." || path == "?" {
            String::new()
        } else {
            path
        };
        let inner = err.into_inner();
        ConfigError::new(field, strip_position(&inner.to_string()))
    }
}

/// serde_json appends " at line L column C"; the field path already says where.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg.get(..i).unwrap_or(msg).to_string(),
        None => msg.to_string(),
    }
}

pub(crate) fn join_path(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) if field.starts_with('[') => format!("{prefix}{field}"),
        (false, false) => format!("{prefix}.{field}"),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A rollout name that is not in the plan: `no rollout named "x" (rollouts: a, b)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRollout {
    pub name: String,
    /// The plan's rollouts, in plan order.
    pub known: Vec<String>,
}

impl UnknownRollout {
    /// `name` is not among `known` (the plan's rollout names).
    pub fn new<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Self {
        UnknownRollout {
            name: name.to_string(),
            known: known.into_iter().map(str::to_string).collect(),
        }
    }

    /// The field an API names for this error.
    pub const FIELD: &'static str = "rollout";
}

impl fmt::Display for UnknownRollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no rollout named {:?} (rollouts: {})",
            self.name,
            self.known.join(", ")
        )
    }
}

impl std::error::Error for UnknownRollout {}

/// Why a plan transition failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    /// The named rollout is not in the plan.
    UnknownRollout(UnknownRollout),
    /// The input, or the plan the transition would make, is invalid (or the rollout's
    /// state refuses the operation): the field says which.
    Invalid(ConfigError),
}

impl OpError {
    /// The field an API names: `rollout` for an unknown rollout.
    pub fn field(&self) -> &str {
        match self {
            OpError::UnknownRollout(_) => UnknownRollout::FIELD,
            OpError::Invalid(e) => &e.field,
        }
    }

    /// The message without the field.
    pub fn message(&self) -> String {
        match self {
            OpError::UnknownRollout(u) => u.to_string(),
            OpError::Invalid(e) => e.message.clone(),
        }
    }
}

impl From<ConfigError> for OpError {
    fn from(e: ConfigError) -> Self {
        OpError::Invalid(e)
    }
}

impl From<UnknownRollout> for OpError {
    fn from(e: UnknownRollout) -> Self {
        OpError::UnknownRollout(e)
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::UnknownRollout(u) => write!(f, "{}: {u}", UnknownRollout::FIELD),
            OpError::Invalid(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for OpError {}
