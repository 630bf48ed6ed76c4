//! The demo model's "inference": a deterministic reference prediction and the
//! deterministic disagreement rule.
//!
//! Both are documented in `demo/README.md` so tests (and people) can reproduce
//! them exactly from the request they sent:
//!
//! - reference prediction: `round6(sigmoid(0.1 * S))`, where `S` is the sum of
//!   every number in every `inputs[*].data` array (nested arrays are flattened,
//!   non-numbers ignored); an empty body or a body without inputs gives `S = 0`
//!   and so `0.5`.
//! - disagreement: `h = FNV-1a-64(raw request body bytes)`,
//!   `u = (h >> 11) / 2^53` (in `[0, 1)`); the input disagrees iff
//!   `u < disagree_rate`. A disagreeing prediction is shifted by exactly 0.5:
//!   `p - 0.5` if `p >= 0.5`, else `p + 0.5`.
//! - `score_shift` moves the score on the logit scale:
//!   `round6(sigmoid(logit(p) + score_shift))` (0 and 1 stay as they are), so the
//!   score distribution shifts while every score stays a valid probability.
//! - `bias` is added last, then the result is rounded to 6 decimals again.

use serde_json::Value;

/// FNV-1a 64-bit offset basis.
pub const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bit, over raw bytes.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// Maps a 64-bit hash to `[0, 1)` using its top 53 bits: `(h >> 11) / 2^53`.
pub fn unit_interval(h: u64) -> f64 {
    // Both values are exactly representable as f64 (< 2^53 and 2^53).
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The disagreement draw of a request body: `unit_interval(fnv1a64(body))`.
pub fn disagreement_draw(body: &[u8]) -> f64 {
    unit_interval(fnv1a64(body))
}

/// True when a model configured with `disagree_rate` answers this body with a
/// prediction that differs from the reference one.
pub fn disagrees(body: &[u8], disagree_rate: f64) -> bool {
    disagreement_draw(body) < disagree_rate
}

/// Rounds to 6 decimals (half away from zero).
pub fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// `round6(1 / (1 + exp(-0.1 * sum)))`.
pub fn reference_prediction(sum: f64) -> f64 {
    round6(1.0 / (1.0 + (-0.1 * sum).exp()))
}

/// The prediction a disagreeing model gives instead of `p`: shifted by 0.5,
/// staying inside `[0, 1]`.
pub fn disagreeing_prediction(p: f64) -> f64 {
    if p >= 0.5 {
        round6(p - 0.5)
    } else {
        round6(p + 0.5)
    }
}

/// `round6(sigmoid(logit(p) + shift))`; `p` outside (0, 1) or a zero shift is kept.
pub fn shift_score(p: f64, shift: f64) -> f64 {
    if shift == 0.0 || !(p > 0.0 && p < 1.0) {
        return p;
    }
    let logit = (p / (1.0 - p)).ln();
    round6(1.0 / (1.0 + (-(logit + shift)).exp()))
}

/// Sum of every number in every `inputs[*].data` of an OIP request body.
/// `Value::Null` (empty body) and bodies without `inputs` sum to 0.
pub fn sum_inputs(request: &Value) -> f64 {
    let Some(inputs) = request.get("inputs").and_then(Value::as_array) else {
        return 0.0;
    };
    inputs
        .iter()
        .filter_map(|input| input.get("data"))
        .map(sum_numbers)
        .sum()
}

fn sum_numbers(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::Array(items) => items.iter().map(sum_numbers).sum(),
        _ => 0.0,
    }
}

/// Prediction for a parsed body as a model with the given knobs computes it
/// (before the NaN/null output faults). Returns `(prediction, disagreed)`.
pub fn predict(
    request: &Value,
    raw_body: &[u8],
    disagree_rate: f64,
    score_shift: f64,
    bias: f64,
) -> (f64, bool) {
    let reference = reference_prediction(sum_inputs(request));
    let disagreed = disagrees(raw_body, disagree_rate);
    let base = if disagreed {
        disagreeing_prediction(reference)
    } else {
        reference
    };
    let base = shift_score(base, score_shift);
    let p = if bias == 0.0 {
        base
    } else {
        round6(base + bias)
    };
    (p, disagreed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fnv_known_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn unit_interval_bounds() {
        assert_eq!(unit_interval(0), 0.0);
        assert!(unit_interval(u64::MAX) < 1.0);
    }

    #[test]
    fn reference_values() {
        assert_eq!(reference_prediction(0.0), 0.5);
        let body = json!({"inputs": [{"name": "x", "data": [1.0, 2.0, [3.0, 4.0]]}, {"name": "y", "data": [true, "s"]}]});
        assert_eq!(sum_inputs(&body), 10.0);
        assert_eq!(reference_prediction(10.0), 0.731059);
        assert_eq!(sum_inputs(&Value::Null), 0.0);
    }

    #[test]
    fn disagreement_shifts_by_half() {
        assert_eq!(disagreeing_prediction(0.5), 0.0);
        assert_eq!(disagreeing_prediction(0.2), 0.7);
        assert_eq!(disagreeing_prediction(0.731059), 0.231059);
    }

    #[test]
    fn score_shift_moves_scores_on_the_logit_scale() {
        assert_eq!(shift_score(0.5, 0.0), 0.5);
        // sigmoid(0 + 1) = 0.7310585...
        assert_eq!(shift_score(0.5, 1.0), 0.731059);
        // scores are rounded to 6 decimals: shifting back lands within 1e-6
        assert!((shift_score(0.731059, -1.0) - 0.5).abs() <= 1.000_001e-6);
        assert_eq!(shift_score(0.0, 3.0), 0.0);
        assert_eq!(shift_score(1.0, -3.0), 1.0);
        let body = json!({"inputs": [{"data": [1.0, 2.0, 3.0, 4.0]}]});
        assert_eq!(predict(&body, b"", 0.0, 0.0, 0.0).0, 0.731059);
        let (p, _) = predict(&body, b"", 0.0, 2.0, 0.0);
        assert!(p > 0.95 && p < 1.0, "{p}");
    }

    #[test]
    fn rate_bounds() {
        assert!(!disagrees(b"anything", 0.0));
        assert!(disagrees(b"anything", 1.0));
    }
}
