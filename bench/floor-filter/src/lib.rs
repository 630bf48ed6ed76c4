//! Benchmark floor: a proxy-wasm HTTP filter that does the header work the
//! model-rollout filter does on a routed request, with constants and no logic.
//!
//! Without a plugin configuration it does what model-rollout did per request
//! before issue 13 (echo on):
//!
//! - request: read every request header once (one `get_map`), set the variant
//!   header and the correlation id;
//! - response: read `:status`, set two echo headers (correlation id and variant).
//!
//! `make bench` prints "ours - floor": what the filter's logic costs above the
//! header work itself. A plugin configuration replaces the work with a list of
//! operations, so that `bench/run.py --breakdown` can price each kind of host call:
//!
//! ```text
//! request: map get:x-user-id set:x-model-variant clock; response: status echo:x-request-id hist
//! ```
//!
//! `map` reads all request headers, `get:NAME` one request header, `set:NAME` sets a
//! request header, `clock` reads the clock, `counter` / `hist` add to a counter /
//! record a histogram sample, `status` reads `:status`, `echo:NAME` sets a response
//! header. Host call failures are ignored (this filter only measures).

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, MetricType};

const VALUE: &str = "6f1c1c7e-8d3b-4b7e-9a53-2a7c1f0e9b11";
const DEFAULT: &str = "request: map set:x-model-variant set:x-request-id; \
                       response: status echo:x-request-id echo:x-model-variant";

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(FloorRoot { ops: Rc::new(Ops::parse(DEFAULT)) })
    });
}}

#[derive(Clone)]
enum Op {
    Map,
    Get(String),
    Set(String),
    Clock,
    Counter,
    Hist,
    Status,
    Echo(String),
}

#[derive(Default)]
struct Ops {
    request: Vec<Op>,
    response: Vec<Op>,
    counter: u32,
    hist: u32,
}

impl Ops {
    fn parse(text: &str) -> Ops {
        let mut ops = Ops::default();
        for part in text.split(';') {
            let Some((half, list)) = part.split_once(':') else {
                continue;
            };
            let parsed: Vec<Op> = list
                .split_whitespace()
                .filter_map(|w| {
                    let (op, arg) = w.split_once(':').unwrap_or((w, ""));
                    Some(match op {
                        "map" => Op::Map,
                        "get" => Op::Get(arg.to_string()),
                        "set" => Op::Set(arg.to_string()),
                        "clock" => Op::Clock,
                        "counter" => Op::Counter,
                        "hist" => Op::Hist,
                        "status" => Op::Status,
                        "echo" => Op::Echo(arg.to_string()),
                        _ => return None,
                    })
                })
                .collect();
            match half.trim() {
                "request" => ops.request = parsed,
                "response" => ops.response = parsed,
                _ => {}
            }
        }
        ops
    }

    fn run(&self, list: &[Op]) -> usize {
        let mut seen = 0;
        for op in list {
            match op {
                Op::Map => {
                    seen += hostcalls::get_map(MapType::HttpRequestHeaders)
                        .map(|m| m.len())
                        .unwrap_or(0)
                }
                Op::Get(name) => {
                    seen += hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
                        .ok()
                        .flatten()
                        .map_or(0, |v| v.len())
                }
                Op::Set(name) => {
                    let _ =
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(VALUE));
                }
                Op::Clock => {
                    seen += usize::from(hostcalls::get_current_time().is_ok());
                }
                Op::Counter => {
                    let _ = hostcalls::increment_metric(self.counter, 1);
                }
                Op::Hist => {
                    let _ = hostcalls::record_metric(self.hist, 5);
                }
                Op::Status => {
                    seen += hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
                        .ok()
                        .flatten()
                        .map_or(0, |v| v.len())
                }
                Op::Echo(name) => {
                    let _ =
                        hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(VALUE));
                }
            }
        }
        seen
    }
}

struct FloorRoot {
    ops: Rc<Ops>,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let text = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .filter(|t| !t.trim().is_empty());
        let mut ops = Ops::parse(text.as_deref().unwrap_or(DEFAULT));
        ops.counter = hostcalls::define_metric(MetricType::Counter, "floor_counter").unwrap_or(0);
        ops.hist = hostcalls::define_metric(MetricType::Histogram, "floor_hist").unwrap_or(0);
        self.ops = Rc::new(ops);
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorHttp {
            ops: self.ops.clone(),
        }))
    }
}

struct FloorHttp {
    ops: Rc<Ops>,
}

impl Context for FloorHttp {}

impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        std::hint::black_box(self.ops.run(&self.ops.request));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        std::hint::black_box(self.ops.run(&self.ops.response));
        Action::Continue
    }
}
