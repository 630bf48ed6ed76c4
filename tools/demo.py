"""`make demo`: the whole thing locally, no docker.

Starts two demo model servers (stable on 8081, canary on 8082) and Envoy with the
shipped envoy/demo.yaml (public listener 10000, trusted 10001, admin 9901), then
streams traffic from many users and prints the live split per variant until Ctrl-C
(or --duration seconds). Every process is stopped on exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "target/native/rollout-demo"
ENVOY = ROOT / ".venv/bin/envoy"
RUN = ROOT / ".run"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=0, help="seconds of traffic; 0 = until Ctrl-C")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--rps", type=int, default=200)
    args = ap.parse_args()

    busy = [p for p in (8081, 8082, 9901, 10000, 10001) if not port_free(p)]
    if busy:
        sys.exit(f"demo: ports {busy} are in use on 127.0.0.1; stop what uses them and retry")
    RUN.mkdir(exist_ok=True)
    procs: list[subprocess.Popen] = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        log = open(RUN / f"{name}.log", "wb")
        p = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        for version, port in (("stable", 8081), ("canary", 8082)):
            p = start([str(DEMO), "model", "--listen", f"127.0.0.1:{port}", "--version", version,
                       "--latency-ms", "5", "--latency-jitter-ms", "10"], f"model-{version}")
            wait(f"http://127.0.0.1:{port}/v2/health/ready", p, f"model {version}")
        envoy = start([str(ENVOY), "-c", "envoy/demo.yaml", "--concurrency", "2", "-l", "info"], "envoy")
        wait("http://127.0.0.1:9901/ready", envoy, "envoy")
        print(__doc__.strip().splitlines()[0])
        print("Envoy: http://127.0.0.1:10000   admin: http://127.0.0.1:9901/stats/prometheus   logs: .run/")
        print("rollouts: fraud = stable 90 % / canary 10 % (sticky by x-user-id), churn = v1 50 % / v2 50 %")
        print("Try:  curl -si -H 'x-user-id: alice' -d '{}' http://127.0.0.1:10000/v2/models/fraud/infer\n")
        sys.stdout.flush()
        traffic = subprocess.Popen(
            [str(DEMO), "traffic", "--url", "http://127.0.0.1:10000",
             "--path", "/v2/models/fraud/infer", "--path", "/v2/models/churn/infer",
             "--users", str(args.users), "--rps", str(args.rps), "--concurrency", "8",
             "--duration", str(args.duration)], cwd=ROOT)
        procs.append(traffic)
        try:
            traffic.wait()
        except KeyboardInterrupt:
            traffic.send_signal(signal.SIGINT)
            traffic.wait(timeout=10)
        if traffic.returncode not in (0, -signal.SIGINT, 130):
            sys.exit(f"demo: traffic generator failed (exit {traffic.returncode})")
    finally:
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
