//! Always-valid A/B inference: the mixture sequential probability ratio test
//! (mSPRT) of Johari, Koomen, Pekelis and Walsh, "Peeking at A/B Tests: Why it
//! matters, and what to do about it" (KDD 2017).
//!
//! A fixed-horizon test is valid only when read once, at its horizon; reading it
//! after every batch and stopping at the first "significant" result inflates the
//! false-positive rate far above alpha. The mSPRT may be read after every outcome
//! and stopped as soon as it decides, and its false-positive rate stays at or below
//! alpha.
//!
//! For the difference of the two arms' means (conversion rates for 0/1 rewards)
//! `D = mean_treatment - mean_control`, with variance `V = s_c^2/n_c + s_t^2/n_t`
//! (sample variances plugged in; for conversion `p (1 - p)` per arm: the normal
//! approximation of a difference of proportions), the mixture likelihood ratio of
//! "difference 0" against a normal mixture `N(0, tau^2)` of alternatives is
//!
//! ```text
//! Lambda_n = sqrt(V / (V + tau^2)) * exp( tau^2 D^2 / (2 V (V + tau^2)) )
//! ```
//!
//! and the **always-valid p-value** is `p_n = min(p_(n-1), 1 / Lambda_n)`, `p_0 = 1`:
//! it never rises, and the test decides (difference significant) the first time
//! `p_n <= alpha`. The decision is kept with the figures at that moment (the
//! experiment stopped there), so later data cannot flip it.
//!
//! - `tau^2` (`mixture_variance`) is the variance of the effects the test is tuned
//!   for, in the metric's squared units. It changes how fast a true effect is found
//!   (it is most sensitive to effects around `tau`), never the false-positive rate.
//!   Default ([`DEFAULT_MIXTURE_SHARE`]): one hundredth of the pooled per-outcome
//!   variance, i.e. effects of about a tenth of a standard deviation (for a 10 %
//!   conversion rate: tau = 0.03).
//! - No look is taken before each arm has [`MIN_SEQUENTIAL_SAMPLES`] outcomes: the
//!   normal approximation and the plugged-in variances need that much.
//!
//! `tests/msprt.rs` simulates 1,000 A/A experiments read after every batch (the
//! false-positive rate stays within alpha plus Monte-Carlo error) and experiments
//! with a real effect (median stopping sample against the fixed-horizon size).

use crate::abtest::{z_critical, Summary};

/// Outcomes each arm needs before the first look.
pub const MIN_SEQUENTIAL_SAMPLES: u64 = 100;
/// Default `tau^2` as a share of the pooled per-outcome variance.
pub const DEFAULT_MIXTURE_SHARE: f64 = 0.01;

/// The natural log of the mixture likelihood ratio for a difference `diff` with
/// variance `var` (> 0) and mixture variance `tau2` (> 0).
pub fn log_likelihood_ratio(diff: f64, var: f64, tau2: f64) -> f64 {
    let total = var + tau2;
    0.5 * (var / total).ln() + tau2 * diff * diff / (2.0 * var * total)
}

/// The pooled per-outcome variance of two arms (their sample variances weighted by
/// their sizes): what the default `tau^2` is a share of.
fn pooled_variance(control: &Summary, treatment: &Summary) -> Option<f64> {
    let (vc, vt) = (control.variance()?, treatment.variance()?);
    let (nc, nt) = (control.n() as f64, treatment.n() as f64);
    Some((nc * vc + nt * vt) / (nc + nt))
}

/// The variance of the difference of the two arms' means (Welch, unpooled).
fn variance_of_difference(control: &Summary, treatment: &Summary) -> Option<f64> {
    let (vc, vt) = (control.variance()?, treatment.variance()?);
    Some(vc / control.n() as f64 + vt / treatment.n() as f64)
}

/// The state of the decision at the moment it was made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stopped {
    pub n_control: u64,
    pub n_treatment: u64,
    /// Treatment minus control, then.
    pub diff: f64,
    pub p_value: f64,
}

/// One sequential experiment: feed it the arms' summaries at every look.
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialTest {
    alpha: f64,
    /// `None`: [`DEFAULT_MIXTURE_SHARE`] of the pooled variance at each look.
    tau2: Option<f64>,
    p_value: f64,
    looks: u64,
    stopped: Option<Stopped>,
}

impl SequentialTest {
    pub fn new(alpha: f64, tau2: Option<f64>) -> Self {
        SequentialTest {
            alpha,
            tau2,
            p_value: 1.0,
            looks: 0,
            stopped: None,
        }
    }

    /// Looks at the data so far (cumulative summaries of both arms); returns the
    /// always-valid p-value. Once decided, further looks change nothing.
    pub fn look(&mut self, control: &Summary, treatment: &Summary) -> f64 {
        if self.stopped.is_some() {
            return self.p_value;
        }
        if control.n() < MIN_SEQUENTIAL_SAMPLES || treatment.n() < MIN_SEQUENTIAL_SAMPLES {
            return self.p_value;
        }
        let (Some(mc), Some(mt)) = (control.mean(), treatment.mean()) else {
            return self.p_value;
        };
        let diff = mt - mc;
        let Some(var) = variance_of_difference(control, treatment) else {
            return self.p_value;
        };
        self.looks += 1;
        let p = if var > 0.0 {
            let tau2 = match self.tau2 {
                Some(t) => t,
                None => pooled_variance(control, treatment).unwrap_or(0.0) * DEFAULT_MIXTURE_SHARE,
            };
            if tau2 > 0.0 {
                (-log_likelihood_ratio(diff, var, tau2)).exp().min(1.0)
            } else {
                1.0
            }
        } else if diff != 0.0 {
            // No variance at all and a difference: certain.
            0.0
        } else {
            1.0
        };
        self.p_value = self.p_value.min(p);
        if self.p_value <= self.alpha {
            self.stopped = Some(Stopped {
                n_control: control.n(),
                n_treatment: treatment.n(),
                diff,
                p_value: self.p_value,
            });
        }
        self.p_value
    }

    /// The always-valid p-value so far (1 before the first look).
    pub fn p_value(&self) -> f64 {
        self.p_value
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Looks taken (those before [`MIN_SEQUENTIAL_SAMPLES`] do not count).
    pub fn looks(&self) -> u64 {
        self.looks
    }

    /// The decision, when made: the difference is significant.
    pub fn stopped(&self) -> Option<&Stopped> {
        self.stopped.as_ref()
    }
}

/// Outcomes per arm a fixed-horizon two-sided z-test needs to find a difference
/// `diff` with `power` at `alpha`, for per-outcome variances `var_control` and
/// `var_treatment`: `(z_(1-alpha/2) + z_power)^2 (var_c + var_t) / diff^2`, rounded up.
pub fn fixed_horizon_samples(
    diff: f64,
    var_control: f64,
    var_treatment: f64,
    alpha: f64,
    power: f64,
) -> Option<u64> {
    let za = z_critical(alpha);
    // z_power = the one-sided critical value of 1 - power
    let zb = z_critical(2.0 * (1.0 - power));
    if !(za.is_finite() && zb.is_finite()) || diff == 0.0 || !diff.is_finite() {
        return None;
    }
    let n = (za + zb).powi(2) * (var_control + var_treatment) / (diff * diff);
    (n.is_finite() && n >= 0.0).then(|| n.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn likelihood_ratio_by_hand() {
        // V = 1e-4, tau^2 = 1e-4, D = 0.03: ln L = 0.5 ln(1/2) + 1e-4 * 9e-4 / (2e-4 * 2e-4)
        let l = log_likelihood_ratio(0.03, 1e-4, 1e-4);
        assert!((l - (0.5 * 0.5f64.ln() + 2.25)).abs() < 1e-12, "{l}");
        // no difference: the ratio is below 1 (evidence for the null)
        assert!(log_likelihood_ratio(0.0, 1e-4, 1e-4) < 0.0);
    }

    #[test]
    fn the_p_value_never_rises_and_a_decision_is_kept() {
        let mut t = SequentialTest::new(0.05, Some(1e-3));
        let mut c = Summary::new();
        let mut x = Summary::new();
        // below the minimum: no look
        for i in 0..50 {
            c.add(f64::from(i % 2));
            x.add(f64::from(i % 2));
        }
        assert_eq!(t.look(&c, &x), 1.0);
        assert_eq!(t.looks(), 0);
        let mut last = 1.0;
        for i in 0..2000 {
            c.add(if i % 10 == 0 { 1.0 } else { 0.0 });
            x.add(if i % 4 == 0 { 1.0 } else { 0.0 });
            let p = t.look(&c, &x);
            assert!(p <= last);
            last = p;
        }
        let s = *t.stopped().expect("10 % vs 25 % over 2,000 is decided");
        assert!(s.diff > 0.0 && s.p_value <= 0.05);
        // the treatment turning bad afterwards changes nothing
        for _ in 0..5000 {
            c.add(1.0);
            x.add(0.0);
            t.look(&c, &x);
        }
        assert_eq!(t.stopped(), Some(&s));
    }

    #[test]
    fn degenerate_arms() {
        let mut t = SequentialTest::new(0.05, None);
        let zeros = Summary::of([0.0; 200]);
        let ones = Summary::of([1.0; 200]);
        assert_eq!(t.look(&zeros, &zeros), 1.0);
        assert_eq!(t.look(&zeros, &ones), 0.0);
        assert_eq!(t.stopped().unwrap().diff, 1.0);
    }

    #[test]
    fn fixed_horizon_sizes() {
        // 10 % vs 12 %, alpha 0.05, power 0.8: (1.95996 + 0.84162)^2 * 0.1956 / 0.0004
        let n = fixed_horizon_samples(0.02, 0.09, 0.1056, 0.05, 0.8).unwrap();
        assert_eq!(n, 3839);
        assert_eq!(fixed_horizon_samples(0.0, 0.09, 0.09, 0.05, 0.8), None);
    }
}
