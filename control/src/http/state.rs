//! The state every handler shares: the store, the table of polling proxies, the
//! write token, the sidecar's own counters and, when `serve` runs it, the policy
//! engine.

use std::sync::{Arc, OnceLock};

use crate::engine::ab::AbSource;
use crate::engine::hooks::Hooks;
use crate::engine::options::EngineOptions;
use crate::engine::runner::{self, EngineHandle};
use crate::engine::state::Engine;
use crate::http::counters::Metrics;
use crate::notify::Notifier;
use crate::store::proxies::ProxyTable;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    store: Arc<Store>,
    proxies: Arc<ProxyTable>,
    /// Bearer token required on writes; `None`: writes are open (loopback only).
    token: Option<Vec<u8>>,
    /// The sidecar's own counters (`GET /metrics`).
    metrics: Metrics,
    /// The progressive-delivery engine, when `serve` runs it (`--envoy-admin`).
    policy: OnceLock<Arc<Engine>>,
    /// The engine's event sink and gate check (the notify layer), set before it starts.
    hooks: OnceLock<Hooks>,
    /// Recent events and webhook deliveries (`GET /v1/events`, `/metrics`).
    notifier: OnceLock<Arc<Notifier>>,
}

impl AppState {
    pub fn new(store: Arc<Store>, token: Option<String>) -> Self {
        AppState(Arc::new(Inner {
            store,
            proxies: Arc::new(ProxyTable::default()),
            token: token.map(String::into_bytes),
            metrics: Metrics::default(),
            policy: OnceLock::new(),
            hooks: OnceLock::new(),
            notifier: OnceLock::new(),
        }))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.0.store
    }

    pub fn proxies(&self) -> &Arc<ProxyTable> {
        &self.0.proxies
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Starts the policy engine against this state's store and proxy table, and
    /// attaches it (status and analysis read it); once.
    pub fn start_engine(
        &self,
        opts: EngineOptions,
        ab: Option<Arc<dyn AbSource>>,
    ) -> anyhow::Result<EngineHandle> {
        let handle = runner::start(
            Arc::clone(&self.0.store),
            Arc::clone(&self.0.proxies),
            opts,
            ab,
            self.0.hooks.get().cloned().unwrap_or_default(),
        )?;
        let _ = self.0.policy.set(handle.engine());
        Ok(handle)
    }

    /// The bearer token writes need; `None`: writes are open.
    pub fn token(&self) -> Option<&[u8]> {
        self.0.token.as_deref()
    }

    /// Attaches the notifier: the engine started after this tells it its events and
    /// asks it about gates; once.
    pub fn set_notifier(&self, n: Arc<Notifier>) {
        let _ = self.0.hooks.set(n.hooks());
        let _ = self.0.notifier.set(n);
    }

    pub fn notifier(&self) -> Option<&Arc<Notifier>> {
        self.0.notifier.get()
    }

    pub fn policy_engine(&self) -> Option<Arc<Engine>> {
        self.0.policy.get().cloned()
    }
}
