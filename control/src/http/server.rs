//! Serving the router on a listener with every connection bounded: at most
//! `max_connections` open at once (one more is closed at accept), a request's headers
//! must arrive within `header_timeout` (hyper closes the connection otherwise), and
//! shutdown waits at most `shutdown_grace` for in-flight requests before dropping the
//! remaining connections. The body read timeout is [`crate::http::body_timeout`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The HTTP limits of `serve` (flags `--header-timeout-ms`, `--body-timeout-ms`,
/// `--max-connections`, `--shutdown-grace-ms`, `--heavy-reads`, `--max-record-bytes`,
/// `--max-report-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A request's headers must arrive within this.
    pub header_timeout: Duration,
    /// A request's body must arrive within this.
    pub body_timeout: Duration,
    /// Open connections at most; one more is closed at once.
    pub max_connections: usize,
    /// Shutdown waits this long for in-flight requests, then drops them.
    pub shutdown_grace: Duration,
    /// Heavy reads (reports, history) running at once; more wait for a permit.
    pub heavy_reads: usize,
    /// A shadow record is stored within this many bytes of JSON: a larger one's
    /// predictions are cut at ingest.
    pub max_record_bytes: usize,
    /// The recent disagreements of a shadow report, and a history page, hold at most
    /// this many bytes of JSON together (the oldest are left out; a page ends early).
    pub max_report_bytes: usize,
}

/// Default of `--max-record-bytes`: the filter's own cut (`wire::MAX_RECORD_BYTES`,
/// 128 KiB), so what a filter posts is stored whole.
pub const DEFAULT_MAX_RECORD_BYTES: usize = rollout_core::wire::MAX_RECORD_BYTES;
/// Default of `--max-report-bytes`.
pub const DEFAULT_MAX_REPORT_BYTES: usize = 16 * 1024 * 1024;

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(5),
            heavy_reads: 1,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_report_bytes: DEFAULT_MAX_REPORT_BYTES,
        }
    }
}

/// Connections refused because `max_connections` were open (`GET /metrics`).
pub static REFUSED_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// Serves `router` until `shutdown` completes, then waits up to `shutdown_grace` for
/// open connections to finish their requests. Returns whether every connection
/// finished in time.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off a little.
                eprintln!("rollout-control: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            REFUSED_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_ok()
}
