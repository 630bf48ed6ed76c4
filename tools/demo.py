"""`make demo`: the whole thing locally, no docker.

Starts the demo model servers (stable 8081, canary 8082, shadow 8083 which disagrees
with production on 5 % of inputs), the control sidecar (9090) and Envoy with the
shipped envoy/demo.yaml (public listener 10000, trusted 10001, admin 9901), streams
traffic from many users and walks the fraud rollout live through the sidecar:
canary 10 -> 5 -> 25 -> 50 -> 100 %, narrating each step with the split Envoy's
stats show and the shadow agreement. Then it keeps the traffic running until Ctrl-C
(or --duration seconds in all). Every process is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "target/native/rollout-demo"
CONTROL = ROOT / "target/native/rollout-control"
ENVOY = ROOT / ".venv/bin/envoy"
RUN = ROOT / ".run"
PORTS = (8081, 8082, 8083, 9090, 9901, 10000, 10001)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait(url: str, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"demo: {what} exited early (exit {proc.returncode}); see {RUN}/")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"demo: {what} not ready at {url}")


def demo_plan() -> dict:
    doc = yaml.safe_load((ROOT / "envoy/demo.yaml").read_text())
    for listener in doc["static_resources"]["listeners"]:
        for hf in listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]:
            if hf["typed_config"]["@type"].endswith("wasm.v3.Wasm"):
                return json.loads(hf["typed_config"]["config"]["configuration"]["value"])["plan"]
    raise SystemExit("demo: no model-rollout filter in envoy/demo.yaml")


def stats() -> dict[str, float]:
    with urllib.request.urlopen("http://127.0.0.1:9901/stats?format=json&filter=model_rollout", timeout=2) as r:
        doc = json.load(r)
    return {s["name"]: s["value"] for s in doc.get("stats", []) if "value" in s}


def say(msg: str) -> None:
    print(f"\n>>> {msg}\n", flush=True)


def walk(steps: list[float], step_seconds: float, stop: threading.Event) -> None:
    """Moves the fraud canary through `steps` with the sidecar CLI, narrating."""
    prefix = "wasmcustom.model_rollout.rollout.fraud"
    last = {}
    for weight in steps:
        if stop.wait(step_seconds):
            return
        r = subprocess.run([str(CONTROL), "--server", "http://127.0.0.1:9090", "set-weight", "--rollout", "fraud",
                            "--variant", "canary", "--weight", str(weight), "--reason", f"demo: canary to {weight} %"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            say(f"set-weight failed: {r.stderr.strip()}")
            return
        try:
            s = stats()
        except OSError:
            continue
        req = {v: s.get(f"{prefix}.variant.{v}.requests_total", 0) for v in ("stable", "canary")}
        delta = {v: req[v] - last.get(v, 0) for v in req}
        last = req
        total = sum(delta.values()) or 1
        compared = s.get(f"{prefix}.shadow_compared_total", 0)
        agree = s.get(f"{prefix}.shadow_agree_total", 0)
        stored = (r.stdout.strip().splitlines() or ["stored"])[0]
        say(f"sidecar: fraud canary -> {weight} % ({stored}); Envoy saw canary "
            f"{100 * delta['canary'] / total:.1f} % in the last step; shadow compared {compared:.0f}, "
            f"agreement {100 * agree / max(compared, 1):.1f} %")
    say("walk done: `.run/rollout-control history` lists every step; Ctrl-C stops the demo")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=0, help="seconds of traffic in all; 0 = until Ctrl-C")
    ap.add_argument("--step-seconds", type=float, default=8, help="pause between rollout steps")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--rps", type=int, default=200)
    args = ap.parse_args()

    busy = [p for p in PORTS if not port_free(p)]
    if busy:
        sys.exit(f"demo: ports {busy} are in use on 127.0.0.1; stop what uses them and retry")
    RUN.mkdir(exist_ok=True)
    data = RUN / "control-data"
    if data.exists():
        for f in data.iterdir():
            f.unlink()
    data.mkdir(exist_ok=True)
    (RUN / "plan.json").write_text(json.dumps(demo_plan(), indent=1))
    procs: list[subprocess.Popen] = []
    stop = threading.Event()

    def start(argv: list[str], name: str) -> subprocess.Popen:
        log = open(RUN / f"{name}.log", "wb")
        p = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        for version, port, extra in (("stable", 8081, []), ("canary", 8082, []),
                                     ("shadow", 8083, ["--disagree-rate", "0.05"])):
            p = start([str(DEMO), "model", "--listen", f"127.0.0.1:{port}", "--version", version,
                       "--latency-ms", "5", "--latency-jitter-ms", "10", *extra], f"model-{version}")
            wait(f"http://127.0.0.1:{port}/v2/health/ready", p, f"model {version}")
        p = start([str(CONTROL), "serve", "--listen", "127.0.0.1:9090", "--data", str(data),
                   "--initial-plan", str(RUN / "plan.json")], "control")
        wait("http://127.0.0.1:9090/ready", p, "rollout-control")
        envoy = start([str(ENVOY), "-c", "envoy/demo.yaml", "--concurrency", "2", "-l", "info"], "envoy")
        wait("http://127.0.0.1:9901/ready", envoy, "envoy")
        print(__doc__.strip().splitlines()[0])
        print("Envoy: http://127.0.0.1:10000   admin: http://127.0.0.1:9901/stats/prometheus   "
              "sidecar: http://127.0.0.1:9090/v1/status   logs: .run/")
        print("Try:  curl -si -H 'x-user-id: alice' -d '{}' http://127.0.0.1:10000/v2/models/fraud/infer")
        print("      target/native/rollout-control status\n", flush=True)
        traffic = subprocess.Popen(
            [str(DEMO), "traffic", "--url", "http://127.0.0.1:10000",
             "--path", "/v2/models/fraud/infer", "--path", "/v2/models/churn/infer",
             "--users", str(args.users), "--rps", str(args.rps), "--concurrency", "8",
             "--interval", "2", "--duration", str(args.duration)], cwd=ROOT)
        procs.append(traffic)
        walker = threading.Thread(target=walk, args=([5, 25, 50, 100], args.step_seconds, stop), daemon=True)
        walker.start()
        try:
            traffic.wait()
        except KeyboardInterrupt:
            traffic.send_signal(signal.SIGINT)
            traffic.wait(timeout=10)
        stop.set()
        walker.join(timeout=5)
        if traffic.returncode not in (0, -signal.SIGINT, 130):
            sys.exit(f"demo: traffic generator failed (exit {traffic.returncode})")
        hist = subprocess.run([str(CONTROL), "--server", "http://127.0.0.1:9090", "history", "--limit", "10"],
                              capture_output=True, text=True)
        print("\nplan history:\n" + hist.stdout, flush=True)
    finally:
        stop.set()
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    main()
