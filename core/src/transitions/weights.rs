//! Weight edits of one rollout, in basis points (1/100 of a percent,
//! `fields::weight_to_bp`) converted back as `bp / 100`, so repeated operations
//! never accumulate float drift. Each takes the plan in force and returns a new,
//! validated plan; the policy-aware operations of `transitions` build on them.

use crate::error::{ConfigError, OpError};
use crate::fields::weight_to_bp;
use crate::hash::BUCKETS;
use crate::plan::{PlanSpec, RolloutSpec, VariantSpec};

/// The full weight, 100 %, in basis points.
const FULL_BP: u32 = BUCKETS as u32;

fn bp_to_weight(bp: u32) -> f64 {
    f64::from(bp) / 100.0
}

fn variant_position(r: &RolloutSpec, variant: &str) -> Result<usize, ConfigError> {
    r.variants
        .iter()
        .position(|v| v.name == variant)
        .ok_or_else(|| {
            ConfigError::new(
                "variant",
                format!(
                    "{variant:?} is not a variant of rollout {:?} (variants: {})",
                    r.name,
                    variant_list(r)
                ),
            )
        })
}

fn variant_list(r: &RolloutSpec) -> String {
    r.variants
        .iter()
        .map(|v| v.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Current weights in basis points; a stored weight that is not a valid percentage
/// is reported against its plan path.
fn weights_bp(r: &RolloutSpec, rollout_index: usize) -> Result<Vec<u32>, ConfigError> {
    r.variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            weight_to_bp(
                &format!("rollouts[{rollout_index}].variants[{i}].weight"),
                v.weight,
            )
            .map(u32::from)
        })
        .collect()
}

/// Applies `f` to a copy of the named rollout and validates the resulting plan.
pub(crate) fn edit(
    plan: &PlanSpec,
    rollout: &str,
    f: impl FnOnce(&mut RolloutSpec, usize) -> Result<(), ConfigError>,
) -> Result<PlanSpec, OpError> {
    let mut next = plan.clone();
    let index = next.rollout_index(rollout)?;
    let r = next.rollout_named_mut(rollout)?;
    f(r, index)?;
    next.compile()?;
    Ok(next)
}

fn set_all_bp(r: &mut RolloutSpec, bp: &[u32]) {
    for (v, b) in r.variants.iter_mut().zip(bp) {
        v.weight = bp_to_weight(*b);
    }
}

/// Sets explicit weights for every variant of `rollout`. Each variant must be named
/// exactly once, and the weights must sum to 100.
pub fn set_weights<S: AsRef<str>>(
    plan: &PlanSpec,
    rollout: &str,
    weights: &[(S, f64)],
) -> Result<PlanSpec, OpError> {
    edit(plan, rollout, |r, _| {
        let mut bp: Vec<Option<u32>> = vec![None; r.variants.len()];
        for (name, w) in weights {
            let name = name.as_ref();
            let i = variant_position(r, name)?;
            let b = weight_to_bp(&format!("weights.{name}"), *w)?;
            match bp.get_mut(i) {
                Some(slot @ None) => *slot = Some(u32::from(b)),
                _ => {
                    return Err(ConfigError::new(
                        format!("weights.{name}"),
                        format!("variant {name:?} is given more than once"),
                    ))
                }
            }
        }
        let mut all = Vec::with_capacity(bp.len());
        for (v, b) in r.variants.iter().zip(&bp) {
            match b {
                Some(b) => all.push(*b),
                None => {
                    return Err(ConfigError::new(
                        "weights",
                        format!(
                            "no weight for variant {:?}: give every variant of rollout {:?} ({})",
                            v.name,
                            r.name,
                            variant_list(r)
                        ),
                    ))
                }
            }
        }
        let sum: u32 = all.iter().sum();
        if sum != FULL_BP {
            return Err(ConfigError::new(
                "weights",
                format!("weights sum to {}, they must sum to 100", bp_to_weight(sum)),
            ));
        }
        set_all_bp(r, &all);
        Ok(())
    })
}

/// Sets one variant's weight; the first variant (stable) absorbs the difference.
/// The first variant itself cannot be set this way (use `set_weights`).
pub fn set_weight(
    plan: &PlanSpec,
    rollout: &str,
    variant: &str,
    weight: f64,
) -> Result<PlanSpec, OpError> {
    edit(plan, rollout, |r, index| {
        let i = variant_position(r, variant)?;
        if i == 0 {
            return Err(ConfigError::new(
                "variant",
                format!(
                    "{variant:?} is the first (stable) variant of rollout {:?}, which absorbs \
                     the difference; set another variant's weight, or give all weights",
                    r.name
                ),
            ));
        }
        let new = u32::from(weight_to_bp("weight", weight)?);
        set_absorbed_by_first(r, index, i, new, weight)
    })
}

/// Sets variant `i` to `new` basis points; the first variant absorbs the difference.
/// `requested` is the weight as given, for the error.
fn set_absorbed_by_first(
    r: &mut RolloutSpec,
    index: usize,
    i: usize,
    new: u32,
    requested: f64,
) -> Result<(), ConfigError> {
    let mut bp = weights_bp(r, index)?;
    let old = bp.get(i).copied().unwrap_or(0);
    let first = bp.first().copied().unwrap_or(0);
    let Some(first_new) = (first + old).checked_sub(new) else {
        let stable = r.variants.first().map_or("", |v| v.name.as_str());
        let variant = r.variants.get(i).map_or("", |v| v.name.as_str());
        return Err(ConfigError::new(
            "weight",
            format!(
                "{requested} for {variant:?} would leave {stable:?} below 0 \
                 ({stable:?} has {}, {variant:?} has {})",
                bp_to_weight(first),
                bp_to_weight(old)
            ),
        ));
    };
    if let Some(b) = bp.first_mut() {
        *b = first_new;
    }
    if let Some(b) = bp.get_mut(i) {
        *b = new;
    }
    set_all_bp(r, &bp);
    Ok(())
}

/// Blue/green switch: `variant` gets 100, every other variant 0, order unchanged.
pub fn switch(plan: &PlanSpec, rollout: &str, variant: &str) -> Result<PlanSpec, OpError> {
    edit(plan, rollout, |r, _| {
        let i = variant_position(r, variant)?;
        for (j, v) in r.variants.iter_mut().enumerate() {
            v.weight = if j == i { bp_to_weight(FULL_BP) } else { 0.0 };
        }
        Ok(())
    })
}

/// Promotes the candidate: the last variant gets 100 and moves to the first position
/// (it becomes stable); the others follow at 0 in their previous order.
pub fn promote(plan: &PlanSpec, rollout: &str) -> Result<PlanSpec, OpError> {
    edit(plan, rollout, |r, _| {
        let Some(last) = r.variants.len().checked_sub(1) else {
            return Err(ConfigError::new("variants", "the rollout has no variants"));
        };
        promote_in_place(r, last)
    })
}

/// Variant `index` to 100 % and first; the others at 0 % in their previous order.
pub(super) fn promote_in_place(r: &mut RolloutSpec, index: usize) -> Result<(), ConfigError> {
    if index >= r.variants.len() {
        return Err(ConfigError::new("variant", "no such variant"));
    }
    let mut chosen = r.variants.remove(index);
    chosen.weight = bp_to_weight(FULL_BP);
    let mut variants: Vec<VariantSpec> = Vec::with_capacity(r.variants.len() + 1);
    variants.push(chosen);
    for mut v in r.variants.drain(..) {
        v.weight = 0.0;
        variants.push(v);
    }
    r.variants = variants;
    Ok(())
}

/// Rolls the candidate back: the last variant goes to 0 at once and its weight is
/// added to the first variant.
pub fn rollback(plan: &PlanSpec, rollout: &str) -> Result<PlanSpec, OpError> {
    edit(plan, rollout, |r, index| {
        if r.variants.len() < 2 {
            return Err(ConfigError::new(
                "variants",
                format!(
                    "rollout {:?} has a single variant: there is no candidate to roll back",
                    r.name
                ),
            ));
        }
        let last = r.variants.len() - 1;
        set_absorbed_by_first(r, index, last, 0, 0.0)
    })
}

/// Sets the operator pause of a rollout (routing is unaffected; automatic changes stop).
pub fn set_paused(plan: &PlanSpec, rollout: &str, paused: bool) -> Result<PlanSpec, OpError> {
    edit(plan, rollout, |r, _| {
        r.paused = paused;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::parse_plan;

    fn plan() -> PlanSpec {
        parse_plan(
            br#"{"version":7,"rollouts":[
              {"name":"fraud","salt":"s1","variants":[{"name":"stable","weight":90},{"name":"canary","weight":10}]},
              {"name":"abn","salt":"s2","variants":[{"name":"a","weight":50},{"name":"b","weight":30},{"name":"c","weight":20}],
               "targeting":[{"variant":"b","when":[{"header":"x-t","present":true}]}]}]}"#,
        )
        .unwrap()
        .0
    }

    fn weights(p: &PlanSpec, rollout: &str) -> Vec<(String, f64)> {
        p.rollouts
            .iter()
            .find(|r| r.name == rollout)
            .unwrap()
            .variants
            .iter()
            .map(|v| (v.name.clone(), v.weight))
            .collect()
    }

    fn w(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
    }

    #[test]
    fn set_weights_explicit() {
        let p = set_weights(&plan(), "fraud", &[("canary", 25.0), ("stable", 75.0)]).unwrap();
        assert_eq!(
            weights(&p, "fraud"),
            w(&[("stable", 75.0), ("canary", 25.0)])
        );
        assert_eq!(p.version, 7, "the version is the store's business");
        // other rollouts untouched
        assert_eq!(p.rollouts[1], plan().rollouts[1]);
        p.compile().unwrap();
    }

    #[test]
    fn set_weights_errors() {
        let e = set_weights(&plan(), "fraud", &[("stable", 75.0), ("canary", 20.0)]).unwrap_err();
        assert_eq!(e.field(), "weights");
        assert!(e.message().contains("95"), "{e}");
        let e = set_weights(&plan(), "fraud", &[("stable", 100.0)]).unwrap_err();
        assert_eq!(e.field(), "weights");
        assert!(e.message().contains("canary"), "{e}");
        let e = set_weights(&plan(), "fraud", &[("stable", 50.0), ("blue", 50.0)]).unwrap_err();
        assert_eq!(e.field(), "variant");
        let e = set_weights(&plan(), "nope", &[("stable", 100.0)]).unwrap_err();
        assert!(matches!(e, OpError::UnknownRollout(_)), "{e}");
        let e = set_weights(
            &plan(),
            "fraud",
            &[("stable", 50.0), ("stable", 40.0), ("canary", 10.0)],
        )
        .unwrap_err();
        assert_eq!(e.field(), "weights.stable");
        let e =
            set_weights(&plan(), "fraud", &[("stable", 99.995), ("canary", 0.005)]).unwrap_err();
        assert_eq!(e.field(), "weights.stable");
        let e = set_weights(&plan(), "fraud", &[("stable", 110.0), ("canary", -10.0)]).unwrap_err();
        assert_eq!(e.field(), "weights.stable");
    }

    #[test]
    fn set_weights_two_decimals_sum_exactly() {
        let p = set_weights(&plan(), "abn", &[("a", 33.33), ("b", 33.33), ("c", 33.34)]).unwrap();
        assert_eq!(
            weights(&p, "abn"),
            w(&[("a", 33.33), ("b", 33.33), ("c", 33.34)])
        );
        let compiled = p.compile().unwrap();
        let bp: Vec<u16> = compiled.rollouts[1]
            .variants
            .iter()
            .map(|v| v.weight_bp)
            .collect();
        assert_eq!(bp, vec![3333, 3333, 3334]);
    }

    #[test]
    fn set_weight_first_variant_absorbs() {
        let p = set_weight(&plan(), "fraud", "canary", 25.0).unwrap();
        assert_eq!(
            weights(&p, "fraud"),
            w(&[("stable", 75.0), ("canary", 25.0)])
        );
        let p = set_weight(&plan(), "abn", "b", 10.0).unwrap();
        assert_eq!(
            weights(&p, "abn"),
            w(&[("a", 70.0), ("b", 10.0), ("c", 20.0)])
        );
        let p = set_weight(&plan(), "fraud", "canary", 100.0).unwrap();
        assert_eq!(
            weights(&p, "fraud"),
            w(&[("stable", 0.0), ("canary", 100.0)])
        );
        // targeting kept
        assert_eq!(p.rollouts[1].targeting, plan().rollouts[1].targeting);
    }

    #[test]
    fn set_weight_two_decimals_without_drift() {
        let p = set_weight(&plan(), "fraud", "canary", 12.34).unwrap();
        assert_eq!(
            weights(&p, "fraud"),
            w(&[("stable", 87.66), ("canary", 12.34)])
        );
        // many steps never accumulate float error
        let mut p = plan();
        for i in 1..=200u32 {
            let target = f64::from(i % 100) + 0.01 * f64::from(i % 7);
            p = set_weight(&p, "fraud", "canary", target).unwrap();
            let ws = weights(&p, "fraud");
            assert_eq!(ws[1].1, target);
            assert_eq!(ws[0].1, f64::from(10_000 - (i % 100) * 100 - i % 7) / 100.0);
        }
        p.compile().unwrap();
    }

    #[test]
    fn set_weight_errors() {
        let e = set_weight(&plan(), "fraud", "stable", 50.0).unwrap_err();
        assert_eq!(e.field(), "variant");
        let e = set_weight(&plan(), "fraud", "blue", 50.0).unwrap_err();
        assert_eq!(e.field(), "variant");
        let e = set_weight(&plan(), "ghost", "canary", 50.0).unwrap_err();
        assert!(matches!(e, OpError::UnknownRollout(_)), "{e}");
        let e = set_weight(&plan(), "fraud", "canary", 100.5).unwrap_err();
        assert_eq!(e.field(), "weight");
        let e = set_weight(&plan(), "fraud", "canary", 1.001).unwrap_err();
        assert_eq!(e.field(), "weight");
        let e = set_weight(&plan(), "fraud", "canary", f64::NAN).unwrap_err();
        assert_eq!(e.field(), "weight");
        // a: 50, b: 30, c: 20 -> c at 75 would need a = -5
        let e = set_weight(&plan(), "abn", "c", 75.0).unwrap_err();
        assert_eq!(e.field(), "weight");
        assert!(e.message().contains("below 0"), "{e}");
    }

    #[test]
    fn switch_blue_green() {
        let p = switch(&plan(), "abn", "b").unwrap();
        assert_eq!(
            weights(&p, "abn"),
            w(&[("a", 0.0), ("b", 100.0), ("c", 0.0)])
        );
        let p = switch(&p, "abn", "a").unwrap();
        assert_eq!(
            weights(&p, "abn"),
            w(&[("a", 100.0), ("b", 0.0), ("c", 0.0)])
        );
        assert_eq!(switch(&plan(), "abn", "z").unwrap_err().field(), "variant");
        assert!(matches!(
            switch(&plan(), "z", "a").unwrap_err(),
            OpError::UnknownRollout(_)
        ));
    }

    #[test]
    fn promote_moves_candidate_first() {
        let p = promote(&plan(), "fraud").unwrap();
        assert_eq!(
            weights(&p, "fraud"),
            w(&[("canary", 100.0), ("stable", 0.0)])
        );
        let p = promote(&plan(), "abn").unwrap();
        assert_eq!(
            weights(&p, "abn"),
            w(&[("c", 100.0), ("a", 0.0), ("b", 0.0)])
        );
        // targeting still points at variants by name
        p.compile().unwrap();
        assert!(matches!(
            promote(&plan(), "nope").unwrap_err(),
            OpError::UnknownRollout(_)
        ));
        // single variant: stays itself at 100
        let single = parse_plan(
            br#"{"version":1,"rollouts":[{"name":"one","salt":"s","variants":[{"name":"only","weight":100}]}]}"#,
        )
        .unwrap()
        .0;
        let p = promote(&single, "one").unwrap();
        assert_eq!(weights(&p, "one"), w(&[("only", 100.0)]));
    }

    #[test]
    fn rollback_returns_candidate_share_to_stable() {
        let p = set_weight(&plan(), "fraud", "canary", 12.34).unwrap();
        let p = rollback(&p, "fraud").unwrap();
        assert_eq!(
            weights(&p, "fraud"),
            w(&[("stable", 100.0), ("canary", 0.0)])
        );
        let p = rollback(&plan(), "abn").unwrap();
        assert_eq!(
            weights(&p, "abn"),
            w(&[("a", 70.0), ("b", 30.0), ("c", 0.0)])
        );
        // already at 0: valid, unchanged weights
        let again = rollback(&p, "abn").unwrap();
        assert_eq!(weights(&again, "abn"), weights(&p, "abn"));
        assert!(matches!(
            rollback(&plan(), "nope").unwrap_err(),
            OpError::UnknownRollout(_)
        ));
        let single = parse_plan(
            br#"{"version":1,"rollouts":[{"name":"one","salt":"s","variants":[{"name":"only","weight":100}]}]}"#,
        )
        .unwrap()
        .0;
        assert_eq!(rollback(&single, "one").unwrap_err().field(), "variants");
    }

    #[test]
    fn pause_and_resume() {
        let p = set_paused(&plan(), "fraud", true).unwrap();
        assert!(p.rollouts[0].paused);
        assert!(!p.rollouts[1].paused);
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains("\"paused\":true"), "{text}");
        let (again, compiled) = parse_plan(text.as_bytes()).unwrap();
        assert_eq!(again, p);
        assert!(compiled.rollouts[0].paused);
        let p = set_paused(&p, "fraud", false).unwrap();
        assert_eq!(p, plan());
        assert!(matches!(
            set_paused(&plan(), "x", true).unwrap_err(),
            OpError::UnknownRollout(_)
        ));
    }

    #[test]
    fn results_round_trip_through_json() {
        let p = set_weight(&plan(), "fraud", "canary", 0.01).unwrap();
        let text = serde_json::to_string(&p).unwrap();
        let (again, _) = parse_plan(text.as_bytes()).unwrap();
        assert_eq!(again, p);
    }
}
