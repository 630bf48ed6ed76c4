//! Delivering events to webhooks: one worker thread per receiver (URL and format),
//! each with a bounded queue, so a slow or dead receiver delays only its own events
//! and never the engine (which only enqueues). Each event is tried `attempts` times
//! with exponential backoff; then it is dropped and counted as failed. A full queue
//! drops the new event and counts it. Events reach a receiver in order.
//!
//! Every request is `POST` with `Content-Type: application/json`, `X-Rollout-Event`
//! (the kind), `X-Rollout-Event-Id` (de-duplicates retries) and, with a secret, the
//! `X-Rollout-Signature` header (`signature`). Any 2xx answer is a delivery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rollout_core::notify::WebhookFormat;

use crate::api::events::{DeliveryCounts, RolloutEvent};
use crate::notify::options::NotifyOptions;
use crate::notify::payload::body;
use crate::notify::signature::{sign, HEADER};

/// Receivers with a worker; events for more are dropped (a plan holds at most
/// 64 rollouts x 8 webhooks, the flags a few).
pub const MAX_RECEIVERS: usize = 64;
/// Longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One receiver.
type Receiver = (String, WebhookFormat);

struct Job {
    id: u64,
    kind: &'static str,
    body: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Counters {
    delivered: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> DeliveryCounts {
        DeliveryCounts {
            delivered: self.delivered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The receivers' workers and the delivery counters.
pub struct Deliveries {
    opts: NotifyOptions,
    agent: ureq::Agent,
    workers: Mutex<HashMap<Receiver, SyncSender<Job>>>,
    counters: Arc<Counters>,
}

/// A plain-HTTP agent with a global deadline, no proxy, no redirects, statuses as
/// answers (shared with the gates).
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// POSTs `body` to `url` with the event headers; `Ok` on a 2xx answer, else why not.
pub fn post(
    agent: &ureq::Agent,
    url: &str,
    secret: Option<&[u8]>,
    kind: &str,
    id: u64,
    body: &[u8],
) -> Result<u16, String> {
    let mut req = agent
        .post(url)
        .header("content-type", "application/json")
        .header("x-rollout-event", kind)
        .header("x-rollout-event-id", id.to_string());
    if let Some(s) = secret {
        req = req.header(HEADER, sign(s, body));
    }
    match req.send(body) {
        Ok(resp) if resp.status().is_success() => Ok(resp.status().as_u16()),
        Ok(resp) => Err(format!("answered {}", resp.status())),
        Err(e) => Err(format!("unreachable: {e}")),
    }
}

impl Deliveries {
    pub fn new(opts: NotifyOptions) -> Deliveries {
        Deliveries {
            agent: agent(opts.timeout),
            opts,
            workers: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
        }
    }

    pub fn counters(&self) -> DeliveryCounts {
        self.counters.snapshot()
    }

    /// Queues `e` for `url` in `format`; never blocks.
    pub fn enqueue(&self, url: &str, format: WebhookFormat, e: &RolloutEvent) {
        let job = Job {
            id: e.id,
            kind: e.kind.as_str(),
            body: body(e, format),
        };
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (url.to_string(), format);
        if !workers.contains_key(&key) {
            if workers.len() >= MAX_RECEIVERS {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match self.spawn(url.to_string()) {
                Some(tx) => {
                    workers.insert(key.clone(), tx);
                }
                None => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let Some(tx) = workers.get(&key) else { return };
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                workers.remove(&key);
            }
        }
    }

    /// A worker for `url`: tries each job `attempts` times with doubling waits.
    fn spawn(&self, url: String) -> Option<SyncSender<Job>> {
        let (tx, rx) = sync_channel::<Job>(self.opts.queue.max(1));
        let agent = self.agent.clone();
        let secret = self.opts.secret.clone();
        let attempts = self.opts.attempts.max(1);
        let backoff = self.opts.backoff;
        let counters = Arc::clone(&self.counters);
        let spawned = std::thread::Builder::new()
            .name("webhook".to_string())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let mut wait = backoff;
                    for attempt in 1..=attempts {
                        let res =
                            post(&agent, &url, secret.as_deref(), job.kind, job.id, &job.body);
                        match res {
                            Ok(_) => {
                                counters.delivered.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(why) if attempt == attempts => {
                                counters.failed.fetch_add(1, Ordering::Relaxed);
                                eprintln!(
                                    "rollout-control: webhook {url}: event {} dropped after \
                                     {attempts} tries: {why}",
                                    job.id
                                );
                            }
                            Err(_) => {
                                counters.retried.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(wait);
                                wait = (wait * 2).min(MAX_BACKOFF);
                            }
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                eprintln!("rollout-control: cannot start a webhook worker: {e}");
                None
            }
        }
    }
}
