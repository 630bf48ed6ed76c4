//! Benchmark floor: a proxy-wasm HTTP filter that does the header work the
//! model-rollout filter does on a routed request (with echo on, as shipped before
//! issue 13), with constants and no logic:
//!
//! - request: read every request header once (one `get_map`), set the variant
//!   header and the correlation id;
//! - response: read `:status`, set two echo headers (correlation id and variant).
//!
//! `make bench` prints "ours - floor": what the filter's logic costs above the
//! header work itself. The request bodies and the other callbacks do nothing, as in
//! `noop-filter`. Host calls go straight to `proxy_wasm::hostcalls`; a failed call
//! is ignored (this filter only measures).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};

const VARIANT_HEADER: &str = "x-model-variant";
const VARIANT: &str = "stable";
const CORRELATION_HEADER: &str = "x-request-id";
const CORRELATION_ID: &str = "6f1c1c7e-8d3b-4b7e-9a53-2a7c1f0e9b11";

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot) });
}}

struct FloorRoot;

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorHttp))
    }
}

struct FloorHttp;

impl Context for FloorHttp {}

impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        // Keep the read from being optimised away.
        if !headers.is_empty() {
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                VARIANT_HEADER,
                Some(VARIANT),
            );
        }
        let _ = hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            CORRELATION_HEADER,
            Some(CORRELATION_ID),
        );
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _status = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status");
        let _ = hostcalls::set_map_value(
            MapType::HttpResponseHeaders,
            CORRELATION_HEADER,
            Some(CORRELATION_ID),
        );
        let _ =
            hostcalls::set_map_value(MapType::HttpResponseHeaders, VARIANT_HEADER, Some(VARIANT));
        Action::Continue
    }
}
