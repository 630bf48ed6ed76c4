//! Starting and stopping the engine: a tokio task that runs one tick
//! (`tick::run_tick`) every `--analysis-tick-ms` until it is told to stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::ab::{AbSource, ExperimentsAb};
use crate::engine::clock::EngineClock;
use crate::engine::options::EngineOptions;
use crate::engine::proxies_behind::proxies_behind;
use crate::engine::source::factory;
use crate::engine::state::Engine;
use crate::engine::tick::{run_tick, SharedSource};
use crate::store::proxies::ProxyTable;
use crate::store::Store;

/// The running engine: its state and the task driving it.
pub struct EngineHandle {
    engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl EngineHandle {
    pub fn engine(&self) -> Arc<Engine> {
        Arc::clone(&self.engine)
    }

    /// Stops the loop after the tick in progress and waits for it (the task's store
    /// reference is gone when this returns).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts the engine on the current tokio runtime, against `store`; `proxies` tells
/// whether the proxies run the latest plan; `ab` judges `ab` checks (default: the
/// sidecar's own experiments).
pub fn start(
    store: Arc<Store>,
    proxies: Arc<ProxyTable>,
    opts: EngineOptions,
    ab: Option<Arc<dyn AbSource>>,
) -> anyhow::Result<EngineHandle> {
    let tick = opts.tick.max(Duration::from_millis(10));
    let tick_ms = u64::try_from(tick.as_millis()).unwrap_or(u64::MAX);
    // A read never takes longer than a tick, but at least 500 ms (at most 5 s).
    let timeout = tick.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let source = factory::open(&opts, timeout)?;
    let engine = Arc::new(Engine::new(
        tick_ms,
        EngineClock::start(opts.wall_clock),
        opts.stats_format,
        source.statuses(),
    ));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(
        Arc::clone(&engine),
        store,
        proxies,
        Arc::new(Mutex::new(source)),
        ab.unwrap_or_else(|| Arc::new(ExperimentsAb)),
        tick,
        stop_rx,
    ));
    Ok(EngineHandle { engine, stop, task })
}

async fn run(
    engine: Arc<Engine>,
    store: Arc<Store>,
    proxies: Arc<ProxyTable>,
    source: SharedSource,
    ab: Arc<dyn AbSource>,
    tick: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_durable_ms = 0u64;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let behind = proxies_behind(&store, &proxies);
        if let Err(e) = run_tick(&engine, &store, &source, &ab, behind, &mut last_durable_ms).await
        {
            eprintln!("rollout-control: policy engine: {e}");
        }
    }
}
