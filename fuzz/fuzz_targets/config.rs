//! The plugin configuration and the plan parser (`parse_plugin_config`,
//! `parse_plan`): any bytes, never a panic; whatever is accepted obeys the rules
//! the filter relies on (issue 11): JSON-safe versions, no reserved header in a
//! role, no control character in a header, an authority or a path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout_core::fields::{has_control, MAX_JSON_SAFE_INTEGER};
use rollout_core::headers::{refusal, Role};
use rollout_core::plan::Source;
use rollout_core::{parse_plan, parse_plugin_config, Plan};

fn check_plan(plan: &Plan) {
    assert!(plan.version <= MAX_JSON_SAFE_INTEGER);
    for r in &plan.rollouts {
        if let Some(p) = &r.matcher.path_prefix {
            assert!(!has_control(p), "path_prefix {p:?}");
        }
        if let Some(s) = &r.shadow {
            for v in [&s.authority, &s.path].into_iter().flatten() {
                assert!(!has_control(v), "shadow {v:?}");
            }
        }
        for rule in &r.targeting {
            for c in &rule.when {
                if let Source::Header(h) = &c.source {
                    assert!(refusal(h, Role::Read).is_none(), "condition header {h:?}");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = parse_plugin_config(data) {
        let mut roles = vec![&c.correlation_header, &c.variant_header, &c.override_header];
        roles.extend(c.echo_model.as_ref());
        for h in &roles {
            assert!(refusal(h, Role::Write).is_none(), "{h:?}");
            assert!(!has_control(h) && h.bytes().all(|b| !b.is_ascii_uppercase()));
        }
        if let Some(h) = &c.subject.header {
            assert!(refusal(h, Role::Read).is_none(), "{h:?}");
            roles.push(h);
        }
        for (i, h) in roles.iter().enumerate() {
            assert!(!roles[..i].contains(h), "{h:?} in two roles");
        }
        if let Some(ctl) = &c.control {
            assert!(!has_control(&ctl.authority) && !has_control(&ctl.path));
        }
        check_plan(&c.plan);
        // What the filter accepted, written back, is accepted again as the same plan.
        let again = serde_json::to_vec(&c.plan_spec).map(|b| parse_plan(&b));
        match again {
            Ok(Ok((_, plan))) => assert_eq!(plan, c.plan),
            other => panic!("the accepted plan does not parse again: {other:?}"),
        }
    }
    if let Ok((_, plan)) = parse_plan(data) {
        check_plan(&plan);
    }
});
