//! Statistics of A/B verdicts, pure and dependency-free: the standard normal
//! distribution (CDF, upper tail, quantile), running summaries of rewards,
//! confidence intervals (Wilson score for proportions, normal for means) and the
//! two large-sample tests the sidecar uses:
//!
//! - conversion (0/1 rewards): the two-proportion z-test with pooled variance,
//!   `z = (p_b - p_a) / sqrt(p (1 - p) (1/n_a + 1/n_b))`, `p` the pooled rate;
//! - mean (real rewards): Welch's z, `z = (m_b - m_a) / sqrt(s_a^2/n_a + s_b^2/n_b)`
//!   with sample variances, judged on the normal distribution (large samples).
//!
//! P-values are two-sided. Differences are always `treatment - control`.

/// `erfc(x) = 1 - erf(x)`, accurate to about 1e-15 relative over the whole line
/// (`erf` by its everywhere-convergent positive series below 2.5, `erfc` by its
/// continued fraction above).
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.5 {
        return 1.0 - erf_series(x);
    }
    erfc_continued_fraction(x)
}

/// `erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n 2^n x^(2n+1) / (1*3*...*(2n+1))`, x >= 0:
/// every term is positive, so nothing cancels.
fn erf_series(x: f64) -> f64 {
    let two_x2 = 2.0 * x * x;
    let mut term = x;
    let mut sum = x;
    let mut k = 1.0_f64;
    while k < 500.0 {
        term *= two_x2 / (2.0 * k + 1.0);
        sum += term;
        if term <= sum * 1e-17 {
            break;
        }
        k += 1.0;
    }
    std::f64::consts::FRAC_2_SQRT_PI * (-x * x).exp() * sum
}

/// `erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + (2/2)/(x + (3/2)/(x + ...))))`,
/// evaluated from a fixed depth backwards; x >= 2.5.
fn erfc_continued_fraction(x: f64) -> f64 {
    let mut t = x;
    let mut k = 120.0_f64;
    while k >= 1.0 {
        t = x + (k / 2.0) / t;
        k -= 1.0;
    }
    (-x * x).exp() / (std::f64::consts::PI.sqrt() * t)
}

/// The standard normal CDF, `P(Z <= x)`.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// The standard normal upper tail, `P(Z > x)`, accurate far into the tail.
pub fn normal_sf(x: f64) -> f64 {
    0.5 * erfc(x / std::f64::consts::SQRT_2)
}

/// The standard normal density.
pub fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// The standard normal quantile: `x` with `normal_cdf(x) == p`, for `0 < p < 1`
/// (NaN outside). A rational first guess (Abramowitz & Stegun 26.2.23, error below
/// 4.5e-4) refined by Newton steps on the lower tail.
pub fn normal_quantile(p: f64) -> f64 {
    if !(p > 0.0 && p < 1.0) {
        return f64::NAN;
    }
    if p > 0.5 {
        return -lower_quantile(1.0 - p);
    }
    lower_quantile(p)
}

/// Quantile of a lower-tail probability `0 < p <= 0.5`.
fn lower_quantile(p: f64) -> f64 {
    let t = (-2.0 * p.ln()).sqrt();
    let mut x = -(t
        - (2.515_517 + 0.802_853 * t + 0.010_328 * t * t)
            / (1.0 + 1.432_788 * t + 0.189_269 * t * t + 0.001_308 * t * t * t));
    for _ in 0..8 {
        let density = normal_pdf(x);
        if density <= 0.0 {
            break;
        }
        let step = (normal_cdf(x) - p) / density;
        x -= step;
        if step.abs() <= 1e-15 * x.abs().max(1.0) {
            break;
        }
    }
    x
}

/// The two-sided critical value `z` with `P(|Z| > z) = alpha` (1.959963984540054
/// for alpha 0.05). NaN unless `0 < alpha < 1`.
pub fn z_critical(alpha: f64) -> f64 {
    if !(alpha > 0.0 && alpha < 1.0) {
        return f64::NAN;
    }
    -lower_quantile(alpha / 2.0)
}

/// Two-sided p-value of a z statistic: `P(|Z| >= |z|)`; 0 for an infinite `z`,
/// NaN for NaN.
pub fn two_sided_p(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    (2.0 * normal_sf(z.abs())).min(1.0)
}

/// A running summary of rewards (Welford's algorithm: numerically stable mean and
/// variance in one pass), plus the plain sum and the count of positive rewards
/// (successes of a conversion metric).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    n: u64,
    mean: f64,
    m2: f64,
    sum: f64,
    positive: u64,
}

impl Summary {
    pub fn new() -> Self {
        Summary::default()
    }

    /// A summary of `values`.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut s = Summary::new();
        for v in values {
            s.add(v);
        }
        s
    }

    pub fn add(&mut self, x: f64) {
        self.n += 1;
        // n < 2^53 in any practical use: the conversion is exact.
        let n = self.n as f64;
        let delta = x - self.mean;
        self.mean += delta / n;
        self.m2 += delta * (x - self.mean);
        self.sum += x;
        if x > 0.0 {
            self.positive += 1;
        }
    }

    pub fn n(&self) -> u64 {
        self.n
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Rewards greater than 0: the successes of a conversion metric.
    pub fn successes(&self) -> u64 {
        self.positive
    }

    /// The mean; `None` without data.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then_some(self.mean)
    }

    /// The share of successes; `None` without data.
    pub fn rate(&self) -> Option<f64> {
        (self.n > 0).then(|| self.positive as f64 / self.n as f64)
    }

    /// The sample variance (divisor n - 1); `None` below two values.
    pub fn variance(&self) -> Option<f64> {
        (self.n > 1).then(|| (self.m2 / (self.n - 1) as f64).max(0.0))
    }
}

/// A two-sided confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// The Wilson score interval of a proportion at confidence `1 - alpha`; `None`
/// without data or for an alpha outside (0, 1). Unlike the Wald interval it stays
/// inside [0, 1] and keeps its coverage for rates near 0 or 1 and small samples.
pub fn wilson_interval(successes: u64, n: u64, alpha: f64) -> Option<Interval> {
    if n == 0 || successes > n {
        return None;
    }
    let z = z_critical(alpha);
    if !z.is_finite() {
        return None;
    }
    let n = n as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(Interval {
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
    })
}

/// The normal-approximation interval of a mean at confidence `1 - alpha`:
/// `mean +- z * s / sqrt(n)`; `None` below two values.
pub fn mean_interval(s: &Summary, alpha: f64) -> Option<Interval> {
    let (mean, var) = (s.mean()?, s.variance()?);
    let z = z_critical(alpha);
    if !z.is_finite() {
        return None;
    }
    let half = z * (var / s.n() as f64).sqrt();
    Some(Interval {
        low: mean - half,
        high: mean + half,
    })
}

/// The result of comparing a treatment with a control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZTest {
    /// Treatment minus control (rates or means).
    pub diff: f64,
    /// The z statistic; infinite when the difference is certain (no variance at all).
    pub z: f64,
    /// Two-sided p-value.
    pub p_value: f64,
}

impl ZTest {
    /// Significant at `alpha` (two-sided): `p_value < alpha`.
    pub fn significant(&self, alpha: f64) -> bool {
        self.p_value < alpha
    }
}

/// The z statistic of `diff / se`, with a zero standard error read as "no
/// difference" (z 0, p 1) when `diff` is 0 and as certainty (z infinite, p 0)
/// otherwise.
fn z_test(diff: f64, se: f64) -> ZTest {
    let z = if se > 0.0 {
        diff / se
    } else if diff == 0.0 {
        0.0
    } else {
        f64::INFINITY.copysign(diff)
    };
    ZTest {
        diff,
        z,
        p_value: two_sided_p(z),
    }
}

/// Two-proportion z-test with pooled variance: control `x_a` successes of `n_a`,
/// treatment `x_b` of `n_b`. `None` when a group is empty or has more successes
/// than trials.
pub fn two_proportion_z(x_a: u64, n_a: u64, x_b: u64, n_b: u64) -> Option<ZTest> {
    if n_a == 0 || n_b == 0 || x_a > n_a || x_b > n_b {
        return None;
    }
    let (na, nb) = (n_a as f64, n_b as f64);
    let (pa, pb) = (x_a as f64 / na, x_b as f64 / nb);
    let pooled = (x_a + x_b) as f64 / (na + nb);
    let se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    Some(z_test(pb - pa, se))
}

/// Welch's z-test on two means (sample variances, not pooled; normal reference
/// distribution, so meant for large samples). `None` below two values in a group.
pub fn welch_z(control: &Summary, treatment: &Summary) -> Option<ZTest> {
    let (ma, va) = (control.mean()?, control.variance()?);
    let (mb, vb) = (treatment.mean()?, treatment.variance()?);
    let se = (va / control.n() as f64 + vb / treatment.n() as f64).sqrt();
    Some(z_test(mb - ma, se))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
    }

    /// SplitMix64: a small deterministic generator for the simulations.
    struct SplitMix(u64);

    impl SplitMix {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in [0, 1) with 53 random bits.
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

        /// Standard normal by Box-Muller.
        fn gaussian(&mut self) -> f64 {
            let u = 1.0 - self.unit(); // (0, 1]
            let v = self.unit();
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    #[test]
    fn erfc_matches_reference_values() {
        // Reference values: CPython's math.erfc.
        let cases = [
            (0.1, 0.887_537_083_981_715_2),
            (1.0, 0.157_299_207_050_285_13),
            (2.4, 0.000_688_513_896_645_078_9),
            (2.6, 0.000_236_034_416_529_349_08),
            (3.0, 2.209_049_699_858_543_8e-5),
            (5.0, 1.537_459_794_428_035_1e-12),
            (10.0, 2.088_487_583_762_545e-45),
        ];
        for (x, want) in cases {
            let got = erfc(x);
            assert!(close(got, want, 1e-13), "erfc({x}) = {got}, want {want}");
            assert!(close(erfc(-x), 2.0 - want, 1e-15));
        }
        assert_eq!(erfc(0.0), 1.0);
        assert!(erfc(f64::NAN).is_nan());
        assert_eq!(erfc(f64::INFINITY), 0.0);
        assert_eq!(erfc(f64::NEG_INFINITY), 2.0);
    }

    #[test]
    fn normal_cdf_known_values() {
        assert!((normal_cdf(1.96) - 0.975).abs() < 1e-4);
        assert!(close(normal_cdf(1.96), 0.975_002_104_851_779_5, 1e-14));
        assert!(close(normal_cdf(-3.0), 0.001_349_898_031_630_095_7, 1e-12));
        assert!(close(normal_cdf(0.5), 0.691_462_461_274_013_1, 1e-14));
        assert_eq!(normal_cdf(0.0), 0.5);
        assert!(close(normal_sf(5.0), 2.866_515_718_791_946e-7, 1e-12));
        assert!(close(normal_sf(8.0), 6.220_960_574_271_819e-16, 1e-12));
        assert!(close(normal_cdf(-8.0), normal_sf(8.0), 1e-15));
        // symmetric and monotone
        let mut last = 0.0;
        for i in -800..=800 {
            let x = f64::from(i) / 100.0;
            let c = normal_cdf(x);
            assert!(c >= last, "not monotone at {x}");
            assert!((c + normal_cdf(-x) - 1.0).abs() < 1e-15);
            last = c;
        }
    }

    #[test]
    fn quantiles_invert_the_cdf() {
        assert!(close(normal_quantile(0.975), 1.959_963_984_540_054, 1e-13));
        assert!(close(z_critical(0.05), 1.959_963_984_540_054, 1e-13));
        assert!(close(z_critical(0.01), 2.575_829_303_548_901, 1e-13));
        assert!(close(z_critical(0.1), 1.644_853_626_951_472_2, 1e-13));
        assert!(normal_quantile(0.5).abs() < 1e-15);
        for p in [1e-12, 1e-6, 0.001, 0.01, 0.2, 0.4999, 0.6, 0.9, 0.999_999] {
            let x = normal_quantile(p);
            assert!(close(normal_cdf(x), p, 1e-11), "p {p}: x {x}");
        }
        assert!(normal_quantile(0.0).is_nan());
        assert!(normal_quantile(1.0).is_nan());
        assert!(normal_quantile(f64::NAN).is_nan());
        assert!(z_critical(0.0).is_nan());
    }

    #[test]
    fn p_values() {
        assert!(close(two_sided_p(1.959_963_984_540_054), 0.05, 1e-12));
        assert_eq!(two_sided_p(0.0), 1.0);
        assert_eq!(two_sided_p(f64::INFINITY), 0.0);
        assert_eq!(two_sided_p(-1.5), two_sided_p(1.5));
        assert!(two_sided_p(f64::NAN).is_nan());
    }

    #[test]
    fn two_proportions_100_vs_120_of_1000() {
        // pooled p = 0.11, se = sqrt(0.11 * 0.89 * 2/1000) = 0.013992855...
        let t = two_proportion_z(100, 1000, 120, 1000).unwrap();
        assert!(close(t.diff, 0.02, 1e-12));
        assert!(close(t.z, 1.429_300_849_823_231_4, 1e-12), "z {}", t.z);
        assert!(close(t.p_value, 0.152_917_781_863_946_2, 1e-10));
        assert!(!t.significant(0.05));
        // reversed: same p, opposite sign
        let r = two_proportion_z(120, 1000, 100, 1000).unwrap();
        assert!(close(r.z, -t.z, 1e-15));
        assert_eq!(r.p_value, t.p_value);
        // no variance at all
        let none = two_proportion_z(0, 50, 0, 70).unwrap();
        assert_eq!((none.z, none.p_value), (0.0, 1.0));
        let all = two_proportion_z(50, 50, 70, 70).unwrap();
        assert_eq!((all.z, all.p_value), (0.0, 1.0));
        assert!(two_proportion_z(1, 0, 1, 10).is_none());
        assert!(two_proportion_z(11, 10, 1, 10).is_none());
    }

    #[test]
    fn wilson_interval_known_values() {
        let i = wilson_interval(100, 1000, 0.05).unwrap();
        assert!(close(i.low, 0.082_909_443_593_095_71, 1e-9), "{i:?}");
        assert!(close(i.high, 0.120_151_963_195_348_4, 1e-9), "{i:?}");
        // stays inside [0, 1] at the edges, unlike Wald
        let zero = wilson_interval(0, 20, 0.05).unwrap();
        assert_eq!(zero.low, 0.0);
        assert!(zero.high > 0.1 && zero.high < 0.2);
        let one = wilson_interval(20, 20, 0.05).unwrap();
        assert_eq!(one.high, 1.0);
        assert!(one.low > 0.8);
        assert!(wilson_interval(0, 0, 0.05).is_none());
        assert!(wilson_interval(3, 2, 0.05).is_none());
        // narrower at a larger alpha
        let wide = wilson_interval(100, 1000, 0.01).unwrap();
        assert!(wide.low < i.low && wide.high > i.high);
    }

    #[test]
    fn summaries_and_welch() {
        let a = Summary::of([1.0, 2.0, 3.0, 4.0]);
        assert_eq!(a.n(), 4);
        assert_eq!(a.mean(), Some(2.5));
        assert!(close(a.variance().unwrap(), 5.0 / 3.0, 1e-15));
        assert_eq!(a.sum(), 10.0);
        assert_eq!(a.successes(), 4);
        let b = Summary::of([2.0, 4.0, 6.0, 8.0]);
        // diff 2.5, se = sqrt(5/3/4 + 20/3/4) = sqrt(25/12)
        let t = welch_z(&a, &b).unwrap();
        assert!(close(t.diff, 2.5, 1e-15));
        assert!(close(t.z, 2.5 / (25.0_f64 / 12.0).sqrt(), 1e-14));
        assert!(close(t.p_value, two_sided_p(t.z), 1e-15));
        let i = mean_interval(&a, 0.05).unwrap();
        let half = 1.959_963_984_540_054 * (5.0_f64 / 3.0 / 4.0).sqrt();
        assert!(close(i.low, 2.5 - half, 1e-12) && close(i.high, 2.5 + half, 1e-12));
        // Welford keeps the variance of large offsets exact where naive sums fail
        let big = Summary::of((0..1000).map(|i| 1e9 + f64::from(i % 2)));
        assert!(close(big.variance().unwrap(), 0.25 * 1000.0 / 999.0, 1e-6));
        // constant groups
        let c1 = Summary::of([3.0; 5]);
        let c2 = Summary::of([3.0; 7]);
        let t = welch_z(&c1, &c2).unwrap();
        assert_eq!((t.z, t.p_value), (0.0, 1.0));
        let c3 = Summary::of([4.0; 7]);
        let t = welch_z(&c1, &c3).unwrap();
        assert_eq!((t.z, t.p_value), (f64::INFINITY, 0.0));
        assert!(welch_z(&Summary::of([1.0]), &b).is_none());
        assert!(Summary::new().mean().is_none() && Summary::new().rate().is_none());
        let conv = Summary::of([0.0, 1.0, 1.0, 0.0, 1.0]);
        assert_eq!(conv.successes(), 3);
        assert_eq!(conv.rate(), Some(0.6));
    }

    #[test]
    fn a_known_lift_is_found_with_the_right_winner() {
        // 10 % vs 12 % conversion, 20,000 samples each: the expected z is about 6.4.
        for seed in 1..=5u64 {
            let mut rng = SplitMix(seed);
            let control = Summary::of((0..20_000).map(|_| rng.bernoulli(0.10)));
            let treatment = Summary::of((0..20_000).map(|_| rng.bernoulli(0.12)));
            let t = two_proportion_z(
                control.successes(),
                control.n(),
                treatment.successes(),
                treatment.n(),
            )
            .unwrap();
            assert!(t.significant(0.05), "seed {seed}: {t:?}");
            assert!(t.diff > 0.0, "seed {seed}: the treatment must win");
        }
    }

    #[test]
    fn equal_rates_are_rarely_significant() {
        // Under the null, a 5 % test rejects about 5 % of the time; require >= 90 % quiet.
        let mut quiet = 0;
        for seed in 0..50u64 {
            let mut rng = SplitMix(1000 + seed);
            let a = Summary::of((0..20_000).map(|_| rng.bernoulli(0.10)));
            let b = Summary::of((0..20_000).map(|_| rng.bernoulli(0.10)));
            let t = two_proportion_z(a.successes(), a.n(), b.successes(), b.n()).unwrap();
            if !t.significant(0.05) {
                quiet += 1;
            }
        }
        assert!(
            quiet >= 45,
            "only {quiet} of 50 null runs were not significant"
        );
    }

    #[test]
    fn welch_finds_a_mean_shift_and_not_a_null() {
        let mut rng = SplitMix(7);
        let a = Summary::of((0..5_000).map(|_| 10.0 + 2.0 * rng.gaussian()));
        let b = Summary::of((0..5_000).map(|_| 10.2 + 3.0 * rng.gaussian()));
        let t = welch_z(&a, &b).unwrap();
        assert!(t.significant(0.05) && t.diff > 0.0, "{t:?}");
        let mut quiet = 0;
        for seed in 0..50u64 {
            let mut rng = SplitMix(5000 + seed);
            let a = Summary::of((0..2_000).map(|_| 5.0 + rng.gaussian()));
            let b = Summary::of((0..2_000).map(|_| 5.0 + 4.0 * rng.gaussian()));
            if !welch_z(&a, &b).unwrap().significant(0.05) {
                quiet += 1;
            }
        }
        assert!(
            quiet >= 45,
            "only {quiet} of 50 null runs were not significant"
        );
    }
}
