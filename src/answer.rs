//! The one path that checks an answer, the primary's (at the end of a request) and
//! the shadow's (when its callout returns) alike: parse what the pointers in use need
//! of the body (tolerating NaN tokens; a body over the limit is not parsed;
//! `rollout_core::json_at`), judge the output's health by the
//! rollout's health rule (`Rollout::health_rule`: the output section's pointer and
//! range, else the first compare pointer), put its prediction into the bins of
//! `output.distribution` (when the rollout has them), and reduce the answer to what
//! a shadow comparison needs. Pure: the callers read the body and count the results.

use rollout_core::answer::{Found, Health, Prediction};
use rollout_core::plan::Rollout;

/// One answer, reduced to what the comparison needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u32,
    pub latency_ms: u64,
    pub predictions: Vec<Option<Prediction>>,
    /// The body exceeded the comparison limit: not comparable.
    pub too_large: bool,
}

/// What a caller wants from an answer's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// The output's health (counted per variant or per shadow).
    pub health: bool,
    /// The answer for a shadow comparison (a join waits for it).
    pub comparison: bool,
}

/// What an answer's check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The output's health: only for a 2xx answer read whole, when wanted and the
    /// rollout has a health rule.
    pub health: Option<Health>,
    /// The answer for the shadow comparison, when wanted and the rollout shadows.
    pub answer: Option<Answer>,
    /// The bins of `output.distribution` the answer's prediction fell into (one per
    /// prediction, a list counts each element): judged like the health (a 2xx answer
    /// read whole, when wanted), nothing when the answer has no prediction there.
    pub bins: Vec<usize>,
}

/// Checks one answer of `rollout`: `body` is the answer's body unless `too_large`.
pub fn check(
    rollout: &Rollout,
    status: u32,
    latency_ms: u64,
    body: &[u8],
    too_large: bool,
    wanted: Wanted,
) -> Checked {
    let judged = wanted.health && (200..300).contains(&status) && !too_large;
    let shadow = rollout.shadow.as_ref().filter(|_| wanted.comparison);
    // Only what the pointers in use need is parsed (no whole-document tree).
    let mut pointers: Vec<&str> = Vec::new();
    if judged {
        pointers.extend(rollout.health_rule().map(|rule| rule.pointer));
        pointers.extend(
            rollout
                .output
                .as_ref()
                .filter(|o| o.distribution.is_some())
                .map(|o| o.pointer.as_str()),
        );
    }
    if let Some(sh) = shadow {
        pointers.extend(sh.compare.pointers.iter().map(String::as_str));
    }
    let parsed = if too_large || pointers.is_empty() {
        Found::default()
    } else {
        Found::parse(body, pointers)
    };
    let health = match rollout.health_rule() {
        Some(rule) if judged => Some(parsed.health(rule.pointer, rule.min, rule.max)),
        _ => None,
    };
    let mut bins = Vec::new();
    if let Some(output) = rollout.output.as_ref().filter(|_| judged) {
        if let (Some(d), Some(p)) = (&output.distribution, parsed.prediction(&output.pointer)) {
            d.observe(&p, &mut |b| bins.push(b));
        }
    }
    let answer = shadow.map(|sh| Answer {
        status,
        latency_ms,
        predictions: parsed.predictions(&sh.compare.pointers),
        too_large,
    });
    Checked {
        health,
        answer,
        bins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::parse_plan;

    fn rollout(sections: &str) -> Rollout {
        let json = format!(
            r#"{{"version":1,"rollouts":[{{"name":"r","salt":"s",
            "variants":[{{"name":"a","weight":100}}]{sections}}}]}}"#
        );
        parse_plan(json.as_bytes()).unwrap().1.rollouts.remove(0)
    }

    const SHADOW: &str =
        r#","shadow":{"cluster":"sh","percent":1,"compare":{"pointers":["/p","/q"]}}"#;
    const OUTPUT: &str = r#","output":{"pointer":"/o","max":1}"#;

    const ALL: Wanted = Wanted {
        health: true,
        comparison: true,
    };

    #[test]
    fn primary_and_shadow_answers_are_judged_by_one_rule() {
        // With an output section its pointer and range judge every answer...
        let r = rollout(&format!("{SHADOW}{OUTPUT}"));
        let body = br#"{"o": 5, "p": NaN, "q": 1}"#;
        let c = check(&r, 200, 7, body, false, ALL);
        assert_eq!(c.health, Some(Health::OutOfRange));
        let a = c.answer.unwrap();
        assert_eq!(a.latency_ms, 7);
        assert_eq!(
            a.predictions,
            vec![Some(Prediction::NonFinite), Some(Prediction::Number(1.0))]
        );
        // ...without one, the first compare pointer (no range).
        let r = rollout(SHADOW);
        assert_eq!(
            check(&r, 200, 0, body, false, ALL).health,
            Some(Health::NaN)
        );
        assert_eq!(
            check(&r, 200, 0, br#"{"q": 1}"#, false, ALL).health,
            Some(Health::Missing)
        );
    }

    #[test]
    fn predictions_fall_into_the_bins_of_the_output_section() {
        let r = rollout(r#","output":{"pointer":"/o","distribution":{"edges":[0,0.5,1]}}"#);
        assert_eq!(
            check(&r, 200, 0, br#"{"o": [0.2, 0.7, 1.0]}"#, false, ALL).bins,
            vec![1, 2, 2]
        );
        assert_eq!(
            check(&r, 200, 0, br#"{"o": [NaN, 3]}"#, false, ALL).bins,
            vec![4, 3]
        );
        // nothing at the pointer, an error status, a body too large, or not wanted: no bins
        assert!(check(&r, 200, 0, br#"{"p": 1}"#, false, ALL)
            .bins
            .is_empty());
        assert!(check(&r, 500, 0, br#"{"o": 0.2}"#, false, ALL)
            .bins
            .is_empty());
        assert!(check(&r, 200, 0, b"", true, ALL).bins.is_empty());
        let comparison_only = Wanted {
            health: false,
            comparison: true,
        };
        assert!(check(&r, 200, 0, br#"{"o": 0.2}"#, false, comparison_only)
            .bins
            .is_empty());
        // without a distribution nothing is binned
        assert!(
            check(&rollout(OUTPUT), 200, 0, br#"{"o": 0.2}"#, false, ALL)
                .bins
                .is_empty()
        );
    }

    #[test]
    fn only_whole_2xx_answers_are_judged() {
        let r = rollout(&format!("{SHADOW}{OUTPUT}"));
        let body = br#"{"o": 0.5}"#;
        assert_eq!(
            check(&r, 200, 0, body, false, ALL).health,
            Some(Health::Valid)
        );
        assert_eq!(check(&r, 503, 0, body, false, ALL).health, None);
        let comparison_only = Wanted {
            health: false,
            comparison: true,
        };
        assert_eq!(check(&r, 200, 0, body, false, comparison_only).health, None);
        let health_only = Wanted {
            health: true,
            comparison: false,
        };
        assert_eq!(check(&r, 200, 0, body, false, health_only).answer, None);
        let big = check(&r, 200, 0, b"", true, ALL);
        assert_eq!(big.health, None);
        let a = big.answer.unwrap();
        assert!(a.too_large);
        assert_eq!(a.predictions, vec![None, None]);
        // no shadow section: nothing to compare
        assert_eq!(
            check(&rollout(OUTPUT), 200, 0, body, false, ALL).answer,
            None
        );
    }
}
