//! The per-request context. Callbacks stay thin: gather what the decision needs
//! through the host adapter, let `rollout_core` decide, apply the result.
//!
//! Host calls on a matched request: `:path` (plus `:authority` only when some
//! rollout matches on host), the subject header (and `cookie` when needed), the
//! correlation header, one removal of the override header, setting the variant
//! header (and the correlation id when minted), the clock; on the response
//! `:status`, the clock, one histogram sample and the echoed headers. Counters cost
//! no host call (see `metrics`).

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use rollout_core::correlation;
use rollout_core::decide::decide;
use rollout_core::hash::BUCKETS;
use rollout_core::request::{CachedHeaders, RequestHeaders};
use rollout_core::stats::class_index;

use crate::host::{Host, ProxyHost};
use crate::metrics::Metrics;
use crate::rng::{Draw, RandomPool};
use crate::root::Active;

/// What the request half decided, for the response half.
struct Assigned {
    rollout: usize,
    variant: usize,
    correlation_id: Option<String>,
    start_ns: Option<u64>,
}

pub struct Http<H: Host> {
    host: H,
    #[allow(dead_code)]
    context_id: u32,
    active: Option<Rc<Active>>,
    rng: Rc<RefCell<RandomPool>>,
    assigned: Option<Assigned>,
}

impl<H: Host> Http<H> {
    pub fn new(
        host: H,
        context_id: u32,
        active: Option<Rc<Active>>,
        rng: Rc<RefCell<RandomPool>>,
    ) -> Self {
        Http {
            host,
            context_id,
            active,
            rng,
            assigned: None,
        }
    }

    pub fn request_headers(&mut self) -> Action {
        let Some(active) = self.active.clone() else {
            return Action::Continue;
        };
        let cfg = &active.config;
        let m = &active.metrics;
        let host = &self.host;
        let mut headers = CachedHeaders::new(|name: &str| match host.request_header(name) {
            Ok(v) => v,
            Err(_) => {
                m.bump(m.host_errors);
                None
            }
        });
        let path = headers.header(":path").unwrap_or_default();
        let authority = if cfg.plan.needs_host {
            headers.header(":authority")
        } else {
            None
        };
        let Some((ri, rollout)) = cfg
            .plan
            .find_rollout(authority.as_deref(), &path)
            .and_then(|i| Some((i, cfg.plan.rollout(i)?)))
        else {
            m.bump(m.unmatched);
            return Action::Continue;
        };

        // The override header never goes upstream; it is read first when trusted.
        let override_value = if cfg.override_enabled {
            headers.header(&cfg.override_header)
        } else {
            None
        };
        if !cfg.override_enabled || override_value.is_some() {
            set_request_header(host, m, &cfg.override_header, None);
        }

        let rng = &self.rng;
        let decision = decide(
            rollout,
            &cfg.subject,
            override_value.as_deref(),
            &mut headers,
            || {
                let mut b = [0u8; 4];
                draw(rng, host, m, &mut b);
                u32::from_le_bytes(b) % u32::from(BUCKETS)
            },
        );

        let correlation_id = match headers.header(&cfg.correlation_header) {
            Some(id) if correlation::is_valid(&id) => id,
            _ => {
                let mut b = [0u8; 16];
                draw(rng, host, m, &mut b);
                let id = correlation::uuid_v4(b);
                set_request_header(host, m, &cfg.correlation_header, Some(&id));
                m.bump(m.correlation_generated);
                id
            }
        };
        set_request_header(
            host,
            m,
            &cfg.variant_header,
            Some(rollout.variant_name(decision.variant)),
        );

        if let Some(vm) = m.variant(ri, decision.variant) {
            m.bump(vm.requests);
        }
        if let Some(rm) = m.rollouts.get(ri) {
            if let Some(slot) = rm.reasons.get(decision.reason.index()) {
                m.bump(*slot);
            }
        }
        if decision.override_rejected {
            m.bump(m.override_rejected);
        }
        let start_ns = match host.now_nanos() {
            Ok(t) => Some(t),
            Err(_) => {
                m.bump(m.host_errors);
                None
            }
        };
        self.assigned = Some(Assigned {
            rollout: ri,
            variant: decision.variant,
            correlation_id: cfg.echo_correlation.then_some(correlation_id),
            start_ns,
        });
        Action::Continue
    }

    pub fn response_headers(&mut self) -> Action {
        let (Some(active), Some(a)) = (self.active.as_ref(), self.assigned.as_ref()) else {
            return Action::Continue;
        };
        let cfg = &active.config;
        let m = &active.metrics;
        let host = &self.host;
        let status = match host.response_header(":status") {
            Ok(s) => s.and_then(|s| s.parse::<u32>().ok()).unwrap_or(0),
            Err(_) => {
                m.bump(m.host_errors);
                0
            }
        };
        if let Some(vm) = m.variant(a.rollout, a.variant) {
            if let Some(slot) = vm.classes.get(class_index(status)) {
                m.bump(*slot);
            }
            if let Some(start) = a.start_ns {
                match host.now_nanos() {
                    Ok(now) => {
                        let ms = now.saturating_sub(start) / 1_000_000;
                        m.record(host, vm.latency_ms, ms);
                    }
                    Err(_) => m.bump(m.host_errors),
                }
            }
        }
        if let Some(id) = &a.correlation_id {
            set_response_header(host, m, &cfg.correlation_header, id);
        }
        if cfg.echo_variant {
            if let Some(r) = cfg.plan.rollout(a.rollout) {
                set_response_header(host, m, &cfg.variant_header, r.variant_name(a.variant));
            }
        }
        Action::Continue
    }
}

fn set_request_header(host: &impl Host, m: &Metrics, name: &str, value: Option<&str>) {
    if host.set_request_header(name, value).is_err() {
        m.bump(m.host_errors);
    }
}

fn set_response_header(host: &impl Host, m: &Metrics, name: &str, value: &str) {
    if host.set_response_header(name, Some(value)).is_err() {
        m.bump(m.host_errors);
    }
}

fn draw(rng: &RefCell<RandomPool>, host: &impl Host, m: &Metrics, out: &mut [u8]) {
    let clock = || host.now_nanos().unwrap_or(0x5eed);
    let outcome = match rng.try_borrow_mut() {
        Ok(mut pool) => pool.fill(out, clock),
        // Unreachable in a single-threaded VM; a fresh pool still gives randomness.
        Err(_) => RandomPool::default().fill(out, clock),
    };
    if let Draw::Fallback = outcome {
        m.bump(m.random_fallback);
    }
}

impl Context for Http<ProxyHost> {}

impl HttpContext for Http<ProxyHost> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.request_headers()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.response_headers()
    }
}
