//! Fault knobs of the demo model server: their validation and partial updates
//! (`POST /admin/faults`).

use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;

/// Largest accepted `latency_ms` / `latency_jitter_ms` (one hour).
pub const MAX_LATENCY_MS: u64 = 3_600_000;
/// Largest accepted `score_shift` in either direction (logits).
pub const MAX_SCORE_SHIFT: f64 = 20.0;

fn check_shift(field: &str, v: Option<f64>) -> Result<f64, FaultError> {
    match v {
        Some(s) if s.is_finite() && s.abs() <= MAX_SCORE_SHIFT => Ok(s),
        _ => Err(FaultError::field(
            field,
            format!("must be a number between -{MAX_SCORE_SHIFT} and {MAX_SCORE_SHIFT} (logits)"),
        )),
    }
}

/// The fault set in force. Serialized as-is by `GET /admin/faults`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Faults {
    /// Delay added to every infer call.
    pub latency_ms: u64,
    /// Extra uniform random delay in `[0, latency_jitter_ms]`.
    pub latency_jitter_ms: u64,
    /// Fraction of infer calls answered 500.
    pub error_rate: f64,
    /// Fraction of predictions replaced by NaN.
    pub nan_rate: f64,
    /// Fraction of predictions replaced by null.
    pub null_rate: f64,
    /// Fraction of inputs (by body hash) on which the prediction disagrees.
    pub disagree_rate: f64,
    /// Added to every prediction.
    pub bias: f64,
    /// Added to the logit of every prediction: shifts the score distribution while
    /// keeping every score inside (0, 1) (`predict::shift_score`).
    pub score_shift: f64,
    /// Infer calls never answer.
    pub hang: bool,
    /// Answer every infer call with this status and an error body.
    pub status: Option<u16>,
}

/// A rejected fault value; `field` names the offending knob.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultError {
    pub field: Option<String>,
    pub message: String,
}

impl FaultError {
    fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

impl fmt::Display for FaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for FaultError {}

/// Checks a rate knob: finite and within `[0, 1]`.
pub fn check_rate(field: &str, v: f64) -> Result<f64, FaultError> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(FaultError::field(field, "must be a number between 0 and 1"))
    }
}

fn check_latency(field: &str, v: u64) -> Result<u64, FaultError> {
    if v <= MAX_LATENCY_MS {
        Ok(v)
    } else {
        Err(FaultError::field(
            field,
            format!("must be at most {MAX_LATENCY_MS} ms"),
        ))
    }
}

fn check_status(v: u64) -> Result<u16, FaultError> {
    match u16::try_from(v) {
        Ok(code) if (200..=599).contains(&code) => Ok(code),
        _ => Err(FaultError::field(
            "status",
            "must be an HTTP status between 200 and 599, or null",
        )),
    }
}

impl Faults {
    /// Validates every knob (used for command-line values).
    pub fn validate(&self) -> Result<(), FaultError> {
        check_latency("latency_ms", self.latency_ms)?;
        check_latency("latency_jitter_ms", self.latency_jitter_ms)?;
        check_rate("error_rate", self.error_rate)?;
        check_rate("nan_rate", self.nan_rate)?;
        check_rate("null_rate", self.null_rate)?;
        check_rate("disagree_rate", self.disagree_rate)?;
        if !self.bias.is_finite() {
            return Err(FaultError::field("bias", "must be a finite number"));
        }
        check_shift("score_shift", Some(self.score_shift))?;
        if let Some(code) = self.status {
            check_status(u64::from(code))?;
        }
        Ok(())
    }

    /// Applies a partial update (a JSON object with any of the knobs) and
    /// returns the new fault set. Nothing is applied if any field is invalid
    /// or unknown.
    pub fn patched(&self, patch: &Value) -> Result<Faults, FaultError> {
        let Some(obj) = patch.as_object() else {
            return Err(FaultError {
                field: None,
                message: "body must be a JSON object".to_owned(),
            });
        };
        let mut next = self.clone();
        next.apply(obj)?;
        Ok(next)
    }

    fn apply(&mut self, obj: &Map<String, Value>) -> Result<(), FaultError> {
        for (key, v) in obj {
            let k = key.as_str();
            match k {
                "latency_ms" | "latency_jitter_ms" => {
                    let ms = v.as_u64().ok_or_else(|| {
                        FaultError::field(k, "must be a non-negative integer (milliseconds)")
                    })?;
                    let ms = check_latency(k, ms)?;
                    if k == "latency_ms" {
                        self.latency_ms = ms;
                    } else {
                        self.latency_jitter_ms = ms;
                    }
                }
                "error_rate" | "nan_rate" | "null_rate" | "disagree_rate" => {
                    let rate = v
                        .as_f64()
                        .ok_or_else(|| FaultError::field(k, "must be a number between 0 and 1"))
                        .and_then(|r| check_rate(k, r))?;
                    match k {
                        "error_rate" => self.error_rate = rate,
                        "nan_rate" => self.nan_rate = rate,
                        "null_rate" => self.null_rate = rate,
                        _ => self.disagree_rate = rate,
                    }
                }
                "bias" => {
                    self.bias = v
                        .as_f64()
                        .filter(|b| b.is_finite())
                        .ok_or_else(|| FaultError::field(k, "must be a finite number"))?;
                }
                "score_shift" => self.score_shift = check_shift(k, v.as_f64())?,
                "hang" => {
                    self.hang = v
                        .as_bool()
                        .ok_or_else(|| FaultError::field(k, "must be true or false"))?;
                }
                "status" => {
                    self.status = match v {
                        Value::Null => None,
                        _ => Some(
                            v.as_u64()
                                .ok_or_else(|| {
                                    FaultError::field(
                                        k,
                                        "must be an HTTP status between 200 and 599, or null",
                                    )
                                })
                                .and_then(check_status)?,
                        ),
                    };
                }
                _ => return Err(FaultError::field(k, "unknown field")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn partial_update_keeps_other_knobs() {
        let f = Faults {
            latency_ms: 5,
            ..Faults::default()
        };
        let g = f
            .patched(&json!({"error_rate": 0.5, "status": 503}))
            .unwrap();
        assert_eq!(g.latency_ms, 5);
        assert_eq!(g.error_rate, 0.5);
        assert_eq!(g.status, Some(503));
        let h = g.patched(&json!({"status": null})).unwrap();
        assert_eq!(h.status, None);
    }

    #[test]
    fn invalid_values_name_the_field() {
        let f = Faults::default();
        for (patch, field) in [
            (json!({"error_rate": 1.5}), "error_rate"),
            (json!({"nan_rate": -0.1}), "nan_rate"),
            (json!({"null_rate": "x"}), "null_rate"),
            (json!({"disagree_rate": 2}), "disagree_rate"),
            (json!({"latency_ms": -1}), "latency_ms"),
            (json!({"latency_jitter_ms": 1.5}), "latency_jitter_ms"),
            (json!({"bias": "high"}), "bias"),
            (json!({"score_shift": 21}), "score_shift"),
            (json!({"score_shift": "up"}), "score_shift"),
            (json!({"hang": 1}), "hang"),
            (json!({"status": 42}), "status"),
            (json!({"status": 70000}), "status"),
            (json!({"bogus": 1}), "bogus"),
        ] {
            let err = f.patched(&patch).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{patch}");
        }
        assert_eq!(f.patched(&json!([1])).unwrap_err().field, None);
    }

    #[test]
    fn validate_rejects_out_of_range() {
        let f = Faults {
            error_rate: 1.1,
            ..Faults::default()
        };
        assert_eq!(
            f.validate().unwrap_err().field.as_deref(),
            Some("error_rate")
        );
        assert!(Faults::default().validate().is_ok());
    }
}
