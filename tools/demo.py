"""`make demo`: the whole thing locally, no docker.

Starts the demo model servers (stable 8081, canary 8082, shadow 8083 which disagrees
with production on 3 % of inputs), the control sidecar with its policy engine (9090)
and Envoy with the shipped envoy/demo.yaml (public listener 10000, trusted 10001,
admin 9901), streams traffic from many users, and runs three scenarios end to end,
narrated in the terminal:

  1. a good candidate: the policy walks it shadow -> 5 -> 25 -> 50 -> 100 % and
     promotes it to stable, judged by the proxy's own metrics;
  2. a bad candidate (25 % errors): deployed the same way, rolled back
     automatically, the reason naming the failed check;
  3. a drifted candidate: every answer 200, fast and in range, but its scores are
     shifted (the canary model's score_shift knob): rolled back by the
     prediction_drift check, the PSI in the reason.

Then the traffic keeps running until Ctrl-C (or --duration seconds in all). Every
process is stopped on exit.
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
UI = "http://127.0.0.1:9090/ui"


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


def say(msg: str) -> None:
    print(f"\n>>> {msg}\n", flush=True)


def sidecar(method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request("http://127.0.0.1:9090" + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json", "x-rollout-author": "demo"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def fraud() -> dict:
    return next(r for r in sidecar("GET", "/v1/plan")["rollouts"] if r["name"] == "fraud")


def describe(r: dict) -> str:
    p = r.get("progress") or {}
    w = ", ".join(f"{v['name']} {v['weight']:g} %" for v in r["variants"])
    return f"step {p.get('step', '-')} {p.get('state', 'not started')}: {w}"


def shadow_agreement() -> str:
    """The fraud rollout's shadow comparisons so far, from Envoy's own stats."""
    url = "http://127.0.0.1:9901/stats?format=json&filter=model_rollout.rollout.fraud.shadow_"
    with urllib.request.urlopen(url, timeout=2) as r:
        stats = {s["name"]: s.get("value", 0) for s in json.load(r).get("stats", []) if "name" in s}
    get = lambda n: sum(v for k, v in stats.items() if k.endswith(n))  # noqa: E731
    compared, agree = get("shadow_compared_total"), get("shadow_agree_total")
    return (f"shadow model compared with production on {compared:.0f} requests, "
            f"agreement {100 * agree / max(compared, 1):.1f} %")


def follow(until: set[str], stop: threading.Event, timeout: float) -> dict:
    """Narrates the fraud rollout's progress until its state is in `until`."""
    last = ""
    deadline = time.time() + timeout
    while not stop.is_set() and time.time() < deadline:
        try:
            r = fraud()
        except OSError:
            stop.wait(0.5)
            continue
        now = describe(r)
        if now != last:
            try:
                agreement = shadow_agreement()
            except (OSError, ValueError):
                agreement = "shadow stats not available yet"
            say(f"policy: {now} | {agreement}")
            last = now
        if (r.get("progress") or {}).get("state") in until:
            return r
        stop.wait(0.5)
    return {}


def deploy(plan_rollout: dict, stop: threading.Event, reason: str) -> None:
    """A new candidate: the fraud rollout back at stable 100 %, canary 0 %, policy from step 0."""
    plan = sidecar("GET", "/v1/plan")
    for r in plan["rollouts"]:
        if r["name"] == "fraud":
            r.clear()
            r.update(json.loads(json.dumps(plan_rollout)))
    sidecar("PUT", "/v1/plan?reason=" + urllib.request.quote(reason), plan)


def canary_faults(**knobs) -> None:
    urllib.request.urlopen(urllib.request.Request(
        "http://127.0.0.1:8082/admin/faults", data=json.dumps(knobs).encode(), method="POST",
        headers={"content-type": "application/json"}), timeout=5).read()


def with_candidate(rollout: dict, version: str, notes: str) -> dict:
    """The rollout with a new candidate model (its metadata travels with the plan)."""
    r = json.loads(json.dumps(rollout))
    r["variants"][1]["model"] = {**r["variants"][1]["model"], "version": version, "notes": notes}
    return r


def drift_figures(r: dict) -> str:
    """The last drift judgement of the rollout, from the sidecar's analysis."""
    try:
        a = sidecar("GET", "/v1/rollouts/fraud/analysis?limit=5")
    except OSError:
        return ""
    for d in a.get("decisions", []):
        for c in d.get("checks", []):
            drift = c.get("drift")
            if not drift or c.get("candidate") is None:
                continue
            names = drift.get("bin_names") or [str(i) for i in range(len(drift["candidate_bins"]))]
            ct, st = sum(drift["candidate_bins"]) or 1, sum(drift["stable_bins"]) or 1
            rows = [f"      {n:>12}  {100 * a_ / ct:5.1f} %  {100 * b / st:5.1f} %"
                    for n, a_, b in zip(names, drift["candidate_bins"], drift["stable_bins"]) if a_ or b]
            return (f"    {c['name']}: {c['detail']}\n      {'bin':>12}  {drift['arm']:>7}  {drift['reference']:>7}\n"
                    + "\n".join(rows))
    return ""


def scenarios(rollout: dict, stop: threading.Event, fast: bool) -> None:
    timeout = 120 if not fast else 60
    if stop.wait(2):
        return
    say("scenario 1: a good candidate. The sidecar walks it shadow -> 5 -> 25 -> 50 -> 100 %, "
        "advancing only while error rate, p90 latency, invalid outputs, shadow disagreement and the "
        "score distribution (prediction drift against stable) pass. Watch it on the status page: "
        f"{UI} (the weights chart climbs step by step, each check's chart against its threshold)")
    r = follow({"complete", "rolled_back"}, stop, timeout)
    if r:
        say(f"scenario 1 result: {(r.get('progress') or {}).get('state')}: {(r.get('progress') or {}).get('note', '')[:220]}")
    if stop.is_set():
        return
    say("scenario 2: a bad candidate. The canary model now answers 25 % of requests with 500; "
        f"it is deployed as the new candidate with the same policy. On {UI} the error_rate chart "
        "crosses its dashed threshold and the weight drops back to 0 with the reason in the history")
    canary_faults(error_rate=0.25)
    deploy(with_candidate(rollout, "2.5.0", "demo: 25 % errors"), stop, "demo: deploy a bad candidate")
    r = follow({"rolled_back", "complete"}, stop, timeout)
    if r:
        p = r.get("progress") or {}
        say(f"scenario 2 result: {p.get('state')}: {p.get('note', '')[:300]}")
    if stop.is_set():
        return
    say("scenario 3: a drifted candidate. The canary model answers every request with 200, as fast "
        "as stable and inside [0, 1], but its scores are shifted by +2 logits (score_shift); the "
        "policy compares its score distribution with stable's (prediction_drift, PSI)")
    canary_faults(error_rate=0, score_shift=2.0)
    deploy(with_candidate(rollout, "2.6.0", "demo: scores shifted"), stop, "demo: deploy a drifted candidate")
    r = follow({"rolled_back", "complete"}, stop, timeout)
    if r:
        p = r.get("progress") or {}
        say(f"scenario 3 result: {p.get('state')}: {p.get('note', '')[:400]}\n{drift_figures(r)}")
    hist = subprocess.run([str(CONTROL), "--server", "http://127.0.0.1:9090", "history", "--limit", "20"],
                          capture_output=True, text=True)
    say("plan history (newest first):\n" + hist.stdout)
    say(f"all three scenarios done; {UI} shows every step, check and reason (events, history); "
        "`target/native/rollout-control status` shows the checks and the models. Ctrl-C stops the demo")


def demo_rollout(plan: dict, fast: bool) -> dict:
    """The demo plan's fraud rollout with a policy (short intervals, for a demo)."""
    r = next(r for r in plan["rollouts"] if r["name"] == "fraud")
    r["variants"] = [
        {"name": "stable", "weight": 100,
         "model": {"name": "fraud-scorer", "version": "2.3.0", "uri": "s3://models/fraud-scorer/2.3.0"}},
        {"name": "canary", "weight": 0,
         "model": {"name": "fraud-scorer", "version": "2.4.0", "uri": "s3://models/fraud-scorer/2.4.0",
                   "notes": "demo: a good candidate"}}]
    r.pop("targeting", None)
    # the scores' bins, per variant and for the shadow (prediction_drift reads them)
    r["output"]["distribution"] = {"edges": [0, 0.2, 0.4, 0.6, 0.8, 1]}
    # every fraud request is shadowed, so each window holds enough comparisons
    r["shadow"]["percent"] = 100
    r["shadow"]["max_in_flight"] = 500
    d = 2 if fast else 4
    step = lambda w: {"weight": w, "min_duration_s": d, "min_requests": 30}  # noqa: E731
    r["policy"] = {
        "steps": [{"shadow_only": True, "min_duration_s": d, "min_requests": 30},
                  step(5), step(25), step(50), step(100)],
        # at 5 % of ~200 requests/s a window of 3 s holds ~30 candidate requests
        "interval_s": 3 if fast else 5,
        "checks": [
            {"metric": "error_rate", "max_increase": 0.02, "min_samples": 20},
            # p90, not p99: a window holds ~30 candidate requests at 5 %, whose p99 is their
            # slowest one, so one scheduling stall of a busy machine would fail a good candidate.
            # With thousands of requests per window use p99 (see README "Progressive delivery").
            {"metric": "latency", "percentile": 90, "max_ratio": 3, "min_samples": 20},
            {"metric": "invalid_output_rate", "max": 0.02, "min_samples": 20},
            {"metric": "shadow_disagreement_rate", "max": 0.1, "min_samples": 50},
            # The demo's windows hold only ~30-60 candidate predictions at 5 %, whose
            # noise alone gives PSIs of 0.1-0.2: hence max 0.5 here. With >= 1,000
            # predictions per window use the usual 0.25 (see README).
            {"metric": "prediction_drift", "method": "psi", "max": 0.5, "min_samples": 30},
        ],
        "failure_limit": 2,
        "inconclusive_limit": 30,
        "trip": {"window_s": 5, "min_requests": 30, "max_error_rate": 0.5},
    }
    return json.loads(json.dumps(r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=0, help="seconds of traffic in all; 0 = until Ctrl-C")
    ap.add_argument("--fast", action="store_true", help="shorter policy steps (for tests)")
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
    plan = demo_plan()
    rollout = demo_rollout(plan, args.fast)
    (RUN / "plan.json").write_text(json.dumps(plan, indent=1))
    procs: list[subprocess.Popen] = []
    stop = threading.Event()

    def start(argv: list[str], name: str) -> subprocess.Popen:
        log = open(RUN / f"{name}.log", "wb")
        p = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        for version, port, extra in (("stable", 8081, []), ("canary", 8082, []),
                                     ("shadow", 8083, ["--disagree-rate", "0.03"])):
            p = start([str(DEMO), "model", "--listen", f"127.0.0.1:{port}", "--version", version,
                       "--latency-ms", "5", "--latency-jitter-ms", "10", *extra], f"model-{version}")
            wait(f"http://127.0.0.1:{port}/v2/health/ready", p, f"model {version}")
        p = start([str(CONTROL), "serve", "--listen", "127.0.0.1:9090", "--data", str(data),
                   "--initial-plan", str(RUN / "plan.json"),
                   "--envoy-admin", "http://127.0.0.1:9901", "--analysis-tick-ms", "500"], "control")
        wait("http://127.0.0.1:9090/ready", p, "rollout-control")
        envoy = start([str(ENVOY), "-c", "envoy/demo.yaml", "--concurrency", "2", "-l", "info"], "envoy")
        wait("http://127.0.0.1:9901/ready", envoy, "envoy")
        print(__doc__.strip().splitlines()[0])
        print("Envoy: http://127.0.0.1:10000   admin: http://127.0.0.1:9901/stats/prometheus   "
              "sidecar: http://127.0.0.1:9090/v1/status   logs: .run/")
        print(f"Status page: {UI}   (live: weights, steps, checks, shadow, proxies, history)")
        print("Try:  curl -si -H 'x-user-id: alice' -d '{}' http://127.0.0.1:10000/v2/models/fraud/infer")
        print("      target/native/rollout-control status")
        print("      target/native/rollout-control watch --rollout fraud\n", flush=True)
        traffic = subprocess.Popen(
            [str(DEMO), "traffic", "--url", "http://127.0.0.1:10000",
             "--path", "/v2/models/fraud/infer",
             "--users", str(args.users), "--rps", str(args.rps), "--concurrency", "8",
             "--interval", "2", "--duration", str(args.duration)], cwd=ROOT)
        procs.append(traffic)
        walker = threading.Thread(target=scenarios, args=(rollout, stop, args.fast), daemon=True)
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
