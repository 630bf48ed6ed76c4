//! Notifications: the policy engine's rollout events sent to webhooks, and gate
//! webhooks that hold a step until an external system answers 200. A layer of its
//! own, above the engine (it implements the engine's hooks, `engine::hooks`) and
//! below `http` (which lists the events and shows the delivery counters).
//!
//! | file | concept |
//! |---|---|
//! | [`options`] | the `serve` flags: the sidecar's webhooks, secret, timeouts, retries, queue |
//! | [`log`] | the recent events in memory, with their ids (`GET /v1/events`) |
//! | [`payload`] | the bodies: the JSON event, Slack's `{"text"}` |
//! | [`signature`] | the `X-Rollout-Signature` HMAC-SHA256 header |
//! | [`delivery`] | one worker and bounded queue per receiver, retries with backoff, counters |
//! | [`gates`] | the gate webhooks: asked on their own thread, answers the engine reads |
//!
//! Receivers of an event: the sidecar's own webhooks (`--webhook`, `--webhook-slack`:
//! every event) and the rollout's `notify.webhooks` in the plan in force (filtered by
//! their `events`). The engine only enqueues: a slow or dead receiver never delays it.

pub mod delivery;
pub mod gates;
pub mod log;
pub mod options;
pub mod payload;
pub mod signature;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::api::events::{DeliveryCounts, EventList, RolloutEvent};
use crate::engine::hooks::{EventSink, Hooks};
use crate::notify::delivery::Deliveries;
use crate::notify::gates::GateBook;
use crate::notify::log::EventLog;
use crate::notify::options::NotifyOptions;
use crate::store::Store;

/// The notifier of one sidecar.
pub struct Notifier {
    store: Arc<Store>,
    opts: NotifyOptions,
    log: EventLog,
    deliveries: Deliveries,
    gates: Arc<GateBook>,
    stop: Arc<AtomicBool>,
}

impl Notifier {
    /// The notifier of `store`, with its gate thread running.
    pub fn start(store: Arc<Store>, opts: NotifyOptions) -> anyhow::Result<Arc<Notifier>> {
        let gates = Arc::new(GateBook::default());
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (book, store, stop) = (Arc::clone(&gates), Arc::clone(&store), Arc::clone(&stop));
            let (secret, timeout, interval) =
                (opts.secret.clone(), opts.timeout, opts.gate_interval);
            std::thread::Builder::new()
                .name("gates".to_string())
                .spawn(move || gates::run(book, store, secret, timeout, interval, stop))?;
        }
        Ok(Arc::new(Notifier {
            store,
            deliveries: Deliveries::new(opts.clone()),
            opts,
            log: EventLog::default(),
            gates,
            stop,
        }))
    }

    /// The engine's hooks: this notifier takes the events and checks the gates.
    pub fn hooks(self: &Arc<Self>) -> Hooks {
        Hooks {
            events: Some(Arc::clone(self) as Arc<dyn EventSink>),
            gates: Some(Arc::clone(&self.gates) as _),
        }
    }

    /// Stops asking gates (the delivery workers end with the process).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// `GET /v1/events`.
    pub fn events(&self, rollout: Option<&str>, after: u64, limit: usize) -> EventList {
        self.log.list(rollout, after, limit)
    }

    pub fn delivery_counts(&self) -> DeliveryCounts {
        self.deliveries.counters()
    }

    /// The notifier's lines of `GET /metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        let c = self.deliveries.counters();
        let (asked, refused) = self.gates.counts();
        let _ = writeln!(
            out,
            "# HELP rollout_control_webhook_events_total Rollout events per receiver by outcome: delivered (2xx), failed (every try failed; dropped), dropped (queue full).\n\
             # TYPE rollout_control_webhook_events_total counter\n\
             rollout_control_webhook_events_total{{result=\"delivered\"}} {}\n\
             rollout_control_webhook_events_total{{result=\"failed\"}} {}\n\
             rollout_control_webhook_events_total{{result=\"dropped\"}} {}\n\
             # HELP rollout_control_webhook_retries_total Webhook tries that failed and were tried again.\n\
             # TYPE rollout_control_webhook_retries_total counter\n\
             rollout_control_webhook_retries_total {}\n\
             # HELP rollout_control_gate_requests_total Gate webhook requests by answer: confirmed (200) or held (anything else, unreachable).\n\
             # TYPE rollout_control_gate_requests_total counter\n\
             rollout_control_gate_requests_total{{result=\"confirmed\"}} {}\n\
             rollout_control_gate_requests_total{{result=\"held\"}} {}",
            c.delivered,
            c.failed,
            c.dropped,
            c.retried,
            asked.saturating_sub(refused),
            refused
        );
    }
}

impl EventSink for Notifier {
    fn emit(&self, event: RolloutEvent) {
        let e = self.log.push(event);
        eprintln!(
            "rollout-control: event {} {} {}: {}",
            e.id,
            e.rollout,
            e.kind.as_str(),
            e.reason
        );
        for (url, format) in &self.opts.webhooks {
            self.deliveries.enqueue(url, *format, &e);
        }
        let Some(cur) = self.store.current() else {
            return;
        };
        let Some(n) = cur
            .record
            .plan
            .rollouts
            .iter()
            .find(|r| r.name == e.rollout)
            .and_then(|r| r.notify.as_ref())
        else {
            return;
        };
        for w in n.webhooks.iter().filter(|w| w.wants(e.kind)) {
            self.deliveries.enqueue(&w.url, w.format, &e);
        }
    }
}
