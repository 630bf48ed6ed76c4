//! rollout-control: the model-rollout control sidecar and its CLI.
//!
//! The crate is layered; imports only point down, and there is no cycle between
//! files (`tests/layers.rs` checks both from the source text):
//!
//! ```text
//!  main.rs   the binary: parses the command line, runs `serve` or a CLI command
//!    |   \
//!    |    cli/          commands (clap), HTTP client, every printer ------+
//!    |      \                                                             |
//!    |       validate.rs   offline checks of configs and plans            |
//!  serve.rs    process wiring: store, initial plan, engine, listener      |
//!    |                                                                    |
//!  http/       router, state, auth, error mapping, /metrics,              |
//!    |         one file per resource, the status page (/ui)               |
//!  notify/     rollout events to webhooks, gate webhooks                  |
//!    |                                                                    |
//!  engine/     policy loop, metrics sources, windows, policy status       |
//!    |                                                                    |
//!  report/     shadow and A/B reports computed from stored data           |
//!    |                                                                    |
//!  store/      one redb file, one module per table family; proxy table    |
//!    |                                                                    |
//!  api/        the JSON shapes of the HTTP API  <-------------------------+
//!    |
//!  util/       ordered map, time format, query encoding, token and input files
//! ```
//!
//! Below everything: `rollout_core` (plan, analysis rules, transitions, wire types).
//! A layer may use any layer below it (`http/` reads `store/` and `api/` directly),
//! except that `cli/` sees only `api/`, `util/` and `validate.rs`: it talks to a
//! running sidecar over HTTP.
//!
//! Where a newcomer adds:
//!
//! - **a check**: its rule in `rollout_core::analysis` (pure, tested there); if it
//!   reads a metric of the filter the engine does not carry yet,
//!   `engine/rollout_metrics.rs` and `engine/window.rs` bring it into the windows.
//!   The CLI shows every check through `cli/checks.rs` without change.
//! - **a metrics source** (e.g. a Prometheus server): a new file in
//!   `engine/source/` implementing `engine::source::MetricsSource`, and a case in
//!   `engine/source/factory.rs`; nothing else in the engine changes.
//! - **an endpoint**: its JSON shapes in `api/`, a handler file in `http/` with
//!   `routes()`, one `.merge` in `http::app`, a row in the table of `http`'s module
//!   doc and in control/README.md; the CLI command (if any) in `cli/`.
//! - **a table**: a file in `store/` (table definitions private to it, errors via
//!   `store::error::db_err`, sequence numbers via `store::tables::reserve_seq`).

pub mod api;
pub mod cli;
pub mod engine;
pub mod http;
pub mod notify;
pub mod report;
pub mod serve;
pub mod store;
pub mod util;
pub mod validate;

#[doc(hidden)]
pub mod testutil;

pub use http::app;
pub use http::state::AppState;
pub use store::Store;
