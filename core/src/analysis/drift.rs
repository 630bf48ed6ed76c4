//! Prediction drift between two arms: the candidate's distribution of predictions
//! against the stable's over the same window (or the shadow's against the
//! primary's at a shadow-only step), from the bin counts the filter exports (see
//! `crate::distribution` for the bins).
//!
//! Two measures, named by the check's `method`:
//!
//! - **PSI**, the Population Stability Index:
//!   `PSI = sum_i (c_i - s_i) * ln(c_i / s_i)` over the bins, with `c_i` and `s_i`
//!   the candidate's and the stable's proportions. Conventions (credit scoring,
//!   where the index comes from): below 0.1 no significant shift, 0.1 to 0.25 a
//!   moderate shift, above 0.25 a major shift ([`PsiBand`]).
//!   *Smoothing*: an empty bin would make the index infinite, so bins empty in both
//!   arms are left out (they carry no information), and every remaining bin gets
//!   [`PSEUDO_COUNT`] = 0.5 added to its count in both arms before proportions are
//!   taken (Jeffreys' pseudo-count): `c_i = (C_i + 0.5) / (C + 0.5 m)` for `m` kept
//!   bins. Identical counts still give exactly 0.
//!   *Noise*: two samples of one distribution give PSI > 0 by chance; its expected
//!   value is about `(m - 1) * (1/C + 1/S)` for `C` and `S` predictions (a chi-square
//!   with m-1 degrees of freedom, scaled), e.g. 0.018 for 10 bins and 1,000
//!   predictions per arm, 0.36 for 10 bins and 50. Hence the check's default
//!   `min_samples` of [`DRIFT_MIN_SAMPLES`] per arm.
//! - **JS**, the Jensen-Shannon distance: the square root of the Jensen-Shannon
//!   divergence in base 2, `sqrt(H(M) - (H(C) + H(S)) / 2)` with `M = (C + S) / 2`,
//!   computed on the raw proportions (it is finite for empty bins, `0 log 0 = 0`). It
//!   lies in [0, 1]: 0 for identical distributions, 1 for disjoint ones. It equals
//!   `scipy.spatial.distance.jensenshannon(c, s, base=2)`.

use serde::{Deserialize, Serialize};

use crate::policy::DriftMethod;

/// Added to every kept bin of both arms before a PSI is taken.
pub const PSEUDO_COUNT: f64 = 0.5;
/// Predictions each arm needs in a window when a drift check gives no `min_samples`.
pub const DRIFT_MIN_SAMPLES: u64 = 1000;

/// The conventional reading of a PSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PsiBand {
    /// PSI < 0.1.
    None,
    /// 0.1 <= PSI <= 0.25.
    Moderate,
    /// PSI > 0.25.
    Major,
}

impl PsiBand {
    pub fn of(psi: f64) -> PsiBand {
        if psi < 0.1 {
            PsiBand::None
        } else if psi <= 0.25 {
            PsiBand::Moderate
        } else {
            PsiBand::Major
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PsiBand::None => "no shift",
            PsiBand::Moderate => "moderate shift",
            PsiBand::Major => "major shift",
        }
    }
}

fn total(counts: &[f64]) -> f64 {
    counts
        .iter()
        .filter(|c| c.is_finite() && **c > 0.0)
        .fold(0.0, |a, b| a + b)
}

/// A count as the measures read it: negative and non-finite counts are 0.
fn clean(c: Option<&f64>) -> f64 {
    match c {
        Some(c) if c.is_finite() && *c > 0.0 => *c,
        _ => 0.0,
    }
}

/// The PSI of `candidate` against `stable` (bin counts, same bins; a shorter vector
/// is read as zeros). `None` when either arm has no counts.
pub fn psi(candidate: &[f64], stable: &[f64]) -> Option<f64> {
    let (ct, st) = (total(candidate), total(stable));
    if ct <= 0.0 || st <= 0.0 {
        return None;
    }
    let n = candidate.len().max(stable.len());
    let kept: Vec<(f64, f64)> = (0..n)
        .map(|i| (clean(candidate.get(i)), clean(stable.get(i))))
        .filter(|(c, s)| *c > 0.0 || *s > 0.0)
        .collect();
    let m = kept.len() as f64;
    let (cd, sd) = (ct + PSEUDO_COUNT * m, st + PSEUDO_COUNT * m);
    let sum = kept.iter().fold(0.0, |acc, (c, s)| {
        let (pc, ps) = ((c + PSEUDO_COUNT) / cd, (s + PSEUDO_COUNT) / sd);
        acc + (pc - ps) * (pc / ps).ln()
    });
    Some(sum.max(0.0))
}

/// The Jensen-Shannon distance (base 2) between the two arms' distributions.
/// `None` when either arm has no counts.
pub fn js_distance(candidate: &[f64], stable: &[f64]) -> Option<f64> {
    let (ct, st) = (total(candidate), total(stable));
    if ct <= 0.0 || st <= 0.0 {
        return None;
    }
    let n = candidate.len().max(stable.len());
    // p log2(p / m), with 0 log 0 = 0
    let term = |p: f64, m: f64| if p > 0.0 { p * (p / m).log2() } else { 0.0 };
    let div = (0..n).fold(0.0, |acc, i| {
        let (p, q) = (clean(candidate.get(i)) / ct, clean(stable.get(i)) / st);
        let m = 0.5 * (p + q);
        acc + 0.5 * term(p, m) + 0.5 * term(q, m)
    });
    Some(div.max(0.0).sqrt())
}

/// The drift of `candidate` from `stable` by `method`.
pub fn drift(method: DriftMethod, candidate: &[f64], stable: &[f64]) -> Option<f64> {
    match method {
        DriftMethod::Psi => psi(candidate, stable),
        DriftMethod::Js => js_distance(candidate, stable),
    }
}

/// `PSI`, `JS distance`: how reasons name a method.
pub fn method_label(method: DriftMethod) -> &'static str {
    match method {
        DriftMethod::Psi => "PSI",
        DriftMethod::Js => "JS distance",
    }
}

/// What a drift check compared, for status and the analysis: the method, the two
/// arms (`candidate`/`stable`, or `shadow`/`primary`) and their bin counts over the
/// window (indexed like the rollout's bins, `Distribution::bin_names`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftDetail {
    pub method: DriftMethod,
    /// `candidate` or `shadow`.
    pub arm: String,
    /// `stable` or `primary`.
    pub reference: String,
    pub candidate_bins: Vec<f64>,
    pub stable_bins: Vec<f64>,
    /// The PSI's conventional reading (PSI only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band: Option<PsiBand>,
    /// What each bin holds (`[0, 0.1)`, `fraud`, `other`), when the reader knows the
    /// plan's bins (the sidecar fills it in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bin_names: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn identical_distributions_do_not_drift() {
        let a = [10.0, 30.0, 0.0, 60.0];
        assert_eq!(psi(&a, &a), Some(0.0));
        assert_eq!(js_distance(&a, &a), Some(0.0));
        // the same shape at another scale
        let b = [20.0, 60.0, 0.0, 120.0];
        assert!(psi(&b, &a).unwrap() < 0.002);
        assert!(js_distance(&b, &a).unwrap() < 1e-7);
        assert_eq!(psi(&[], &a), None);
        assert_eq!(js_distance(&a, &[0.0, 0.0]), None);
    }

    #[test]
    fn psi_by_hand() {
        // candidate 30/70, stable 50/50, no empty bins: smoothed proportions are
        // 30.5/101, 70.5/101 and 50.5/101, 50.5/101.
        let (c1, c2, s): (f64, f64, f64) = (30.5 / 101.0, 70.5 / 101.0, 50.5 / 101.0);
        let want = (c1 - s) * (c1 / s).ln() + (c2 - s) * (c2 / s).ln();
        assert!(close(psi(&[30.0, 70.0], &[50.0, 50.0]).unwrap(), want));
        // symmetric in the arms
        assert!(close(
            psi(&[50.0, 50.0], &[30.0, 70.0]).unwrap(),
            psi(&[30.0, 70.0], &[50.0, 50.0]).unwrap()
        ));
        // a bin empty in both arms is left out; trailing zeros change nothing
        assert_eq!(
            psi(&[30.0, 0.0, 70.0], &[50.0, 0.0, 50.0]),
            psi(&[30.0, 70.0], &[50.0, 50.0])
        );
        assert_eq!(
            psi(&[30.0, 70.0, 0.0], &[50.0, 50.0]),
            psi(&[30.0, 70.0], &[50.0, 50.0])
        );
        // a bin empty in one arm only stays finite
        let p = psi(&[0.0, 100.0], &[100.0, 0.0]).unwrap();
        assert!(p.is_finite() && p > 4.0, "{p}");
    }

    #[test]
    fn js_distance_by_hand_and_bounds() {
        // p = (1, 0), q = (0, 1): disjoint, distance 1
        assert!(close(js_distance(&[1.0, 0.0], &[0.0, 1.0]).unwrap(), 1.0));
        // p = (0.5, 0.5), q = (1, 0): m = (0.75, 0.25)
        let kl = |p: &[f64], m: &[f64]| -> f64 {
            p.iter()
                .zip(m)
                .filter(|(p, _)| **p > 0.0)
                .map(|(p, m)| p * (p / m).log2())
                .sum()
        };
        let m = [0.75, 0.25];
        let want = (0.5 * kl(&[0.5, 0.5], &m) + 0.5 * kl(&[1.0, 0.0], &m)).sqrt();
        assert!(close(js_distance(&[5.0, 5.0], &[8.0, 0.0]).unwrap(), want));
    }

    #[test]
    fn bands_follow_the_conventions() {
        assert_eq!(PsiBand::of(0.0), PsiBand::None);
        assert_eq!(PsiBand::of(0.099), PsiBand::None);
        assert_eq!(PsiBand::of(0.1), PsiBand::Moderate);
        assert_eq!(PsiBand::of(0.25), PsiBand::Moderate);
        assert_eq!(PsiBand::of(0.2501), PsiBand::Major);
    }

    #[test]
    fn a_shift_is_found_and_noise_stays_below_the_conventions() {
        // Ten bins; the stable arm uniform, the candidate shifted by two bins.
        let stable = [100.0; 10];
        let mut shifted = [0.0; 10];
        for (i, c) in shifted.iter_mut().enumerate() {
            *c = if i >= 2 { 125.0 } else { 0.0 };
        }
        let p = psi(&shifted, &stable).unwrap();
        assert!(PsiBand::of(p) == PsiBand::Major, "{p}");
        let j = js_distance(&shifted, &stable).unwrap();
        assert!(j > 0.3 && j < 1.0, "{j}");
        // sampling noise at 1,000 per arm (a fixed perturbation of +-3 %)
        let noisy: Vec<f64> = (0..10)
            .map(|i| if i % 2 == 0 { 103.0 } else { 97.0 })
            .collect();
        assert!(psi(&noisy, &stable).unwrap() < 0.01);
    }
}
