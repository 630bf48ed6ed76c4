//! The state every handler shares: the store, the table of polling proxies, the
//! credentials of each role, the sidecar's own counters and, when `serve` runs it, the policy
//! engine.

use std::sync::{Arc, OnceLock};

use crate::engine::ab::AbSource;
use crate::engine::options::EngineOptions;
use crate::engine::runner::{self, EngineHandle};
use crate::engine::state::Engine;
use crate::http::counters::Metrics;
use crate::http::roles::{Credentials, Role};
use crate::store::proxies::ProxyTable;
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
        AppState(Arc::new(Inner {
            store,
            proxies: Arc::new(ProxyTable::default()),
            credentials,
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

    pub fn credentials(&self) -> &Credentials {
        &self.0.credentials
    }

    pub fn policy_engine(&self) -> Option<Arc<Engine>> {
        self.0.policy.get().cloned()
    }
}
