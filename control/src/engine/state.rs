//! What the engine keeps in memory between ticks, shared with `GET /v1/status` and
//! the analysis endpoint: per rollout the progress it last saw, the streaks, the next
//! evaluation, the candidate traffic of the step and the last evaluation; the stable
//! baselines of relative checks; the time series; each source's last answer.
//!
//! Nothing of it is durable: a restarted sidecar starts afresh, at the step stored in
//! the plan (the streaks, the next evaluation one `interval_s` after the engine first
//! sees a step, and the traffic counted toward `min_requests` start over).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rollout_core::analysis::{Baseline, CheckOutcome, IntervalVerdict, Streak};
use rollout_core::plan::RolloutSpec;
use rollout_core::policy::ProgressState;

use crate::api::analysis::{SeriesPoint, WindowSummary};
use crate::api::status::{EngineView, EnvoyStatus, StatsFormat};
use crate::engine::clock::EngineClock;
use crate::engine::window::SeriesStore;
use crate::util::timefmt::rfc3339_ms;

/// The progress a decision is based on; a transition is committed only if the
/// rollout still has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Basis {
    step: Option<usize>,
    state: Option<ProgressState>,
    since_ms: Option<u64>,
}

impl Basis {
    pub fn of(r: &RolloutSpec) -> Basis {
        Basis {
            step: r.progress.as_ref().map(|p| p.step),
            state: r.progress.as_ref().map(|p| p.state),
            since_ms: r.progress.as_ref().map(|p| p.since_ms),
        }
    }
}

/// The latest evaluation of a rollout, for status.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub at_ms: u64,
    pub verdict: IntervalVerdict,
    pub action: String,
    pub checks: Vec<CheckOutcome>,
    pub window: WindowSummary,
}

/// One rollout as the engine follows it.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub basis: Basis,
    pub streak: Streak,
    pub next_eval_ms: u64,
    pub step_traffic: f64,
    pub last: Option<Evaluation>,
    pub error: Option<String>,
    /// Why the last evaluation could not move forward (proxies behind).
    pub blocked: Option<String>,
}

impl Runtime {
    /// A rollout at a step the engine has not seen before: fresh streaks and traffic
    /// count, evaluated one interval from now.
    pub fn fresh(basis: Basis, next_eval_ms: u64, last: Option<Evaluation>) -> Runtime {
        Runtime {
            basis,
            streak: Streak::default(),
            next_eval_ms,
            step_traffic: 0.0,
            last,
            error: None,
            blocked: None,
        }
    }
}

/// Stable baselines of a rollout's relative checks (kept across steps, for steps
/// where the stable variant gets no traffic), with the stable variant they describe.
#[derive(Debug, Default)]
pub struct Baselines {
    pub stable: String,
    pub checks: BTreeMap<usize, Baseline>,
}

#[derive(Debug, Default)]
pub struct EngineState {
    pub rollouts: HashMap<String, Runtime>,
    pub baselines: HashMap<String, Baselines>,
    pub series: SeriesStore,
    pub envoys: Vec<EnvoyStatus>,
    /// The source's reads by result (`MetricsSource::read_counts`).
    pub source_reads: Vec<(&'static str, &'static str, u64)>,
    pub last_tick_ms: Option<u64>,
}

/// The engine's shared state (read by status and the analysis endpoint).
pub struct Engine {
    tick_ms: u64,
    clock: EngineClock,
    format: StatsFormat,
    state: Mutex<EngineState>,
}

impl Engine {
    pub fn new(
        tick_ms: u64,
        clock: EngineClock,
        format: StatsFormat,
        envoys: Vec<EnvoyStatus>,
    ) -> Engine {
        Engine {
            tick_ms,
            clock,
            format,
            state: Mutex::new(EngineState {
                envoys,
                ..EngineState::default()
            }),
        }
    }

    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    /// The engine's time (monotonic, see `engine::clock`), Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn lock(&self) -> MutexGuard<'_, EngineState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The engine in `GET /v1/status`.
    pub fn view(&self) -> EngineView {
        let st = self.lock();
        EngineView {
            running: true,
            tick_ms: self.tick_ms,
            stats_format: self.format,
            envoys: st.envoys.clone(),
            last_tick: st.last_tick_ms.map(rfc3339_ms),
        }
    }

    /// The source's reads by result, for `GET /metrics`.
    pub fn source_reads(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.lock().source_reads.clone()
    }

    /// The live series of a rollout over `(from_ms, to_ms]`.
    pub fn points(&self, rollout: &str, from_ms: u64, to_ms: u64, max: usize) -> Vec<SeriesPoint> {
        self.lock().series.points(rollout, from_ms, to_ms, max)
    }

    /// The window of a rollout's last evaluation.
    pub fn last_window(&self, rollout: &str) -> Option<WindowSummary> {
        self.lock()
            .rollouts
            .get(rollout)
            .and_then(|rt| rt.last.as_ref().map(|l| l.window.clone()))
    }
}
