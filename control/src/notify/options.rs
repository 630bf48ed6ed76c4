//! How `serve` runs the notifier (`--webhook`, `--webhook-slack`,
//! `--webhook-secret-file`, the retry and gate flags).

use std::time::Duration;

use rollout_core::notify::WebhookFormat;

#[derive(Debug, Clone)]
pub struct NotifyOptions {
    /// The sidecar's own webhooks (every event of every rollout), besides the plan's.
    pub webhooks: Vec<(String, WebhookFormat)>,
    /// HMAC-SHA256 key of the `X-Rollout-Signature` header; `None`: unsigned.
    pub secret: Option<Vec<u8>>,
    /// Each request's deadline (connect, send, answer).
    pub timeout: Duration,
    /// Tries per event and receiver (the first included).
    pub attempts: u32,
    /// Wait before the first retry; doubled each time (at most 30 s).
    pub backoff: Duration,
    /// Events waiting per receiver; more are dropped and counted.
    pub queue: usize,
    /// How often the gates of a step are asked until they answer 200.
    pub gate_interval: Duration,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            webhooks: Vec::new(),
            secret: None,
            timeout: Duration::from_secs(2),
            attempts: 4,
            backoff: Duration::from_millis(500),
            queue: 64,
            gate_interval: Duration::from_secs(1),
        }
    }
}
