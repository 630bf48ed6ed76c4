//! `GET /ui`: the status page, served by the sidecar itself and working offline: the
//! HTML, script and style are compiled into the binary (`include_str!`), nothing is
//! fetched from elsewhere (no CDN, no font, no library: the charts are SVG drawn by
//! the page's own script). The page reads the same public JSON endpoints as the CLI
//! (`/v1/status`, `/v1/plan`, `/v1/history`, `/v1/rollouts/{r}/analysis`,
//! `/v1/shadow-report`, `/v1/events`) every second.
//!
//! The page's own files are open (`roles::need`); its reads carry the credential
//! entered in the page, if any (needed only when the sidecar has a read credential).
//! Read-only without credentials. The operator actions (pause, resume, promote,
//! rollback; the operator role's) appear once a credential is entered in the page; it is kept in the tab's
//! `sessionStorage` and sent as `Authorization: Bearer`, never as a cookie, so another
//! site cannot make the browser send it (and `http::origin` refuses cross-site writes
//! besides). Every action asks `confirm()` first. The answers carry a strict
//! Content-Security-Policy: scripts and styles from this origin only, no inline
//! script, no framing.
//!
//! | path | content |
//! |---|---|
//! | `/ui` | the page (`ui/index.html`) |
//! | `/ui/app.js` | its script (`ui/app.js`) |
//! | `/ui/app.css` | its style (`ui/app.css`) |

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::http::state::AppState;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// The page's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/ui",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    resp
}
