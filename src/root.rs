//! The root context: installs the configuration in force and routes the proxy's
//! callbacks to the parts that do the work.
//!
//! - `on_configure`: parse and compile the plugin configuration (`rollout_core`);
//!   on any error the previous configuration stays and the proxy refuses the new
//!   one. A plan change builds a new [`Active`] (metrics defined for its plan, new
//!   trip windows); the old one is flushed until the last request using it is gone.
//! - `on_tick` (100 ms with a sidecar or a trip, else 1 s): the [`PlanPoller`]
//!   adopts a plan another worker published and polls the sidecar when due; the
//!   [`ShadowDispatcher`] dispatches parked shadow jobs, expires joins and posts
//!   records; trips announced by other workers are followed (`trip_share`);
//!   counters are flushed every second.
//! - `on_http_call_response`: a shadow's or a post's answer goes to the
//!   dispatcher, a poll's to the poller; unknown tokens are ignored.
//! - `on_queue_ready`: request contexts parked shadow jobs: dispatch them.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use rollout_core::control::PlanSource;
use rollout_core::{parse_plugin_config, FilterConfig, Plan, PlanSpec};

use crate::active::Active;
use crate::dispatcher::ShadowDispatcher;
use crate::host::{Host, ProxyHost};
use crate::http::Http;
use crate::metrics::Metrics;
use crate::poller::{Adopted, InForce, PlanPoller, Polled};
use crate::rng::Random;
use crate::trip_share;

/// Counters reach Envoy's stats at most this long after the event.
pub const FLUSH_MS: u64 = 1000;
/// Tick period with a control sidecar: how quickly workers notice a new plan.
pub const CONTROL_TICK_MS: u64 = 100;

pub struct Root<H: Host> {
    host: H,
    context_id: u32,
    active: Option<Rc<Active>>,
    source: PlanSource,
    /// Earlier configurations still referenced by in-flight requests; flushed on
    /// every tick until the last request using them is gone. Bounded by the number
    /// of plan changes within one request's lifetime.
    retired: Vec<Rc<Active>>,
    random: Random,
    poller: Option<PlanPoller>,
    dispatcher: ShadowDispatcher,
    started_ms: u64,
    last_flush_ms: Option<u64>,
}

impl<H: Host + Clone> Root<H> {
    pub fn new(host: H, context_id: u32) -> Self {
        Root {
            host,
            context_id,
            active: None,
            source: PlanSource::Static,
            retired: Vec::new(),
            random: Random::default(),
            poller: None,
            dispatcher: ShadowDispatcher::default(),
            started_ms: 0,
            last_flush_ms: None,
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
        self.started_ms = self.host.now_ms();
        let node_id = self.node_id();
        self.dispatcher.set_proxy_id(node_id.clone());
        self.dispatcher
            .register_queue(&self.host, &self.random, self.context_id);
        let has_trip = config.plan.rollouts.iter().any(|r| r.trip.is_some());
        let tick = if config.control.is_some() || has_trip {
            CONTROL_TICK_MS
        } else {
            FLUSH_MS
        };
        self.poller = config.control.clone().map(|spec| {
            let me = self.random.id(|| self.host.now_ms()) | 1;
            PlanPoller::new(spec, me, node_id, config.trusted.clone())
        });
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
        self.adopt();
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
        let active = Active::new(config, metrics);
        for (i, _) in active.trips.iter().enumerate().filter(|(_, t)| t.is_some()) {
            if let Some(tm) = active.metrics.trip(i) {
                active.metrics.set_gauge(&self.host, tm.tripped, 0);
            }
        }
        self.source = source;
        if let Some(old) = self.active.replace(Rc::new(active)) {
            old.metrics.flush(&self.host);
            self.retired.push(old);
        }
        true
    }

    /// Installs a plan from the control sidecar (the rest of the configuration stays).
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

    fn in_force(&self) -> InForce {
        InForce {
            version: self.active.as_ref().map_or(0, |a| a.version()),
            epoch: self
                .active
                .as_ref()
                .and_then(|a| a.config.plan_spec.epoch.clone()),
            source: self.source,
        }
    }

    fn metrics(&self) -> Option<&Metrics> {
        self.active.as_ref().map(|a| &a.metrics)
    }

    /// Takes the plan another worker published, when it is newer than ours.
    fn adopt(&mut self) {
        let in_force = self.in_force();
        let m = self.active.clone();
        let Some(p) = &mut self.poller else { return };
        match p.adopt(&self.host, m.as_ref().map(|a| &a.metrics), in_force) {
            Some(Adopted::Plan(spec, plan)) => self.install_plan(*spec, *plan),
            Some(Adopted::Unusable(e)) => self.log(
                LogLevel::Error,
                &format!("published plan in shared data is unusable: {e}"),
            ),
            None => {}
        }
    }

    pub fn tick(&mut self) {
        let now = self.host.now_ms();
        if self.poller.is_some() {
            self.adopt();
            let in_force = self.in_force();
            let active = self.active.clone();
            if let Some(p) = &mut self.poller {
                p.poll(
                    &self.host,
                    active.as_ref().map(|a| &a.metrics),
                    now,
                    in_force,
                );
            }
        }
        let active = self.active.clone();
        let active = active.as_deref();
        // Jobs whose nudge was lost are dispatched here at the latest.
        self.dispatcher.dispatch_jobs(&self.host, active);
        self.follow_trips();
        // A full batch of records goes out at once; partial ones with the 1 s flush.
        self.dispatcher.post_full_batches(&self.host, active);
        self.dispatcher.expire(now);
        let due = match self.last_flush_ms {
            None => true,
            Some(t) => now.saturating_sub(t) >= FLUSH_MS || self.poller.is_none(),
        };
        if due {
            self.last_flush_ms = Some(now);
            if let (Some(a), Some(p)) = (active, &self.poller) {
                a.metrics
                    .set_staleness(&self.host, p.staleness_s(now, self.started_ms));
            }
            self.dispatcher.post(&self.host, active);
            if let Some(a) = active {
                a.metrics.flush(&self.host);
            }
            let host = &self.host;
            self.retired.retain(|old| {
                old.metrics.flush(host);
                Rc::strong_count(old) > 1
            });
        }
    }

    /// Follows a trip another worker of this proxy announced for the plan in force.
    fn follow_trips(&self) {
        let Some(active) = &self.active else { return };
        for name in trip_share::follow(&self.host, active) {
            self.log(
                LogLevel::Warn,
                &format!("rollout {name}: local trip announced by another worker; candidate traffic goes to stable"),
            );
        }
    }

    /// The request contexts nudged: dispatch the parked shadow jobs.
    pub fn queue_ready(&mut self, queue: u32) {
        let active = self.active.clone();
        self.dispatcher
            .queue_ready(&self.host, active.as_deref(), queue);
    }

    /// A callout answered (or failed): a shadow, a records post or a poll.
    /// Unknown tokens are ignored.
    pub fn call_response(&mut self, token: u32, body_size: usize) {
        let active = self.active.clone();
        if self.dispatcher.on_response(
            &self.host,
            active.as_deref(),
            &self.random,
            token,
            body_size,
        ) {
            return;
        }
        let now = self.host.now_ms();
        let in_force = self.in_force();
        let Some(p) = &mut self.poller else { return };
        let polled = p.answer(
            &self.host,
            active.as_ref().map(|a| &a.metrics),
            token,
            body_size,
            now,
            in_force.clone(),
        );
        match polled {
            Some(Polled::Accepted(spec, plan)) => self.install_plan(*spec, *plan),
            Some(Polled::Rejected(reason, msg)) => self.log(
                LogLevel::Warn,
                &format!(
                    "plan from the control sidecar rejected ({}), keeping version {}: {msg}",
                    reason.as_str(),
                    in_force.version
                ),
            ),
            Some(Polled::Failed(e)) => self.log(
                LogLevel::Debug,
                &format!(
                    "poll failed ({}), keeping version {}",
                    e.as_str(),
                    in_force.version
                ),
            ),
            Some(Polled::Current) | None => {}
        }
    }

    pub fn new_http(&self, context_id: u32) -> Http<H> {
        Http::new(
            self.host.clone(),
            context_id,
            self.active.clone(),
            self.random.clone(),
            self.dispatcher.hub(),
        )
    }

    fn bump_host_error(&self) {
        if let Some(m) = self.metrics() {
            m.bump(m.host_errors);
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
