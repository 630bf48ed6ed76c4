//! Real sockets on 127.0.0.1: the model server, the blackhole modes, the
//! traffic generator, and the built binary's start-up and SIGTERM handling.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rollout_demo::blackhole::{self, Mode};
use rollout_demo::faults::Faults;
use rollout_demo::model;
use rollout_demo::traffic::{self, TrafficArgs};
use rollout_demo::{AppState, ModelConfig};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start_model(version: &str, faults: Faults) -> Server {
    let mut cfg = ModelConfig::new(version);
    cfg.faults = faults;
    let state = AppState::new(cfg).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(model::serve(listener, state, async {
        let _ = rx.await;
    }));
    Server { addr, stop, task }
}

async fn stop(server: Server) {
    let _ = server.stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("server did not shut down")
        .unwrap()
        .unwrap();
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn request(
    c: &HttpClient,
    method: &str,
    url: String,
    body: &str,
) -> (u16, hyper::HeaderMap, Value) {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let res = c.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        serde_json::from_slice(&bytes).unwrap(),
    )
}

#[tokio::test]
async fn model_over_real_listener() {
    let server = start_model("canary", Faults::default()).await;
    let c = client();
    let base = format!("http://{}", server.addr);
    let (status, _, v) = request(&c, "GET", format!("{base}/v2/health/ready"), "").await;
    assert_eq!((status, v), (200, serde_json::json!({"ready": true})));
    let body =
        r#"{"id":"r1","inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#;
    let (status, headers, v) =
        request(&c, "POST", format!("{base}/v2/models/fraud/infer"), body).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-served-by"], "canary");
    assert_eq!(v["model_version"], "canary");
    assert_eq!(v["id"], "r1");
    assert_eq!(v["outputs"][0]["data"][0], 0.574443);
    let (status, _, v) = request(
        &c,
        "POST",
        format!("{base}/admin/faults"),
        r#"{"error_rate":1}"#,
    )
    .await;
    assert_eq!((status, v["error_rate"].as_f64()), (200, Some(1.0)));
    let (status, _, _) = request(&c, "POST", format!("{base}/v2/models/fraud/infer"), body).await;
    assert_eq!(status, 500);
    stop(server).await;
}

#[tokio::test]
async fn shutdown_releases_hung_calls() {
    let server = start_model(
        "stable",
        Faults {
            hang: true,
            ..Faults::default()
        },
    )
    .await;
    let url = format!("http://{}/v2/models/fraud/infer", server.addr);
    let call = tokio::spawn(async move { request(&client(), "POST", url, "").await.0 });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!call.is_finished());
    stop(server).await;
    assert_eq!(call.await.unwrap(), 503);
}

async fn start_blackhole(mode: Mode) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(blackhole::serve(listener, mode, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

const RAW_REQUEST: &[u8] =
    b"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}";

#[tokio::test]
async fn blackhole_reset() {
    let (addr, _stop) = start_blackhole(Mode::Reset).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(RAW_REQUEST).await;
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap();
    match r {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
}

#[tokio::test]
async fn blackhole_close() {
    let (addr, _stop) = start_blackhole(Mode::Close).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(RAW_REQUEST).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "clean close without a byte");
}

#[tokio::test]
async fn blackhole_hang() {
    let (addr, _stop) = start_blackhole(Mode::Hang).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(RAW_REQUEST).await.unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
    assert!(r.is_err(), "hang mode answered: {r:?}");
}

fn traffic_args(url: String) -> TrafficArgs {
    TrafficArgs {
        url,
        paths: vec!["/v2/models/a/infer".into(), "/v2/models/b/infer".into()],
        users: 5,
        user_header: "x-user-id".into(),
        rps: 400.0,
        duration: 10.0,
        requests: 40,
        concurrency: 4,
        variant_header: "x-served-by".into(),
        interval: 0.0,
        timeout_ms: 2_000,
        headers: vec!["x-demo: yes".into()],
        json: true,
        clear: false,
    }
}

#[tokio::test]
async fn traffic_generator_tallies() {
    let server = start_model("canary", Faults::default()).await;
    let summary = traffic::run(
        traffic_args(format!("http://{}", server.addr)),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(summary["sent"], 40);
    assert_eq!(summary["completed"], 40);
    assert_eq!(summary["ok"], 40);
    assert_eq!(summary["errors"], 0);
    for path in ["/v2/models/a/infer", "/v2/models/b/infer"] {
        let p = &summary["paths"][path];
        assert_eq!(p["requests"], 20, "{summary}");
        assert_eq!(p["variants"]["canary"]["count"], 20);
        assert_eq!(p["variants"]["canary"]["pct"], 100.0);
        assert_eq!(p["variants"]["canary"]["answered_by"]["canary"], 20);
    }
    stop(server).await;
}

#[tokio::test]
async fn traffic_generator_counts_errors() {
    let server = start_model(
        "stable",
        Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    let summary = traffic::run(
        traffic_args(format!("http://{}", server.addr)),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(summary["errors"], 40);
    assert_eq!(summary["transport_errors"], 0);
    stop(server).await;

    let (addr, _stop) = start_blackhole(Mode::Reset).await;
    let mut args = traffic_args(format!("http://{addr}"));
    args.requests = 10;
    let summary = traffic::run(args, std::future::pending()).await.unwrap();
    assert_eq!(summary["errors"], 10);
    assert_eq!(summary["transport_errors"], 10);
}

/// The built binary prints its bound address, serves, and exits 0 on SIGTERM.
#[test]
fn binary_starts_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollout-demo"))
        .args(["model", "--listen", "127.0.0.1:0", "--version", "shadow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_ne!(addr.port(), 0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, _, v) = rt.block_on(request(
        &client(),
        "POST",
        format!("http://{addr}/v2/models/fraud/infer"),
        "",
    ));
    assert_eq!(status, 200);
    assert_eq!(v["model_version"], "shadow");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("binary did not exit on SIGTERM");
}
