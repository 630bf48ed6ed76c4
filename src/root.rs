//! The root context: turns plugin configuration bytes into the compiled form every
//! request context uses, defines metrics, flushes counters on the tick and, with a
//! `control` section, keeps the plan in force in step with the control sidecar.
//!
//! Live plans (one `vm_id` = one shared-data space for every worker's VM):
//! - On its tick (100 ms) every root context reads the small `head` record from
//!   shared data; when it names a newer plan, the root reads the plan, validates
//!   it with `rollout_core` and swaps its compiled copy. Requests never parse.
//! - Polling: at most one root per `vm_id` polls the sidecar per interval. Roots
//!   compete for a lease in shared data (CAS); the holder renews it with every poll
//!   and, should its worker stall, the lease expires after two intervals plus the
//!   timeout and another root takes over. Duplicate polls during a handover are
//!   harmless: plans are versioned and a lower or equal version changes nothing.
//! - The poller publishes an accepted plan (plan bytes first, then the head), so
//!   a reader that sees the new head always finds that plan or a newer one.
//! - Fail static: no answer, a non-200/304 status, malformed JSON, an invalid or
//!   oversized plan, or a lower version leave the plan in force untouched; each is
//!   counted, and staleness grows.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use rollout_core::control::{judge, ControlSpec, Head, Lease, PlanSource, PollOutcome};
use rollout_core::{parse_plan, parse_plugin_config, FilterConfig, Plan, PlanSpec};

use crate::host::{Host, HostError, ProxyHost};
use crate::http::Http;
use crate::metrics::Metrics;
use crate::rng::RandomPool;
use crate::shadow::{Answer, Half, Hub, InFlight, RecordKind};
use crate::trip::TripWindow;
use rollout_core::shadow::{extract, health, parse_answer};
use rollout_core::stats::{RecordDrop, ShadowError, ShadowSkip};
use rollout_core::wire::{
    post_headers, Assignment, AssignmentBatch, ShadowRecord, ShadowRecordBatch, ASSIGNMENTS_PATH,
    SHADOW_RECORDS_PATH,
};

/// Counters reach Envoy's stats at most this long after the event.
pub const FLUSH_MS: u64 = 1000;
/// Tick period with a control sidecar: how quickly workers notice a new plan.
pub const CONTROL_TICK_MS: u64 = 100;

/// What a request context needs, swapped as a whole when the plan changes.
pub struct Active {
    pub config: FilterConfig,
    pub metrics: Metrics,
    /// Local trip windows, by rollout index (`None` without a trip).
    pub trips: Vec<Option<TripWindow>>,
}

impl Active {
    pub fn trip(&self, rollout: usize) -> Option<&TripWindow> {
        self.trips.get(rollout).and_then(Option::as_ref)
    }
}

/// One batch taken from the hub, to post.
enum Batch {
    Records(Vec<ShadowRecord>),
    Assignments(Vec<Assignment>),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Records(r) => r.len(),
            Batch::Assignments(a) => a.len(),
        }
    }
}

/// Shared-data key announcing a local trip to the proxy's other workers; the
/// value is the plan version the trip belongs to.
pub fn trip_key(rollout: &str) -> String {
    format!("model_rollout/trip/{rollout}")
}

struct Poller {
    spec: ControlSpec,
    plan_key: String,
    head_key: String,
    lease_key: String,
    /// Lease holder id: random per root context.
    me: u64,
    proxy_id: String,
    in_flight: Option<(u32, u64)>,
    next_poll_ms: u64,
    last_success_ms: Option<u64>,
}

pub struct Root<H: Host> {
    host: H,
    context_id: u32,
    active: Option<Rc<Active>>,
    source: PlanSource,
    /// Earlier configurations still referenced by in-flight requests; flushed on
    /// every tick until the last request using them is gone. Bounded by the number
    /// of plan changes within one request's lifetime.
    retired: Vec<Rc<Active>>,
    rng: Rc<RefCell<RandomPool>>,
    poller: Option<Poller>,
    started_ms: u64,
    last_flush_ms: Option<u64>,
    hub: Rc<RefCell<Hub>>,
    /// Token of the shadow-records POST in flight, with the number of records.
    records_in_flight: Option<(u32, u64)>,
    assignments_in_flight: Option<(u32, u64)>,
    proxy_id: String,
}

impl<H: Host + Clone> Root<H> {
    pub fn new(host: H, context_id: u32) -> Self {
        Root {
            host,
            context_id,
            active: None,
            source: PlanSource::Static,
            retired: Vec::new(),
            rng: Rc::new(RefCell::new(RandomPool::default())),
            poller: None,
            started_ms: 0,
            last_flush_ms: None,
            hub: Rc::new(RefCell::new(Hub::default())),
            records_in_flight: None,
            assignments_in_flight: None,
            proxy_id: String::new(),
        }
    }

    /// Parses and installs the plugin configuration. On any error the previous
    /// configuration (if any) stays in force and `false` tells the proxy to refuse it.
    pub fn configure(&mut self) -> bool {
        let bytes = match self.host.plugin_configuration() {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                self.log(
                    LogLevel::Critical,
                    &format!("cannot read the plugin configuration: {e:?}"),
                );
                return false;
            }
        };
        let config = match parse_plugin_config(&bytes) {
            Ok(c) => c,
            Err(e) => {
                self.log(
                    LogLevel::Critical,
                    &format!("invalid plugin configuration: {e}"),
                );
                return false;
            }
        };
        self.started_ms = self.now_ms();
        self.proxy_id = self.node_id();
        self.register_queue();
        let has_trip = config.plan.rollouts.iter().any(|r| r.trip.is_some());
        let tick = if config.control.is_some() || has_trip {
            CONTROL_TICK_MS
        } else {
            FLUSH_MS
        };
        self.poller = config.control.clone().map(|spec| self.new_poller(spec));
        let (version, rollouts) = (config.plan.version, config.plan.rollouts.len());
        if !self.install(config, PlanSource::Static) {
            return false;
        }
        if self.host.set_tick_period_ms(tick).is_err() {
            self.bump_host_error();
        }
        self.log(
            LogLevel::Info,
            &format!("configured: static plan version {version} with {rollouts} rollout(s)"),
        );
        // Adopt a plan other workers already hold, before the first request.
        self.sync_from_shared();
        true
    }

    /// The Envoy node id (`xds.node.id`, formerly `node.id`), if any.
    fn node_id(&self) -> String {
        [&["xds", "node", "id"][..], &["node", "id"][..]]
            .iter()
            .find_map(|path| match self.host.property(path) {
                Ok(Some(b)) if !b.is_empty() => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The shared queue request contexts nudge when they park a shadow job.
    fn register_queue(&mut self) {
        let Ok(mut hub) = self.hub.try_borrow_mut() else {
            return;
        };
        if hub.queue.is_some() {
            return;
        }
        let mut id = [0u8; 8];
        if let Ok(mut pool) = self.rng.try_borrow_mut() {
            pool.fill(&mut id, || 7);
        }
        let name = format!(
            "model_rollout/shadow/{:016x}/{}",
            u64::from_le_bytes(id),
            self.context_id
        );
        hub.queue = self.host.register_queue(&name).ok();
    }

    fn new_poller(&self, spec: ControlSpec) -> Poller {
        let prefix = spec.key_prefix();
        let mut id = [0u8; 8];
        let clock = || self.now_ms();
        if let Ok(mut pool) = self.rng.try_borrow_mut() {
            pool.fill(&mut id, clock);
        }
        let me = u64::from_le_bytes(id) | 1;
        // The Envoy node id names this proxy at the sidecar.
        let proxy_id = Some(self.node_id())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("envoy-{me:016x}"));
        Poller {
            spec,
            plan_key: format!("{prefix}/plan"),
            head_key: format!("{prefix}/head"),
            lease_key: format!("{prefix}/lease"),
            me,
            proxy_id,
            in_flight: None,
            next_poll_ms: 0,
            last_success_ms: None,
        }
    }

    /// Makes `config` the one in force (new metrics defined for its plan).
    fn install(&mut self, config: FilterConfig, source: PlanSource) -> bool {
        let metrics = match Metrics::define(&self.host, &config.plan) {
            Ok(m) => m,
            Err(e) => {
                self.log(LogLevel::Critical, &format!("cannot define metrics: {e:?}"));
                return false;
            }
        };
        metrics.set_plan_version(&self.host, config.plan.version);
        let trips: Vec<Option<TripWindow>> = config
            .plan
            .rollouts
            .iter()
            .map(|r| r.trip.clone().map(TripWindow::new))
            .collect();
        for (i, _) in trips.iter().enumerate().filter(|(_, t)| t.is_some()) {
            if let Some(tm) = metrics.trip(i) {
                metrics.set_gauge(&self.host, tm.tripped, 0);
            }
        }
        self.source = source;
        if let Some(old) = self.active.replace(Rc::new(Active {
            config,
            metrics,
            trips,
        })) {
            old.metrics.flush(&self.host);
            self.retired.push(old);
        }
        true
    }

    fn install_plan(&mut self, spec: PlanSpec, plan: Plan) {
        let Some(active) = &self.active else { return };
        let version = plan.version;
        let mut config = active.config.clone();
        config.plan = plan;
        config.plan_spec = spec;
        if self.install(config, PlanSource::Control) {
            self.log(
                LogLevel::Info,
                &format!("plan version {version} from the control sidecar is in force"),
            );
        }
    }

    fn in_force(&self) -> u64 {
        self.active
            .as_ref()
            .map(|a| a.config.plan.version)
            .unwrap_or(0)
    }

    pub fn tick(&mut self) {
        let now = self.now_ms();
        if self.poller.is_some() {
            self.sync_from_shared();
            self.maybe_poll(now);
        }
        // Jobs whose nudge was lost are dispatched here at the latest.
        self.dispatch_jobs();
        self.sync_trips();
        // A full batch of records goes out at once; partial ones with the 1 s flush.
        if self
            .hub
            .try_borrow()
            .map(|h| h.batch_ready())
            .unwrap_or(false)
        {
            self.flush_records();
        }
        if let Ok(mut hub) = self.hub.try_borrow_mut() {
            hub.expire(now);
        }
        let due = match self.last_flush_ms {
            None => true,
            Some(t) => now.saturating_sub(t) >= FLUSH_MS || self.poller.is_none(),
        };
        if due {
            self.last_flush_ms = Some(now);
            if let (Some(a), Some(p)) = (&self.active, &self.poller) {
                let since = p.last_success_ms.unwrap_or(self.started_ms);
                a.metrics
                    .set_staleness(&self.host, now.saturating_sub(since) / 1000);
            }
            self.flush_records();
            if let Some(a) = &self.active {
                a.metrics.flush(&self.host);
            }
            let host = &self.host;
            self.retired.retain(|old| {
                old.metrics.flush(host);
                Rc::strong_count(old) > 1
            });
        }
    }

    /// Adopts the plan another root published, when it is newer than ours.
    fn sync_from_shared(&mut self) {
        let Some(p) = &self.poller else { return };
        let head = match self.host.get_shared(&p.head_key) {
            Ok((Some(b), _)) => Head::decode(&b),
            Ok((None, _)) => None,
            Err(_) => {
                self.bump_host_error();
                None
            }
        };
        let Some(head) = head else { return };
        let plan_key = p.plan_key.clone();
        if let Some(p) = &mut self.poller {
            p.last_success_ms = Some(head.last_success_ms);
        }
        if !rollout_core::control::supersedes(head.version, self.in_force(), self.source) {
            return;
        }
        let bytes = match self.host.get_shared(&plan_key) {
            Ok((Some(b), _)) => b,
            _ => {
                self.bump_host_error();
                return;
            }
        };
        match parse_plan(&bytes) {
            Ok((spec, plan))
                if rollout_core::control::supersedes(
                    plan.version,
                    self.in_force(),
                    self.source,
                ) =>
            {
                self.install_plan(spec, plan)
            }
            Ok(_) => {}
            Err(e) => self.log(
                LogLevel::Error,
                &format!("published plan in shared data is unusable: {e}"),
            ),
        }
    }

    fn maybe_poll(&mut self, now: u64) {
        let in_force = self.in_force();
        let source = self.source;
        let Some(p) = &mut self.poller else { return };
        if let Some((_, started)) = p.in_flight {
            // The proxy answers every callout (at the latest when it times out);
            // should an answer never come, stop waiting after a generous margin.
            if now.saturating_sub(started) < p.spec.timeout_ms.saturating_add(5_000) {
                return;
            }
            p.in_flight = None;
        }
        if now < p.next_poll_ms {
            return;
        }
        p.next_poll_ms = now.saturating_add(p.spec.poll_interval_ms);
        // Take or renew the lease; somebody else holding it polls instead.
        let (current, cas) = match self.host.get_shared(&p.lease_key) {
            Ok((b, cas)) => (b.and_then(|b| Lease::decode(&b)), cas),
            Err(_) => (None, None),
        };
        if !Lease::available_to(current, p.me, now) {
            // Try again the moment the holder's lease runs out.
            if let Some(l) = current {
                p.next_poll_ms = p.next_poll_ms.min(l.until_ms);
            }
            return;
        }
        let lease = Lease {
            holder: p.me,
            until_ms: now
                .saturating_add(p.spec.poll_interval_ms.saturating_mul(2))
                .saturating_add(p.spec.timeout_ms),
        };
        match self.host.set_shared(&p.lease_key, &lease.encode(), cas) {
            Ok(()) => {}
            Err(HostError::CasMismatch) => return,
            Err(_) => {
                self.bump_host_error();
                return;
            }
        }
        // Poll with the ETag only when we run the published version.
        let etag = match self.host.get_shared(&p.head_key) {
            Ok((Some(b), _)) => Head::decode(&b)
                .filter(|h| {
                    h.version == in_force && source == PlanSource::Control && !h.etag.is_empty()
                })
                .map(|h| h.etag),
            _ => None,
        };
        let headers = p.spec.poll_headers(etag.as_deref(), &p.proxy_id, in_force);
        let dispatched = self
            .host
            .dispatch(&p.spec.cluster, &headers, None, p.spec.timeout_ms);
        let Some(active) = &self.active else { return };
        let m = &active.metrics;
        m.bump(m.control.polls);
        match dispatched {
            Ok(token) => p.in_flight = Some((token, now)),
            Err(_) => m.poll_error(rollout_core::control::PollError::Unreachable),
        }
    }

    /// A callout answered (or failed): a shadow, a records POST or a poll.
    /// Unknown tokens are ignored.
    pub fn call_response(&mut self, token: u32, body_size: usize) {
        let in_flight = self
            .hub
            .try_borrow_mut()
            .ok()
            .and_then(|mut h| h.in_flight.remove(&token));
        if let Some(f) = in_flight {
            self.shadow_answer(f, body_size);
            return;
        }
        if let Some((t, n)) = self.records_in_flight {
            if t == token {
                self.records_in_flight = None;
                self.records_answer(RecordKind::Shadow, n);
                return;
            }
        }
        if let Some((t, n)) = self.assignments_in_flight {
            if t == token {
                self.assignments_in_flight = None;
                self.records_answer(RecordKind::Assignment, n);
                return;
            }
        }
        self.poll_answer(token, body_size);
    }

    fn poll_answer(&mut self, token: u32, body_size: usize) {
        let now = self.now_ms();
        let in_force = self.in_force();
        let source = self.source;
        let Some(p) = &mut self.poller else { return };
        if p.in_flight.map(|(t, _)| t) != Some(token) {
            return;
        }
        p.in_flight = None;
        let max = p.spec.max_plan_bytes;
        let status = match self.host.call_response_header(":status") {
            Ok(s) => s.and_then(|s| s.trim().parse::<u32>().ok()),
            Err(_) => None,
        };
        let body = match status {
            Some(200) if body_size <= max => self.host.call_response_body(body_size).ok().flatten(),
            Some(200) | Some(304) | None => None,
            // enough to recognise Envoy's own local replies
            Some(_) => self
                .host
                .call_response_body(body_size.min(64))
                .ok()
                .flatten(),
        };
        let etag = self
            .host
            .call_response_header("etag")
            .ok()
            .flatten()
            .unwrap_or_default();
        let (head_key, plan_key) = (p.head_key.clone(), p.plan_key.clone());
        let outcome = judge(status, body_size, body, max, in_force, source);
        let Some(active) = self.active.clone() else {
            return;
        };
        let m = &active.metrics;
        let success = |root: &mut Self, version: u64, etag: String| {
            if let Some(p) = &mut root.poller {
                p.last_success_ms = Some(now);
            }
            let head = Head {
                version,
                last_success_ms: now,
                etag,
            };
            if root
                .host
                .set_shared(&head_key, head.encode().as_bytes(), None)
                .is_err()
            {
                root.bump_host_error();
            }
        };
        match outcome {
            PollOutcome::NotModified | PollOutcome::Unchanged => {
                let etag = if etag.is_empty() {
                    self.current_etag()
                } else {
                    etag
                };
                success(self, in_force, etag);
            }
            PollOutcome::Accepted { spec, plan, body } => {
                let version = plan.version;
                if self.host.set_shared(&plan_key, &body, None).is_err() {
                    self.bump_host_error();
                    return;
                }
                success(self, version, etag);
                m.bump(m.control.accepted);
                self.install_plan(*spec, *plan);
            }
            PollOutcome::Rejected(reason, msg) => {
                m.rejected(reason);
                self.log(
                    LogLevel::Warn,
                    &format!(
                        "plan from the control sidecar rejected ({}), keeping version {in_force}: {msg}",
                        reason.as_str()
                    ),
                );
            }
            PollOutcome::Failed(e) => {
                m.poll_error(e);
                self.log(
                    LogLevel::Debug,
                    &format!("poll failed ({}), keeping version {in_force}", e.as_str()),
                );
            }
        }
    }

    /// Follows a trip another worker of this proxy announced for the plan in force.
    fn sync_trips(&self) {
        let Some(active) = &self.active else { return };
        let version = active.config.plan.version.to_string();
        for (i, r) in active.config.plan.rollouts.iter().enumerate() {
            let Some(tw) = active.trip(i) else { continue };
            if tw.tripped() {
                continue;
            }
            if let Ok((Some(v), _)) = self.host.get_shared(&trip_key(&r.name)) {
                if v == version.as_bytes() && tw.trip() {
                    if let Some(tm) = active.metrics.trip(i) {
                        active.metrics.set_gauge(&self.host, tm.tripped, 1);
                    }
                    self.log(
                        LogLevel::Warn,
                        &format!("rollout {}: local trip announced by another worker; candidate traffic goes to stable", r.name),
                    );
                }
            }
        }
    }

    /// The request contexts nudged: dispatch the parked shadow jobs.
    pub fn queue_ready(&mut self, queue: u32) {
        // Drain the nudges (their content carries nothing).
        for _ in 0..crate::shadow::MAX_JOBS {
            match self.host.dequeue(queue) {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
        self.dispatch_jobs();
    }

    fn dispatch_jobs(&mut self) {
        let Some(active) = self.active.clone() else {
            return;
        };
        let jobs = match self.hub.try_borrow_mut() {
            Ok(mut hub) => hub.take_jobs(),
            Err(_) => return,
        };
        let now = self.now_ms();
        for job in jobs {
            // Metrics of the plan the job was sampled under are found by name.
            let ri = active
                .config
                .plan
                .rollouts
                .iter()
                .position(|r| r.name == job.rollout);
            let sm = ri.and_then(|i| active.metrics.shadow(i));
            let m = &active.metrics;
            let Ok(mut hub) = self.hub.try_borrow_mut() else {
                return;
            };
            if hub.in_flight_for(&job.rollout) >= job.max_in_flight as usize {
                hub.cancel(job.join);
                if let Some(sm) = sm {
                    sm.skip(m, ShadowSkip::InFlightLimit);
                }
                continue;
            }
            match self
                .host
                .dispatch(&job.cluster, &job.headers, Some(&job.body), job.timeout_ms)
            {
                Ok(token) => {
                    hub.in_flight.insert(
                        token,
                        InFlight {
                            join: job.join,
                            rollout: job.rollout,
                            started_ms: now,
                        },
                    );
                    if let Some(sm) = sm {
                        m.bump(sm.sent);
                    }
                }
                Err(e) => {
                    hub.cancel(job.join);
                    if let Some(sm) = sm {
                        // Envoy refuses a callout to an unknown cluster with BadArgument.
                        sm.skip(
                            m,
                            if e == HostError::BadArgument {
                                ShadowSkip::NoCluster
                            } else {
                                ShadowSkip::DispatchFailed
                            },
                        );
                    }
                }
            }
        }
    }

    fn shadow_answer(&mut self, f: InFlight, body_size: usize) {
        let Some(active) = self.active.clone() else {
            return;
        };
        let now = self.now_ms();
        let m = &active.metrics;
        let Some(ri) = active
            .config
            .plan
            .rollouts
            .iter()
            .position(|r| r.name == f.rollout)
        else {
            // The rollout left the plan meanwhile; its join expires.
            return;
        };
        let (Some(rollout), Some(sm)) = (active.config.plan.rollout(ri), m.shadow(ri)) else {
            return;
        };
        let Some(sh) = &rollout.shadow else { return };
        let status = self
            .host
            .call_response_header(":status")
            .ok()
            .flatten()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let limit = sh.compare.max_response_bytes;
        let body = if body_size <= limit {
            self.host
                .call_response_body(body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            self.host
                .call_response_body(64)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let failure = match status {
            None => Some(rollout_core::control::PollError::Unreachable),
            Some(s) if !(200..300).contains(&s) => {
                match rollout_core::control::PollError::classify(s, &body) {
                    rollout_core::control::PollError::Status => None,
                    e => Some(e),
                }
            }
            _ => None,
        };
        match failure {
            Some(rollout_core::control::PollError::Timeout) => {
                m.bump(sm.timeouts);
                self.with_hub(|hub| hub.shadow_failed(f.join));
                return;
            }
            Some(_) => {
                sm.error(m, ShadowError::Unreachable);
                self.with_hub(|hub| hub.shadow_failed(f.join));
                return;
            }
            None => {}
        }
        let status = status.unwrap_or(0);
        if !(200..300).contains(&status) {
            sm.error(m, ShadowError::Status);
        }
        let too_large = body_size > limit;
        let parsed = if too_large { None } else { parse_answer(&body) };
        if (200..300).contains(&status) && !too_large {
            let (pointer, lo, hi) = match &rollout.output {
                Some(o) => (o.pointer.as_str(), o.min, o.max),
                None => (
                    sh.compare
                        .pointers
                        .first()
                        .map(String::as_str)
                        .unwrap_or(""),
                    None,
                    None,
                ),
            };
            sm.health.count(m, health(parsed.as_ref(), pointer, lo, hi));
        }
        let answer = Answer {
            status,
            latency_ms: now.saturating_sub(f.started_ms),
            predictions: extract(parsed.as_ref(), &sh.compare.pointers),
            too_large,
        };
        let rng = self.rng.clone();
        let host = self.host.clone();
        let mut random = move || {
            let mut b = [0u8; 4];
            if let Ok(mut pool) = rng.try_borrow_mut() {
                pool.fill(&mut b, || now);
            }
            u32::from_le_bytes(b)
        };
        self.with_hub(|hub| hub.answered(&host, f.join, Half::Shadow, answer, now, &mut random));
    }

    fn with_hub(&self, f: impl FnOnce(&mut Hub)) {
        if let Ok(mut hub) = self.hub.try_borrow_mut() {
            f(&mut hub);
        }
    }

    /// Sends buffered records to the sidecar: shadow comparisons and experiment
    /// assignments, one POST of each kind in flight.
    fn flush_records(&mut self) {
        for kind in [RecordKind::Shadow, RecordKind::Assignment] {
            self.flush_kind(kind);
        }
    }

    fn flush_kind(&mut self, kind: RecordKind) {
        let Some(active) = self.active.clone() else {
            return;
        };
        let m = &active.metrics;
        let slot = match kind {
            RecordKind::Shadow => &self.records_in_flight,
            RecordKind::Assignment => &self.assignments_in_flight,
        };
        if slot.is_some() {
            return;
        }
        let batch = match self.hub.try_borrow_mut() {
            Ok(mut hub) => match kind {
                RecordKind::Shadow => Batch::Records(hub.take_records()),
                RecordKind::Assignment => Batch::Assignments(hub.take_assignments()),
            },
            Err(_) => return,
        };
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        let dropped = |why: RecordDrop| match kind {
            RecordKind::Shadow => m.records_dropped(why, n),
            RecordKind::Assignment => m.assignments_dropped(why, n),
        };
        let Some(control) = &active.config.control else {
            dropped(RecordDrop::NoSidecar);
            return;
        };
        let proxy = Some(self.proxy_id.clone());
        let (path, body) = match batch {
            Batch::Records(records) => (
                SHADOW_RECORDS_PATH,
                serde_json::to_vec(&ShadowRecordBatch { proxy, records }),
            ),
            Batch::Assignments(assignments) => (
                ASSIGNMENTS_PATH,
                serde_json::to_vec(&AssignmentBatch { proxy, assignments }),
            ),
        };
        let Ok(body) = body else {
            dropped(RecordDrop::PostFailed);
            return;
        };
        let headers = post_headers(path, &control.authority, control.token.as_deref());
        match self.host.dispatch(
            &control.cluster,
            &headers,
            Some(&body),
            control.timeout_ms.max(1000),
        ) {
            Ok(token) => match kind {
                RecordKind::Shadow => self.records_in_flight = Some((token, n)),
                RecordKind::Assignment => self.assignments_in_flight = Some((token, n)),
            },
            Err(_) => dropped(RecordDrop::PostFailed),
        }
    }

    fn records_answer(&mut self, kind: RecordKind, n: u64) {
        let Some(active) = self.active.clone() else {
            return;
        };
        let m = &active.metrics;
        let ok = self
            .host
            .call_response_header(":status")
            .ok()
            .flatten()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(|s| (200..300).contains(&s));
        match (kind, ok) {
            (RecordKind::Shadow, true) => m.add(m.records_sent, n),
            (RecordKind::Shadow, false) => m.records_dropped(RecordDrop::PostFailed, n),
            (RecordKind::Assignment, true) => m.add(m.assignments_sent, n),
            (RecordKind::Assignment, false) => m.assignments_dropped(RecordDrop::PostFailed, n),
        }
    }

    fn current_etag(&self) -> String {
        self.poller
            .as_ref()
            .and_then(|p| self.host.get_shared(&p.head_key).ok())
            .and_then(|(b, _)| b)
            .and_then(|b| Head::decode(&b))
            .map(|h| h.etag)
            .unwrap_or_default()
    }

    pub fn new_http(&self, context_id: u32) -> Http<H> {
        Http::new(
            self.host.clone(),
            context_id,
            self.active.clone(),
            self.rng.clone(),
            self.hub.clone(),
        )
    }

    fn now_ms(&self) -> u64 {
        self.host.now_nanos().map(|n| n / 1_000_000).unwrap_or(0)
    }

    fn bump_host_error(&self) {
        if let Some(a) = &self.active {
            a.metrics.bump(a.metrics.host_errors);
        }
    }

    fn log(&self, level: LogLevel, msg: &str) {
        self.host.log(
            level,
            &format!("model-rollout [root {}] {msg}", self.context_id),
        );
    }
}

impl Context for Root<ProxyHost> {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        self.call_response(token_id, body_size);
    }
}

impl RootContext for Root<ProxyHost> {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.log(
            LogLevel::Info,
            &format!(
                "VM started: model-rollout {} (git {})",
                env!("CARGO_PKG_VERSION"),
                crate::GIT_HASH
            ),
        );
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.configure()
    }

    fn on_tick(&mut self) {
        self.tick();
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        self.queue_ready(queue_id);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(self.new_http(context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
