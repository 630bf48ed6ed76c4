//! The state every handler shares: the store, the table of polling proxies, the
//! credentials of each role, the sidecar's own counters and, when `serve` runs it, the policy
//! engine.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::engine::ab::AbSource;
use crate::engine::hooks::Hooks;
use crate::engine::options::EngineOptions;
use crate::engine::runner::{self, EngineHandle};
use crate::engine::state::Engine;
use crate::http::counters::Metrics;
use crate::http::roles::{Credentials, Role};
use crate::http::server::HttpLimits;
use crate::notify::Notifier;
use crate::store::proxies::{ProxyLimits, ProxyTable};
use crate::store::Store;
use crate::util::token::TokenFile;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    store: Arc<Store>,
    proxies: Arc<ProxyTable>,
    /// The tokens of each role (`http::auth`); none: every call is allowed.
    credentials: Credentials,
    /// The sidecar's own counters (`GET /metrics`).
    metrics: Metrics,
    /// The progressive-delivery engine, when `serve` runs it (`--envoy-admin`).
    policy: OnceLock<Arc<Engine>>,
    /// Timeouts and limits of the HTTP server.
    limits: HttpLimits,
    /// Permits of the heavy reads (reports, history): `limits.heavy_reads`.
    heavy: Arc<tokio::sync::Semaphore>,
    /// Permits of the ingestion POSTs: `limits.ingest_concurrency` (`http::ingest`).
    ingest: Arc<tokio::sync::Semaphore>,
    /// The engine's event sink and gate check (the notify layer), set before it starts.
    hooks: OnceLock<Hooks>,
    /// Recent events and webhook deliveries (`GET /v1/events`, `/metrics`).
    notifier: OnceLock<Arc<Notifier>>,
}

impl AppState {
    /// With `token`, the operator's only (no other role has a credential).
    pub fn new(store: Arc<Store>, token: Option<String>) -> Self {
        let files = token
            .map(|t| vec![(Role::Operator, TokenFile::fixed(vec![t]))])
            .unwrap_or_default();
        AppState::with_credentials(store, Credentials::from_files(files))
    }

    pub fn with_credentials(store: Arc<Store>, credentials: Credentials) -> Self {
        AppState::with_limits(store, credentials, HttpLimits::default())
    }

    /// [`AppState::with_credentials`] with other HTTP limits (`serve`'s flags).
    pub fn with_limits(store: Arc<Store>, credentials: Credentials, limits: HttpLimits) -> Self {
        let proxies = Arc::new(ProxyTable::default());
        pin_versions_in_use(&store, &proxies);
        AppState(Arc::new(Inner {
            limits,
            heavy: Arc::new(tokio::sync::Semaphore::new(limits.heavy_reads.max(1))),
            ingest: Arc::new(tokio::sync::Semaphore::new(
                limits.ingest_concurrency.max(1),
            )),
            store,
            proxies,
            credentials,
            metrics: Metrics::default(),
            policy: OnceLock::new(),
            hooks: OnceLock::new(),
            notifier: OnceLock::new(),
        }))
    }

    /// The same state with a proxies table bounded by `limits` (`serve`'s
    /// `--max-proxies`, `--proxy-expiry-s`); only before the state is shared.
    pub fn with_proxy_limits(mut self, limits: ProxyLimits) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.proxies = Arc::new(ProxyTable::new(limits));
            pin_versions_in_use(&inner.store, &inner.proxies);
        }
        self
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

    /// A permit to read, parse and store an ingestion body: at most
    /// `limits.ingest_concurrency` at once. `None` if none came free within `wait`.
    pub async fn ingest_permit(&self, wait: Duration) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::time::timeout(wait, Arc::clone(&self.0.ingest).acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
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

    pub fn credentials(&self) -> &Credentials {
        &self.0.credentials
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

/// The history retention keeps the plan versions active proxies report running.
fn pin_versions_in_use(store: &Store, proxies: &Arc<ProxyTable>) {
    let proxies = Arc::clone(proxies);
    store.pin_versions(Arc::new(move || {
        proxies.versions_in_use(
            std::time::Instant::now(),
            crate::engine::proxies_behind::ACTIVE_PROXY,
        )
    }));
}
