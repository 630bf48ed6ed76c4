//! The configuration in force: the compiled plugin configuration, the metrics
//! defined for its plan and the plan's local trip windows. Swapped as a whole when
//! the plan changes; request contexts and shadow joins keep an `Rc` to the one they
//! started under, so a request always counts into the metrics of its own plan.

use rollout_core::FilterConfig;

use crate::metrics::Metrics;
use crate::trip::TripWindow;

pub struct Active {
    pub config: FilterConfig,
    pub metrics: Metrics,
    /// Local trip windows, by rollout index (`None` without a trip).
    pub trips: Vec<Option<TripWindow>>,
}

impl Active {
    /// Compiles the trip windows of `config`'s plan around its metrics.
    pub fn new(config: FilterConfig, metrics: Metrics) -> Self {
        let trips = config
            .plan
            .rollouts
            .iter()
            .map(|r| r.trip.clone().map(TripWindow::new))
            .collect();
        Active {
            config,
            metrics,
            trips,
        }
    }

    pub fn trip(&self, rollout: usize) -> Option<&TripWindow> {
        self.trips.get(rollout).and_then(Option::as_ref)
    }

    /// The index of the rollout called `name` in the plan in force (jobs and joins
    /// carry names, which survive a plan change).
    pub fn rollout_index(&self, name: &str) -> Option<usize> {
        self.config
            .plan
            .rollouts
            .iter()
            .position(|r| r.name == name)
    }

    /// The plan version in force.
    pub fn version(&self) -> u64 {
        self.config.plan.version
    }
}
