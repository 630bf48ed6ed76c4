//! Prediction distributions: the `output.distribution` section of a rollout, which
//! declares the bins the filter counts every sampled prediction into, per variant
//! and for the shadow, so the sidecar can compare the candidate's distribution with
//! the stable's (`analysis::drift`).
//!
//! Two kinds of bins, exactly one per rollout:
//!
//! - `{"edges": [e0, e1, ..., ek]}` for scores: 2 to 33 finite, strictly increasing
//!   edges give k interval bins `[e_i, e_i+1)`, the last one closed `[e_k-1, e_k]`
//!   (numpy's `histogram` convention), plus an *underflow* bin (`x < e0`), an
//!   *overflow* bin (`x > ek`) and an *other* bin (a prediction that is not a finite
//!   number: null, NaN, a string, an object).
//! - `{"labels": ["fraud", "ok"]}` for classes: 1 to 32 distinct labels, plus an
//!   *other* bin (an unlisted label, or anything that is not a label). A boolean
//!   matches the label `true`/`false`, an integer its decimal text.
//!
//! Bins are numbered in that order and the number is what the stats carry (`bin`
//! label): edges: 0 underflow, 1..=k the intervals, k+1 overflow, k+2 other;
//! labels: 0..L-1 the labels in plan order, L other. A prediction that is a list
//! (Open Inference Protocol's `data` array) counts each element (nested lists
//! too), so the counts are of predictions, not answers. An answer without anything
//! at the pointer (or not JSON) counts nothing: `invalid_output_rate` judges it.

use serde::{Deserialize, Serialize};

use crate::answer::Prediction;
use crate::error::ConfigError;

/// Most interval bins (edges - 1) or labels.
pub const MAX_BINS: usize = 32;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 64;

/// `rollouts[].output.distribution`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edges: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

/// The compiled bins.
#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    /// Strictly increasing, finite, 2 to 33 of them.
    Edges(Vec<f64>),
    /// Distinct, 1 to 32 of them.
    Labels(Vec<String>),
}

impl DistributionSpec {
    pub fn compile(&self) -> Result<Distribution, ConfigError> {
        match (&self.edges, &self.labels) {
            (Some(edges), None) => compile_edges(edges),
            (None, Some(labels)) => compile_labels(labels),
            _ => Err(ConfigError::new(
                "",
                "needs exactly one of \"edges\" (score bins) or \"labels\" (classes)",
            )),
        }
    }
}

fn compile_edges(edges: &[f64]) -> Result<Distribution, ConfigError> {
    if edges.len() < 2 || edges.len() > MAX_BINS + 1 {
        return Err(ConfigError::new(
            "edges",
            format!(
                "must list 2 to {} edges (1 to {MAX_BINS} bins)",
                MAX_BINS + 1
            ),
        ));
    }
    let mut last: Option<f64> = None;
    for (i, e) in edges.iter().enumerate() {
        if !e.is_finite() {
            return Err(ConfigError::new(
                format!("edges[{i}]"),
                "must be a finite number",
            ));
        }
        if let Some(prev) = last {
            if *e <= prev {
                return Err(ConfigError::new(
                    format!("edges[{i}]"),
                    format!("{e} is not greater than the edge before it ({prev}): edges must increase strictly"),
                ));
            }
        }
        last = Some(*e);
    }
    Ok(Distribution::Edges(edges.to_vec()))
}

fn compile_labels(labels: &[String]) -> Result<Distribution, ConfigError> {
    if labels.is_empty() || labels.len() > MAX_BINS {
        return Err(ConfigError::new(
            "labels",
            format!("must list 1 to {MAX_BINS} labels"),
        ));
    }
    for (i, l) in labels.iter().enumerate() {
        let field = format!("labels[{i}]");
        if l.is_empty() || l.len() > MAX_LABEL_LEN || l.chars().any(char::is_control) {
            return Err(ConfigError::new(
                field,
                format!("must be 1 to {MAX_LABEL_LEN} bytes without control characters"),
            ));
        }
        if labels.iter().take(i).any(|o| o == l) {
            return Err(ConfigError::new(field, format!("duplicate label {l:?}")));
        }
    }
    Ok(Distribution::Labels(labels.to_vec()))
}

impl Distribution {
    /// Every bin, the special ones included: what the stats and the sidecar count.
    pub fn bins(&self) -> usize {
        match self {
            // underflow + (k intervals) + overflow + other
            Distribution::Edges(e) => e.len() + 2,
            Distribution::Labels(l) => l.len() + 1,
        }
    }

    /// The index of the `other` bin (always the last).
    pub fn other(&self) -> usize {
        self.bins() - 1
    }

    /// The bin of one finite number (edges) or label (labels).
    fn bin_of_number(&self, x: f64) -> usize {
        match self {
            Distribution::Edges(edges) => {
                if !x.is_finite() {
                    return self.other();
                }
                // j = how many edges are <= x
                let j = edges.partition_point(|e| *e <= x);
                let k = edges.len() - 1;
                if j == 0 {
                    0
                } else if j <= k {
                    j
                } else if edges.last().is_some_and(|last| x == *last) {
                    k
                } else {
                    k + 1
                }
            }
            Distribution::Labels(labels) => {
                // An integral number matches its decimal text ("0", "1", ...).
                if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e15 {
                    let text = format!("{}", x as i64);
                    return self.label_bin(labels, &text);
                }
                self.other()
            }
        }
    }

    fn label_bin(&self, labels: &[String], text: &str) -> usize {
        labels
            .iter()
            .position(|l| l == text)
            .unwrap_or(self.other())
    }

    /// Calls `count(bin)` once per prediction in `p` (each element of a list).
    pub fn observe(&self, p: &Prediction, count: &mut impl FnMut(usize)) {
        match (p, self) {
            (Prediction::List(items), _) => {
                for item in items {
                    self.observe(item, count);
                }
            }
            (Prediction::Number(x), _) => count(self.bin_of_number(*x)),
            (Prediction::Label(s), Distribution::Labels(labels)) => {
                count(self.label_bin(labels, s))
            }
            (Prediction::Bool(b), Distribution::Labels(labels)) => {
                count(self.label_bin(labels, if *b { "true" } else { "false" }))
            }
            _ => count(self.other()),
        }
    }

    /// The bin counts of `predictions` (a convenience for tests and tools).
    pub fn histogram<'a>(&self, predictions: impl IntoIterator<Item = &'a Prediction>) -> Vec<u64> {
        let mut counts = vec![0u64; self.bins()];
        for p in predictions {
            self.observe(p, &mut |b| {
                if let Some(c) = counts.get_mut(b) {
                    *c += 1;
                }
            });
        }
        counts
    }

    /// What each bin holds, for status and reasons: `< 0`, `[0, 0.1)`, ...,
    /// `[0.9, 1]`, `> 1`, `other`; or the labels and `other`.
    pub fn bin_names(&self) -> Vec<String> {
        match self {
            Distribution::Edges(edges) => {
                let mut names = Vec::with_capacity(self.bins());
                if let Some(first) = edges.first() {
                    names.push(format!("< {first}"));
                }
                let k = edges.len() - 1;
                for (i, w) in edges.windows(2).enumerate() {
                    if let [a, b] = w {
                        let close = if i + 1 == k { ']' } else { ')' };
                        names.push(format!("[{a}, {b}{close}"));
                    }
                }
                if let Some(last) = edges.last() {
                    names.push(format!("> {last}"));
                }
                names.push("other".to_string());
                names
            }
            Distribution::Labels(labels) => {
                let mut names = labels.clone();
                names.push("other".to_string());
                names
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<Distribution, ConfigError> {
        serde_json::from_str::<DistributionSpec>(json)
            .unwrap()
            .compile()
    }

    #[test]
    fn edges_follow_numpys_histogram_convention() {
        let d = spec(r#"{"edges":[0, 0.5, 1]}"#).unwrap();
        assert_eq!(d.bins(), 5);
        let bin = |x: f64| d.bin_of_number(x);
        assert_eq!(bin(-0.1), 0, "underflow");
        assert_eq!(bin(0.0), 1);
        assert_eq!(bin(0.49), 1);
        assert_eq!(bin(0.5), 2, "half-open: an edge starts its bin");
        assert_eq!(bin(1.0), 2, "the last bin is closed");
        assert_eq!(bin(1.000001), 3, "overflow");
        assert_eq!(bin(f64::NAN), 4);
        assert_eq!(
            d.bin_names(),
            ["< 0", "[0, 0.5)", "[0.5, 1]", "> 1", "other"]
        );
        // lists count every element; non-numbers go to other
        let p = Prediction::List(vec![
            Prediction::Number(0.2),
            Prediction::List(vec![Prediction::Number(0.7), Prediction::Null]),
            Prediction::NonFinite,
            Prediction::Label("x".into()),
        ]);
        assert_eq!(d.histogram([&p]), vec![0, 1, 1, 0, 3]);
    }

    #[test]
    fn labels_match_strings_booleans_and_integers() {
        let d = spec(r#"{"labels":["fraud","ok","1","true"]}"#).unwrap();
        assert_eq!(d.bins(), 5);
        let p = Prediction::List(vec![
            Prediction::Label("ok".into()),
            Prediction::Label("fraud".into()),
            Prediction::Label("unknown".into()),
            Prediction::Number(1.0),
            Prediction::Number(1.5),
            Prediction::Bool(true),
            Prediction::Null,
        ]);
        assert_eq!(d.histogram([&p]), vec![1, 1, 1, 1, 3]);
        assert_eq!(d.bin_names(), ["fraud", "ok", "1", "true", "other"]);
    }

    #[test]
    fn invalid_bins_name_the_field() {
        let cases = [
            (r#"{}"#, ""),
            (r#"{"edges":[0,1],"labels":["a"]}"#, ""),
            (r#"{"edges":[0]}"#, "edges"),
            (r#"{"edges":[0, 0.5, 0.5]}"#, "edges[2]"),
            (r#"{"edges":[1, 0]}"#, "edges[1]"),
            (r#"{"labels":[]}"#, "labels"),
            (r#"{"labels":["a","b","a"]}"#, "labels[2]"),
            (r#"{"labels":[""]}"#, "labels[0]"),
        ];
        for (json, field) in cases {
            assert_eq!(spec(json).unwrap_err().field, field, "{json}");
        }
        let many: Vec<String> = (0..=MAX_BINS + 1).map(|i| i.to_string()).collect();
        let e = spec(&format!(r#"{{"edges":[{}]}}"#, many.join(","))).unwrap_err();
        assert_eq!(e.field, "edges");
        let ok: Vec<String> = (0..=MAX_BINS).map(|i| i.to_string()).collect();
        assert_eq!(
            spec(&format!(r#"{{"edges":[{}]}}"#, ok.join(",")))
                .unwrap()
                .bins(),
            MAX_BINS + 3
        );
        let e = serde_json::from_str::<DistributionSpec>(r#"{"edge":[0,1]}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
