//! The CLI's HTTP client for a running sidecar (blocking, plain HTTP, no proxy).

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;

use crate::api::change::AUTHOR_HEADER;
use crate::api::error::ErrorBody;
use crate::util::query::encode_query_value;

/// Makes the client of a command, with the author of its change (`None`: the default
/// `cli:$USER`); commands call it only once they need the sidecar.
pub type Connect<'a> = &'a dyn Fn(Option<String>) -> anyhow::Result<Client>;

/// Largest answer the CLI reads: above the largest shadow report a sidecar serves
/// (`--max-report-bytes`, at most 256 MiB, plus the summary) and every other
/// answer, which are pages of at most 1,000 entries.
pub const MAX_ANSWER_BYTES: u64 = 512 * 1024 * 1024;

pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
    author: String,
    timeout: Duration,
}

/// A successful answer.
pub struct Reply {
    pub body: String,
    /// `X-Plan-Version`, when the server sent it.
    pub version: Option<u64>,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_str(&self.body).context("the server's answer is not the expected JSON")
    }
}

impl Client {
    /// `timeout`: for each call as a whole (connect, send, the answer read to its end).
    pub fn new(
        base: &str,
        token: Option<String>,
        author: String,
        timeout: Duration,
    ) -> anyhow::Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            bail!("--server must be an http:// URL (the sidecar serves plain HTTP), got {base:?}");
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Ok(Client {
            agent,
            base,
            token,
            author,
            timeout,
        })
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.call("GET", path, None, None, None)
    }

    /// A change: `body` as JSON (or none), the reason as `?reason=`.
    pub fn write(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        reason: Option<&str>,
    ) -> anyhow::Result<Reply> {
        self.call(method, path, body, reason, None)
    }

    /// A change that applies only if the latest version is `expect` (`If-Match`).
    pub fn write_expecting(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        reason: Option<&str>,
        expect: Option<u64>,
    ) -> anyhow::Result<Reply> {
        self.call(method, path, body, reason, expect)
    }

    /// A transport error, naming the flag that sets the limit when it is the timeout.
    fn describe(&self, e: ureq::Error) -> String {
        match e {
            ureq::Error::Timeout(_) => format!(
                "no complete answer within {} s (--timeout, env ROLLOUT_CONTROL_TIMEOUT)",
                self.timeout.as_secs()
            ),
            e => e.to_string(),
        }
    }

    /// Every call, reads included, carries `--token-file` as a bearer token.
    fn authorized<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        reason: Option<&str>,
        expect: Option<u64>,
    ) -> anyhow::Result<Reply> {
        let mut url = format!("{}{path}", self.base);
        if let Some(r) = reason {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("reason=");
            url.push_str(&encode_query_value(r));
        }
        let result = match method {
            "GET" => self.authorized(self.agent.get(&url)).call(),
            "PUT" | "POST" => {
                let req = if method == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                let mut req = self
                    .authorized(req)
                    .header(AUTHOR_HEADER, self.author.as_str());
                if let Some(v) = expect {
                    req = req.header("if-match", rollout_core::wire::etag(v));
                }
                match body {
                    Some(b) => req.header("content-type", "application/json").send(&b[..]),
                    None => req.send_empty(),
                }
            }
            other => bail!("unsupported method {other}"),
        };
        let mut resp = result.map_err(|e| anyhow!("{method} {url}: {}", self.describe(e)))?;
        let status = resp.status();
        let version = resp
            .headers()
            .get("x-plan-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| anyhow!("{method} {url}: reading the answer: {}", self.describe(e)))?;
        if status.is_success() {
            return Ok(Reply {
                body: text,
                version,
            });
        }
        let detail = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(ErrorBody { error, field }) if field.is_empty() => error,
            Ok(ErrorBody { error, field }) => format!("{field}: {error}"),
            Err(_) => text.trim().chars().take(300).collect(),
        };
        bail!("{method} {path}: {status}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http() {
        let t = Duration::from_secs(30);
        assert!(Client::new("https://x", None, "me".into(), t).is_err());
        assert!(Client::new("http://127.0.0.1:9090/", None, "me".into(), t).is_ok());
    }
}
