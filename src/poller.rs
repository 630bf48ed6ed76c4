//! The plan poller of one root context: keeps the plan in force in step with the
//! control sidecar. The root installs what it returns; the poller never touches the
//! configuration itself.
//!
//! Why a lease: one `vm_id` is one shared-data space for every worker's VM, and
//! on_tick fires in each of them. At most one root per `vm_id` polls the sidecar per
//! interval: roots compete for a lease in shared data (CAS); the holder renews it
//! with every poll and, should its worker stall, the lease expires after two
//! intervals plus the timeout and another root takes over. Duplicate polls during a
//! handover are harmless: plans are versioned and a lower or equal version changes
//! nothing.
//!
//! Publishing: the poller publishes an accepted plan (plan bytes first, then the
//! small `head` record), so a reader that sees the new head always finds that plan
//! or a newer one. Every root reads the head on its tick ([`PlanPoller::adopt`]) and
//! takes a newer plan; requests never parse.
//!
//! Fail static: no answer, a non-200/304 status, malformed JSON, an invalid or
//! oversized plan, or a lower version leave the plan in force untouched; each is
//! counted, and staleness grows.

use rollout_core::control::{
    judge, supersedes, ControlSpec, Head, Lease, PlanSource, PollError, PollOutcome, Rejection,
};
use rollout_core::trust::TrustedSources;
use rollout_core::{parse_plan, ConfigError, Plan, PlanSpec};

use crate::host::{Host, HostError};
use crate::metrics::Metrics;

/// The plan in force, as the poller compares with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    pub version: u64,
    /// The store epoch of a sidecar plan (`None`: static, or a sidecar without epochs).
    pub epoch: Option<String>,
    pub source: PlanSource,
}

impl InForce {
    /// Does a plan of `version` and `epoch` replace this one?
    fn superseded_by(&self, version: u64, epoch: Option<&str>) -> bool {
        supersedes(
            version,
            epoch,
            self.version,
            self.epoch.as_deref(),
            self.source,
        )
    }
}

/// What [`PlanPoller::adopt`] found in shared data.
pub enum Adopted {
    /// A newer plan than the one in force: install it.
    Plan(Box<PlanSpec>, Box<Plan>),
    /// The published plan does not parse (it is kept out).
    Unusable(ConfigError),
}

/// What the sidecar's answer to a poll came to.
pub enum Polled {
    /// Nothing new (304, or the same version).
    Current,
    /// A newer plan, published for the other workers: install it.
    Accepted(Box<PlanSpec>, Box<Plan>),
    /// A plan refused (counted).
    Rejected(Rejection, String),
    /// No usable answer (counted).
    Failed(PollError),
}

pub struct PlanPoller {
    spec: ControlSpec,
    /// What a polled plan's targeting may read (`rollout_core::trust`).
    trusted: TrustedSources,
    plan_key: String,
    head_key: String,
    lease_key: String,
    /// Lease holder id: random per root context.
    me: u64,
    /// Names this proxy at the sidecar.
    proxy_id: String,
    in_flight: Option<(u32, u64)>,
    next_poll_ms: u64,
    last_success_ms: Option<u64>,
}

fn host_error(m: Option<&Metrics>) {
    if let Some(m) = m {
        m.bump(m.host_errors);
    }
}

impl PlanPoller {
    /// A poller of `spec`'s sidecar; `me` (non-zero) holds the lease, `node_id` (the
    /// Envoy node id, may be empty) names the proxy.
    /// `trusted`: what a polled plan's targeting may read (`rollout_core::trust`).
    pub fn new(spec: ControlSpec, me: u64, node_id: String, trusted: TrustedSources) -> Self {
        let prefix = spec.key_prefix();
        let proxy_id = Some(node_id)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("envoy-{me:016x}"));
        PlanPoller {
            spec,
            trusted,
            plan_key: format!("{prefix}/plan"),
            head_key: format!("{prefix}/head"),
            lease_key: format!("{prefix}/lease"),
            me,
            proxy_id,
            in_flight: None,
            next_poll_ms: 0,
            last_success_ms: None,
        }
    }

    /// Seconds since the sidecar last answered (or since `started_ms`, before that).
    pub fn staleness_s(&self, now: u64, started_ms: u64) -> u64 {
        now.saturating_sub(self.last_success_ms.unwrap_or(started_ms)) / 1000
    }

    fn head(&self, host: &impl Host) -> Option<Head> {
        match host.get_shared(&self.head_key) {
            Ok((Some(b), _)) => Head::decode(&b),
            _ => None,
        }
    }

    /// Adopts the plan another root published, when it is newer than ours.
    pub fn adopt(
        &mut self,
        host: &impl Host,
        m: Option<&Metrics>,
        in_force: InForce,
    ) -> Option<Adopted> {
        let head = match host.get_shared(&self.head_key) {
            Ok((Some(b), _)) => Head::decode(&b),
            Ok((None, _)) => None,
            Err(_) => {
                host_error(m);
                None
            }
        }?;
        self.last_success_ms = Some(head.last_success_ms);
        if !in_force.superseded_by(head.version, head.epoch()) {
            return None;
        }
        let Ok((Some(bytes), _)) = host.get_shared(&self.plan_key) else {
            host_error(m);
            return None;
        };
        match parse_plan(&bytes) {
            Ok((spec, plan)) if in_force.superseded_by(plan.version, spec.epoch.as_deref()) => {
                Some(Adopted::Plan(Box::new(spec), Box::new(plan)))
            }
            Ok(_) => None,
            Err(e) => Some(Adopted::Unusable(e)),
        }
    }

    /// Polls the sidecar when an interval has passed and this root holds (or takes)
    /// the lease.
    pub fn poll(&mut self, host: &impl Host, m: Option<&Metrics>, now: u64, in_force: InForce) {
        if let Some((_, started)) = self.in_flight {
            // The proxy answers every callout (at the latest when it times out);
            // should an answer never come, stop waiting after a generous margin.
            if now.saturating_sub(started) < self.spec.timeout_ms.saturating_add(5_000) {
                return;
            }
            self.in_flight = None;
        }
        if now < self.next_poll_ms {
            return;
        }
        self.next_poll_ms = now.saturating_add(self.spec.poll_interval_ms);
        // Take or renew the lease; somebody else holding it polls instead.
        let (current, cas) = match host.get_shared(&self.lease_key) {
            Ok((b, cas)) => (b.and_then(|b| Lease::decode(&b)), cas),
            Err(_) => (None, None),
        };
        if !Lease::available_to(current, self.me, now) {
            // Try again the moment the holder's lease runs out.
            if let Some(l) = current {
                self.next_poll_ms = self.next_poll_ms.min(l.until_ms);
            }
            return;
        }
        let lease = Lease {
            holder: self.me,
            until_ms: now
                .saturating_add(self.spec.poll_interval_ms.saturating_mul(2))
                .saturating_add(self.spec.timeout_ms),
        };
        match host.set_shared(&self.lease_key, &lease.encode(), cas) {
            Ok(()) => {}
            Err(HostError::CasMismatch) => return,
            Err(_) => {
                host_error(m);
                return;
            }
        }
        // Poll with the ETag only when we run the published version.
        let etag = self
            .head(host)
            .filter(|h| {
                h.version == in_force.version
                    && h.epoch() == in_force.epoch.as_deref()
                    && in_force.source == PlanSource::Control
                    && !h.etag.is_empty()
            })
            .map(|h| h.etag);
        let headers = self
            .spec
            .poll_headers(etag.as_deref(), &self.proxy_id, in_force.version);
        let headers = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let dispatched = host.dispatch(&self.spec.cluster, headers, None, self.spec.timeout_ms);
        let Some(m) = m else { return };
        m.bump(m.control.polls);
        match dispatched {
            Ok(token) => self.in_flight = Some((token, now)),
            Err(_) => m.poll_error(PollError::Unreachable),
        }
    }

    /// The sidecar answered the poll `token` (`None`: not our poll). Publishes an
    /// accepted plan and the head; counts acceptances, rejections and failures.
    pub fn answer(
        &mut self,
        host: &impl Host,
        m: Option<&Metrics>,
        token: u32,
        body_size: usize,
        now: u64,
        in_force: InForce,
    ) -> Option<Polled> {
        if self.in_flight.map(|(t, _)| t) != Some(token) {
            return None;
        }
        self.in_flight = None;
        let max = self.spec.max_plan_bytes;
        let status = host.call_status();
        let body = match status {
            Some(200) if body_size <= max => host.call_response_body(body_size).ok().flatten(),
            Some(200) | Some(304) | None => None,
            // enough to recognise Envoy's own local replies
            Some(_) => host.call_response_body(body_size.min(64)).ok().flatten(),
        };
        let etag = host
            .call_response_header(rollout_core::wire::ETAG)
            .ok()
            .flatten()
            .unwrap_or_default();
        let outcome = judge(
            status,
            body_size,
            body,
            max,
            in_force.version,
            in_force.epoch.as_deref(),
            in_force.source,
            &self.trusted,
        );
        let m = m?;
        Some(match outcome {
            PollOutcome::NotModified | PollOutcome::Unchanged => {
                let etag = if etag.is_empty() {
                    self.head(host).map(|h| h.etag).unwrap_or_default()
                } else {
                    etag
                };
                let epoch = in_force.epoch.clone().unwrap_or_default();
                self.publish_head(host, m, in_force.version, epoch, etag, now);
                Polled::Current
            }
            PollOutcome::Accepted { spec, plan, body } => {
                if host.set_shared(&self.plan_key, &body, None).is_err() {
                    m.bump(m.host_errors);
                    return None;
                }
                let epoch = spec.epoch.clone().unwrap_or_default();
                self.publish_head(host, m, plan.version, epoch, etag, now);
                m.bump(m.control.accepted);
                Polled::Accepted(spec, plan)
            }
            PollOutcome::Rejected(reason, msg) => {
                m.rejected(reason);
                Polled::Rejected(reason, msg)
            }
            PollOutcome::Failed(e) => {
                m.poll_error(e);
                Polled::Failed(e)
            }
        })
    }

    /// The sidecar answered: tell every worker (version, time, ETag).
    fn publish_head(
        &mut self,
        host: &impl Host,
        m: &Metrics,
        version: u64,
        epoch: String,
        etag: String,
        now: u64,
    ) {
        self.last_success_ms = Some(now);
        let head = Head {
            version,
            last_success_ms: now,
            etag,
            epoch,
        };
        if host
            .set_shared(&self.head_key, head.encode().as_bytes(), None)
            .is_err()
        {
            m.bump(m.host_errors);
        }
    }
}
