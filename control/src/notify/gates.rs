//! Gate webhooks (`rollouts[].notify.gates`, like Flagger's confirm-promotion): an
//! external system holds a rollout at its step until it answers 200. A thread asks
//! every gate that applies to a progressing rollout's step every `gate_interval`
//! until it answers 200 for that step; the answer is kept in the [`GateBook`], which
//! the engine reads without waiting (`engine::hooks::GateCheck`). A refusal, an
//! unreachable gate or a gate not asked yet holds; a new step (or a restart) needs a
//! new 200.
//!
//! The request: `POST` to the gate's URL, a JSON body
//! `{"rollout", "gate", "step", "steps", "step_label", "promotion", "candidate",
//! "stable", "plan_version"}`, signed like the events (`X-Rollout-Signature`), with
//! `X-Rollout-Event: gate`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rollout_core::plan::RolloutSpec;
use rollout_core::policy::{step_label, ProgressState};

use crate::engine::hooks::GateCheck;
use crate::notify::delivery::{agent, post};
use crate::store::Store;

/// A gate's last answer for one step of a rollout.
#[derive(Debug, Clone)]
struct Answer {
    /// The step (index, start time) it answered for.
    step: (usize, u64),
    open: bool,
    why: String,
}

/// The gates' last answers, by (rollout, gate name).
#[derive(Debug, Default)]
pub struct GateBook {
    answers: Mutex<HashMap<(String, String), Answer>>,
    asked: AtomicU64,
    refused: AtomicU64,
}

/// The step a rollout is at: (index, since), only while progressing.
fn progressing_step(r: &RolloutSpec) -> Option<(usize, u64, usize)> {
    let p = r.progress.as_ref()?;
    let steps = r.policy.as_ref()?.steps.len();
    (p.state == ProgressState::Progressing && !r.paused).then_some((p.step, p.since_ms, steps))
}

impl GateBook {
    /// (asked, refused or unreachable) since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.asked.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    fn record(&self, rollout: &str, gate: &str, a: Answer) {
        self.asked.fetch_add(1, Ordering::Relaxed);
        if !a.open {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((rollout.to_string(), gate.to_string()), a);
    }

    fn is_open(&self, rollout: &str, gate: &str, step: (usize, u64)) -> bool {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(rollout.to_string(), gate.to_string()))
            .is_some_and(|a| a.open && a.step == step)
    }

    /// Forgets the answers of gates no longer in the plan.
    fn retain(&self, live: &[(String, String)]) {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| live.contains(k));
    }
}

impl GateCheck for GateBook {
    fn holds(&self, r: &RolloutSpec) -> Option<String> {
        let (step, since, steps) = progressing_step(r)?;
        let gates = &r.notify.as_ref()?.gates;
        let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut held = Vec::new();
        for g in gates.iter().filter(|g| g.applies(step, steps)) {
            match answers.get(&(r.name.clone(), g.name.clone())) {
                Some(a) if a.step == (step, since) && a.open => {}
                Some(a) if a.step == (step, since) => held.push(format!("{} {}", g.name, a.why)),
                _ => held.push(format!("{} not answered yet", g.name)),
            }
        }
        (!held.is_empty()).then(|| format!("gate webhook {}", held.join("; ")))
    }
}

/// Asks the gates until `stop`; runs on its own thread.
pub fn run(
    book: Arc<GateBook>,
    store: Arc<Store>,
    secret: Option<Vec<u8>>,
    timeout: Duration,
    interval: Duration,
    stop: Arc<AtomicBool>,
) {
    let agent = agent(timeout);
    while !stop.load(Ordering::Relaxed) {
        if let Some(cur) = store.current() {
            let mut live = Vec::new();
            for r in &cur.record.plan.rollouts {
                let Some(n) = &r.notify else { continue };
                for g in &n.gates {
                    live.push((r.name.clone(), g.name.clone()));
                }
                let Some((step, since, steps)) = progressing_step(r) else {
                    continue;
                };
                for g in n.gates.iter().filter(|g| g.applies(step, steps)) {
                    if book.is_open(&r.name, &g.name, (step, since)) {
                        continue;
                    }
                    let body = serde_json::json!({
                        "rollout": r.name,
                        "gate": g.name,
                        "step": step,
                        "steps": steps,
                        "step_label": r.policy.as_ref().map(|p| step_label(p, step)),
                        "promotion": step + 1 >= steps,
                        "candidate": r.candidate_name(),
                        "stable": r.variants.first().map(|v| v.name.as_str()),
                        "plan_version": cur.version(),
                    });
                    let bytes = serde_json::to_vec(&body).unwrap_or_default();
                    let res = post(&agent, &g.url, secret.as_deref(), "gate", 0, &bytes);
                    let answer = match res {
                        Ok(200) => Answer {
                            step: (step, since),
                            open: true,
                            why: "answered 200".to_string(),
                        },
                        Ok(code) => Answer {
                            step: (step, since),
                            open: false,
                            why: format!("answered {code} (only 200 confirms)"),
                        },
                        Err(why) => Answer {
                            step: (step, since),
                            open: false,
                            why,
                        },
                    };
                    book.record(&r.name, &g.name, answer);
                }
            }
            book.retain(&live);
        }
        std::thread::sleep(interval);
    }
}
