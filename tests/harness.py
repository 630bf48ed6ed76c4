"""Test harness: real Envoy running the built .wasm, demo model servers, rollout-control,
Prometheus, all on 127.0.0.1 with free ports, every process stopped by PID when the test
ends."""

from __future__ import annotations

import copy
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
from urllib.parse import quote
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
ENVOY = str(VENV / "bin" / "envoy")
WASM = ROOT / "target/wasm32-wasip1/release/model_rollout.wasm"
DEMO = ROOT / "target/native/rollout-demo"
DEMO_CONFIG = ROOT / "envoy/demo.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} while waiting for {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready: {last}")


class Processes:
    """Every process a test starts; `stop_all` kills them by PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.tmp = tempfile.TemporaryDirectory(prefix="model-rollout-test-")

    def start(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(Path(self.tmp.name) / f"{name}-{len(self.procs)}.log", "wb")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                             start_new_session=True)
        p.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            try:
                self.stop(p)
            except Exception:  # noqa: BLE001 - best effort, keep stopping the rest
                pass
        self.procs.clear()
        self.tmp.cleanup()


class Model:
    def __init__(self, procs: Processes, version: str, *extra: str) -> None:
        self.version = version
        self.port = free_port()
        self.proc = procs.start(
            [str(DEMO), "model", "--listen", f"127.0.0.1:{self.port}", "--version", version,
             "--echo-headers", *extra], f"model-{version}")
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/v2/health/ready", proc=self.proc)

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url + "/admin/stats", timeout=5) as r:
            return json.load(r)


def plugin_config(doc: dict) -> dict:
    """The model-rollout plugin configuration of the first wasm filter in `doc`."""
    for f in wasm_filters(doc):
        return json.loads(f["typed_config"]["config"]["configuration"]["value"])
    raise KeyError("no model-rollout filter")


def wasm_filters(doc: dict):
    for listener in doc["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for nf in chain["filters"]:
                for hf in nf["typed_config"].get("http_filters", []):
                    if hf["typed_config"]["@type"].endswith("wasm.v3.Wasm"):
                        yield hf


def demo_with_plugin(plugin_json: str) -> dict:
    """envoy/demo.yaml with the built .wasm and `plugin_json`, verbatim, as the filter's
    configuration (for `validate`: does the filter accept this configuration?)."""
    doc = yaml.safe_load(DEMO_CONFIG.read_text())
    for f in wasm_filters(doc):
        cfg = f["typed_config"]["config"]
        cfg["configuration"]["value"] = plugin_json
        cfg["vm_config"]["code"]["local"]["filename"] = str(WASM)
    return doc


class EnvoyConfig:
    """The shipped envoy/demo.yaml with ports substituted and, optionally, the
    plugin configuration edited."""

    def __init__(self, path: Path = DEMO_CONFIG) -> None:
        self.doc = yaml.safe_load(path.read_text())
        self.admin_port = free_port()
        self.listener_ports = {}
        self.doc["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        for listener in self.doc["static_resources"]["listeners"]:
            port = free_port()
            listener["address"]["socket_address"]["port_value"] = port
            self.listener_ports[listener["name"]] = port
        for f in wasm_filters(self.doc):
            f["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(WASM)
        # Nothing answers on the sidecar's port unless a test starts one there.
        self.control_port = free_port()
        self.upstreams({"rollout_control": self.control_port})

    def upstreams(self, ports: dict[str, int]) -> "EnvoyConfig":
        for c in self.doc["static_resources"]["clusters"]:
            if c["name"] in ports:
                ep = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ep["address"]["socket_address"]["port_value"] = ports[c["name"]]
        return self

    def plugin(self) -> dict:
        return plugin_config(self.doc)

    def set_plugin(self, cfg: dict) -> "EnvoyConfig":
        text = json.dumps(cfg)
        for f in wasm_filters(self.doc):
            f["typed_config"]["config"]["configuration"]["value"] = text
        return self

    def edit_plugin(self, fn) -> "EnvoyConfig":
        cfg = copy.deepcopy(self.plugin())
        fn(cfg)
        return self.set_plugin(cfg)

    def without_native_echo(self) -> "EnvoyConfig":
        """Removes Envoy's own echo of the correlation id and the variant (the shipped
        configs let Envoy echo both; the filter's `echo` does it otherwise)."""
        for listener in self.doc["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for nf in chain["filters"]:
                    hcm = nf["typed_config"]
                    hcm.pop("always_set_request_id_in_response", None)
                    if isinstance(hcm.get("route_config"), dict):
                        hcm["route_config"].pop("response_headers_to_add", None)
        return self

    def write(self, directory: str) -> Path:
        path = Path(directory) / f"envoy-{self.admin_port}.yaml"
        path.write_text(yaml.safe_dump(self.doc, sort_keys=False))
        return path


class Envoy:
    def __init__(self, procs: Processes, config: EnvoyConfig, concurrency: int = 1) -> None:
        self.procs = procs
        self.config = config
        self.path = config.write(procs.tmp.name)
        self.concurrency = concurrency
        self.start()

    def start(self) -> None:
        self.proc = self.procs.start(
            [ENVOY, "-c", str(self.path), "--concurrency", str(self.concurrency),
             "--disable-hot-restart", "-l", "warning"], "envoy")
        wait_http(self.admin + "/ready", proc=self.proc)

    def restart(self) -> None:
        self.procs.stop(self.proc)
        self.start()

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.config.admin_port}"

    def url(self, listener: str = "public") -> str:
        return f"http://127.0.0.1:{self.config.listener_ports[listener]}"

    def port(self, listener: str = "public") -> int:
        return self.config.listener_ports[listener]

    def prometheus(self) -> str:
        with urllib.request.urlopen(self.admin + "/stats/prometheus", timeout=5) as r:
            return r.read().decode()

    def log(self) -> str:
        return Path(self.proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def validate(path: Path | str) -> subprocess.CompletedProcess:
    return subprocess.run([ENVOY, "--mode", "validate", "-c", str(path), "-l", "critical"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ HTTP load

class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


INFER_BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                     "data": [0.5, 1.5, 2.5]}]}).encode()


def send_all(port: int, requests: list[tuple[str, dict[str, str]]], threads: int = 8,
             body: bytes = INFER_BODY, method: str = "POST") -> list[Response]:
    """Sends (path, headers) requests over keep-alive connections; results in order."""
    results: list[Response | None] = [None] * len(requests)
    local = threading.local()

    def conn() -> http.client.HTTPConnection:
        c = getattr(local, "c", None)
        if c is None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            local.c = c
        return c

    def one(i: int) -> None:
        path, headers = requests[i]
        for attempt in range(3):
            try:
                c = conn()
                c.request(method, path, body=body if method == "POST" else None,
                          headers={"content-type": "application/json", **headers})
                r = c.getresponse()
                data = r.read()
                results[i] = Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
                return
            except (http.client.HTTPException, ConnectionError, OSError):
                local.c = None
                if attempt == 2:
                    raise

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(len(requests))))
    return [r for r in results if r is not None]


def expected_bucket(salt: str, key: str) -> int:
    """The README's formula, computed with an independent XXH64 implementation."""
    return xxhash.xxh64_intdigest((salt + ":" + key).encode()) % 10000


def metric_samples(text: str) -> dict[tuple, float]:
    """Prometheus text -> {(name, frozenset(labels)): value}, via prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(fn, timeout: float = 10.0, interval: float = 0.2):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v or time.time() > deadline:
            return v
        time.sleep(interval)


os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


# ------------------------------------------------------------------ control sidecar

CONTROL = ROOT / "target/native/rollout-control"


class Sidecar:
    """rollout-control serve on a fixed port (so it can be restarted in place)."""

    def __init__(self, procs: Processes, plan: dict | None = None, port: int | None = None,
                 data: str | None = None, token: str | None = None, extra: list[str] | None = None,
                 tokens: dict[str, str] | None = None) -> None:
        """`token`: the operator's credential (`--token-file`); `tokens`: role -> token for
        `--<role>-token-file` (operator, proxy, feedback, read)."""
        self.procs = procs
        self.port = port or free_port()
        self.data = data or tempfile.mkdtemp(prefix="control-", dir=procs.tmp.name)
        self.token = token
        self.tokens = dict(tokens or {})
        if token is not None:
            self.tokens.setdefault("operator", token)
        self.args = [str(CONTROL), "serve", "--listen", f"127.0.0.1:{self.port}", "--data", self.data]
        if plan is not None:
            path = Path(self.data) / "initial-plan.json"
            path.write_text(json.dumps(plan))
            self.args += ["--initial-plan", str(path)]
        if token is not None:
            tf = Path(self.data) / "token"
            tf.write_text(token + "\n")
            self.args += ["--token-file", str(tf)]
        for role, t in (tokens or {}).items():
            tf = Path(self.data) / f"{role}-token"
            tf.write_text(t + "\n")
            self.args += [f"--{role}-token-file", str(tf)]
        self.args += extra or []
        self.start()

    def start(self) -> None:
        self.proc = self.procs.start(self.args, "control")
        wait_http(self.url + "/ready", proc=self.proc)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body=None, headers: dict | None = None,
             auth: bool = True, role: str = "operator") -> tuple[int, dict, dict | list | None]:
        """`auth`: send the credential of `role` (when the sidecar has one)."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        h = {"content-type": "application/json", **(headers or {})}
        if auth and self.tokens.get(role):
            h["authorization"] = f"Bearer {self.tokens[role]}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return r.status, dict(r.headers), (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = {"raw": raw.decode(errors="replace")}
            return e.code, dict(e.headers), parsed

    def plan(self) -> dict:
        status, _, body = self.call("GET", "/v1/plan")
        assert status == 200, (status, body)
        return body  # type: ignore[return-value]

    def weights(self, rollout: str, weights: dict, reason: str = "test") -> int:
        status, _, body = self.call("POST", f"/v1/rollouts/{rollout}/weights?reason={quote(reason)}",
                                    {"weights": weights})
        assert status == 200, (status, body)
        return body["version"]  # type: ignore[index]

    def op(self, rollout: str, op: str, body=None, reason: str = "test") -> int:
        status, _, resp = self.call("POST", f"/v1/rollouts/{rollout}/{op}?reason={quote(reason)}", body or {})
        assert status == 200, (status, resp)
        return resp["version"]  # type: ignore[index]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(CONTROL), *args], capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"rollout-control {' '.join(args)} -> {r.returncode}: {r.stdout}{r.stderr}")
    return r


class Load:
    """Steady background load: `threads` keep-alive connections sending infer
    requests for users round robin until `stop()` (or `max_seconds`, a hard bound).
    Records (monotonic time, status, variant, model_version, user) per request."""

    def __init__(self, port: int, users: list[str], path: str = "/v2/models/fraud/infer",
                 threads: int = 4, max_seconds: float = 120.0, pause: float = 0.0,
                 vary_body: bool = False, body_of=None) -> None:
        """`vary_body`: each request's inputs differ (non-negative); `body_of(i)`: the
        body of the i-th request, for a test that needs a given spread of scores."""
        self.port, self.users, self.path, self.pause = port, users, path, pause
        self.vary_body = vary_body
        self.body_of = body_of
        self.results: list[tuple[float, int, str, str, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + max_seconds
        self._threads = [threading.Thread(target=self._run, args=(i, threads), daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, offset: int, stride: int) -> None:
        conn = None
        i = offset
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            user = self.users[i % len(self.users)]
            i += stride
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                body = self.body_of(i) if self.body_of else INFER_BODY if not self.vary_body else json.dumps(
                    {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [i % 997, i % 991]}]}).encode()
                conn.request("POST", self.path, body=body,
                             headers={"content-type": "application/json", "x-user-id": user})
                r = conn.getresponse()
                body = r.read()
                try:
                    version = json.loads(body).get("model_version", "")
                except ValueError:
                    version = ""
                row = (time.monotonic(), r.status, r.getheader("x-model-variant") or "", version, user)
            except (http.client.HTTPException, OSError) as e:
                conn = None
                with self._lock:
                    self.errors.append(repr(e))
                continue
            with self._lock:
                self.results.append(row)
            if self.pause:
                time.sleep(self.pause)

    def snapshot(self) -> list[tuple[float, int, str, str, str]]:
        with self._lock:
            return list(self.results)

    def stop(self) -> list[tuple[float, int, str, str, str]]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)
        return self.snapshot()


# ------------------------------------------------------------------ Prometheus

PROMETHEUS = Path("/usr/bin/prometheus")  # Debian's package (`make prom-deps`)


class Prometheus:
    """A real Prometheus scraping the given Envoy admin endpoints' /stats/prometheus (and
    the `models`' /metrics, when given) every `interval`, on a free 127.0.0.1 port, its storage in the test's temporary directory,
    nothing remote (no remote read/write, no alerting). Stopped by PID with the other
    processes of `procs`."""

    def __init__(self, procs: Processes, targets: list[str], interval: str = "1s",
                 models: list[str] | None = None) -> None:
        if not PROMETHEUS.exists():
            raise RuntimeError(f"{PROMETHEUS} missing: `make prom-deps` installs Debian's prometheus")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="prometheus-", dir=procs.tmp.name))
        self.targets = [t.removeprefix("http://").rstrip("/") for t in targets]
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "scrape_configs": [{"job_name": "envoy", "metrics_path": "/stats/prometheus",
                                "static_configs": [{"targets": self.targets}]}],
        }
        if models:  # demo model servers' own /metrics (business counters)
            config["scrape_configs"].append({
                "job_name": "models", "metrics_path": "/metrics",
                "static_configs": [{"targets": [t.removeprefix("http://").rstrip("/") for t in models]}]})
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.procs = procs
        self.start()

    def start(self) -> None:
        """Starts (again: same port, same storage) and waits until it is ready."""
        self.proc = self.procs.start([str(PROMETHEUS), f"--config.file={self.config}",
                                      f"--storage.tsdb.path={self.dir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}",
                                      "--storage.tsdb.retention.time=1h", "--log.level=warn"], "prometheus")
        wait_http(self.url + "/-/ready", timeout=30, proc=self.proc)

    def stop(self) -> None:
        """Stops it by PID (SIGTERM, then SIGKILL after 5 s)."""
        self.procs.stop(self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        """Instant query (GET /api/v1/query): the result vector, [{"metric": {...}, "value": [t, "v"]}]."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        from urllib.parse import urlencode
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urlencode(params)}", timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise AssertionError(f"query {promql!r}: {body}")
        if body["data"]["resultType"] != "vector":
            raise AssertionError(f"query {promql!r}: {body['data']['resultType']}, not a vector")
        return body["data"]["result"]

    def values(self, promql: str, by: str, at: float | None = None) -> dict[str, float]:
        """{value of label `by`: sample value} of a query's result vector."""
        return {s["metric"].get(by, ""): float(s["value"][1]) for s in self.query(promql, at)}

    def scraped_all(self) -> bool:
        """Every target scraped at least once and up."""
        up = {s["metric"].get("instance"): s["value"][1] for s in self.query('up{job="envoy"}')}
        return set(up) == set(self.targets) and all(v == "1" for v in up.values())
