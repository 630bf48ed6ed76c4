#!/usr/bin/env python3
"""Benchmark: what the model-rollout filter costs in a real Envoy, to the microsecond.

Every setup of a shape runs at the same time as its own Envoy (`--concurrency 1`,
pinned to core 0 with taskset); wrk (`-t1 -c32`, pinned to core 1) drives them in
turn, in short slices (3 s), over many cycles, in a rotating order. Each cycle gives
each setup's throughput ratio to `none` and the Envoy CPU it adds per request; the
tables print the medians over the cycles, so slow drifts of the machine's load hit
every setup alike.

  shape direct    Envoy answers itself (direct_response): only the proxy works
    none          router only
    native        Envoy's own 90/10 split (runtime_fraction)
    noop          a wasm filter that does nothing (bench/noop-filter)
    floor         a wasm filter doing our header work with constants (bench/floor-filter)
    ours          the model-rollout filter (routing part of envoy/demo.yaml)
  shape upstream  three demo model servers (stable, canary, shadow) on core 1
    none          router only
    mirror        Envoy's request_mirror_policies, 100 % to model_shadow
    ours          the model-rollout filter, routing only
    ours-shadow   the filter with a 100 % shadow to model_shadow, compared

Envoy CPU per request is the on-CPU time of the Envoy process over a slice (its
threads' /proc/PID/task/*/schedstat: utime + stime at ns resolution), divided by the
requests wrk completed in it. Memory: each Envoy's RSS after
warm-up and at the end; `none` and `ours` (direct) are driven to --memory-requests
(10^6) requests first.

Configs: envoy/bench/<setup>-<shape>.yaml (bench/gen_configs.py). This script
rewrites their ports to free ones and the .wasm paths to absolute ones.

Figures are printed, never judged by the exit status: it exits non-zero only when
something could not run (1), or when interrupted (130). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "envoy" / "bench"
DEMO_CONFIG = ROOT / "envoy" / "demo.yaml"

SHAPES = {
    "direct": ("none", "native", "noop", "floor", "ours"),
    "upstream": ("none", "mirror", "ours", "ours-shadow"),
}
ALL_SETUPS = ("none", "native", "noop", "floor", "ours", "mirror", "ours-shadow")
WASM_FILES = {
    "noop": ROOT / "target/wasm32-wasip1/release/noop_filter.wasm",
    "floor": ROOT / "target/wasm32-wasip1/release/floor_filter.wasm",
    "ours": ROOT / "target/wasm32-wasip1/release/model_rollout.wasm",
    "ours-shadow": ROOT / "target/wasm32-wasip1/release/model_rollout.wasm",
}
UPSTREAMS = ("stable", "canary", "shadow")
DEFAULT_UPSTREAM_CMD = (
    "{root}/target/native/rollout-demo model --listen 127.0.0.1:{port} --version {version}"
)

INFER_PATH = "/v2/models/fraud/infer"
INFER_BODY = (
    '{"id":"bench","inputs":[{"name":"x","shape":[1,4],"datatype":"FP32",'
    '"data":[0.1,0.2,0.3,0.4]}]}'
)

# Targets (issue 13): printed as MET / MISSED, never the exit status.
TARGET_RATIO = 0.93  # ours throughput / none, direct shape
TARGET_OVER_FLOOR_US = 1.5  # ours - floor, Envoy CPU us per request, direct shape
TARGET_SHADOW_VS_MIRROR = 1.10  # (ours-shadow - ours) / (mirror - none), CPU added
TARGET_RSS_MB = 30.0  # ours RSS - none RSS
TARGET_RSS_FLAT_MB = 5.0  # ours RSS growth from warm-up to the end

# `--breakdown`: floor-filter variants, one kind of host call each, measured against
# `noop` (what each host call our filter makes costs). The operations are those of
# bench/floor-filter; the seven single reads are the headers model-rollout looks up
# for envoy/demo.yaml's configuration.
BREAKDOWN = (
    ("map", "request: map"),
    ("gets7", "request: get::path get:x-user-id get:cookie get:x-request-id "
              "get:x-model-override get:x-region get:x-tester"),
    ("gets2", "request: get::path get:x-user-id"),
    ("set2", "request: set:x-model-variant set:x-request-id"),
    ("status", "response: status"),
    ("echo2", "response: echo:x-request-id echo:x-model-variant"),
    ("clock2", "request: clock; response: clock"),
    ("hist", "response: hist"),
    ("counter", "response: counter"),
)

# A slice during which other processes used more CPU than this (cores) is flagged.
CONTENDED_CORES = 0.15

# wrk script: a pool of pre-formatted requests, one per simulated user, cycled so
# that every request carries a different x-user-id than its neighbours (the filter
# really hashes many users) while wrk spends no Lua time formatting per request.
# No x-request-id: like most clients, so the filter mints the correlation id.
WRK_LUA = """\
-- written by bench/run.py
local body = '%(body)s'
local reqs = {}
local n = 0
local i = 0

function init(args)
  local users = tonumber(args[1]) or 10000
  local seed = args[2] or "0"
  for k = 1, users do
    reqs[k] = wrk.format("POST", "%(path)s", {
      ["Host"] = "models.bench",
      ["Content-Type"] = "application/json",
      ["x-user-id"] = "user-" .. seed .. "-" .. k,
    }, body)
  end
  n = users
end

function request()
  i = i %% n + 1
  return reqs[i]
end
""" % {"body": INFER_BODY, "path": INFER_PATH}


class BenchError(Exception):
    """Something could not run: reported, and the process exits 1."""


# --------------------------------------------------------------------------- utils


def log(msg: str = "") -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        stat = f.read()
    # Fields after the parenthesised command name start at field 3 (state);
    # utime and stime are fields 14 and 15.
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def cpu_ns(pid: int) -> int:
    """On-CPU time of a process, all threads, in ns: the sum of the threads'
    /proc/PID/task/TID/schedstat run times (the same time as utime + stime in
    /proc/PID/stat, at ns instead of 10 ms resolution); utime + stime without
    schedstat."""
    total, seen = 0, False
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                    total += int(f.read().split()[0])
                    seen = True
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    if seen:
        return total
    return cpu_ticks(pid) * 1_000_000_000 // CLK_TCK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def system_ticks() -> int:
    """Task ticks (user + nice + system) of the whole machine."""
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2]


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def http(
    url: str, *, body: str | None = None, headers: dict[str, str] | None = None, timeout: float = 5
) -> tuple[int, dict[str, str], bytes]:
    data = body.encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def stop_process(proc: subprocess.Popen[bytes] | None, what: str) -> None:
    """Stops one child we started, by its PID: SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log(f"  {what} (pid {proc.pid}) ignored SIGTERM; killing it")
        proc.kill()
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


def wait_until(check: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if check():
                return True
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    return False


def pinned(core: int | None, argv: list[str]) -> list[str]:
    """argv run on one CPU core (taskset), or as is without a core."""
    if core is None:
        return argv
    return ["taskset", "-c", str(core), *argv]


# ------------------------------------------------------------------------ configs


def load_yaml(path: Path) -> Any:
    try:
        import yaml  # noqa: PLC0415 (only needed here; a clear message if missing)
    except ImportError as e:
        raise BenchError("PyYAML is missing: run inside the project venv (.venv)") from e
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def dump_yaml(doc: Any, path: Path) -> None:
    import yaml  # noqa: PLC0415

    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f, sort_keys=False)


def walk(node: Any, fn: Callable[[dict[str, Any]], None]) -> None:
    if isinstance(node, dict):
        fn(node)
        for v in node.values():
            walk(v, fn)
    elif isinstance(node, list):
        for v in node:
            walk(v, fn)


def wasm_plugin_configs(doc: Any) -> list[Any]:
    """The JSON plugin configurations of every wasm filter in a config."""
    found: list[Any] = []

    def visit(d: dict[str, Any]) -> None:
        cfg = d.get("config")
        if d.get("@type", "").endswith("filters.http.wasm.v3.Wasm") and isinstance(cfg, dict):
            value = (cfg.get("configuration") or {}).get("value")
            if isinstance(value, str):
                found.append(json.loads(value))

    walk(doc, visit)
    return found


def rewrite_config(src: Path, dst: Path, *, admin: int, listen: int, upstreams: dict[str, int]) -> None:
    """Copies an envoy/bench config with our ports and absolute .wasm paths."""
    doc = load_yaml(src)
    doc["admin"]["address"]["socket_address"]["port_value"] = admin
    resources = doc["static_resources"]
    listeners = resources["listeners"]
    if len(listeners) != 1:
        raise BenchError(f"{src}: expected exactly one listener")
    listeners[0]["address"]["socket_address"]["port_value"] = listen
    for cluster in resources.get("clusters") or []:
        name = cluster["name"]
        if name not in upstreams:
            raise BenchError(f"{src}: unknown cluster {name}")
        for group in cluster["load_assignment"]["endpoints"]:
            for ep in group["lb_endpoints"]:
                ep["endpoint"]["address"]["socket_address"]["port_value"] = upstreams[name]

    def absolute_wasm(d: dict[str, Any]) -> None:
        fn = d.get("filename")
        if isinstance(fn, str) and fn.endswith(".wasm") and not os.path.isabs(fn):
            d["filename"] = str(ROOT / fn)

    walk(doc, absolute_wasm)
    dump_yaml(doc, dst)


# Parts of envoy/demo.yaml's plugin configuration left out of "ours": "control"
# polls the sidecar off the request path (with no sidecar it would measure
# failures); "shadow" and "output" are separate workloads ("ours-shadow" has the
# shadow). "echo" may differ: the bench follows the shipped echo settings.
NOT_BENCHED = frozenset({"control"})
NOT_BENCHED_PER_ROLLOUT = frozenset({"shadow", "output"})


def benched_part(cfg: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A plugin configuration without what the benchmark leaves out, and what that was."""
    left_out = sorted(k for k in cfg if k in NOT_BENCHED)
    out = {k: v for k, v in cfg.items() if k not in NOT_BENCHED}
    plan = out.get("plan")
    if isinstance(plan, dict) and isinstance(plan.get("rollouts"), list):
        rollouts = []
        for r in plan["rollouts"]:
            if isinstance(r, dict):
                left_out += [f"{r.get('name')}.{k}" for k in sorted(r) if k in NOT_BENCHED_PER_ROLLOUT]
                r = {k: v for k, v in r.items() if k not in NOT_BENCHED_PER_ROLLOUT}
            rollouts.append(r)
        out["plan"] = {**plan, "rollouts": rollouts}
    return out, left_out


def check_plugin_config_matches_demo() -> None:
    """Warns when the benchmarked plugin configuration drifts from the demo's."""
    try:
        demo = wasm_plugin_configs(load_yaml(DEMO_CONFIG))
        ours = wasm_plugin_configs(load_yaml(CONFIG_DIR / "ours-direct.yaml"))
    except (OSError, ValueError, KeyError) as e:
        log(f"NOTE: could not compare the plugin configuration with {DEMO_CONFIG}: {e}")
        return
    if not demo or not ours:
        log(f"NOTE: no wasm plugin configuration found to compare with {DEMO_CONFIG}")
        return
    want, left_out = benched_part(demo[0])
    have, _ = benched_part(ours[0])
    if left_out:
        log(f"not benchmarked from envoy/demo.yaml's plugin configuration: {', '.join(left_out)}")
    if want != have:
        diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        log(
            f"NOTE: envoy/bench's plugin configuration differs from envoy/demo.yaml's (keys"
            f" {diff}); update bench/gen_configs.py and re-run it."
        )


# ------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_latency(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise BenchError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    def find(pattern: str) -> re.Match[str]:
        m = re.search(pattern, out, re.MULTILINE)
        if not m:
            raise BenchError(f"cannot parse wrk output (no {pattern!r}):\n{out}")
        return m

    requests = int(find(r"^\s*(\d+) requests in ").group(1))
    rps = float(find(r"^Requests/sec:\s*([\d.]+)").group(1))
    p50 = parse_latency(find(r"^\s*50%\s+(\S+)").group(1))
    p99 = parse_latency(find(r"^\s*99%\s+(\S+)").group(1))
    errors = 0
    m2 = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    if m2:
        errors += int(m2.group(1))
    m3 = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m3:
        errors += sum(int(x) for x in m3.groups())
    return dict(requests=requests, rps=rps, p50_ms=p50, p99_ms=p99, errors=errors)


# ------------------------------------------------------------------------- runs


@dataclass
class Slice:
    cycle: int
    shape: str
    setup: str
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int
    envoy_cpu_us_per_req: float
    other_load_cores: float


@dataclass
class Envoy:
    setup: str
    shape: str
    proc: subprocess.Popen[bytes]
    admin_url: str
    url: str
    log: Path
    requests: int = 0
    rss_warm_mb: float | None = None
    rss_end_mb: float | None = None
    rss_end_requests: int = 0
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.lua = workdir / "infer.lua"
        self.lua.write_text(WRK_LUA)
        self.upstream_ports: dict[str, int] = {}
        self.upstream_procs: list[subprocess.Popen[bytes]] = []
        # Setups whose config is not envoy/bench/<setup>-<shape>.yaml.
        self.extra_configs: dict[str, Path] = {}
        self.envoys: list[Envoy] = []
        # Envoys of the shapes already run (stopped), for the memory figures.
        self.envoys_done: list[Envoy] = []
        self.slices: list[Slice] = []
        # The setups run per shape, in table order.
        self.order: dict[str, list[str]] = {}

    # ---- processes

    def start_upstreams(self) -> None:
        for version in UPSTREAMS:
            port = free_port()
            cmd = self.args.upstream_cmd.format(root=ROOT, port=port, version=version)
            argv = shlex.split(cmd)
            if not shutil.which(argv[0]):
                raise BenchError(
                    f"upstream server not found: {argv[0]}\n"
                    "  build it: cargo build --profile native -p rollout-demo (or pass --upstream-cmd)"
                )
            logf = self.workdir / f"upstream-{version}.log"
            with open(logf, "wb") as out:
                proc = subprocess.Popen(
                    pinned(self.args.load_core, argv), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
                )
            self.upstream_procs.append(proc)
            self.upstream_ports[f"model_{version}"] = port
            url = f"http://127.0.0.1:{port}{INFER_PATH}"

            def ready(url: str = url) -> bool:
                hdrs = {"Content-Type": "application/json"}
                return http(url, body=INFER_BODY, headers=hdrs, timeout=2)[0] == 200

            if not wait_until(ready, 20, proc):
                raise BenchError(f"upstream {version} did not answer (command: {cmd})\n{tail(logf)}")

    def start_envoy(self, shape: str, setup: str) -> Envoy:
        name = f"{setup}-{shape}"
        admin, listen = free_port(), free_port()
        cfg = self.workdir / f"{name}.yaml"
        ports = self.upstream_ports or {f"model_{v}": 1 for v in UPSTREAMS}
        src = self.extra_configs.get(setup, CONFIG_DIR / f"{name}.yaml")
        rewrite_config(src, cfg, admin=admin, listen=listen, upstreams=ports)
        logf = self.workdir / f"envoy-{name}.log"
        argv = [
            self.args.envoy, "-c", str(cfg), "--concurrency", "1",
            "--disable-hot-restart", "--log-level", "warning",
        ]
        with open(logf, "wb") as out:
            proc = subprocess.Popen(
                pinned(self.args.envoy_core, argv), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )
        e = Envoy(setup, shape, proc, f"http://127.0.0.1:{admin}",
                  f"http://127.0.0.1:{listen}{INFER_PATH}", logf)
        self.envoys.append(e)
        return e

    def wait_ready(self, e: Envoy) -> None:
        name = f"{e.setup}-{e.shape}"
        if not wait_until(lambda: http(f"{e.admin_url}/ready", timeout=1)[0] == 200, 90, e.proc):
            raise BenchError(f"Envoy ({name}) did not become ready\n{tail(e.log)}")
        status, headers, body = http(
            e.url, body=INFER_BODY,
            headers={"Content-Type": "application/json", "x-user-id": "smoke"},
        )
        e.requests += 1
        if status != 200:
            raise BenchError(f"Envoy ({name}) answered {status} to a smoke request: {body[:200]!r}\n{tail(e.log)}")
        # A failed-open filter would be measured as a no-op: the setups with a
        # filter that assigns a variant must show one.
        assigns = e.setup in ("floor", "ours", "ours-shadow") or (
            e.setup in self.extra_configs and not e.setup.startswith("floor-"))
        if assigns and "x-model-variant" not in headers:
            raise BenchError(f"Envoy ({name}): no x-model-variant in the response: the filter did not run\n{tail(e.log)}")
        if e.setup in ("ours", "ours-shadow") and "x-request-id" not in headers:
            raise BenchError(f"Envoy ({name}): no x-request-id echoed in the response\n{tail(e.log)}")

    def stop_all(self) -> None:
        for e in self.envoys:
            stop_process(e.proc, f"Envoy ({e.setup}-{e.shape})")
        for proc in self.upstream_procs:
            stop_process(proc, "upstream")
        self.envoys.clear()
        self.upstream_procs.clear()
        self.upstream_ports.clear()

    def stat(self, e: Envoy, name: str) -> int | None:
        try:
            status, _, body = http(f"{e.admin_url}/stats?filter=^{name}$", timeout=2)
        except OSError:
            return None
        if status != 200:
            return None
        m = re.search(rf"^{re.escape(name)}: (\d+)$", body.decode(errors="replace"), re.MULTILINE)
        return int(m.group(1)) if m else None

    def add_breakdown(self) -> list[str]:
        """Writes the floor-filter variants of --breakdown; returns their setups."""
        base = load_yaml(CONFIG_DIR / "floor-direct.yaml")
        names = []
        for name, ops in BREAKDOWN:
            doc = json.loads(json.dumps(base))

            def configure(d: dict[str, Any], ops: str = ops) -> None:
                cfg = d.get("config")
                if d.get("@type", "").endswith("filters.http.wasm.v3.Wasm") and isinstance(cfg, dict):
                    cfg["configuration"] = {
                        "@type": "type.googleapis.com/google.protobuf.StringValue", "value": ops,
                    }

            walk(doc, configure)
            path = self.workdir / f"floor-{name}.src.yaml"
            dump_yaml(doc, path)
            self.extra_configs[f"floor-{name}"] = path
            names.append(f"floor-{name}")
        return names

    # ---- wrk

    def wrk(self, e: Envoy, seconds: int, seed: str) -> dict[str, Any]:
        argv = [
            self.args.wrk, "-t1", f"-c{self.args.connections}", f"-d{seconds}s", "--latency",
            "-s", str(self.lua), e.url, "--", str(self.args.users), seed,
        ]
        try:
            res = subprocess.run(
                pinned(self.args.load_core, argv), capture_output=True, text=True,
                timeout=seconds + 60, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"wrk did not finish: {' '.join(argv)}") from exc
        if res.returncode != 0:
            raise BenchError(f"wrk failed ({res.returncode}): {res.stderr.strip()}\n{res.stdout}")
        w = parse_wrk(res.stdout)
        e.requests += w["requests"]
        if e.proc.poll() is not None:
            raise BenchError(f"Envoy ({e.setup}-{e.shape}) exited during a slice\n{tail(e.log)}")
        return w

    def slice(self, cycle: int, e: Envoy) -> Slice:
        sys0, t0 = system_ticks(), cpu_ns(e.proc.pid)
        start = time.monotonic()
        w = self.wrk(e, self.args.slice, f"{cycle}{e.setup}")
        took = time.monotonic() - start
        t1, sys1 = cpu_ns(e.proc.pid), system_ticks()
        if w["requests"] == 0:
            raise BenchError(f"wrk completed no request against {e.setup}-{e.shape}")
        envoy_s = (t1 - t0) / 1e9
        # Other load: the machine's task time minus Envoy and about one core for
        # wrk (and the upstreams) on the load core; rough, it flags busy neighbours.
        other = max(0.0, (sys1 - sys0) / CLK_TCK - envoy_s - took) / took
        return Slice(
            cycle=cycle, shape=e.shape, setup=e.setup, rps=w["rps"], requests=w["requests"],
            p50_ms=w["p50_ms"], p99_ms=w["p99_ms"], errors=w["errors"],
            envoy_cpu_us_per_req=envoy_s * 1e6 / w["requests"], other_load_cores=other,
        )

    # ---- one shape

    def run_shape(self, shape: str, setups: list[str]) -> None:
        a = self.args
        log()
        log(f"== {shape}: {', '.join(setups)}; {a.cycles} cycles x {a.slice} s per setup "
            f"(+{a.warmup_cycles} warm-up); load average {loadavg()} ==")
        if shape == "upstream":
            self.start_upstreams()
        envoys = [self.start_envoy(shape, s) for s in setups]
        for e in envoys:
            self.wait_ready(e)
        for c in range(-a.warmup_cycles, a.cycles):
            shift = c % len(envoys)
            order = envoys[shift:] + envoys[:shift]
            line = []
            for e in order:
                s = self.slice(c, e)
                if c >= 0:
                    self.slices.append(s)
                line.append(f"{e.setup} {s.rps:.0f}/s {s.envoy_cpu_us_per_req:.1f}us")
            if c == -1 or (a.warmup_cycles == 0 and c == 0):
                for e in envoys:
                    e.rss_warm_mb = rss_mb(e.proc.pid)
            tag = "warm-up" if c < 0 else f"cycle {c + 1}/{a.cycles}"
            log(f"  {tag:14s} " + "  ".join(line))
        # Memory: `none` and `ours` (direct) driven to --memory-requests.
        for e in envoys:
            if shape == "direct" and e.setup in ("none", "ours") and a.memory_requests:
                self.drive_to(e, a.memory_requests)
            e.rss_end_mb = rss_mb(e.proc.pid)
            e.rss_end_requests = e.requests
        if shape == "upstream":
            for e in envoys:
                shadow = self.stat(e, "cluster.model_shadow.upstream_rq_total")
                if shadow is not None:
                    e.notes.append(f"model_shadow got {shadow} requests")
                if e.setup == "ours-shadow":
                    for k in ("sent", "compared", "agree"):
                        v = self.stat(e, f"wasmcustom.model_rollout.rollout.fraud.shadow_{k}_total")
                        if v is not None:
                            e.notes.append(f"shadow_{k}_total {v}")

    def drive_to(self, e: Envoy, requests: int) -> None:
        while e.requests < requests:
            rps = max(1000.0, statistics.median(
                s.rps for s in self.slices if s.setup == e.setup and s.shape == e.shape
            ) if any(s.setup == e.setup and s.shape == e.shape for s in self.slices) else 1000.0)
            seconds = max(1, min(60, round((requests - e.requests) / rps + 0.5)))
            self.wrk(e, seconds, f"mem{e.requests}")
        log(f"  {e.setup}: driven to {e.requests} requests for the memory figure")


# ----------------------------------------------------------------------- summary


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def summarize(bench: Bench, shape: str) -> dict[str, Any]:
    slices = [s for s in bench.slices if s.shape == shape]
    setups = [s for s in bench.order.get(shape, SHAPES[shape]) if any(x.setup == s for x in slices)]
    by = {(s.cycle, s.setup): s for s in slices}
    cycles = sorted({s.cycle for s in slices})
    rows: dict[str, Any] = {}
    for setup in setups:
        mine = [s for s in slices if s.setup == setup]
        ratios, added = [], []
        for c in cycles:
            base, me = by.get((c, "none")), by.get((c, setup))
            if base and me and base.rps:
                ratios.append(me.rps / base.rps)
                added.append(me.envoy_cpu_us_per_req - base.envoy_cpu_us_per_req)
        env = next((e for e in bench.envoys_done if e.setup == setup and e.shape == shape), None)
        rows[setup] = {
            "cycles": len(mine),
            "rps": statistics.median(s.rps for s in mine),
            "ratio": quartiles(ratios) if ratios else None,
            "cpu_us": statistics.median(s.envoy_cpu_us_per_req for s in mine),
            "added_us": quartiles(added) if added else None,
            "p50_ms": statistics.median(s.p50_ms for s in mine),
            "p99_ms": statistics.median(s.p99_ms for s in mine),
            "errors": sum(s.errors for s in mine),
            "contended": sum(s.other_load_cores > CONTENDED_CORES for s in mine),
            "rss_warm_mb": env.rss_warm_mb if env else None,
            "rss_end_mb": env.rss_end_mb if env else None,
            "rss_end_requests": env.rss_end_requests if env else None,
            "notes": env.notes if env else [],
        }

    def paired(a: str, b: str) -> tuple[float, float, float] | None:
        d = [by[(c, a)].envoy_cpu_us_per_req - by[(c, b)].envoy_cpu_us_per_req
             for c in cycles if (c, a) in by and (c, b) in by]
        return quartiles(d) if d else None

    extra = {f"{x} - {base}": paired(x, base) for x in setups
             for base in (("noop",) if x.startswith("floor-") else ("ours",) if x in bench.extra_configs else ())
             if base in setups}
    return {"rows": rows, "ours_minus_floor": paired("ours", "floor"),
            "shadow_path": paired("ours-shadow", "ours"), "mirror": paired("mirror", "none"),
            "paired": extra}


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def print_summary(shape: str, s: dict[str, Any], args: argparse.Namespace) -> list[str]:
    rows = s["rows"]
    log()
    log(f"== {shape}: Envoy --concurrency 1 on core {args.envoy_core}, wrk -t1 -c{args.connections}"
        f" on core {args.load_core}; median over {args.cycles} cycles of {args.slice} s "
        f"[quartiles]; load average now {loadavg()} ==")
    head = (f"{'setup':12s} {'RPS':>7s} {'ratio vs none':>20s} {'CPU us/req':>10s} "
            f"{'added us/req':>20s} {'p50 ms':>7s} {'p99 ms':>7s} {'RSS warm':>8s} "
            f"{'RSS end':>8s} {'requests':>9s} {'errors':>6s} {'contended':>9s}")
    log(head)
    log("-" * len(head))
    for setup, r in rows.items():
        ratio = r["ratio"]
        added = r["added_us"]
        ratio_s = "-" if ratio is None else f"{ratio[1]:.3f} [{ratio[0]:.3f},{ratio[2]:.3f}]"
        added_s = "-" if added is None else f"{added[1]:+.1f} [{added[0]:+.1f},{added[2]:+.1f}]"
        log(f"{setup:12s} {r['rps']:7.0f} {ratio_s:>20s} {r['cpu_us']:10.1f} {added_s:>20s} "
            f"{r['p50_ms']:7.3f} {r['p99_ms']:7.3f} {fmt(r['rss_warm_mb'], '7.1f')}M "
            f"{fmt(r['rss_end_mb'], '7.1f')}M {r['rss_end_requests'] or 0:9d} {r['errors']:6d} "
            f"{str(r['contended']) + '/' + str(r['cycles']):>9s}")
        if r["notes"]:
            log(f"{'':12s} {'; '.join(r['notes'])}")
    out: list[str] = []
    if shape == "direct":
        if "ours" in rows and rows["ours"]["ratio"]:
            v = rows["ours"]["ratio"][1]
            out.append(f"target: ours throughput >= {TARGET_RATIO} of none: {v:.3f} -> {verdict(v >= TARGET_RATIO)}")
        if s["ours_minus_floor"]:
            q = s["ours_minus_floor"]
            out.append(f"target: ours - floor <= {TARGET_OVER_FLOOR_US} us/req: {q[1]:+.2f} us "
                       f"[{q[0]:+.2f},{q[2]:+.2f}] -> {verdict(q[1] <= TARGET_OVER_FLOOR_US)}")
        if "ours" in rows and "none" in rows and rows["ours"]["rss_end_mb"] and rows["none"]["rss_end_mb"]:
            o, n = rows["ours"], rows["none"]
            extra = o["rss_end_mb"] - n["rss_end_mb"]
            out.append(f"target: ours RSS - none <= +{TARGET_RSS_MB:.0f} MB: {extra:+.1f} MB "
                       f"(at {o['rss_end_requests']} and {n['rss_end_requests']} requests) -> "
                       f"{verdict(extra <= TARGET_RSS_MB)}")
            if o["rss_warm_mb"]:
                growth = o["rss_end_mb"] - o["rss_warm_mb"]
                flat = growth <= TARGET_RSS_FLAT_MB and o["rss_end_requests"] >= args.memory_requests
                out.append(f"target: ours RSS flat from warm-up to {args.memory_requests} requests "
                           f"(growth <= {TARGET_RSS_FLAT_MB:.0f} MB): {growth:+.1f} MB at "
                           f"{o['rss_end_requests']} requests -> "
                           f"{verdict(flat) if args.memory_requests else 'n/a (--memory-requests 0)'}")
    if shape == "upstream" and s["shadow_path"] and s["mirror"]:
        sp, mi = s["shadow_path"][1], s["mirror"][1]
        factor = sp / mi if mi > 0 else float("inf")
        out.append(f"target: shadow path (ours-shadow - ours) <= {TARGET_SHADOW_VS_MIRROR} x mirror "
                   f"(mirror - none): {sp:+.1f} us vs {mi:+.1f} us = {factor:.2f} x -> "
                   f"{verdict(factor <= TARGET_SHADOW_VS_MIRROR)}")
    for label, q in s.get("paired", {}).items():
        if q:
            log(f"paired: {label:24s} {q[1]:+6.2f} us/req [{q[0]:+.2f},{q[2]:+.2f}]")
    for line in out:
        log(line)
    return out


# -------------------------------------------------------------------------- main


def csv_list(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)} (got {text!r})")
        return [x for x in allowed if x in items]

    return parse


def default_envoy() -> str:
    if os.environ.get("ENVOY"):
        return os.environ["ENVOY"]
    venv = ROOT / ".venv" / "bin" / "envoy"
    return str(venv) if venv.exists() else "envoy"


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 2 cycles of 1 s, no warm-up cycle, no 10^6-request memory run")
    ap.add_argument("--cycles", type=int, default=15, help="measured cycles (default 15)")
    ap.add_argument("--slice", type=int, default=3, help="seconds of wrk per setup per cycle (default 3)")
    ap.add_argument("--warmup-cycles", type=int, default=1, help="cycles run before measuring (default 1)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--users", type=int, default=10000, help="distinct x-user-id values (default 10000)")
    ap.add_argument("--memory-requests", type=int, default=1_000_000,
                    help="drive none and ours (direct) to this many requests before the final RSS "
                    "(default 10^6; 0: no extra requests)")
    ap.add_argument("--shapes", type=csv_list(tuple(SHAPES)), default=list(SHAPES),
                    help="comma list of direct,upstream (default both)")
    ap.add_argument("--setups", type=csv_list(ALL_SETUPS), default=None,
                    help="comma list of setups (default all; none is always included)")
    ap.add_argument("--envoy-core", type=int, default=0, help="CPU core for Envoy (default 0)")
    ap.add_argument("--load-core", type=int, default=1, help="CPU core for wrk and upstreams (default 1)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    ap.add_argument("--envoy", default=default_envoy(), help="Envoy binary")
    ap.add_argument("--wrk", default=os.environ.get("WRK", "wrk"), help="wrk binary")
    ap.add_argument("--upstream-cmd", default=os.environ.get("BENCH_UPSTREAM_CMD", DEFAULT_UPSTREAM_CMD),
                    help="command starting one upstream; {root}, {port}, {version} are substituted")
    ap.add_argument("--breakdown", action="store_true",
                    help="direct shape only: none, noop, and floor-filter variants doing one kind "
                    "of host call each (what each host call costs, paired with noop)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=CONFIG",
                    help="also run this Envoy config (a copy of envoy/bench/ours-direct.yaml, say, "
                    "with another .wasm or plugin configuration) in the direct shape, paired with "
                    "ours (repeatable)")
    ap.add_argument("--json", type=Path, help="also write every slice and the summary to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    args = ap.parse_args(argv)
    if args.quick:
        args.cycles, args.slice, args.warmup_cycles, args.memory_requests = 2, 1, 0, 0
    if args.cycles < 1 or args.slice < 1 or args.connections < 1 or args.users < 1 or args.warmup_cycles < 0:
        ap.error("--cycles, --slice, --connections, --users must be >= 1, --warmup-cycles >= 0")
    if args.breakdown:
        # none and noop, plus the direct setups asked for.
        args.shapes = ["direct"]
        args.setups = [s for s in SHAPES["direct"] if s in ("none", "noop", *(args.setups or []))]
    if args.setups is None:
        args.setups = list(ALL_SETUPS)
    if "none" not in args.setups:
        args.setups = ["none", *args.setups]
    variants = []
    for v in args.variant:
        name, sep, path = v.partition("=")
        if not sep or not name or not Path(path).is_file() or name in ALL_SETUPS:
            ap.error(f"--variant {v!r}: want NAME=CONFIG with a new name and an existing file")
        variants.append((name, Path(path)))
    args.variant = variants
    if args.no_pin or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        args.envoy_core = args.load_core = None
    return args


def preflight(args: argparse.Namespace) -> dict[str, str]:
    envoy = shutil.which(args.envoy)
    if not envoy:
        raise BenchError(f"Envoy not found: {args.envoy} (set ENVOY or pass --envoy)")
    args.envoy = envoy
    wrk = shutil.which(args.wrk)
    if not wrk:
        raise BenchError(f"wrk not found: {args.wrk} (apt-get install wrk)")
    args.wrk = wrk
    for setup, path in WASM_FILES.items():
        if setup in args.setups and not path.exists():
            raise BenchError(
                f"{path.relative_to(ROOT)} is missing; build it first:\n"
                "  make wasm (cargo build of the three filters, then tools/wasm-trim on model_rollout.wasm)"
            )
    for shape in args.shapes:
        for setup in SHAPES[shape]:
            p = CONFIG_DIR / f"{setup}-{shape}.yaml"
            if setup in args.setups and not p.exists():
                raise BenchError(f"missing config {p.relative_to(ROOT)} (run bench/gen_configs.py)")
    version = subprocess.run([envoy, "--version"], capture_output=True, text=True, check=False)
    return {
        "envoy": envoy,
        "envoy_version": version.stdout.strip().split("version:")[-1].strip(),
        "wrk": wrk,
        "cpus": str(os.cpu_count()),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average": loadavg(),
    }


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="model-rollout-bench-"))
    bench: Bench | None = None
    started = time.monotonic()
    try:
        meta = preflight(args)
        log(f"Envoy {meta['envoy_version']}; {meta['cpus']} CPUs; load average {meta['load_average']}")
        pin = ("not pinned" if args.envoy_core is None
               else f"Envoy on core {args.envoy_core}, wrk and upstreams on core {args.load_core}")
        log(f"wrk -t1 -c{args.connections}, POST {INFER_PATH}, {args.users} distinct x-user-id; {pin}")
        if "ours" in args.setups:
            check_plugin_config_matches_demo()
        bench = Bench(args, workdir)
        summaries: dict[str, Any] = {}
        verdicts: list[str] = []
        for name, path in args.variant:
            bench.extra_configs[name] = path
        for shape in args.shapes:
            setups = [s for s in SHAPES[shape] if s in args.setups]
            if shape == "direct":
                setups += [name for name, _ in args.variant]
                if args.breakdown:
                    setups += bench.add_breakdown()
            bench.order[shape] = setups
            try:
                bench.run_shape(shape, setups)
            finally:
                bench.envoys_done += bench.envoys
                bench.stop_all()
        for shape in args.shapes:
            summaries[shape] = summarize(bench, shape)
            verdicts += print_summary(shape, summaries[shape], args)
        contended = [s for s in bench.slices if s.other_load_cores > CONTENDED_CORES]
        log()
        if contended:
            log(f"WARNING: {len(contended)} of {len(bench.slices)} slices were contended (other "
                f"processes used > {CONTENDED_CORES} cores meanwhile): figures are noisier.")
        log("Targets are printed, not enforced. See bench/README.md.")
        log(f"total time {time.monotonic() - started:.0f} s; load average {loadavg()}")
        if args.json:
            doc = {
                "meta": meta,
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "slices": [asdict(s) for s in bench.slices],
                "summary": summaries,
                "targets": verdicts,
            }
            args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
            log(f"wrote {args.json}")
        return 0
    except BenchError as e:
        log(f"\nbench: cannot run: {e}")
        return 1
    except KeyboardInterrupt:
        log("\nbench: interrupted")
        return 130
    finally:
        if bench is not None:
            bench.stop_all()
        if args.keep:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
