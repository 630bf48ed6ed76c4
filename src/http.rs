//! The per-request context. Callbacks stay thin: gather what the decision needs
//! through the host adapter, let `rollout_core` decide, apply the result.
//!
//! Host calls on a matched request: `:path` (plus `:authority` only when some
//! rollout matches on host), the subject header (and `cookie` when needed), the
//! correlation header, one removal of the override header, setting the variant
//! header (and the correlation id when minted), the clock; one property read per
//! verified claim or peer field the decision needs, only when the configuration
//! names one (`subject.claim`/`peer`, a `claim`/`peer` condition); on the response
//! `:status`, the clock, one histogram sample and the echoed headers (the model
//! header only with `echo.model`). Counters, prediction bins included, cost no host
//! call (see `metrics`).

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use rollout_core::answer::Health;
use rollout_core::correlation;
use rollout_core::decide::{decide, subject_key};
use rollout_core::hash::BUCKETS;
use rollout_core::identity::{claim_path, Claim, Peer, MAX_CLAIM_BYTES};
use rollout_core::request::{CachedHeaders, RequestHeaders};
use rollout_core::shadow::CopyHeaders;
use rollout_core::stats::{class_index, RecordDrop, ShadowSkip};
use rollout_core::wire::Assignment;

use crate::active::Active;
use crate::answer::{self, Wanted};
use crate::host::{HeaderSnapshot, Host, HostError, ProxyHost};
use crate::hub::{Half, Hub, Job, JOIN_GRACE_MS};
use crate::metrics::{count_bin, Metrics};
use crate::rng::Random;
use crate::trip::Observed;
use crate::trip_share;

/// Request headers for the decision: a snapshot from one host call, or (should
/// that fail) one host call per distinct header. The verified identity is read
/// through properties only when the configuration names it (one host call per
/// distinct claim or peer field, cached for the request; bounded by
/// `rollout_core::identity`).
struct Headers<'k, F: FnMut(&str) -> Option<String>, P: FnMut(&[&str]) -> Option<Vec<u8>>> {
    snapshot: Option<HeaderSnapshot>,
    fallback: CachedHeaders<F>,
    property: P,
    /// `jwt.payload_in_metadata`; without it no claim is read.
    jwt_key: Option<&'k str>,
    claims: Vec<(String, Option<Claim>)>,
    peers: Vec<(Peer, Option<String>)>,
}

/// Distinct claims cached per request; beyond this they are read again.
const MAX_CACHED_CLAIMS: usize = 8;

impl<F: FnMut(&str) -> Option<String>, P: FnMut(&[&str]) -> Option<Vec<u8>>> RequestHeaders
    for Headers<'_, F, P>
{
    fn header(&mut self, name: &str) -> Option<String> {
        match &self.snapshot {
            Some(snapshot) => snapshot.get(name).map(|v| v.into_owned()),
            None => self.fallback.header(name),
        }
    }

    fn claim(&mut self, name: &str) -> Option<Claim> {
        let key = self.jwt_key?;
        if let Some((_, c)) = self.claims.iter().find(|(n, _)| n == name) {
            return c.clone();
        }
        let c = (self.property)(&claim_path(key, name)).and_then(|b| Claim::decode(&b));
        if self.claims.len() < MAX_CACHED_CLAIMS {
            self.claims.push((name.to_string(), c.clone()));
        }
        c
    }

    fn peer(&mut self, field: Peer) -> Option<String> {
        if let Some((_, v)) = self.peers.iter().find(|(p, _)| *p == field) {
            return v.clone();
        }
        let v = (self.property)(&field.path())
            .filter(|b| b.len() <= MAX_CLAIM_BYTES)
            .and_then(|b| String::from_utf8(b).ok());
        self.peers.push((field, v.clone()));
        v
    }
}

/// What the request half decided, for the response half.
struct Assigned {
    rollout: usize,
    variant: usize,
    correlation_id: Option<String>,
    start_ns: Option<u64>,
}

/// A shadow copy being assembled from the request body.
struct Copy {
    join: u64,
    headers: CopyHeaders,
    body: Vec<u8>,
    max: usize,
    too_large: bool,
    sent: bool,
}

/// The primary's answer being collected (bounded) for comparison or health.
struct Collect {
    join: Option<u64>,
    check_output: bool,
    status: u32,
    latency_ms: u64,
    /// The clock at the response headers (unix ms), reused when the request ends:
    /// no clock read of its own.
    at_ms: Option<u64>,
    body: Vec<u8>,
    max: usize,
    too_large: bool,
}

pub struct Http<H: Host> {
    host: H,
    #[allow(dead_code)]
    context_id: u32,
    active: Option<Rc<Active>>,
    random: Random,
    hub: Rc<RefCell<Hub>>,
    assigned: Option<Assigned>,
    copy: Option<Copy>,
    collect: Option<Collect>,
}

impl<H: Host> Http<H> {
    pub fn new(
        host: H,
        context_id: u32,
        active: Option<Rc<Active>>,
        random: Random,
        hub: Rc<RefCell<Hub>>,
    ) -> Self {
        Http {
            host,
            context_id,
            active,
            random,
            hub,
            assigned: None,
            copy: None,
            collect: None,
        }
    }

    pub fn request_headers(&mut self, end_of_stream: bool) -> Action {
        let Some(active) = self.active.clone() else {
            return Action::Continue;
        };
        let cfg = &active.config;
        let m = &active.metrics;
        let host = &self.host;
        // One host call reads every request header; lookups after that are local
        // and read the proxy's buffer in place.
        // Should the snapshot fail, each header is fetched on its own.
        let snapshot = match host.request_headers_all() {
            Ok(snapshot) => Some(snapshot),
            Err(_) => {
                m.bump(m.host_errors);
                None
            }
        };
        let have_snapshot = snapshot.is_some();
        let mut headers = Headers {
            snapshot,
            fallback: CachedHeaders::new(|name: &str| match host.request_header(name) {
                Ok(v) => v,
                Err(_) => {
                    m.bump(m.host_errors);
                    None
                }
            }),
            // An absent property (no token, no client certificate) is no error.
            property: |path: &[&str]| match host.property(path) {
                Ok(v) => v,
                Err(HostError::NotFound) => None,
                Err(_) => {
                    m.bump(m.host_errors);
                    None
                }
            },
            jwt_key: cfg.jwt_key.as_deref(),
            claims: Vec::new(),
            peers: Vec::new(),
        };
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

        // The override header never goes upstream; it is honoured only when trusted.
        let present = headers.header(&cfg.override_header);
        if present.is_some() || !have_snapshot {
            set_request_header(host, m, &cfg.override_header, None);
        }
        let override_value = if cfg.override_enabled { present } else { None };

        let random = &self.random;
        let decision = decide(
            rollout,
            &cfg.subject,
            override_value.as_deref(),
            &mut headers,
            || random.u32(host, m) % u32::from(BUCKETS),
        );

        // The proxy mints every correlation id: it is the key that joins outcomes and
        // shadow answers to an arm, so a client's own id (reused across users, or
        // guessed) is never kept (README "Security model").
        let correlation_id = {
            let mut b = [0u8; 16];
            random.fill(&mut b, host, m);
            let id = correlation::uuid_v4(b);
            set_request_header(host, m, &cfg.correlation_header, Some(&id));
            m.bump(m.correlation_generated);
            id
        };
        // A tripped proxy sends the candidate's users to stable until a newer plan.
        let mut decision = decision;
        if let Some(tw) = active.trip(ri) {
            if tw.tripped() && decision.variant == tw.spec.candidate {
                decision.variant = 0;
                if let Some(tm) = m.trip(ri) {
                    m.bump(tm.rerouted);
                }
            }
        }
        set_request_header(
            host,
            m,
            &cfg.variant_header,
            Some(rollout.variant_name(decision.variant)),
        );
        if let Some(x) = &rollout.experiment {
            let recorded =
                x.record_bp >= 10_000 || random.u32(host, m) % 10_000 < u32::from(x.record_bp);
            if recorded {
                let record = Assignment {
                    correlation_id: correlation_id.clone(),
                    rollout: rollout.name.clone(),
                    variant: rollout.variant_name(decision.variant).to_string(),
                    unix_ms: host.now_ms(),
                };
                let kept = self
                    .hub
                    .try_borrow_mut()
                    .map(|mut h| h.assignment(record))
                    .unwrap_or(false);
                if !kept {
                    m.assignments_dropped(RecordDrop::BufferFull, 1);
                }
            }
        }

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
        let cid_for_shadow = correlation_id.clone();
        self.assigned = Some(Assigned {
            rollout: ri,
            variant: decision.variant,
            correlation_id: cfg.echo_correlation.then_some(correlation_id),
            start_ns,
        });
        if let Some(sh) = &rollout.shadow {
            let method = headers.header(":method").unwrap_or_default();
            let key = if sh.sticky {
                subject_key(&cfg.subject, &mut headers)
            } else {
                None
            };
            let sampled =
                sh.method_allowed(&method) && sh.sampled(key.as_deref(), || random.u32(host, m));
            if sampled {
                let declared = headers
                    .header("content-length")
                    .and_then(|v| v.trim().parse::<usize>().ok());
                let primary = headers.snapshot.take();
                self.start_copy(&active, &cid_for_shadow, declared, end_of_stream, primary);
            }
        }
        Action::Continue
    }

    /// Opens the join for the assigned request and starts assembling the copy
    /// (dispatched at once when the request has no body).
    fn start_copy(
        &mut self,
        active: &Rc<Active>,
        correlation_id: &str,
        declared_len: Option<usize>,
        end_of_stream: bool,
        primary_headers: Option<HeaderSnapshot>,
    ) {
        let Some((ri, variant)) = self.assigned.as_ref().map(|a| (a.rollout, a.variant)) else {
            return;
        };
        let cfg = &active.config;
        let m = &active.metrics;
        let (Some(rollout), Some(sm)) = (cfg.plan.rollout(ri), m.shadow(ri)) else {
            return;
        };
        let Some(sh) = &rollout.shadow else { return };
        if declared_len.is_some_and(|n| n > sh.max_body_bytes) {
            sm.skip(m, ShadowSkip::BodyTooLarge);
            return;
        }
        // The request's clock, read a moment ago in `request_headers` (one clock
        // read fewer per shadowed request).
        let now_ms = match self.assigned.as_ref().and_then(|a| a.start_ns) {
            Some(ns) => ns / 1_000_000,
            None => self.host.now_ms(),
        };
        let expires = now_ms
            .saturating_add(sh.timeout_ms)
            .saturating_add(JOIN_GRACE_MS);
        let opened = match self.hub.try_borrow_mut() {
            Ok(mut hub) => hub
                .open(active.clone(), ri, variant, correlation_id, expires)
                .ok(),
            Err(_) => None,
        };
        let Some(join) = opened else {
            sm.skip(m, ShadowSkip::JoinTableFull);
            return;
        };
        let primary_headers = match primary_headers
            .map(Ok)
            .unwrap_or_else(|| self.host.request_headers_all())
        {
            Ok(h) => h,
            Err(_) => {
                m.bump(m.host_errors);
                self.cancel_join(join);
                sm.skip(m, ShadowSkip::DispatchFailed);
                return;
            }
        };
        let headers = sh.copy_headers(
            primary_headers.iter(),
            &cfg.correlation_header,
            correlation_id,
            &[&cfg.variant_header, &cfg.override_header],
        );
        self.copy = Some(Copy {
            join,
            headers,
            body: Vec::new(),
            max: sh.max_body_bytes,
            too_large: false,
            sent: false,
        });
        if end_of_stream {
            self.send_copy();
        }
    }

    pub fn request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(copy) = &mut self.copy else {
            return Action::Continue;
        };
        if copy.sent {
            return Action::Continue;
        }
        if !copy.too_large && body_size > 0 {
            match self.host.request_body(body_size) {
                Ok(Some(chunk)) if copy.body.len() + chunk.len() <= copy.max => {
                    copy.body.extend_from_slice(&chunk)
                }
                Ok(None) => {}
                _ => {
                    copy.too_large = true;
                    copy.body = Vec::new();
                }
            }
        }
        if end_of_stream {
            self.send_copy();
        }
        Action::Continue
    }

    /// Hands the finished copy to the root (or counts why not).
    fn send_copy(&mut self) {
        let (Some(active), Some(a)) = (
            self.active.clone(),
            self.assigned.as_ref().map(|a| a.rollout),
        ) else {
            return;
        };
        let m = &active.metrics;
        let Some(copy) = &mut self.copy else { return };
        copy.sent = true;
        let (Some(rollout), Some(sm)) = (active.config.plan.rollout(a), m.shadow(a)) else {
            return;
        };
        let Some(sh) = &rollout.shadow else { return };
        let join = copy.join;
        if copy.too_large {
            sm.skip(m, ShadowSkip::BodyTooLarge);
            self.cancel_join(join);
            return;
        }
        let job = Job {
            join,
            rollout: rollout.name.clone(),
            cluster: sh.cluster.clone(),
            headers: std::mem::take(&mut copy.headers),
            body: std::mem::take(&mut copy.body),
            timeout_ms: sh.timeout_ms,
            max_in_flight: sh.max_in_flight,
        };
        let (pushed, queue) = match self.hub.try_borrow_mut() {
            Ok(mut hub) => (hub.push(job), hub.queue),
            Err(_) => return,
        };
        match pushed {
            Ok(true) => {
                if let Some(q) = queue {
                    // An empty nudge: its dequeue allocates nothing in the VM.
                    if self.host.enqueue(q, b"").is_err() {
                        m.bump(m.host_errors);
                    }
                }
            }
            Ok(false) => {}
            Err(_) => sm.skip(m, ShadowSkip::InFlightLimit),
        }
    }

    fn cancel_join(&self, join: u64) {
        if let Ok(mut hub) = self.hub.try_borrow_mut() {
            hub.cancel(join);
        }
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
        let mut latency_ms = 0;
        let now = host.now_nanos().map_err(|_| m.bump(m.host_errors)).ok();
        if let Some(vm) = m.variant(a.rollout, a.variant) {
            if let Some(slot) = vm.classes.get(class_index(status)) {
                m.bump(*slot);
            }
            if let (Some(start), Some(now)) = (a.start_ns, now) {
                latency_ms = now.saturating_sub(start) / 1_000_000;
                m.record(host, vm.latency_ms, latency_ms);
            }
        }
        if let (Some(tw), Some(now)) = (active.trip(a.rollout), now) {
            if a.variant == tw.spec.candidate
                && tw.response(now / 1_000_000, (500..600).contains(&status)) == Observed::Tripped
            {
                trip_share::announce(host, active, a.rollout);
            }
        }
        // Collect the answer when a shadow waits for it or its health is checked.
        let rollout = cfg.plan.rollout(a.rollout);
        let join = self.copy.as_ref().filter(|c| c.sent).map(|c| c.join);
        let check_output = match rollout.and_then(|r| r.output.as_ref()) {
            Some(o) if o.sample_bp >= 10_000 => true,
            Some(o) if o.sample_bp > 0 => {
                self.random.u32(host, m) % 10_000 < u32::from(o.sample_bp)
            }
            _ => false,
        };
        if join.is_some() || check_output {
            let max = rollout
                .map(|r| {
                    let c = r
                        .shadow
                        .as_ref()
                        .map(|s| s.compare.max_response_bytes)
                        .unwrap_or(0);
                    let o = r.output.as_ref().map(|o| o.max_response_bytes).unwrap_or(0);
                    c.max(o)
                })
                .unwrap_or(0);
            self.collect = Some(Collect {
                join,
                check_output,
                status,
                latency_ms,
                at_ms: now.map(|ns| ns / 1_000_000),
                body: Vec::new(),
                max,
                too_large: false,
            });
        }
        if let Some(id) = &a.correlation_id {
            set_response_header(host, m, &cfg.correlation_header, id);
        }
        if cfg.echo_variant {
            if let Some(r) = cfg.plan.rollout(a.rollout) {
                set_response_header(host, m, &cfg.variant_header, r.variant_name(a.variant));
            }
        }
        // The model header always tells the plan's truth: a variant without metadata
        // removes whatever the upstream put there.
        if let Some(h) = &cfg.echo_model {
            let value = cfg
                .plan
                .rollout(a.rollout)
                .and_then(|r| r.model_header(a.variant));
            if host.set_response_header(h, value).is_err() {
                m.bump(m.host_errors);
            }
        }
        Action::Continue
    }
}

impl<H: Host> Http<H> {
    pub fn response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        let Some(c) = &mut self.collect else {
            return Action::Continue;
        };
        if c.too_large || body_size == 0 {
            return Action::Continue;
        }
        match self.host.response_body(body_size) {
            Ok(Some(chunk)) if c.body.len() + chunk.len() <= c.max => {
                c.body.extend_from_slice(&chunk)
            }
            Ok(None) => {}
            _ => {
                c.too_large = true;
                c.body = Vec::new();
            }
        }
        Action::Continue
    }

    /// The request is over: check the answer's health and hand it to the join.
    pub fn done(&mut self) {
        let Some(active) = self.active.clone() else {
            return;
        };
        let m = &active.metrics;
        if let Some(copy) = self.copy.take() {
            if !copy.sent {
                // The client went away before the body was complete.
                if let Some(sm) = self.assigned.as_ref().and_then(|a| m.shadow(a.rollout)) {
                    sm.skip(m, ShadowSkip::Aborted);
                }
                self.cancel_join(copy.join);
            } else if self.collect.as_ref().and_then(|c| c.join).is_none() {
                // Sent, but the primary never answered (reset): nothing to compare.
                if let Some(sm) = self.assigned.as_ref().and_then(|a| m.shadow(a.rollout)) {
                    sm.skip(m, ShadowSkip::Aborted);
                }
                self.cancel_join(copy.join);
            }
        }
        let (Some(c), Some(a)) = (self.collect.take(), self.assigned.as_ref()) else {
            return;
        };
        let Some(rollout) = active.config.plan.rollout(a.rollout) else {
            return;
        };
        // Only successful answers carry an output to judge (errors are counted as
        // errors); an answer too large to read is not judged.
        let hm = m
            .variant(a.rollout, a.variant)
            .and_then(|v| v.output.as_ref());
        let wanted = Wanted {
            health: c.check_output && hm.is_some(),
            comparison: c.join.is_some(),
        };
        let checked = answer::check(
            rollout,
            c.status,
            c.latency_ms,
            &c.body,
            c.too_large,
            wanted,
        );
        if let Some(vm) = m.variant(a.rollout, a.variant) {
            for b in &checked.bins {
                count_bin(m, &vm.bins, *b);
            }
        }
        if let (Some(h), Some(hm)) = (checked.health, hm) {
            hm.count(m, h);
            if let Some(tw) = active.trip(a.rollout) {
                let now = c.at_ms.unwrap_or_else(|| self.host.now_ms());
                if a.variant == tw.spec.candidate
                    && tw.output(now, h != Health::Valid) == Observed::Tripped
                {
                    trip_share::announce(&self.host, &active, a.rollout);
                }
            }
        }
        if let (Some(join), Some(answer)) = (c.join, checked.answer) {
            let now = c.at_ms.unwrap_or_else(|| self.host.now_ms());
            let (host, random) = (&self.host, &self.random);
            let mut draw = || random.u32(host, m);
            if let Ok(mut hub) = self.hub.try_borrow_mut() {
                hub.answered(host, join, Half::Primary, answer, now, &mut draw);
            }
        }
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

impl Context for Http<ProxyHost> {}

impl HttpContext for Http<ProxyHost> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.request_headers(end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.request_body(body_size, end_of_stream)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.response_headers()
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.response_body(body_size, end_of_stream)
    }
}

/// The end of the request runs when the context goes: the SDK drops it inside
/// `proxy_on_delete`, which Envoy calls for every request context it created,
/// completed or aborted (after the access log). Not `on_log`: the module does not
/// export `proxy_on_log` (src/exports.txt), one VM entry fewer per request.
impl<H: Host> Drop for Http<H> {
    fn drop(&mut self) {
        self.done();
    }
}
