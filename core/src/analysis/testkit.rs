//! Builders shared by the analysis tests: policies and checks from JSON, windows of
//! a stable and a canary variant, the usual evaluation context.

use crate::policy::{CheckSpec, PolicySpec, ProgressSpec, ProgressState};

use super::checks::EvalContext;
use super::histogram::Histogram;
use super::window::{VariantWindow, WindowData};

/// Three steps (1 %, 5 % behind a gate, 100 %), failure limit 2, inconclusive limit 3.
pub const POLICY: &str = r#"{"steps":[{"weight":1,"min_duration_s":60,"min_requests":100},
    {"weight":5,"min_duration_s":60,"min_requests":100,"gate":true},
    {"weight":100,"min_duration_s":0,"min_requests":0}],
    "failure_limit":2,"inconclusive_limit":3}"#;

pub fn policy(json: &str) -> PolicySpec {
    serde_json::from_str(json).unwrap()
}

pub fn check(json: &str) -> CheckSpec {
    serde_json::from_str(json).unwrap()
}

/// `n` observations in `[v, v + 1)` for each `(v, n)`.
pub fn hist(values: &[(f64, f64)]) -> Histogram {
    let mut h = Histogram::default();
    for (v, n) in values {
        h.add(*v, v + 1.0, *n);
    }
    h
}

/// A variant's window: `requests` answers, `errors` of them 5xx, all at `latency_ms`,
/// every output checked and `invalid` of them invalid.
pub fn vw(requests: f64, errors: f64, latency_ms: f64, invalid: f64) -> VariantWindow {
    VariantWindow {
        requests,
        responses: [requests - errors, 0.0, 0.0, errors, 0.0],
        outputs_checked: requests,
        invalid_outputs: invalid,
        latency: hist(&[(latency_ms, requests)]),
    }
}

/// A 10 s window of `stable` and `canary`.
pub fn window(stable: VariantWindow, canary: VariantWindow) -> WindowData {
    let mut w = WindowData {
        span_s: 10.0,
        ..WindowData::default()
    };
    w.variants.insert("stable".into(), stable);
    w.variants.insert("canary".into(), canary);
    w
}

/// Canary against stable, traffic on both, no A/B verdict, no baselines.
pub fn ctx() -> EvalContext<'static> {
    EvalContext {
        stable: "stable",
        candidate: "canary",
        shadow_only: false,
        ab: None,
        stable_idle: false,
        baselines: None,
    }
}

pub fn progress(step: usize, state: ProgressState) -> ProgressSpec {
    ProgressSpec {
        step,
        state,
        since_ms: 1_000_000,
        note: None,
    }
}
