//! The root context: turns plugin configuration bytes into the compiled form every
//! request context uses, defines metrics, and flushes counters on the tick.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use rollout_core::{parse_plugin_config, FilterConfig};

use crate::host::{Host, ProxyHost};
use crate::http::Http;
use crate::metrics::Metrics;
use crate::rng::RandomPool;

/// Counters reach Envoy's stats at most this long after the event.
pub const TICK_MS: u64 = 1000;

/// What a request context needs, swapped as a whole when the configuration changes.
pub struct Active {
    pub config: FilterConfig,
    pub metrics: Metrics,
}

pub struct Root<H: Host> {
    host: H,
    context_id: u32,
    active: Option<Rc<Active>>,
    /// Earlier configurations still referenced by in-flight requests; flushed on
    /// every tick until the last request using them is gone. Bounded by the number
    /// of reconfigurations within one request's lifetime.
    retired: Vec<Rc<Active>>,
    rng: Rc<RefCell<RandomPool>>,
}

impl<H: Host + Clone> Root<H> {
    pub fn new(host: H, context_id: u32) -> Self {
        Root {
            host,
            context_id,
            active: None,
            retired: Vec::new(),
            rng: Rc::new(RefCell::new(RandomPool::default())),
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
        let metrics = match Metrics::define(&self.host, &config.plan) {
            Ok(m) => m,
            Err(e) => {
                self.log(LogLevel::Critical, &format!("cannot define metrics: {e:?}"));
                return false;
            }
        };
        metrics.set_plan_version(&self.host, config.plan.version);
        if self.host.set_tick_period_ms(TICK_MS).is_err() {
            metrics.bump(metrics.host_errors);
        }
        self.log(
            LogLevel::Info,
            &format!(
                "configured: plan version {} with {} rollout(s)",
                config.plan.version,
                config.plan.rollouts.len()
            ),
        );
        if let Some(old) = self.active.replace(Rc::new(Active { config, metrics })) {
            old.metrics.flush(&self.host);
            self.retired.push(old);
        }
        true
    }

    pub fn tick(&mut self) {
        if let Some(a) = &self.active {
            a.metrics.flush(&self.host);
        }
        let host = &self.host;
        self.retired.retain(|old| {
            old.metrics.flush(host);
            Rc::strong_count(old) > 1
        });
    }

    pub fn new_http(&self, context_id: u32) -> Http<H> {
        Http::new(
            self.host.clone(),
            context_id,
            self.active.clone(),
            self.rng.clone(),
        )
    }

    fn log(&self, level: LogLevel, msg: &str) {
        self.host.log(
            level,
            &format!("model-rollout [root {}] {msg}", self.context_id),
        );
    }
}

impl Context for Root<ProxyHost> {}

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

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(self.new_http(context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
