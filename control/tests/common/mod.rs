//! Shared by the integration tests that run the real `rollout-control` binary.
#![allow(dead_code)]
// Test helpers: failing loudly is their job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use rollout_control::testutil::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_rollout-control");

pub const PLAN: &str = r#"{"version":1,"rollouts":[
  {"name":"fraud","match":{"path_prefix":"/v2/models/fraud/"},"salt":"fraud-v2",
   "variants":[{"name":"stable","weight":90},{"name":"canary","weight":10}]}]}"#;

/// A `rollout-control serve` process, killed (SIGKILL, by PID) when dropped, so a
/// failing test never leaves it behind.
pub struct ServerProc {
    pub child: Child,
    pub url: String,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl ServerProc {
    /// Starts `serve --listen 127.0.0.1:0 --data DIR [extra...]` and waits for the
    /// "listening on" line that names the port the kernel picked.
    pub fn start(data: &Path, extra: &[&str]) -> ServerProc {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rollout-control");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.split("listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
                keep.lock().unwrap().push(line);
            }
        });
        let mut proc = ServerProc {
            child,
            url: String::new(),
            stderr: lines,
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(url) => proc.url = url,
            Err(_) => panic!(
                "rollout-control did not start: {:?}; exit {:?}",
                proc.stderr.lock().unwrap(),
                proc.child.try_wait()
            ),
        }
        proc
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL by PID and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM by PID; waits up to 10 s for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        for _ in 0..200 {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("rollout-control did not exit on SIGTERM");
    }

    pub fn log(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// (status, body as JSON or Null, x-plan-version)
pub fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> Result<(u16, serde_json::Value, Option<u64>), ureq::Error> {
    let mut resp = match method {
        "GET" => agent.get(url).call()?,
        "PUT" => agent
            .put(url)
            .header("content-type", "application/json")
            .send(body.unwrap_or(""))?,
        "POST" => match body {
            Some(b) => agent
                .post(url)
                .header("content-type", "application/json")
                .send(b)?,
            None => agent.post(url).send_empty()?,
        },
        m => panic!("method {m}"),
    };
    let status = resp.status().as_u16();
    let version = resp
        .headers()
        .get("x-plan-version")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let text = resp.body_mut().read_to_string()?;
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    Ok((status, json, version))
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `VmHWM` (peak resident set) of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// Bytes in MiB, for printed figures.
pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}
