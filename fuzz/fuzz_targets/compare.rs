//! The shadow-answer comparison: two answers (any bytes, NaN/Infinity tokens
//! tolerated), JSON pointers, tolerances and statuses. Never a panic; the verdict
//! is symmetric, and an answer always agrees with itself unless it holds a
//! non-finite or missing prediction; the filter's one-pass read of the values at
//! the pointers (`Found`), like the pruned parse (`parse_answer_at`), finds at
//! every pointer what the whole parse finds.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rollout_core::answer::{
    compare, extract, health, parse_answer, parse_answer_at, CompareSpec, Found, Prediction,
};

#[derive(Arbitrary, Debug)]
struct Input {
    pointers: Vec<String>,
    primary_status: u16,
    shadow_status: u16,
    abs_tolerance: f64,
    rel_tolerance: f64,
    min: Option<f64>,
    max: Option<f64>,
    primary: Vec<u8>,
    shadow: Vec<u8>,
}

fn finite(p: &Prediction) -> bool {
    match p {
        Prediction::NonFinite => false,
        Prediction::List(l) => l.iter().all(finite),
        _ => true,
    }
}

fuzz_target!(|i: Input| {
    let spec = CompareSpec {
        pointers: i.pointers.into_iter().take(8).collect(),
        abs_tolerance: i.abs_tolerance,
        rel_tolerance: i.rel_tolerance,
        ..CompareSpec::default()
    };
    let a = parse_answer(&i.primary);
    let b = parse_answer(&i.shadow);
    let pa = extract(a.as_ref(), &spec.pointers);
    let pb = extract(b.as_ref(), &spec.pointers);
    // The filter parses only the subtrees at the pointers (`json_at`): it must find
    // exactly what the whole answer holds there.
    let wanted: Vec<&str> = spec.pointers.iter().map(String::as_str).collect();
    let pruned = parse_answer_at(&i.primary, &wanted);
    assert_eq!(extract(pruned.as_ref(), &spec.pointers), pa, "pruned parse differs");
    // ...and so must the values read without a pruned document (`Found`).
    let found = Found::parse(&i.primary, wanted.clone());
    assert_eq!(found.predictions(&spec.pointers), pa, "values read differ");
    if let Some(p) = spec.pointers.first() {
        assert_eq!(found.health(p, i.min, i.max), health(a.as_ref(), p, i.min, i.max));
    }
    for p in pa.iter().chain(&pb).flatten() {
        // Records carry predictions as JSON: always serializable.
        assert!(serde_json::to_vec(&p.to_json()).is_ok());
    }
    let (sa, sb) = (u32::from(i.primary_status), u32::from(i.shadow_status));
    let ab = compare(sa, sb, &pa, &pb, &spec);
    let ba = compare(sb, sa, &pb, &pa, &spec);
    assert_eq!(ab, ba, "the verdict depends on the order");
    let tolerant = spec.abs_tolerance.is_finite()
        && spec.abs_tolerance >= 0.0
        && spec.rel_tolerance.is_finite()
        && spec.rel_tolerance >= 0.0;
    if tolerant && pa.iter().all(|p| p.as_ref().is_some_and(finite)) {
        assert!(compare(200, 200, &pa, &pa, &spec).agrees(), "{pa:?}");
    }
    if let Some(p) = spec.pointers.first() {
        let _ = health(a.as_ref(), p, i.min, i.max);
    }
});
