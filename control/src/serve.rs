//! `rollout-control serve`: opens the store, seeds it from `--initial-plan` when
//! empty, serves the API until SIGTERM / SIGINT, then closes the store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::api::plan::parse_plan_document;
use crate::http::roles::{CredentialFiles, Credentials};
use crate::http::{app, state::AppState};
use crate::notify::options::NotifyOptions;
use crate::notify::Notifier;
use crate::store::blocking::blocking;
use crate::store::{Change, Op, OpenOptions, Store, StoreError};

/// How often the store's writability is checked (and, after an I/O error, its
/// recovery retried) when nothing writes.
const RECOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data: PathBuf,
    /// One token file per role (`http::auth`).
    pub credentials: CredentialFiles,
    pub initial_plan: Option<PathBuf>,
    /// Move an empty or damaged store file aside instead of refusing to start.
    pub start_fresh: bool,
    /// `--data-budget-bytes` (`store::budget`).
    pub data_budget: u64,
    /// `--history-keep` (`store::plans`).
    pub history_keep: u64,
    /// HTTP timeouts and limits.
    pub limits: crate::http::server::HttpLimits,
    /// Bounds of the proxies table (`--max-proxies`, `--proxy-expiry-s`).
    pub proxies: crate::store::proxies::ProxyLimits,
    /// The policy engine (`--envoy-admin` or `--prometheus-url`); `None`: policies
    /// are not driven.
    pub policy: Option<crate::engine::options::EngineOptions>,
    /// Webhooks and gate webhooks of the engine's events (with the engine only).
    pub notify: NotifyOptions,
}

/// Stores `file` as version 1 when the store is empty. Returns the stored version, or
/// `None` when the store already had a plan (the file is then not read).
pub fn seed_initial_plan(store: &Store, file: &Path) -> anyhow::Result<Option<u64>> {
    if store.current().is_some() {
        return Ok(None);
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let plan = parse_plan_document(&bytes)
        .map_err(|e| anyhow::anyhow!("invalid initial plan {}: {e}", file.display()))?;
    let reason = format!("initial plan from {}", file.display());
    let cur = store.commit(|cur| {
        if let Some(c) = cur {
            // Another writer got there first: nothing to seed.
            return Err(StoreError::Db(format!(
                "the store already holds version {}",
                c.version()
            )));
        }
        Ok(Change {
            plan,
            op: Op::Initial,
            reason,
            author: "rollout-control".to_string(),
        })
    })?;
    Ok(Some(cur.version()))
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Runs the sidecar until a shutdown signal.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let credentials = Credentials::open(&opts.credentials)?;
    let store = Store::open_with(
        &opts.data,
        OpenOptions {
            start_fresh: opts.start_fresh,
            data_budget: opts.data_budget,
            history_keep: opts.history_keep,
            ..OpenOptions::default()
        },
    )?;
    if let Some(file) = &opts.initial_plan {
        match seed_initial_plan(&store, file)? {
            Some(v) => eprintln!(
                "rollout-control: v{v} initial by \"rollout-control\": {:?}",
                format!("initial plan from {}", file.display())
            ),
            None => eprintln!(
                "rollout-control: the store already holds a plan; --initial-plan {} ignored",
                file.display()
            ),
        }
    }
    if let Ok(u) = store.data_usage() {
        eprintln!(
            "rollout-control: data budget {} bytes, {} held; history keeps {} plan versions",
            u.budget,
            u.bytes(),
            store.history_keep()
        );
    }
    match store.current() {
        Some(c) => eprintln!(
            "rollout-control: store {} at plan version {}",
            store.path().display(),
            c.version()
        ),
        None => eprintln!(
            "rollout-control: store {} is empty: PUT /v1/plan to store the first plan",
            store.path().display()
        ),
    }
    if !is_loopback(&opts.listen) && credentials.is_empty() {
        eprintln!(
            "rollout-control: warning: listening on {} without credentials \
             (--operator-token-file ...): anyone who can reach it can change the plan",
            opts.listen
        );
    }
    let store = Arc::new(store);
    let state = AppState::with_limits(Arc::clone(&store), credentials, opts.limits)
        .with_proxy_limits(opts.proxies);
    let notifier = match &opts.policy {
        Some(_) => {
            let n = Notifier::start(Arc::clone(&store), opts.notify.clone())?;
            state.set_notifier(Arc::clone(&n));
            Some(n)
        }
        None => None,
    };
    let engine = match &opts.policy {
        Some(p) => {
            let handle = state.start_engine(p.clone(), None)?;
            match &p.prometheus {
                Some(prom) => eprintln!(
                    "rollout-control: policy engine: querying Prometheus {} every {} ms \
                     (ranges of at least {} ms, timeout {} ms)",
                    prom.url,
                    p.tick.as_millis(),
                    prom.min_range_ms,
                    prom.timeout.as_millis()
                ),
                None => eprintln!(
                    "rollout-control: policy engine: reading {} every {} ms ({:?})",
                    p.envoy_admin.join(", "),
                    p.tick.as_millis(),
                    p.stats_format
                ),
            }
            Some(handle)
        }
        None => None,
    };
    let recovery = tokio::spawn(keep_recovering(Arc::clone(&store)));
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let local = listener.local_addr()?;
    eprintln!("rollout-control: listening on http://{local}");
    let drained = crate::http::server::serve(listener, app(state), opts.limits, async {
        shutdown_signal().await;
        eprintln!("rollout-control: shutting down");
    })
    .await;
    if !drained {
        eprintln!(
            "rollout-control: requests still open after {} ms; closing them",
            opts.limits.shutdown_grace.as_millis()
        );
    }
    recovery.abort();
    let _ = recovery.await;
    if let Some(handle) = engine {
        handle.shutdown().await;
    }
    if let Some(n) = notifier {
        n.stop();
    }
    // Every handler has finished; the router and its state are gone, so this is the
    // last reference. Close explicitly to report errors.
    match Arc::try_unwrap(store) {
        Ok(store) => store.close()?,
        Err(_) => eprintln!("rollout-control: store still referenced at exit; dropping"),
    }
    Ok(())
}

/// After an I/O error (disk full) the store recovers on the next write or `/ready`;
/// this also retries when neither comes, so writes work again soon after the disk does.
async fn keep_recovering(store: Arc<Store>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(RECOVERY_INTERVAL).await;
        let s = Arc::clone(&store);
        match blocking(move || s.check_writable()).await {
            Ok(()) if failing => {
                failing = false;
                eprintln!("rollout-control: store writes work again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                eprintln!("rollout-control: store writes fail: {e}");
            }
            Err(_) => {}
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("rollout-control: cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                eprintln!("rollout-control: cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
