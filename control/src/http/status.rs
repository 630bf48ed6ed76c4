//! `GET /v1/status`: the plan version and its age, each rollout's weights and policy,
//! the policy engine, and the proxies that poll the plan with how far behind they are.

use std::time::Instant;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use crate::api::status::{
    DataBudget, DataKind, ProxySummary, Status, StatusProxy, StatusRollout, StatusVariant,
};
use crate::engine::proxies_behind::ACTIVE_PROXY;
use crate::engine::state::Engine;
use crate::engine::status::rollout_status;
use crate::http::state::AppState;
use crate::store::blocking::blocking;
use crate::util::timefmt::now_unix_ms;

/// Proxies listed at most (the summary counts every one).
const MAX_LISTED: usize = 1_000;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/status", get(status))
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// `GET /v1/status`.
async fn status(State(state): State<AppState>) -> Json<Status> {
    let cur = state.store().current();
    let now = Instant::now();
    let latest = cur.as_ref().map(|c| c.version());
    let summary = state.proxies().summary(latest, now, ACTIVE_PROXY);
    let proxy_summary = ProxySummary {
        tracked: summary.tracked,
        capacity: summary.capacity,
        active: summary.active,
        current: summary.current,
        behind: summary.behind,
        unknown: summary.unknown,
        untracked_total: summary.untracked_total,
    };
    let proxies = state
        .proxies()
        .listing(latest, MAX_LISTED)
        .into_iter()
        .map(|(id, seen)| StatusProxy {
            id,
            plan_version: seen.plan_version,
            last_seen_seconds_ago: round_ms(now.duration_since(seen.last_seen).as_secs_f64()),
            behind: match (latest, seen.plan_version) {
                (Some(l), Some(p)) => Some(
                    i64::try_from(l).unwrap_or(i64::MAX) - i64::try_from(p).unwrap_or(i64::MAX),
                ),
                _ => None,
            },
        })
        .collect();
    let engine = state.policy_engine();
    // the engine's schedule is on its own (monotonic) clock
    let now_ms = engine.as_deref().map_or_else(now_unix_ms, Engine::now_ms);
    let rollouts = cur
        .as_ref()
        .map(|c| {
            c.record
                .plan
                .rollouts
                .iter()
                .map(|r| StatusRollout {
                    policy: rollout_status(engine.as_deref(), r, now_ms),
                    name: r.name.clone(),
                    paused: r.paused,
                    variants: r
                        .variants
                        .iter()
                        .map(|v| StatusVariant {
                            name: v.name.clone(),
                            weight: v.weight,
                            model: v.model.clone(),
                        })
                        .collect(),
                })
                .collect()
        })
        .unwrap_or_default();
    Json(Status {
        version: latest,
        updated: cur.as_ref().map(|c| c.record.time.clone()),
        age_seconds: cur.as_ref().map(|c| {
            let ms = now_unix_ms().saturating_sub(c.record.unix_ms);
            // u64 ms -> seconds; exact below 2^53 ms (285,000 years)
            round_ms(ms as f64 / 1000.0)
        }),
        rollouts,
        proxies,
        proxy_summary: Some(proxy_summary),
        policy_engine: engine.map(|e| e.view()),
        data: data_budget(&state).await,
    })
}

/// The data budget's figures (one small read transaction); `None` if the store
/// cannot be read (the rest of the status still answers).
async fn data_budget(state: &AppState) -> Option<DataBudget> {
    let store = std::sync::Arc::clone(state.store());
    let usage = blocking(move || store.data_usage()).await.ok()?;
    Some(DataBudget {
        budget_bytes: usage.budget,
        bytes: usage.bytes(),
        oldest_age_seconds: usage
            .oldest_received_ms
            .map(|ms| round_ms(now_unix_ms().saturating_sub(ms) as f64 / 1000.0)),
        kinds: usage
            .kinds
            .iter()
            .map(|(k, t)| {
                (
                    k.as_str().to_string(),
                    DataKind {
                        bytes: t.bytes,
                        items: t.items,
                        evicted_items: t.evicted_items,
                        evicted_bytes: t.evicted_bytes,
                    },
                )
            })
            .collect(),
    })
}
