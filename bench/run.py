#!/usr/bin/env python3
"""Benchmark: what the model-rollout filter costs in a real Envoy.

Runs Envoy (`--concurrency 1`) with each filter setup in turn, interleaved over
several rounds, drives it with wrk and reports medians side by side:

  setups  nofilter  router only
          native    Envoy's own 90/10 split (runtime_fraction / weighted_clusters)
          noop      a wasm filter that does nothing (cost of entering the VM)
          ours      the model-rollout filter, configured as envoy/demo.yaml
  shapes  direct    Envoy answers itself (direct_response): pure proxy cost
          upstream  two demo model servers behind Envoy

Configs: envoy/bench/<setup>-<shape>.yaml (written by bench/gen_configs.py). This
script loads each with PyYAML, rewrites the admin/listener/upstream ports to free
ones and the .wasm paths to absolute ones, and runs Envoy on the rewritten copy.

Prerequisites: the two .wasm files and (for the upstream shape) the demo model
server, built from the project root:
    cargo build --release --target wasm32-wasip1 -p model-rollout -p noop-filter
    cargo build --profile native -p rollout-demo
plus `wrk` on PATH and Envoy (--envoy, $ENVOY, .venv/bin/envoy or PATH).

Figures are printed, never judged by the exit status: the process exits non-zero
only when something could not run (1), or when interrupted (130).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
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

SETUPS = ("nofilter", "native", "noop", "ours")
SHAPES = ("direct", "upstream")
WASM_FILES = {
    "noop": ROOT / "target/wasm32-wasip1/release/noop_filter.wasm",
    "ours": ROOT / "target/wasm32-wasip1/release/model_rollout.wasm",
}
DEFAULT_UPSTREAM_CMD = (
    "{root}/target/native/rollout-demo model --listen 127.0.0.1:{port} --version {version}"
)

INFER_PATH = "/v2/models/fraud/infer"
INFER_BODY = (
    '{"id":"bench","inputs":[{"name":"x","shape":[1,4],"datatype":"FP32",'
    '"data":[0.1,0.2,0.3,0.4]}]}'
)

# Targets for "ours" (printed as met/missed; they never change the exit status).
# (shape, label, metric, comparison, threshold)
TARGETS = (
    ("direct", "ours RPS/nofilter >= 0.78", "rps_ratio", ">=", 0.78),
    ("upstream", "ours RPS/nofilter >= 0.97", "rps_ratio", ">=", 0.97),
    ("upstream", "ours p99 <= 1.10x nofilter", "p99_ratio", "<=", 1.10),
)

# A run during which other processes used more CPU than this (in cores) is flagged:
# on 2 cores its figures say more about the neighbours than about the filter.
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


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        stat = f.read()
    # Fields after the parenthesised command name start at field 3 (state);
    # utime and stime are fields 14 and 15.
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


CLK_TCK = os.sysconf("SC_CLK_TCK")


def system_ticks() -> tuple[int, int]:
    """(task ticks, softirq+irq ticks) of the whole machine (all CPUs).

    Task time is user + nice + system: what processes are charged for. Interrupt
    time (mostly loopback networking, here) is charged to no process, so it is
    kept apart rather than mistaken for other processes' load.
    """
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return v[0] + v[1] + v[2], v[5] + v[6]


def children_cpu_s() -> float:
    """CPU seconds of the children this process has waited for (here: wrk runs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


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


# ------------------------------------------------------------------------ configs

# Parts of envoy/demo.yaml's plugin configuration the benchmark leaves out on
# purpose: it measures the routing path (assignment, headers, correlation id,
# metrics) that every request pays.
#   control  polls the rollout-control sidecar from the root context, off the request
#            path; with no sidecar running it would only measure failures.
#   shadow   (per rollout) copies a share of requests to a third cluster: a different
#            workload, with its own upstream; measure it separately.
#   output   (per rollout) inspects response bodies (output health): also separate.
NOT_BENCHED = frozenset({"control"})
NOT_BENCHED_PER_ROLLOUT = frozenset({"shadow", "output"})



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


def rewrite_config(
    src: Path, dst: Path, *, admin: int, listen: int, upstreams: dict[str, int]
) -> None:
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


# ------------------------------------------------------------------------- runs


@dataclass
class Run:
    round: int
    shape: str
    setup: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    duration_s: float
    envoy_cpu_s: float
    envoy_cpu_us_per_req: float
    envoy_core_share: float
    non_2xx: int
    socket_errors: int
    wrk_cpu_s: float
    upstream_cpu_us_per_req: float | None
    other_load_cores: float
    interrupt_cores: float
    canary_share: float | None = None
    notes: list[str] = field(default_factory=list)


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

    m = find(r"^\s*(\d+) requests in ([\d.]+(?:us|ms|s|m))")
    requests = int(m.group(1))
    duration_s = parse_latency(m.group(2)) / 1e3
    rps = float(find(r"^Requests/sec:\s*([\d.]+)").group(1))
    p50 = parse_latency(find(r"^\s*50%\s+(\S+)").group(1))
    p99 = parse_latency(find(r"^\s*99%\s+(\S+)").group(1))
    non_2xx = 0
    m2 = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    if m2:
        non_2xx = int(m2.group(1))
    sock = 0
    m3 = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m3:
        sock = sum(int(x) for x in m3.groups())
    return dict(
        requests=requests, duration_s=duration_s, rps=rps, p50_ms=p50, p99_ms=p99,
        non_2xx=non_2xx, socket_errors=sock,
    )


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.lua = workdir / "infer.lua"
        self.lua.write_text(WRK_LUA)
        self.upstream_ports: dict[str, int] = {}
        self.upstream_procs: list[subprocess.Popen[bytes]] = []
        self.runs: list[Run] = []

    # ---- upstreams

    def start_upstreams(self) -> None:
        for version in ("stable", "canary"):
            port = free_port()
            cmd = self.args.upstream_cmd.format(root=ROOT, port=port, version=version)
            argv = shlex.split(cmd)
            if not shutil.which(argv[0]):
                raise BenchError(
                    f"upstream server not found: {argv[0]}\n"
                    "  build it: cargo build --profile native -p rollout-demo"
                    " (or pass --upstream-cmd)"
                )
            logf = self.workdir / f"upstream-{version}.log"
            with open(logf, "wb") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
            self.upstream_procs.append(proc)
            self.upstream_ports[f"model_{version}"] = port
            url = f"http://127.0.0.1:{port}{INFER_PATH}"
            hdrs = {"Content-Type": "application/json"}

            def ready(url: str = url, hdrs: dict[str, str] = hdrs) -> bool:
                return http(url, body=INFER_BODY, headers=hdrs, timeout=2)[0] == 200

            if not wait_until(ready, 20, proc):
                raise BenchError(
                    f"upstream {version} did not answer POST {INFER_PATH} with 200 "
                    f"(command: {cmd})\n{tail(logf)}"
                )
            log(f"upstream {version}: pid {proc.pid} on 127.0.0.1:{port}")

    def stop_upstreams(self) -> None:
        for proc in self.upstream_procs:
            stop_process(proc, "upstream")
        self.upstream_procs.clear()

    # ---- one Envoy run

    def run_one(self, rnd: int, shape: str, setup: str) -> Run:
        name = f"{setup}-{shape}"
        admin, listen = free_port(), free_port()
        cfg = self.workdir / f"{name}.yaml"
        rewrite_config(
            CONFIG_DIR / f"{name}.yaml", cfg, admin=admin, listen=listen,
            upstreams=self.upstream_ports or {"model_stable": 1, "model_canary": 1},
        )
        logf = self.workdir / f"envoy-{name}-r{rnd}.log"
        argv = [
            self.args.envoy, "-c", str(cfg), "--concurrency", "1",
            "--disable-hot-restart", "--log-level", "warning",
        ]
        proc: subprocess.Popen[bytes] | None = None
        try:
            with open(logf, "wb") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
            admin_url = f"http://127.0.0.1:{admin}"
            if not wait_until(lambda: http(f"{admin_url}/ready", timeout=1)[0] == 200, 60, proc):
                raise BenchError(f"Envoy ({name}) did not become ready\n{tail(logf)}")
            self.smoke(name, setup, shape, listen, logf)
            url = f"http://127.0.0.1:{listen}{INFER_PATH}"
            seed = f"{rnd}{setup[0]}"
            if self.args.warmup > 0:
                self.wrk(url, self.args.warmup, seed)
            canary_before = self.cluster_counts(admin_url) if shape == "upstream" else None
            (busy0, irq0), wrk0, up0 = system_ticks(), children_cpu_s(), self.upstream_ticks()
            before = cpu_ticks(proc.pid)
            out = self.wrk(url, self.args.duration, seed)
            after = cpu_ticks(proc.pid)
            (busy1, irq1), wrk1, up1 = system_ticks(), children_cpu_s(), self.upstream_ticks()
            canary_after = self.cluster_counts(admin_url) if shape == "upstream" else None
            if proc.poll() is not None:
                raise BenchError(f"Envoy ({name}) exited during the run\n{tail(logf)}")
            w = parse_wrk(out)
            if w["requests"] == 0:
                raise BenchError(f"wrk completed no request against {name}:\n{out}")
            cpu_s = (after - before) / CLK_TCK
            wrk_s = wrk1 - wrk0
            up_s = (up1 - up0) / CLK_TCK
            # CPU the machine spent on anything but Envoy, wrk and the upstreams.
            other_s = max(0.0, (busy1 - busy0) / CLK_TCK - cpu_s - wrk_s - up_s)
            run = Run(
                round=rnd, shape=shape, setup=setup, rps=w["rps"], p50_ms=w["p50_ms"],
                p99_ms=w["p99_ms"], requests=w["requests"], duration_s=w["duration_s"],
                envoy_cpu_s=cpu_s, envoy_cpu_us_per_req=cpu_s * 1e6 / w["requests"],
                envoy_core_share=cpu_s / w["duration_s"] if w["duration_s"] else 0.0,
                non_2xx=w["non_2xx"], socket_errors=w["socket_errors"], wrk_cpu_s=wrk_s,
                upstream_cpu_us_per_req=(
                    up_s * 1e6 / w["requests"] if shape == "upstream" else None
                ),
                other_load_cores=other_s / w["duration_s"] if w["duration_s"] else 0.0,
                interrupt_cores=(irq1 - irq0) / CLK_TCK / w["duration_s"] if w["duration_s"] else 0.0,
            )
            if canary_before is not None and canary_after is not None:
                stable = canary_after[0] - canary_before[0]
                canary = canary_after[1] - canary_before[1]
                if stable + canary > 0:
                    run.canary_share = canary / (stable + canary)
            if run.non_2xx:
                run.notes.append(f"{run.non_2xx} non-2xx responses")
            if run.socket_errors:
                run.notes.append(f"{run.socket_errors} socket errors")
            if run.other_load_cores > CONTENDED_CORES:
                run.notes.append(
                    f"CONTENDED: other processes used {run.other_load_cores:.2f} cores"
                )
            return run
        finally:
            stop_process(proc, f"Envoy ({name})")

    def smoke(self, name: str, setup: str, shape: str, listen: int, logf: Path) -> None:
        """One request before measuring: the setup must answer 200, and `ours`
        must really assign a variant (a failed-open filter would be measured as
        a no-op)."""
        status, headers, body = http(
            f"http://127.0.0.1:{listen}{INFER_PATH}", body=INFER_BODY,
            headers={"Content-Type": "application/json", "x-user-id": "smoke"},
        )
        if status != 200:
            raise BenchError(
                f"Envoy ({name}) answered {status} to a smoke request: {body[:200]!r}\n{tail(logf)}"
            )
        if setup == "ours" and "x-model-variant" not in headers:
            raise BenchError(
                f"Envoy ({name}): the model-rollout filter did not assign a variant "
                f"(no x-model-variant in the response)\n{tail(logf)}"
            )
        if shape == "upstream" and "x-served-by" not in headers:
            log(f"  note: {name}: upstream response has no x-served-by header")

    def upstream_ticks(self) -> int:
        total = 0
        for proc in self.upstream_procs:
            try:
                total += cpu_ticks(proc.pid)
            except OSError:
                pass
        return total

    def cluster_counts(self, admin_url: str) -> tuple[int, int] | None:
        try:
            status, _, body = http(
                f"{admin_url}/stats?filter=^cluster%5C.model_(stable%7Ccanary)%5C.upstream_rq_total$",
                timeout=2,
            )
        except OSError:
            return None
        if status != 200:
            return None
        counts = {"stable": 0, "canary": 0}
        for line in body.decode(errors="replace").splitlines():
            m = re.match(r"cluster\.model_(stable|canary)\.upstream_rq_total: (\d+)", line)
            if m:
                counts[m.group(1)] = int(m.group(2))
        return counts["stable"], counts["canary"]

    def wrk(self, url: str, seconds: float, seed: str) -> str:
        argv = [
            self.args.wrk, f"-t{self.args.threads}", f"-c{self.args.connections}",
            f"-d{max(1, round(seconds))}s", "--latency", "-s", str(self.lua), url,
            "--", str(self.args.users), seed,
        ]
        try:
            res = subprocess.run(
                argv, capture_output=True, text=True, timeout=seconds + 60, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"wrk did not finish: {' '.join(argv)}") from e
        if res.returncode != 0:
            raise BenchError(f"wrk failed ({res.returncode}): {res.stderr.strip()}\n{res.stdout}")
        return res.stdout

    # ---- all of it

    def execute(self) -> None:
        shapes, setups, rounds = self.args.shapes, self.args.setups, self.args.rounds
        total = rounds * len(shapes) * len(setups)
        per_run = self.args.duration + self.args.warmup + 2.5
        log(
            f"{total} runs ({rounds} rounds x {len(shapes)} shapes x {len(setups)} setups), "
            f"about {total * per_run / 60:.1f} min"
        )
        if "upstream" in shapes:
            self.start_upstreams()
        k = 0
        for rnd in range(1, rounds + 1):
            # Rotate the order each round so no setup always runs first or last.
            shift = (rnd - 1) % len(setups)
            order = setups[shift:] + setups[:shift]
            for shape in shapes:
                for setup in order:
                    k += 1
                    r = self.run_one(rnd, shape, setup)
                    for attempt in range(self.args.retries):
                        if r.other_load_cores <= CONTENDED_CORES:
                            break
                        log(
                            f"        {shape} {setup}: contended ({r.other_load_cores:.2f} "
                            f"cores of other load); retry {attempt + 1}/{self.args.retries}"
                        )
                        again = self.run_one(rnd, shape, setup)
                        if again.other_load_cores < r.other_load_cores:
                            r = again
                    self.runs.append(r)
                    share = "" if r.canary_share is None else f"  canary {r.canary_share:5.1%}"
                    note = f"  ({'; '.join(r.notes)})" if r.notes else ""
                    log(
                        f"[{k:2d}/{total}] round {rnd} {shape:8s} {setup:8s} "
                        f"RPS {r.rps:8.0f}  p50 {r.p50_ms:6.3f} ms  p99 {r.p99_ms:6.3f} ms  "
                        f"Envoy {r.envoy_cpu_us_per_req:6.1f} us/req "
                        f"({r.envoy_core_share:4.0%} of a core){share}{note}"
                    )


# ----------------------------------------------------------------------- summary


def summarize(runs: list[Run], shapes: list[str], setups: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for shape in shapes:
        rows: dict[str, Any] = {}
        for setup in setups:
            rs = [r for r in runs if r.shape == shape and r.setup == setup]
            if not rs:
                continue
            rps = [r.rps for r in rs]
            shares = [r.canary_share for r in rs if r.canary_share is not None]
            med = statistics.median(rps)
            rows[setup] = {
                "rounds": len(rs),
                "rps": med,
                "rps_spread": (max(rps) - min(rps)) / med if med else 0.0,
                "p50_ms": statistics.median(r.p50_ms for r in rs),
                "p99_ms": statistics.median(r.p99_ms for r in rs),
                "envoy_cpu_us_per_req": statistics.median(r.envoy_cpu_us_per_req for r in rs),
                "envoy_core_share": statistics.median(r.envoy_core_share for r in rs),
                "canary_share": statistics.median(shares) if shares else None,
                "errors": sum(r.non_2xx + r.socket_errors for r in rs),
                "other_load_cores": statistics.median(r.other_load_cores for r in rs),
                "contended_runs": sum(r.other_load_cores > CONTENDED_CORES for r in rs),
            }
        base = rows.get("nofilter")
        for row in rows.values():
            row["rps_ratio"] = row["rps"] / base["rps"] if base and base["rps"] else None
            row["p99_ratio"] = row["p99_ms"] / base["p99_ms"] if base and base["p99_ms"] else None
        summary[shape] = rows
    return summary


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_summary(summary: dict[str, Any], rounds: int) -> list[dict[str, Any]]:
    verdicts: list[dict[str, Any]] = []
    for shape, rows in summary.items():
        log()
        log(f"== {shape} (median of {rounds} rounds; Envoy --concurrency 1) ==")
        head = (
            f"{'setup':9s} {'RPS':>8s} {'spread':>7s} {'p50 ms':>8s} {'p99 ms':>8s} "
            f"{'CPU us/req':>10s} {'core':>5s} {'RPS/nofilter':>12s} {'p99/nofilter':>12s} "
            f"{'canary':>7s} {'errors':>6s} {'contended':>9s}"
        )
        log(head)
        log("-" * len(head))
        for setup, r in rows.items():
            log(
                f"{setup:9s} {r['rps']:8.0f} {'±' + format(r['rps_spread'] / 2, '.1%'):>7s} "
                f"{r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['envoy_cpu_us_per_req']:10.1f} "
                f"{r['envoy_core_share']:5.0%} {fmt(r['rps_ratio'], '.3f'):>12s} "
                f"{fmt(r['p99_ratio'], '.3f'):>12s} {fmt(r['canary_share'], '.1%'):>7s} "
                f"{r['errors']:6d} {str(r['contended_runs']) + '/' + str(r['rounds']):>9s}"
            )
        cpu = {s: r["envoy_cpu_us_per_req"] for s, r in rows.items()}
        if {"nofilter", "noop", "ours"} <= cpu.keys():
            log(
                f"Envoy CPU added per request: entering the VM (noop - nofilter) "
                f"{cpu['noop'] - cpu['nofilter']:+.1f} us, the filter's own work "
                f"(ours - noop) {cpu['ours'] - cpu['noop']:+.1f} us, "
                f"total (ours - nofilter) {cpu['ours'] - cpu['nofilter']:+.1f} us"
            )
        for t_shape, label, metric, op, limit in TARGETS:
            if t_shape != shape:
                continue
            value = rows.get("ours", {}).get(metric)
            if value is None:
                verdict = "n/a (needs setups ours and nofilter)"
            else:
                met = value >= limit if op == ">=" else value <= limit
                verdict = f"{value:.3f} -> {'MET' if met else 'MISSED'}"
            verdicts.append({"shape": shape, "target": label, "value": value, "verdict": verdict})
            log(f"target ({shape}): {label:30s} {verdict}")
    return verdicts


# -------------------------------------------------------------------------- main


def csv_list(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)} (got {text!r})")
        # Keep the canonical order (nofilter first), drop duplicates.
        return [x for x in allowed if x in items]

    return parse


def default_envoy() -> str:
    if os.environ.get("ENVOY"):
        return os.environ["ENVOY"]
    venv = ROOT / ".venv" / "bin" / "envoy"
    return str(venv) if venv.exists() else "envoy"


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all setups (default 3)")
    ap.add_argument("--duration", type=float, default=8, help="seconds of wrk per run (default 8)")
    ap.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per run (default 2)")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument("--users", type=int, default=10000, help="distinct x-user-id values (default 10000)")
    ap.add_argument("--shapes", type=csv_list(SHAPES), default=list(SHAPES),
                    help="comma list of direct,upstream (default both)")
    ap.add_argument("--setups", type=csv_list(SETUPS), default=list(SETUPS),
                    help="comma list of nofilter,native,noop,ours (default all)")
    ap.add_argument("--envoy", default=default_envoy(),
                    help="Envoy binary (default $ENVOY, else .venv/bin/envoy, else envoy on PATH)")
    ap.add_argument("--wrk", default=os.environ.get("WRK", "wrk"), help="wrk binary (default $WRK or wrk)")
    ap.add_argument("--upstream-cmd", default=os.environ.get("BENCH_UPSTREAM_CMD", DEFAULT_UPSTREAM_CMD),
                    help="command starting one upstream; {root}, {port}, {version} are substituted "
                    "(default $BENCH_UPSTREAM_CMD or the demo model server)")
    ap.add_argument("--retries", type=int, default=0,
                    help="repeat a contended run up to N times, keeping the least contended "
                    "attempt (default 0: a busy machine makes the run longer otherwise)")
    ap.add_argument("--json", type=Path, help="also write raw runs and the summary to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.connections < 1 or args.threads < 1:
        ap.error("--rounds, --duration, --connections and --threads must be >= 1")
    if args.users < 1 or args.retries < 0:
        ap.error("--users must be >= 1 and --retries >= 0")
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
                "  cargo build --release --target wasm32-wasip1 -p model-rollout -p noop-filter"
            )
    for shape in args.shapes:
        for setup in args.setups:
            p = CONFIG_DIR / f"{setup}-{shape}.yaml"
            if not p.exists():
                raise BenchError(f"missing config {p.relative_to(ROOT)} (run bench/gen_configs.py)")
    version = subprocess.run([envoy, "--version"], capture_output=True, text=True, check=False)
    meta = {
        "envoy": envoy,
        "envoy_version": version.stdout.strip().split("version:")[-1].strip(),
        "wrk": wrk,
        "cpus": str(os.cpu_count()),
        "host": platform.node(),
        "kernel": platform.release(),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for setup, path in WASM_FILES.items():
        if setup in args.setups:
            st = path.stat()
            mtime = dt.datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds")
            meta[f"wasm_{setup}"] = f"{path.relative_to(ROOT)} ({st.st_size} bytes, {mtime})"
    return meta


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
        log(f"Envoy {meta['envoy_version']} ({meta['envoy']}); wrk {args.wrk}; {meta['cpus']} CPUs")
        for key in ("wasm_noop", "wasm_ours"):
            if key in meta:
                log(f"{key[5:]}: {meta[key]}")
        log(
            f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s "
            f"(+{args.warmup:g}s warm-up), POST {INFER_PATH}, {args.users} distinct x-user-id"
        )
        if "ours" in args.setups:
            check_plugin_config_matches_demo()
        bench = Bench(args, workdir)
        bench.execute()
        summary = summarize(bench.runs, args.shapes, args.setups)
        verdicts = print_summary(summary, args.rounds)
        contended = [r for r in bench.runs if r.other_load_cores > CONTENDED_CORES]
        if contended:
            log()
            log(
                f"WARNING: {len(contended)} of {len(bench.runs)} runs were contended (other "
                f"processes used > {CONTENDED_CORES} cores meanwhile); their RPS and latency "
                "are unreliable. Envoy CPU us/req suffers least. Rerun on a quiet machine."
            )
        log()
        log(
            "Targets are printed, not enforced. 2 shared cores: wrk, Envoy and the upstreams "
            "compete for CPU; see bench/README.md."
        )
        log(f"total time {time.monotonic() - started:.0f} s")
        if args.json:
            doc = {
                "meta": meta,
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "runs": [asdict(r) for r in bench.runs],
                "summary": summary,
                "targets": verdicts,
            }
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
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
            bench.stop_upstreams()
        if args.keep:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
