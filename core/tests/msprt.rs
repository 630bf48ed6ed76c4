//! The mSPRT by simulation (deterministic seeds, seconds to run):
//!
//! - 1,000 A/A experiments (conversion 10 %, and a real-valued reward), each read
//!   after every batch of 100 outcomes per arm up to 10,000 per arm: the share that
//!   ever decides "different" stays at or below alpha plus three Monte-Carlo
//!   standard errors. The same data read with the fixed-horizon z-test after every
//!   batch (peeking) decides far more often: the failure the mSPRT prevents.
//! - With a real effect (10 % vs 12 %), the median stopping sample is printed next
//!   to the fixed-horizon sample size for 80 % power.
//!
//! `cargo test -p rollout-core --release --test msprt -- --nocapture` prints the figures.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use rollout_core::abtest::{two_proportion_z, welch_z, Summary};
use rollout_core::msprt::{fixed_horizon_samples, SequentialTest};

const ALPHA: f64 = 0.05;
const EXPERIMENTS: usize = 1000;
const BATCH: usize = 100;
const LOOKS: usize = 100;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn bernoulli(&mut self, p: f64) -> f64 {
        if self.unit() < p {
            1.0
        } else {
            0.0
        }
    }

    fn gaussian(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// How one simulated experiment ended.
struct Run {
    /// Outcomes per arm when the mSPRT decided (None: never, up to the horizon).
    msprt_stop: Option<u64>,
    msprt_diff: f64,
    /// Whether a fixed-horizon z-test read after every batch was ever significant.
    peeking_rejected: bool,
}

fn run(
    rng: &mut Rng,
    looks: usize,
    tau2: Option<f64>,
    mut draw: impl FnMut(&mut Rng, bool) -> f64,
    conversion: bool,
) -> Run {
    let mut test = SequentialTest::new(ALPHA, tau2);
    let (mut c, mut t) = (Summary::new(), Summary::new());
    let mut peeking_rejected = false;
    for _ in 0..looks {
        for _ in 0..BATCH {
            c.add(draw(rng, false));
            t.add(draw(rng, true));
        }
        test.look(&c, &t);
        let z = if conversion {
            two_proportion_z(c.successes(), c.n(), t.successes(), t.n())
        } else {
            welch_z(&c, &t)
        };
        if z.is_some_and(|z| z.significant(ALPHA)) {
            peeking_rejected = true;
        }
        if test.stopped().is_some() && peeking_rejected {
            break;
        }
    }
    Run {
        msprt_stop: test.stopped().map(|s| s.n_control),
        msprt_diff: test.stopped().map_or(0.0, |s| s.diff),
        peeking_rejected,
    }
}

/// alpha + 3 Monte-Carlo standard errors of a rate alpha over `n` experiments.
fn allowed(n: usize) -> f64 {
    ALPHA + 3.0 * (ALPHA * (1.0 - ALPHA) / n as f64).sqrt()
}

fn a_a(name: &str, seed: u64, draw: impl Fn(&mut Rng, bool) -> f64 + Copy, conversion: bool) {
    let mut rng = Rng(seed);
    let (mut msprt, mut peeking) = (0usize, 0usize);
    for _ in 0..EXPERIMENTS {
        let r = run(&mut rng, LOOKS, None, draw, conversion);
        msprt += usize::from(r.msprt_stop.is_some());
        peeking += usize::from(r.peeking_rejected);
    }
    let fpr = msprt as f64 / EXPERIMENTS as f64;
    let naive = peeking as f64 / EXPERIMENTS as f64;
    println!(
        "A/A {name}: {EXPERIMENTS} experiments read after every {BATCH} outcomes per arm up to {}: \
         mSPRT false-positive rate {fpr:.3} (alpha {ALPHA}, allowed {:.4}); \
         fixed-horizon z-test peeked the same way: {naive:.3}",
        BATCH * LOOKS,
        allowed(EXPERIMENTS)
    );
    assert!(
        fpr <= allowed(EXPERIMENTS),
        "{name}: mSPRT false-positive rate {fpr} above {}",
        allowed(EXPERIMENTS)
    );
    assert!(
        naive > 2.0 * ALPHA,
        "{name}: peeking at a fixed-horizon test should inflate its error ({naive})"
    );
}

#[test]
fn a_a_conversion_keeps_the_false_positive_rate() {
    a_a("conversion 10 %", 11, |rng, _| rng.bernoulli(0.10), true);
}

#[test]
fn a_a_mean_reward_keeps_the_false_positive_rate() {
    a_a(
        "mean reward N(5, 2^2)",
        12,
        |rng, _| 5.0 + 2.0 * rng.gaussian(),
        false,
    );
}

/// Runs `experiments` with a real effect (10 % -> 12 %) and prints the stopping
/// samples; returns (share decided, median stopping sample, fixed horizon).
fn effect(tau2: Option<f64>, label: &str) -> (f64, Option<u64>, u64) {
    let (p_c, p_t) = (0.10, 0.12);
    let experiments = 500;
    let looks = 200; // up to 20,000 per arm
    let mut rng = Rng(13);
    let mut stops = Vec::new();
    let mut wrong = 0;
    for _ in 0..experiments {
        let r = run(
            &mut rng,
            looks,
            tau2,
            |rng, treated| rng.bernoulli(if treated { p_t } else { p_c }),
            true,
        );
        if let Some(n) = r.msprt_stop {
            stops.push(n);
            if r.msprt_diff < 0.0 {
                wrong += 1;
            }
        }
    }
    stops.sort_unstable();
    let decided = stops.len() as f64 / experiments as f64;
    let fixed =
        fixed_horizon_samples(p_t - p_c, p_c * (1.0 - p_c), p_t * (1.0 - p_t), ALPHA, 0.8).unwrap();
    // the median over every experiment (undecided ones count as beyond the horizon)
    let median = (stops.len() * 2 > experiments).then(|| stops[experiments / 2]);
    let q = |f: f64| stops[((stops.len() as f64 * f) as usize).min(stops.len() - 1)];
    println!(
        "effect 10 % -> 12 % conversion, alpha {ALPHA}, {label}: mSPRT decided in {:.1} % of \
         {experiments} experiments (read every {BATCH} per arm, up to {}), {wrong} with the wrong \
         sign; median stopping sample {} per arm (quartiles {} / {} of the decided); \
         fixed horizon for 80 % power: {fixed} per arm",
        100.0 * decided,
        BATCH * looks,
        median.map_or("beyond the horizon".to_string(), |m| m.to_string()),
        q(0.25),
        q(0.75),
    );
    assert_eq!(wrong, 0);
    (decided, median, fixed)
}

#[test]
fn a_real_effect_stops_early() {
    let (decided, median, _) = effect(None, "default tau^2 (1 % of the variance, tau ~ 0.03)");
    assert!(decided >= 0.9, "decided only {decided}");
    assert!(median.is_some_and(|m| m < 20_000), "median {median:?}");
    // tuned to the effect (tau = 0.02): decided as often
    let (decided, _, _) = effect(Some(0.0004), "tau^2 = 0.0004 (tau = the effect)");
    assert!(decided >= 0.9, "decided only {decided}");
}
