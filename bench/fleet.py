#!/usr/bin/env python3
"""Fleet capacity of rollout-control: N distinct, authenticated proxies polling the plan.

rollout-control (`serve`, with an operator and a proxy credential) runs pinned to core 0;
`fleet-load` (bench/fleet-load, one thread) pinned to core 1 plays N proxies, each
polling `GET /v1/plan` once a second with `If-None-Match`, its proxy id and plan version
and the proxy credential, spread evenly over the second, on keep-alive connections.
After a steady phase the plan changes once (a weight change by the operator); every
proxy gets the new plan at its next poll.

Printed: sustained polls per second, p50 / p99 / p99.9 poll latency (send to answer's
end, after the warm-up), how late the generator sent (it keeps up when that stays
small), the sidecar's CPU over the steady phase (per 1,000 proxies), its RSS, the time
from the plan change until the last proxy fetched it and until `GET /v1/status` showed
every proxy current (`proxy_summary`), and how many proxies the sidecar tracked.

Figures are printed, never judged: exit status 1 only when something could not run.
  .venv/bin/python bench/fleet.py [--proxies 20000] [--seconds 40]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONTROL = ROOT / "target/native/rollout-control"
LOAD = ROOT / "target/native/fleet-load"
DEMO = ROOT / "envoy/demo.yaml"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_plan() -> dict:
    doc = yaml.safe_load(DEMO.read_text())
    for listener in doc["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for nf in chain["filters"]:
                for hf in nf["typed_config"].get("http_filters", []):
                    if hf["typed_config"]["@type"].endswith("wasm.v3.Wasm"):
                        return json.loads(hf["typed_config"]["config"]["configuration"]["value"])["plan"]
    raise SystemExit("no plan in envoy/demo.yaml")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def call(url: str, method: str = "GET", body=None, token: str | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    h = {"content-type": "application/json"}
    if token:
        h["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def taskset(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxies", type=int, default=20_000)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=40, help="how long the proxies poll")
    ap.add_argument("--warmup", type=int, default=8, help="seconds before measuring")
    ap.add_argument("--change-at", type=int, default=25, help="second at which the plan changes")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    for b in (CONTROL, LOAD):
        if not b.exists():
            print(f"missing {b}: make native (cargo build --profile native -p rollout-control -p fleet-load)")
            return 1
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        operator, proxy = "bench-operator-token", "bench-proxy-token"
        (tmp / "operator").write_text(operator + "\n")
        (tmp / "proxy").write_text(proxy + "\n")
        plan = demo_plan()
        (tmp / "plan.json").write_text(json.dumps(plan))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        sidecar = subprocess.Popen(
            [*taskset(0), str(CONTROL), "serve", "--listen", f"127.0.0.1:{port}", "--data", str(tmp / "data"),
             "--initial-plan", str(tmp / "plan.json"), "--operator-token-file", str(tmp / "operator"),
             "--proxy-token-file", str(tmp / "proxy")],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "control.log", "wb"), start_new_session=True)
        procs.append(sidecar)
        deadline = time.time() + 15
        while True:
            try:
                urllib.request.urlopen(base + "/ready", timeout=1).read()
                break
            except OSError:
                if time.time() > deadline or sidecar.poll() is not None:
                    print("rollout-control did not start:", (tmp / "control.log").read_text()[-2000:])
                    return 1
                time.sleep(0.1)
        load = subprocess.Popen(
            [*taskset(1), str(LOAD), "--addr", f"127.0.0.1:{port}", "--proxies", str(a.proxies),
             "--connections", str(a.connections), "--seconds", str(a.seconds), "--warmup-s", str(a.warmup),
             "--token-file", str(tmp / "proxy")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True)
        procs.append(load)
        t0 = time.time()
        time.sleep(a.warmup)
        cpu0, w0 = cpu_seconds(sidecar.pid), time.time()
        time.sleep(max(1, a.change_at - a.warmup))
        cpu1, w1 = cpu_seconds(sidecar.pid), time.time()
        rss_steady = rss_mb(sidecar.pid)
        before = call(base + "/v1/status", token=operator)
        t_change = time.time()
        weights = {v["name"]: v["weight"] for v in plan["rollouts"][0]["variants"]}
        names = list(weights)
        weights = {names[0]: 80, names[1]: 20} if len(names) == 2 else weights
        changed = call(f"{base}/v1/rollouts/{plan['rollouts'][0]['name']}/weights?reason=bench", "POST",
                       {"weights": weights}, token=operator)
        version = changed["version"]
        t_status = None
        summary = {}
        while time.time() < t0 + a.seconds:
            summary = call(base + "/v1/status", token=operator).get("proxy_summary") or {}
            if summary.get("current") == a.proxies and summary.get("behind") == 0 and \
                    before.get("version") != version:
                t_status = time.time()
                break
            time.sleep(0.1)
        out, err = load.communicate(timeout=a.seconds + 60)
        rss_end = rss_mb(sidecar.pid)
        if load.returncode != 0 or not out.strip():
            print("fleet-load failed:", err[-2000:])
            return 1
        r = json.loads(out.strip().splitlines()[-1])
        got = r["last_proxy_got_version_unix_ms"].get(str(version))
        cpu = (cpu1 - cpu0) / (w1 - w0)
        figures = {
            "proxies": a.proxies, "connections": a.connections,
            "polls_per_s": round(r["polls_per_s"]), "errors": r["errors"],
            "latency_ms": r["latency_ms"], "send_late_ms": r["send_late_ms"],
            "sidecar_cpu_cores": round(cpu, 3),
            "sidecar_cpu_pct_per_1000_proxies": round(100 * cpu / (a.proxies / 1000), 2),
            "sidecar_rss_mb": {"steady": round(rss_steady, 1), "end": round(rss_end, 1)},
            "plan_change_to_last_proxy_s": None if got is None else round(got / 1000 - t_change, 2),
            "plan_change_to_status_all_current_s": None if t_status is None else round(t_status - t_change, 2),
            "tracked": summary.get("tracked"), "capacity": summary.get("capacity"),
            "untracked_total": summary.get("untracked_total"),
        }
        lat = figures["latency_ms"]
        print(f"fleet: {a.proxies} proxies polling every second on {a.connections} connections "
              f"(sidecar on core 0, generator on core 1)")
        print(f"  sustained polls        {figures['polls_per_s']}/s, errors {figures['errors']}")
        print(f"  poll latency           p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, "
              f"p99.9 {lat['p999']:.2f} ms, max {lat['max']:.2f} ms")
        print(f"  generator send lag     p50 {r['send_late_ms']['p50']:.2f} ms, p99 {r['send_late_ms']['p99']:.2f} ms")
        print(f"  sidecar CPU            {cpu:.3f} cores = {figures['sidecar_cpu_pct_per_1000_proxies']} % "
              f"of a core per 1,000 proxies")
        print(f"  sidecar RSS            {figures['sidecar_rss_mb']['steady']} MB steady, "
              f"{figures['sidecar_rss_mb']['end']} MB at the end")
        print(f"  plan change v{version}: last proxy had it after {figures['plan_change_to_last_proxy_s']} s, "
              f"status showed all {a.proxies} current after {figures['plan_change_to_status_all_current_s']} s")
        print(f"  tracked                {figures['tracked']} of capacity {figures['capacity']}, "
              f"untracked polls {figures['untracked_total']}")
        if a.json:
            Path(a.json).write_text(json.dumps(figures, indent=2))
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
