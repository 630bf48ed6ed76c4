//! The state every handler shares: the store, the table of polling proxies, the
//! write token, the sidecar's own counters and, when `serve` runs it, the policy
//! engine.

use std::sync::{Arc, OnceLock};

use crate::engine::ab::AbSource;
use crate::engine::options::EngineOptions;
use crate::engine::runner::{self, EngineHandle};
use crate::engine::state::Engine;
use crate::http::counters::Metrics;
use crate::http::server::HttpLimits;
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
    /// Timeouts and limits of the HTTP server.
    limits: HttpLimits,
    /// Permits of the heavy reads (reports, history): `limits.heavy_reads`.
    heavy: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(store: Arc<Store>, token: Option<String>) -> Self {
        AppState::with_limits(store, token, HttpLimits::default())
    }

    /// [`AppState::new`] with other HTTP limits (`serve`'s flags).
    pub fn with_limits(store: Arc<Store>, token: Option<String>, limits: HttpLimits) -> Self {
        AppState(Arc::new(Inner {
            limits,
            heavy: Arc::new(tokio::sync::Semaphore::new(limits.heavy_reads.max(1))),
            store,
            proxies: Arc::new(ProxyTable::default()),
            token: token.map(String::into_bytes),
            metrics: Metrics::default(),
            policy: OnceLock::new(),
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

    pub fn limits(&self) -> &HttpLimits {
        &self.0.limits
    }

    /// A permit to run a heavy read (a report, the history): at most
    /// `limits.heavy_reads` at once, so they never take every blocking thread and
    /// core from plan polls. Waits for one (`None` only if the semaphore were closed,
    /// which it never is).
    pub async fn heavy_read(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.0.heavy).acquire_owned().await.ok()
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
        )?;
        let _ = self.0.policy.set(handle.engine());
        Ok(handle)
    }

    /// The bearer token writes need; `None`: writes are open.
    pub fn token(&self) -> Option<&[u8]> {
        self.0.token.as_deref()
    }

    pub fn policy_engine(&self) -> Option<Arc<Engine>> {
        self.0.policy.get().cloned()
    }
}
