//! Answers of a model: predictions pulled by JSON pointer (tolerating the NaN and
//! Infinity tokens many ML servers emit), the health of an output, and the
//! comparison of a primary's answer with its shadow's. Pure logic.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::json_at;

/// Where the prediction is in an Open Inference Protocol answer.
pub const DEFAULT_POINTER: &str = "/outputs/0/data";
/// Default limit of a buffered body (an answer compared or checked, a request copied).
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

fn d_pointers() -> Vec<String> {
    vec![DEFAULT_POINTER.into()]
}
fn d_rel() -> f64 {
    1e-6
}
fn d_abs() -> f64 {
    1e-9
}
fn d_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

/// `rollouts[].shadow.compare`: how a primary's answer and its shadow's compare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareSpec {
    /// JSON pointers of the predictions in both answers.
    #[serde(default = "d_pointers")]
    pub pointers: Vec<String>,
    /// Numbers agree when |a-b| <= abs_tolerance + rel_tolerance * max(|a|,|b|).
    #[serde(default = "d_abs")]
    pub abs_tolerance: f64,
    #[serde(default = "d_rel")]
    pub rel_tolerance: f64,
    /// Primary answers larger than this are not compared (counted as skipped).
    #[serde(default = "d_max_body")]
    pub max_response_bytes: usize,
}

impl Default for CompareSpec {
    fn default() -> Self {
        CompareSpec {
            pointers: d_pointers(),
            abs_tolerance: d_abs(),
            rel_tolerance: d_rel(),
            max_response_bytes: d_max_body(),
        }
    }
}

/// A prediction pulled from an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    Number(f64),
    /// NaN or +-Infinity (literal tokens, or the strings "NaN"/"Infinity").
    NonFinite,
    Null,
    Label(String),
    Bool(bool),
    List(Vec<Prediction>),
    Other(String),
}

impl Prediction {
    /// The prediction a JSON value holds (NaN tokens as quoted by `parse_answer`).
    pub fn from_value(v: &Value) -> Prediction {
        match v {
            Value::Null => Prediction::Null,
            Value::Bool(b) => Prediction::Bool(*b),
            Value::Number(n) => n
                .as_f64()
                .map(Prediction::Number)
                .unwrap_or(Prediction::NonFinite),
            Value::String(s) if is_non_finite_token(s) => Prediction::NonFinite,
            Value::String(s) => Prediction::Label(s.clone()),
            Value::Array(a) => Prediction::List(a.iter().map(Prediction::from_value).collect()),
            Value::Object(_) => Prediction::Other(v.to_string()),
        }
    }

    /// JSON for records (NaN written as the string "NaN").
    pub fn to_json(&self) -> Value {
        match self {
            Prediction::Number(n) => serde_json::Number::from_f64(*n)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Prediction::NonFinite => Value::String("NaN".into()),
            Prediction::Null => Value::Null,
            Prediction::Label(s) => Value::String(s.clone()),
            Prediction::Bool(b) => Value::Bool(*b),
            Prediction::List(l) => Value::Array(l.iter().map(Prediction::to_json).collect()),
            Prediction::Other(s) => Value::String(s.clone()),
        }
    }
}

fn is_non_finite_token(s: &str) -> bool {
    matches!(s, "NaN" | "nan" | "Infinity" | "-Infinity" | "inf" | "-inf")
}

/// Parses an answer, tolerating the non-standard `NaN`, `Infinity` and
/// `-Infinity` tokens many ML servers emit (they become the strings "NaN" etc.).
pub fn parse_answer(body: &[u8]) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice(body) {
        return Some(v);
    }
    serde_json::from_slice(&quote_non_finite(body)).ok()
}

/// As [`parse_answer`], keeping only the subtrees at `pointers`: every lookup of
/// one of them finds what it finds in the whole answer (see [`json_at`]).
pub fn parse_answer_at(body: &[u8], pointers: &[&str]) -> Option<Value> {
    json_at::parse_at(body, pointers)
        .or_else(|| json_at::parse_at(&quote_non_finite(body), pointers))
}

/// What one parse of an answer found at each pointer asked for, tolerating NaN
/// tokens as [`parse_answer`] does, building only those values
/// ([`json_at::values_at`]): what the filter checks and compares.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Found<'p> {
    pointers: Vec<&'p str>,
    /// One value per pointer; `None`: not JSON (or not parsed).
    values: Option<Vec<Option<Value>>>,
}

impl<'p> Found<'p> {
    /// Parses `body` for the values at `pointers`.
    pub fn parse(body: &[u8], pointers: Vec<&'p str>) -> Self {
        let values = json_at::values_at(body, &pointers)
            .or_else(|| json_at::values_at(&quote_non_finite(body), &pointers));
        Found { pointers, values }
    }

    /// `None`: not JSON; `Some(None)`: nothing at `pointer` (or not asked for).
    fn at(&self, pointer: &str) -> Option<Option<&Value>> {
        let values = self.values.as_ref()?;
        Some(
            self.pointers
                .iter()
                .position(|p| *p == pointer)
                .and_then(|i| values.get(i)?.as_ref()),
        )
    }

    /// As [`health`] of the whole answer.
    pub fn health(&self, pointer: &str, min: Option<f64>, max: Option<f64>) -> Health {
        match self.at(pointer) {
            None => Health::Unparseable,
            Some(None) => Health::Missing,
            Some(Some(p)) => health_of(&Prediction::from_value(p), min, max),
        }
    }

    /// As [`prediction_at`] of the whole answer.
    pub fn prediction(&self, pointer: &str) -> Option<Prediction> {
        self.at(pointer).flatten().map(Prediction::from_value)
    }

    /// As [`extract`] from the whole answer.
    pub fn predictions(&self, pointers: &[String]) -> Vec<Option<Prediction>> {
        pointers.iter().map(|p| self.prediction(p)).collect()
    }
}

fn quote_non_finite(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        let rest = body.get(i..).unwrap_or(&[]);
        let token = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        match token {
            Some(t) => {
                out.push(b'"');
                out.extend_from_slice(t);
                out.push(b'"');
                i += t.len();
            }
            None => {
                if b == b'"' {
                    in_string = true;
                }
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Predictions at `pointers`; `None` where the pointer finds nothing.
pub fn extract(answer: Option<&Value>, pointers: &[String]) -> Vec<Option<Prediction>> {
    pointers
        .iter()
        .map(|p| {
            answer
                .and_then(|v| json_at::at(v, p))
                .map(Prediction::from_value)
        })
        .collect()
}

/// The prediction at `pointer`, if the answer has one there.
pub fn prediction_at(answer: Option<&Value>, pointer: &str) -> Option<Prediction> {
    answer
        .and_then(|v| json_at::at(v, pointer))
        .map(Prediction::from_value)
}

/// Health of one answer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Valid,
    /// Not JSON at all (after tolerating NaN tokens).
    Unparseable,
    /// The pointer finds nothing.
    Missing,
    Null,
    NaN,
    OutOfRange,
}

impl Health {
    /// The invalid kinds, in metric order.
    pub const INVALID: [Health; 5] = [
        Health::Unparseable,
        Health::Missing,
        Health::Null,
        Health::NaN,
        Health::OutOfRange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Valid => "valid",
            Health::Unparseable => "unparseable",
            Health::Missing => "missing",
            Health::Null => "null",
            Health::NaN => "nan",
            Health::OutOfRange => "out_of_range",
        }
    }

    pub fn invalid_index(self) -> Option<usize> {
        Health::INVALID.iter().position(|h| *h == self)
    }
}

/// Checks an answer's prediction at `pointer` (every element, for a list).
pub fn health(answer: Option<&Value>, pointer: &str, min: Option<f64>, max: Option<f64>) -> Health {
    let Some(v) = answer else {
        return Health::Unparseable;
    };
    match json_at::at(v, pointer) {
        None => Health::Missing,
        Some(p) => health_of(&Prediction::from_value(p), min, max),
    }
}

fn health_of(p: &Prediction, min: Option<f64>, max: Option<f64>) -> Health {
    match p {
        Prediction::Null => Health::Null,
        Prediction::NonFinite => Health::NaN,
        Prediction::Number(n) => {
            if min.is_some_and(|lo| *n < lo) || max.is_some_and(|hi| *n > hi) {
                Health::OutOfRange
            } else {
                Health::Valid
            }
        }
        Prediction::List(items) if items.is_empty() => Health::Missing,
        Prediction::List(items) => items
            .iter()
            .map(|i| health_of(i, min, max))
            .find(|h| *h != Health::Valid)
            .unwrap_or(Health::Valid),
        _ => Health::Valid,
    }
}

/// Do two predictions agree?
pub fn agree(a: &Prediction, b: &Prediction, abs_tol: f64, rel_tol: f64) -> bool {
    match (a, b) {
        (Prediction::Number(x), Prediction::Number(y)) => {
            (x - y).abs() <= abs_tol + rel_tol * x.abs().max(y.abs())
        }
        (Prediction::List(x), Prediction::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| agree(p, q, abs_tol, rel_tol))
        }
        (Prediction::Label(x), Prediction::Label(y)) => x == y,
        (Prediction::Bool(x), Prediction::Bool(y)) => x == y,
        (Prediction::Other(x), Prediction::Other(y)) => x == y,
        // Null and NaN never agree with anything: an invalid output is a disagreement.
        _ => false,
    }
}

/// The verdict of one comparison; on the wire (records) and in metric names as
/// `agree`, `status` and `prediction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    #[serde(rename = "agree")]
    Agree,
    /// Different status classes (e.g. 200 vs 503).
    #[serde(rename = "status")]
    StatusMismatch,
    /// Both 2xx, predictions differ (or one is missing/invalid).
    #[serde(rename = "prediction")]
    PredictionMismatch,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [
        Verdict::Agree,
        Verdict::StatusMismatch,
        Verdict::PredictionMismatch,
    ];
    /// The verdicts that are disagreements, in metric order.
    pub const DISAGREEMENTS: [Verdict; 2] = [Verdict::StatusMismatch, Verdict::PredictionMismatch];

    pub fn agrees(self) -> bool {
        self == Verdict::Agree
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Agree => "agree",
            Verdict::StatusMismatch => "status",
            Verdict::PredictionMismatch => "prediction",
        }
    }
}

/// Compares primary and shadow: status class first, then (both 2xx) every pointer.
pub fn compare(
    primary_status: u32,
    shadow_status: u32,
    primary: &[Option<Prediction>],
    shadow: &[Option<Prediction>],
    spec: &CompareSpec,
) -> Verdict {
    if primary_status / 100 != shadow_status / 100 {
        return Verdict::StatusMismatch;
    }
    if primary_status / 100 != 2 {
        return Verdict::Agree;
    }
    let all = primary.len() == shadow.len()
        && primary.iter().zip(shadow).all(|(p, s)| match (p, s) {
            (Some(p), Some(s)) => agree(p, s, spec.abs_tolerance, spec.rel_tolerance),
            _ => false,
        });
    if all {
        Verdict::Agree
    } else {
        Verdict::PredictionMismatch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_tokens_are_tolerated_outside_strings_only() {
        let v = parse_answer(
            br#"{"outputs":[{"data":[NaN, -Infinity, 1.5]}],"note":"NaN inside \"quotes\" NaN"}"#,
        )
        .unwrap();
        let p = extract(Some(&v), &["/outputs/0/data".into()]);
        assert_eq!(
            p[0],
            Some(Prediction::List(vec![
                Prediction::NonFinite,
                Prediction::NonFinite,
                Prediction::Number(1.5)
            ]))
        );
        assert_eq!(v["note"], "NaN inside \"quotes\" NaN");
        assert!(parse_answer(b"not json").is_none());
    }

    #[test]
    fn found_finds_what_the_whole_answer_holds() {
        let pointers = ["/outputs/0/data", "/outputs/1/data", "/label", "/missing"];
        let owned: Vec<String> = pointers.iter().map(|p| p.to_string()).collect();
        for body in [
            r#"{"outputs":[{"data":[0.5, NaN]},{"data":[null]}],"label":"cat"}"#,
            r#"{"outputs":[{"data":[-Infinity]}],"label":1.5e3}"#,
            r#"{"outputs":[],"note":"NaN"}"#,
            "<html>",
            "",
        ] {
            let whole = parse_answer(body.as_bytes());
            let found = Found::parse(body.as_bytes(), pointers.to_vec());
            assert_eq!(
                found.predictions(&owned),
                extract(whole.as_ref(), &owned),
                "{body}"
            );
            for p in pointers {
                assert_eq!(
                    found.health(p, Some(0.0), Some(1.0)),
                    health(whole.as_ref(), p, Some(0.0), Some(1.0)),
                    "{body} {p}"
                );
                assert_eq!(found.prediction(p), prediction_at(whole.as_ref(), p));
            }
        }
        // not parsed, or not asked for
        assert_eq!(
            Found::default().health("/a", None, None),
            Health::Unparseable
        );
        let found = Found::parse(br#"{"a":1}"#, vec!["/a"]);
        assert_eq!(found.prediction("/b"), None);
        assert_eq!(found.health("/b", None, None), Health::Missing);
    }

    #[test]
    fn health_kinds() {
        let h = |body: &str| {
            health(
                parse_answer(body.as_bytes()).as_ref(),
                "/outputs/0/data",
                Some(0.0),
                Some(1.0),
            )
        };
        assert_eq!(h(r#"{"outputs":[{"data":[0.5]}]}"#), Health::Valid);
        assert_eq!(h(r#"{"outputs":[{"data":[NaN]}]}"#), Health::NaN);
        assert_eq!(h(r#"{"outputs":[{"data":[null]}]}"#), Health::Null);
        assert_eq!(h(r#"{"outputs":[{"data":[1.5]}]}"#), Health::OutOfRange);
        assert_eq!(h(r#"{"outputs":[]}"#), Health::Missing);
        assert_eq!(h(r#"{"outputs":[{"data":[]}]}"#), Health::Missing);
        assert_eq!(h("<html>"), Health::Unparseable);
        assert_eq!(h(r#"{"outputs":[{"data":["cat"]}]}"#), Health::Valid);
    }

    #[test]
    fn comparison() {
        let c = CompareSpec {
            abs_tolerance: 0.01,
            rel_tolerance: 0.0,
            ..CompareSpec::default()
        };
        let n = |x: f64| Some(Prediction::List(vec![Prediction::Number(x)]));
        assert_eq!(
            compare(200, 200, &[n(0.5)], &[n(0.505)], &c),
            Verdict::Agree
        );
        assert_eq!(
            compare(200, 200, &[n(0.5)], &[n(0.52)], &c),
            Verdict::PredictionMismatch
        );
        assert_eq!(
            compare(200, 503, &[n(0.5)], &[None], &c),
            Verdict::StatusMismatch
        );
        assert_eq!(compare(500, 503, &[None], &[None], &c), Verdict::Agree);
        assert_eq!(
            compare(200, 200, &[n(0.5)], &[None], &c),
            Verdict::PredictionMismatch
        );
        let nan = Some(Prediction::List(vec![Prediction::NonFinite]));
        assert_eq!(
            compare(
                200,
                200,
                std::slice::from_ref(&nan),
                std::slice::from_ref(&nan),
                &c
            ),
            Verdict::PredictionMismatch
        );
        let l = |s: &str| Some(Prediction::Label(s.into()));
        assert_eq!(
            compare(200, 200, &[l("cat")], &[l("cat")], &c),
            Verdict::Agree
        );
        assert_eq!(
            compare(200, 200, &[l("cat")], &[l("dog")], &c),
            Verdict::PredictionMismatch
        );
        let two = |a: f64, b: f64| {
            Some(Prediction::List(vec![
                Prediction::Number(a),
                Prediction::Number(b),
            ]))
        };
        assert_eq!(
            compare(200, 200, &[two(1.0, 2.0)], &[n(1.0)], &c),
            Verdict::PredictionMismatch
        );
        let rel = CompareSpec {
            abs_tolerance: 0.0,
            rel_tolerance: 0.01,
            ..CompareSpec::default()
        };
        assert_eq!(
            compare(200, 200, &[n(1000.0)], &[n(1009.0)], &rel),
            Verdict::Agree
        );
    }
}
