//! The one adapter between the filter and the proxy: every host call goes through
//! `Host`, and every failure becomes a named `HostError` that the caller maps to an
//! outcome (treat the header as absent, skip the metric, fall back to stable).
//!
//! `ProxyHost` calls `proxy_wasm::hostcalls` directly (never the SDK's trait helpers,
//! which unwrap). A `MockHost` implementing the same trait serves unit tests.
//! (The SDK's hostcalls still abort on a status the ABI does not allow for that
//! call; every status the ABI allows arrives here as a `HostError`.)

use std::borrow::Cow;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    NotFound,
    BadArgument,
    SerializationFailure,
    ParseFailure,
    Empty,
    CasMismatch,
    InternalFailure,
    Other,
}

impl From<Status> for HostError {
    fn from(s: Status) -> Self {
        match s {
            Status::NotFound => HostError::NotFound,
            Status::BadArgument => HostError::BadArgument,
            Status::SerializationFailure => HostError::SerializationFailure,
            Status::ParseFailure => HostError::ParseFailure,
            Status::Empty => HostError::Empty,
            Status::CasMismatch => HostError::CasMismatch,
            Status::InternalFailure => HostError::InternalFailure,
            _ => HostError::Other,
        }
    }
}

pub type HostResult<T> = Result<T, HostError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Everything the filter asks of the proxy.
pub trait Host {
    fn request_header(&self, name: &str) -> HostResult<Option<String>>;
    /// Sets (`Some`) or removes (`None`) a request header.
    fn set_request_header(&self, name: &str, value: Option<&str>) -> HostResult<()>;
    fn response_header(&self, name: &str) -> HostResult<Option<String>>;
    fn set_response_header(&self, name: &str, value: Option<&str>) -> HostResult<()>;
    fn now_nanos(&self) -> HostResult<u64>;
    fn plugin_configuration(&self) -> HostResult<Option<Vec<u8>>>;
    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32>;
    fn increment_metric(&self, id: u32, delta: i64) -> HostResult<()>;
    fn record_metric(&self, id: u32, value: u64) -> HostResult<()>;
    fn set_tick_period_ms(&self, ms: u64) -> HostResult<()>;
    fn log(&self, level: LogLevel, message: &str);
    /// Shared data of this `vm_id`: value and CAS token.
    fn get_shared(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)>;
    /// Writes shared data; with `cas`, fails with `CasMismatch` if it changed since.
    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()>;
    /// Starts an HTTP callout; the answer arrives at the calling context.
    fn dispatch(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> HostResult<u32>;
    fn call_response_header(&self, name: &str) -> HostResult<Option<String>>;
    fn call_response_body(&self, max: usize) -> HostResult<Option<Vec<u8>>>;
    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>>;
    /// All request headers (one call), read in place.
    fn request_headers_all(&self) -> HostResult<HeaderSnapshot>;
    /// The request body bytes buffered at this callback (the current chunk).
    fn request_body(&self, size: usize) -> HostResult<Option<Vec<u8>>>;
    fn response_body(&self, size: usize) -> HostResult<Option<Vec<u8>>>;
    fn register_queue(&self, name: &str) -> HostResult<u32>;
    fn enqueue(&self, queue: u32, value: &[u8]) -> HostResult<()>;
    fn dequeue(&self, queue: u32) -> HostResult<Option<Vec<u8>>>;

    /// The clock in unix ms (0 when the host cannot tell).
    fn now_ms(&self) -> u64 {
        self.now_nanos().map(|n| n / 1_000_000).unwrap_or(0)
    }

    /// The `:status` of the callout answer being delivered (`None`: no answer, or
    /// not a number).
    fn call_status(&self) -> Option<u32> {
        self.call_response_header(":status")
            .ok()
            .flatten()
            .and_then(|s| s.trim().parse::<u32>().ok())
    }
}

/// A shared host is a host (tests keep a handle on the mock they hand out).
impl<T: Host> Host for std::rc::Rc<T> {
    fn request_header(&self, name: &str) -> HostResult<Option<String>> {
        (**self).request_header(name)
    }
    fn set_request_header(&self, name: &str, value: Option<&str>) -> HostResult<()> {
        (**self).set_request_header(name, value)
    }
    fn response_header(&self, name: &str) -> HostResult<Option<String>> {
        (**self).response_header(name)
    }
    fn set_response_header(&self, name: &str, value: Option<&str>) -> HostResult<()> {
        (**self).set_response_header(name, value)
    }
    fn now_nanos(&self) -> HostResult<u64> {
        (**self).now_nanos()
    }
    fn plugin_configuration(&self) -> HostResult<Option<Vec<u8>>> {
        (**self).plugin_configuration()
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32> {
        (**self).define_metric(kind, name)
    }
    fn increment_metric(&self, id: u32, delta: i64) -> HostResult<()> {
        (**self).increment_metric(id, delta)
    }
    fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
        (**self).record_metric(id, value)
    }
    fn set_tick_period_ms(&self, ms: u64) -> HostResult<()> {
        (**self).set_tick_period_ms(ms)
    }
    fn log(&self, level: LogLevel, message: &str) {
        (**self).log(level, message)
    }
    fn get_shared(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        (**self).get_shared(key)
    }
    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        (**self).set_shared(key, value, cas)
    }
    fn dispatch(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> HostResult<u32> {
        (**self).dispatch(cluster, headers, body, timeout_ms)
    }
    fn call_response_header(&self, name: &str) -> HostResult<Option<String>> {
        (**self).call_response_header(name)
    }
    fn call_response_body(&self, max: usize) -> HostResult<Option<Vec<u8>>> {
        (**self).call_response_body(max)
    }
    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        (**self).property(path)
    }
    fn request_headers_all(&self) -> HostResult<HeaderSnapshot> {
        (**self).request_headers_all()
    }
    fn request_body(&self, size: usize) -> HostResult<Option<Vec<u8>>> {
        (**self).request_body(size)
    }
    fn response_body(&self, size: usize) -> HostResult<Option<Vec<u8>>> {
        (**self).response_body(size)
    }
    fn register_queue(&self, name: &str) -> HostResult<u32> {
        (**self).register_queue(name)
    }
    fn enqueue(&self, queue: u32, value: &[u8]) -> HostResult<()> {
        (**self).enqueue(queue, value)
    }
    fn dequeue(&self, queue: u32) -> HostResult<Option<Vec<u8>>> {
        (**self).dequeue(queue)
    }
}

/// All request headers from one host call, kept as the proxy serialized them (one
/// buffer, read in place: no allocation per header). The proxy-wasm map format:
/// a `u32` count, then a `u32` key length and a `u32` value length per pair, then
/// each key and value followed by a NUL byte. A malformed buffer reads as the pairs
/// before the fault. Bytes that are not UTF-8 (HTTP allows obs-text in values) read
/// as U+FFFD, the same bytes always alike: they never abort the filter (the SDK's
/// own parse does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderSnapshot {
    bytes: Vec<u8>,
}

impl HeaderSnapshot {
    /// A snapshot in the proxy's serialized form.
    pub fn from_serialized(bytes: Vec<u8>) -> Self {
        HeaderSnapshot { bytes }
    }

    /// Serializes pairs the way the proxy does (tests, and hosts without the raw call).
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Self {
        let mut bytes = Vec::new();
        let n = u32::try_from(pairs.len()).unwrap_or(0);
        bytes.extend_from_slice(&n.to_le_bytes());
        for (k, v) in pairs.iter().take(n as usize) {
            for s in [k.as_ref(), v.as_ref()] {
                let len = u32::try_from(s.len()).unwrap_or(0);
                bytes.extend_from_slice(&len.to_le_bytes());
            }
        }
        for (k, v) in pairs.iter().take(n as usize) {
            for s in [k.as_ref(), v.as_ref()] {
                bytes.extend_from_slice(s.as_bytes());
                bytes.push(0);
            }
        }
        HeaderSnapshot { bytes }
    }

    /// The pairs in order, names as the proxy gave them (lower case in Envoy).
    pub fn iter(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> + '_ {
        self.raw_pairs().map(|(k, v)| (text(k), text(v)))
    }

    /// The first value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.raw_pairs()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| text(v))
    }

    fn raw_pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let b = self.bytes.as_slice();
        let word = move |at: usize| -> Option<usize> {
            let w = b.get(at..at.checked_add(4)?)?;
            let w: [u8; 4] = w.try_into().ok()?;
            Some(u32::from_le_bytes(w) as usize)
        };
        let count = word(0).unwrap_or(0);
        let mut data = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(4))
            .unwrap_or(usize::MAX);
        (0..count).map_while(move |i| {
            let at = i.checked_mul(8)?.checked_add(4)?;
            let (kl, vl) = (word(at)?, word(at + 4)?);
            let k = b.get(data..data.checked_add(kl)?)?;
            let v_at = data.checked_add(kl)?.checked_add(1)?;
            let v = b.get(v_at..v_at.checked_add(vl)?)?;
            data = v_at.checked_add(vl)?.checked_add(1)?;
            Some((k, v))
        })
    }
}

/// Header bytes as text: borrowed when UTF-8 (checked by the fast validation),
/// else with U+FFFD for the bytes that are not.
fn text(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

/// A status code of the proxy-wasm ABI as a `HostError` (0, Ok, is not an error).
#[cfg(target_arch = "wasm32")]
fn status_error(code: u32) -> HostError {
    match code {
        1 => HostError::NotFound,
        2 => HostError::BadArgument,
        3 => HostError::SerializationFailure,
        4 => HostError::ParseFailure,
        7 => HostError::Empty,
        8 => HostError::CasMismatch,
        10 => HostError::InternalFailure,
        _ => HostError::Other,
    }
}

#[cfg(target_arch = "wasm32")]
mod raw {
    use proxy_wasm::types::MapType;

    extern "C" {
        /// The ABI's call behind the SDK's `get_map`, taken raw: the SDK's parse
        /// allocates two `String`s per header and aborts on a value that is not
        /// UTF-8 (HTTP allows obs-text bytes in values).
        pub fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
    }
}

/// One header map, serialized by the proxy into one buffer of ours.
#[cfg(target_arch = "wasm32")]
fn header_map_pairs(map: MapType) -> HostResult<HeaderSnapshot> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the two out-pointers are valid locals. On success the proxy hands over
    // a buffer it allocated through this module's `proxy_on_memory_allocate` (the
    // SDK's: a `Vec<u8>` of capacity `size`, forgotten) or null; taking it back as
    // that `Vec` is what the SDK's own `get_map` does.
    let status = unsafe { raw::proxy_get_header_map_pairs(map, &mut data, &mut size) };
    match status {
        0 if data.is_null() => Ok(HeaderSnapshot::default()),
        // SAFETY: see above.
        0 => Ok(HeaderSnapshot::from_serialized(unsafe {
            Vec::from_raw_parts(data, size, size)
        })),
        code => Err(status_error(code)),
    }
}

/// Off wasm (native builds of the crate) the SDK's parse stands in.
#[cfg(not(target_arch = "wasm32"))]
fn header_map_pairs(map: MapType) -> HostResult<HeaderSnapshot> {
    Ok(HeaderSnapshot::from_pairs(&hostcalls::get_map(map)?))
}

/// The real proxy.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyHost;

impl Host for ProxyHost {
    fn request_header(&self, name: &str) -> HostResult<Option<String>> {
        Ok(hostcalls::get_map_value(MapType::HttpRequestHeaders, name)?)
    }
    fn set_request_header(&self, name: &str, value: Option<&str>) -> HostResult<()> {
        Ok(hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            name,
            value,
        )?)
    }
    fn response_header(&self, name: &str) -> HostResult<Option<String>> {
        Ok(hostcalls::get_map_value(
            MapType::HttpResponseHeaders,
            name,
        )?)
    }
    fn set_response_header(&self, name: &str, value: Option<&str>) -> HostResult<()> {
        Ok(hostcalls::set_map_value(
            MapType::HttpResponseHeaders,
            name,
            value,
        )?)
    }
    fn now_nanos(&self) -> HostResult<u64> {
        let t = hostcalls::get_current_time()?;
        Ok(t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0))
    }
    fn plugin_configuration(&self) -> HostResult<Option<Vec<u8>>> {
        Ok(hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            usize::MAX,
        )?)
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32> {
        let t = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        Ok(hostcalls::define_metric(t, name)?)
    }
    fn increment_metric(&self, id: u32, delta: i64) -> HostResult<()> {
        Ok(hostcalls::increment_metric(id, delta)?)
    }
    fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
        Ok(hostcalls::record_metric(id, value)?)
    }
    fn set_tick_period_ms(&self, ms: u64) -> HostResult<()> {
        Ok(hostcalls::set_tick_period(
            std::time::Duration::from_millis(ms),
        )?)
    }
    fn log(&self, level: LogLevel, message: &str) {
        // Nothing sensible is left to do when logging itself fails.
        let _ = hostcalls::log(level, message);
    }
    fn get_shared(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        Ok(hostcalls::get_shared_data(key)?)
    }
    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        Ok(hostcalls::set_shared_data(key, Some(value), cas)?)
    }
    fn dispatch(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> HostResult<u32> {
        Ok(hostcalls::dispatch_http_call(
            cluster,
            headers,
            body,
            Vec::new(),
            std::time::Duration::from_millis(timeout_ms),
        )?)
    }
    fn call_response_header(&self, name: &str) -> HostResult<Option<String>> {
        Ok(hostcalls::get_map_value(
            MapType::HttpCallResponseHeaders,
            name,
        )?)
    }
    fn call_response_body(&self, max: usize) -> HostResult<Option<Vec<u8>>> {
        Ok(hostcalls::get_buffer(
            BufferType::HttpCallResponseBody,
            0,
            max,
        )?)
    }
    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        Ok(hostcalls::get_property(path.to_vec())?)
    }
    fn request_headers_all(&self) -> HostResult<HeaderSnapshot> {
        header_map_pairs(MapType::HttpRequestHeaders)
    }
    fn request_body(&self, size: usize) -> HostResult<Option<Vec<u8>>> {
        Ok(hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)?)
    }
    fn response_body(&self, size: usize) -> HostResult<Option<Vec<u8>>> {
        Ok(hostcalls::get_buffer(
            BufferType::HttpResponseBody,
            0,
            size,
        )?)
    }
    fn register_queue(&self, name: &str) -> HostResult<u32> {
        Ok(hostcalls::register_shared_queue(name)?)
    }
    fn enqueue(&self, queue: u32, value: &[u8]) -> HostResult<()> {
        Ok(hostcalls::enqueue_shared_queue(queue, Some(value))?)
    }
    fn dequeue(&self, queue: u32) -> HostResult<Option<Vec<u8>>> {
        Ok(hostcalls::dequeue_shared_queue(queue)?)
    }
}

#[cfg(test)]
pub mod mock {
    //! An in-memory host for unit tests of the callbacks.
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// A recorded callout: cluster, headers, body.
    pub type Callout = (String, Vec<(String, String)>, Option<Vec<u8>>);
    /// The answer the next callout response reads: headers, body.
    pub type CallAnswer = (BTreeMap<String, String>, Option<Vec<u8>>);

    #[derive(Default)]
    pub struct MockHost {
        pub request: RefCell<BTreeMap<String, String>>,
        pub response: RefCell<BTreeMap<String, String>>,
        pub config: RefCell<Option<Vec<u8>>>,
        pub now: RefCell<u64>,
        pub metric_names: RefCell<Vec<(MetricKind, String)>>,
        pub metric_values: RefCell<BTreeMap<u32, i64>>,
        pub histograms: RefCell<BTreeMap<u32, Vec<u64>>>,
        pub logs: RefCell<Vec<(LogLevel, String)>>,
        pub calls: RefCell<usize>,
        /// Every host call a request context or the root made, by name, in order.
        pub call_log: RefCell<Vec<&'static str>>,
        pub fail_headers: RefCell<bool>,
        pub shared: RefCell<BTreeMap<String, (Vec<u8>, u32)>>,
        pub dispatched: RefCell<Vec<Callout>>,
        pub fail_dispatch: RefCell<bool>,
        pub call_response: RefCell<CallAnswer>,
        pub request_chunk: RefCell<Vec<u8>>,
        pub response_chunk: RefCell<Vec<u8>>,
        pub queue: RefCell<Vec<Vec<u8>>>,
        pub properties: RefCell<BTreeMap<String, Vec<u8>>>,
    }

    impl MockHost {
        pub fn metric(&self, name: &str) -> i64 {
            let names = self.metric_names.borrow();
            match names.iter().position(|(_, n)| n == name) {
                Some(i) => *self.metric_values.borrow().get(&(i as u32)).unwrap_or(&0),
                None => panic!("metric {name} not defined"),
            }
        }
        pub fn histogram(&self, name: &str) -> Vec<u64> {
            let names = self.metric_names.borrow();
            let i = names.iter().position(|(_, n)| n == name).unwrap();
            self.histograms
                .borrow()
                .get(&(i as u32))
                .cloned()
                .unwrap_or_default()
        }
        fn call(&self, what: &'static str) {
            *self.calls.borrow_mut() += 1;
            self.call_log.borrow_mut().push(what);
        }
        /// Forgets the calls counted so far.
        pub fn reset_calls(&self) {
            *self.calls.borrow_mut() = 0;
            self.call_log.borrow_mut().clear();
        }
    }

    impl Host for MockHost {
        fn request_header(&self, name: &str) -> HostResult<Option<String>> {
            self.call("request_header");
            if *self.fail_headers.borrow() {
                return Err(HostError::InternalFailure);
            }
            Ok(self.request.borrow().get(name).cloned())
        }
        fn set_request_header(&self, name: &str, value: Option<&str>) -> HostResult<()> {
            self.call("set_request_header");
            let mut m = self.request.borrow_mut();
            match value {
                Some(v) => m.insert(name.to_string(), v.to_string()),
                None => m.remove(name),
            };
            Ok(())
        }
        fn response_header(&self, name: &str) -> HostResult<Option<String>> {
            self.call("response_header");
            Ok(self.response.borrow().get(name).cloned())
        }
        fn set_response_header(&self, name: &str, value: Option<&str>) -> HostResult<()> {
            self.call("set_response_header");
            let mut m = self.response.borrow_mut();
            match value {
                Some(v) => m.insert(name.to_string(), v.to_string()),
                None => m.remove(name),
            };
            Ok(())
        }
        fn now_nanos(&self) -> HostResult<u64> {
            self.call("now_nanos");
            Ok(*self.now.borrow())
        }
        fn plugin_configuration(&self) -> HostResult<Option<Vec<u8>>> {
            Ok(self.config.borrow().clone())
        }
        fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32> {
            let mut names = self.metric_names.borrow_mut();
            if let Some(i) = names.iter().position(|(_, n)| n == name) {
                return Ok(i as u32);
            }
            names.push((kind, name.to_string()));
            Ok((names.len() - 1) as u32)
        }
        fn increment_metric(&self, id: u32, delta: i64) -> HostResult<()> {
            self.call("increment_metric");
            *self.metric_values.borrow_mut().entry(id).or_default() += delta;
            Ok(())
        }
        fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
            self.call("record_metric");
            let kind = self.metric_names.borrow()[id as usize].0;
            if kind == MetricKind::Gauge {
                self.metric_values.borrow_mut().insert(id, value as i64);
            } else {
                self.histograms
                    .borrow_mut()
                    .entry(id)
                    .or_default()
                    .push(value);
            }
            Ok(())
        }
        fn set_tick_period_ms(&self, _ms: u64) -> HostResult<()> {
            Ok(())
        }
        fn log(&self, level: LogLevel, message: &str) {
            self.logs.borrow_mut().push((level, message.to_string()));
        }
        fn get_shared(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
            Ok(match self.shared.borrow().get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            })
        }
        fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
            let mut m = self.shared.borrow_mut();
            let current = m.get(key).map(|(_, c)| *c);
            if let (Some(want), Some(have)) = (cas, current) {
                if want != have {
                    return Err(HostError::CasMismatch);
                }
            }
            m.insert(key.to_string(), (value.to_vec(), current.unwrap_or(0) + 1));
            Ok(())
        }
        fn dispatch(
            &self,
            cluster: &str,
            headers: Vec<(&str, &str)>,
            body: Option<&[u8]>,
            _t: u64,
        ) -> HostResult<u32> {
            self.call("dispatch");
            if *self.fail_dispatch.borrow() {
                return Err(HostError::BadArgument);
            }
            let mut d = self.dispatched.borrow_mut();
            d.push((
                cluster.to_string(),
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body.map(<[u8]>::to_vec),
            ));
            Ok(d.len() as u32)
        }
        fn call_response_header(&self, name: &str) -> HostResult<Option<String>> {
            self.call("call_response_header");
            Ok(self.call_response.borrow().0.get(name).cloned())
        }
        fn call_response_body(&self, max: usize) -> HostResult<Option<Vec<u8>>> {
            self.call("call_response_body");
            Ok(self.call_response.borrow().1.clone().map(|mut b| {
                b.truncate(max);
                b
            }))
        }
        /// The node id for the root; a request's verified identity from `properties`
        /// (keyed by the path joined with '/'), counted as a host call.
        fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
            if path.first() == Some(&"node") {
                return Ok(Some(b"test-node".to_vec()));
            }
            self.call("property");
            match self.properties.borrow().get(&path.join("/")) {
                Some(v) => Ok(Some(v.clone())),
                None => Err(HostError::NotFound),
            }
        }
        fn request_headers_all(&self) -> HostResult<HeaderSnapshot> {
            self.call("request_headers_all");
            if *self.fail_headers.borrow() {
                return Err(HostError::InternalFailure);
            }
            let request = self.request.borrow();
            let pairs: Vec<(&String, &String)> = request.iter().collect();
            Ok(HeaderSnapshot::from_pairs(&pairs))
        }
        fn request_body(&self, size: usize) -> HostResult<Option<Vec<u8>>> {
            self.call("request_body");
            let b = self.request_chunk.borrow();
            Ok(Some(
                b.get(..size.min(b.len())).unwrap_or_default().to_vec(),
            ))
        }
        fn response_body(&self, size: usize) -> HostResult<Option<Vec<u8>>> {
            self.call("response_body");
            let b = self.response_chunk.borrow();
            Ok(Some(
                b.get(..size.min(b.len())).unwrap_or_default().to_vec(),
            ))
        }
        fn register_queue(&self, _name: &str) -> HostResult<u32> {
            Ok(1)
        }
        fn enqueue(&self, _queue: u32, value: &[u8]) -> HostResult<()> {
            self.call("enqueue");
            self.queue.borrow_mut().push(value.to_vec());
            Ok(())
        }
        fn dequeue(&self, _queue: u32) -> HostResult<Option<Vec<u8>>> {
            self.call("dequeue");
            let mut q = self.queue.borrow_mut();
            Ok(if q.is_empty() {
                None
            } else {
                Some(q.remove(0))
            })
        }
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    #[test]
    fn reads_pairs_in_place_case_insensitively() {
        let s =
            HeaderSnapshot::from_pairs(&[(":path", "/v2/x"), ("x-user-id", "u1"), ("empty", "")]);
        assert_eq!(s.get(":path").as_deref(), Some("/v2/x"));
        assert_eq!(s.get("X-User-Id").as_deref(), Some("u1"));
        assert_eq!(s.get("empty").as_deref(), Some(""));
        assert_eq!(s.get("absent"), None);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![
                (":path".into(), "/v2/x".into()),
                ("x-user-id".into(), "u1".into()),
                ("empty".into(), "".into())
            ]
        );
        assert_eq!(HeaderSnapshot::default().get(":path"), None);
    }

    #[test]
    fn a_value_that_is_not_utf8_reads_with_replacement_characters() {
        let mut s = HeaderSnapshot::from_pairs(&[("x-odd", "ab"), ("x-user-id", "u1")]);
        // the value of x-odd ("ab") becomes 0xff 0x62: obs-text, not UTF-8
        let at = s.bytes.iter().position(|b| *b == b'a').unwrap();
        s.bytes[at] = 0xff;
        assert_eq!(s.get("x-odd").as_deref(), Some("\u{fffd}b"));
        assert_eq!(s.get("x-user-id").as_deref(), Some("u1"));
        assert_eq!(s.iter().count(), 2);
    }

    #[test]
    fn a_truncated_or_lying_buffer_reads_the_pairs_before_the_fault() {
        let full = HeaderSnapshot::from_pairs(&[("a", "1"), ("b", "2")]);
        for cut in 0..full.bytes.len() {
            let s = HeaderSnapshot::from_serialized(full.bytes[..cut].to_vec());
            assert!(s.iter().count() <= 2);
            if s.get("b").is_some() {
                assert_eq!(s.get("a").as_deref(), Some("1"));
            }
        }
        // a count far beyond the buffer
        let mut lying = full.bytes.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let s = HeaderSnapshot::from_serialized(lying);
        assert!(s.iter().count() <= 2);
    }
}
