"""Live plans: the real rollout-control sidecar (or a fake in its place) behind a real
Envoy running model_rollout.wasm with --concurrency 2."""

import http.client
import http.server
import json
import statistics
import threading
import time
from pathlib import Path

import pytest

from harness import (INFER_BODY, Envoy, EnvoyConfig, Load, Model, Sidecar, cli, expected_bucket,
                     free_port, metric, metric_samples, send_all, wait_for)

FRAUD = "/v2/models/fraud/infer"
USERS = [f"user-{i}" for i in range(2000)]


def demo_plan() -> dict:
    return EnvoyConfig().plugin()["plan"]


def stack(procs, sidecar_port=None, concurrency=2, edit=None):
    stable = Model(procs, "stable")
    canary = Model(procs, "canary")
    cfg = EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port})
    if sidecar_port:
        cfg.upstreams({"rollout_control": sidecar_port})
    if edit:
        cfg.edit_plugin(edit)
    return Envoy(procs, cfg, concurrency)


def in_force(envoy) -> float:
    return metric(metric_samples(envoy.prometheus()), "model_rollout_plan_version")


def wait_in_force(envoy, version, timeout=10.0) -> bool:
    """The version gauge is shared by every root context (workers x listeners); the
    others adopt a published plan within their 100 ms tick, so allow one more tick."""
    ok = wait_for(lambda: in_force(envoy) == version, timeout=timeout)
    time.sleep(0.3)
    return ok


def wasm_failures(envoy) -> float:
    s = metric_samples(envoy.prometheus())
    return sum(v for (name, _), v in s.items()
               if name.startswith("envoy_wasm_model_rollout_vm_reload") and "success" not in name)


def variants_of(envoy, users):
    rs = send_all(envoy.port(), [(FRAUD, {"x-user-id": u}) for u in users])
    assert all(r.status == 200 for r in rs)
    return {u: r.headers["x-model-variant"] for u, r in zip(users, rs)}


# ---------------------------------------------------------------- propagation

def test_weight_change_reaches_every_worker(procs):
    """Time from the API call to the first request routed by the new plan, on every
    worker: 16 keep-alive connections spread over Envoy's 2 workers each probe until
    they see the new plan; the slowest connection closes the measurement."""
    sidecar = Sidecar(procs, demo_plan())
    envoy = stack(procs, sidecar.port, concurrency=2)
    assert wait_for(lambda: in_force(envoy) >= 1, timeout=10)
    conns = [http.client.HTTPConnection("127.0.0.1", envoy.port(), timeout=10) for _ in range(16)]
    lags_max, lags_med = [], []
    try:
        for change in range(20):
            want = "canary" if change % 2 == 0 else "stable"
            weights = {"stable": 0, "canary": 100} if want == "canary" else {"stable": 100, "canary": 0}
            t0 = time.monotonic()
            sidecar.weights("fraud", weights, reason=f"propagation-{change}")
            seen = [None] * len(conns)

            def probe(i):
                deadline = t0 + 10
                while time.monotonic() < deadline:
                    conns[i].request("POST", FRAUD, body=INFER_BODY, headers={"x-user-id": f"probe-{i}"})
                    r = conns[i].getresponse()
                    r.read()
                    if r.getheader("x-model-variant") == want:
                        seen[i] = time.monotonic() - t0
                        return
                    time.sleep(0.005)

            threads = [threading.Thread(target=probe, args=(i,)) for i in range(len(conns))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert all(s is not None for s in seen), f"change {change}: not every worker switched in 10 s"
            lags_max.append(max(seen))
            lags_med.append(statistics.median(seen))
    finally:
        for c in conns:
            c.close()
    report = (f"propagation over 20 changes (poll interval 1000 ms, 2 workers): "
              f"median {statistics.median(lags_max) * 1000:.0f} ms, max {max(lags_max) * 1000:.0f} ms")
    print("\n" + report)
    Path(procs.tmp.name).parent.joinpath("model-rollout-propagation.txt").write_text(report + "\n")
    assert max(lags_max) < 2.5, report
    assert wasm_failures(envoy) == 0


def test_blue_green_switch_under_load_has_no_errors(procs):
    sidecar = Sidecar(procs, demo_plan())
    envoy = stack(procs, sidecar.port)
    v = sidecar.op("fraud", "switch", {"variant": "stable"}, reason="all blue")
    assert wait_in_force(envoy, v, timeout=10)
    load = Load(envoy.port(), USERS, threads=4)
    try:
        time.sleep(1.0)
        t_green = time.monotonic()
        sidecar.op("fraud", "switch", {"variant": "canary"}, reason="to green")
        time.sleep(3.0)
        t_blue = time.monotonic()
        sidecar.op("fraud", "switch", {"variant": "stable"}, reason="back to blue")
        time.sleep(3.0)
    finally:
        rows = load.stop()
    assert not load.errors, load.errors[:3]
    assert rows and all(status == 200 for _, status, *_ in rows), "non-2xx during the switch"
    settled_green = [r for r in rows if t_green + 2.0 <= r[0] < t_blue]
    settled_blue = [r for r in rows if r[0] >= t_blue + 2.0]
    assert settled_green and {r[2] for r in settled_green} == {"canary"}
    assert {r[3] for r in settled_green} == {"canary"}
    assert settled_blue and {r[2] for r in settled_blue} == {"stable"}
    before = [r for r in rows if r[0] < t_green]
    assert before and {r[2] for r in before} == {"stable"}


def test_sidecar_killed_for_30s_under_load_changes_nothing(procs):
    sidecar = Sidecar(procs, demo_plan())
    envoy = stack(procs, sidecar.port)
    v = sidecar.weights("fraud", {"stable": 70, "canary": 30}, reason="before the outage")
    assert wait_in_force(envoy, v, timeout=10)
    before = variants_of(envoy, USERS)
    load = Load(envoy.port(), USERS, threads=2, pause=0.01)
    try:
        sidecar.kill9()
        time.sleep(30)
        s = metric_samples(envoy.prometheus())
        staleness = metric(s, "model_rollout_control_staleness_seconds")
        unreachable = metric(s, "model_rollout_control_poll_errors_total", reason="unreachable")
    finally:
        rows = load.stop()
    assert not load.errors and rows and all(r[1] == 200 for r in rows)
    assert all(r[2] == before[r[4]] for r in rows), "a user changed variant while the sidecar was down"
    assert staleness >= 25, staleness
    assert unreachable >= 20, unreachable
    # back up on the same port and store: the next change propagates
    sidecar.start()
    v = sidecar.weights("fraud", {"stable": 100, "canary": 0}, reason="after the outage")
    assert wait_in_force(envoy, v, timeout=5)
    assert set(variants_of(envoy, USERS[:300]).values()) == {"stable"}
    assert wait_for(lambda: metric(metric_samples(envoy.prometheus()),
                                   "model_rollout_control_staleness_seconds") <= 2, timeout=5)


# ---------------------------------------------------------------- a bad sidecar

class FakeSidecar:
    """Answers polls the way a broken sidecar would."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.plan = None
        fake = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                mode = fake.mode
                if mode == "hang":
                    time.sleep(2.0)
                    body = json.dumps(fake.plan).encode()
                    status = 200
                elif mode == "500":
                    status, body = 500, b'{"error":"boom"}'
                elif mode == "garbage":
                    status, body = 200, b"\x00\xffnot json at all"
                elif mode == "truncated":
                    status, body = 200, json.dumps(fake.plan).encode()[:-7]
                elif mode == "invalid":
                    bad = json.loads(json.dumps(fake.plan))
                    bad["version"] += 100
                    bad["rollouts"][0]["variants"][0]["weight"] = 33
                    status, body = 200, json.dumps(bad).encode()
                elif mode == "huge":
                    status, body = 200, json.dumps(fake.plan).encode() + b" " * (10 * 1024 * 1024)
                elif mode == "lower":
                    low = json.loads(json.dumps(fake.plan))
                    low["version"] = 1
                    low["rollouts"][0]["variants"] = [{"name": "stable", "weight": 0}, {"name": "canary", "weight": 100}]
                    status, body = 200, json.dumps(low).encode()
                else:
                    status, body = 200, json.dumps(fake.plan).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_bad_sidecar_answers_keep_the_plan(procs):
    fake = FakeSidecar()
    try:
        plan = demo_plan()
        plan["version"] = 5
        plan["rollouts"][0]["variants"] = [{"name": "stable", "weight": 60}, {"name": "canary", "weight": 40}]
        fake.plan = plan
        envoy = stack(procs, fake.port)
        assert wait_in_force(envoy, 5, timeout=10)
        baseline = variants_of(envoy, USERS[:1000])
        expectations = {
            "500": ("model_rollout_control_poll_errors_total", {"reason": "status"}),
            "garbage": ("model_rollout_control_plans_rejected_total", {"reason": "malformed"}),
            "truncated": ("model_rollout_control_plans_rejected_total", {"reason": "malformed"}),
            "invalid": ("model_rollout_control_plans_rejected_total", {"reason": "invalid"}),
            "huge": ("model_rollout_control_plans_rejected_total", {"reason": "oversized"}),
            "lower": ("model_rollout_control_plans_rejected_total", {"reason": "stale_version"}),
            "hang": ("model_rollout_control_poll_errors_total", {"reason": "timeout"}),
        }
        for mode, (name, labels) in expectations.items():
            start = metric(metric_samples(envoy.prometheus()), name, **labels)
            fake.mode = mode
            moved = wait_for(lambda: metric(metric_samples(envoy.prometheus()), name, **labels) >= start + 2,
                             timeout=12)
            assert moved, f"{mode}: {name}{labels} did not move"
            assert in_force(envoy) == 5, mode
            assert variants_of(envoy, USERS[:1000]) == baseline, f"{mode} changed routing"
        assert wasm_failures(envoy) == 0
        s = metric_samples(envoy.prometheus())
        assert metric(s, "model_rollout_host_errors_total") == 0
    finally:
        fake.close()


# ---------------------------------------------------------------- API and CLI

def test_api_validation_auth_history_restore(procs):
    sidecar = Sidecar(procs, demo_plan(), token="s3cret-token")
    plan = sidecar.plan()
    bad = json.loads(json.dumps(plan))
    bad["rollouts"][0]["variants"][1]["weight"] = 11
    status, _, body = sidecar.call("PUT", "/v1/plan?reason=bad", bad)
    assert status == 400 and body["field"] == "rollouts[0].variants", body
    assert sidecar.plan() == plan
    status, _, _ = sidecar.call("PUT", "/v1/plan", plan, auth=False)
    assert status == 401
    status, _, _ = sidecar.call("POST", "/v1/rollouts/fraud/rollback", {}, auth=False)
    assert status == 401
    status, _, _ = sidecar.call("POST", "/v1/rollouts/fraud/rollback", {},
                                headers={"authorization": "Bearer wrong"}, auth=False)
    assert status == 401
    assert sidecar.call("GET", "/v1/history", auth=False)[0] == 200  # reads stay open

    v2 = sidecar.weights("fraud", {"stable": 80, "canary": 20}, reason="step-20")
    v3 = sidecar.op("fraud", "pause", reason="hold")
    v4 = sidecar.op("fraud", "rollback", reason="bad-canary")
    status, _, hist = sidecar.call("GET", "/v1/history")
    reasons = {h["version"]: h["reason"] for h in hist}
    assert reasons[v2] == "step-20" and reasons[v3] == "hold" and reasons[v4] == "bad-canary"
    assert 1 in reasons
    status, _, at2 = sidecar.call("GET", f"/v1/plan/versions/{v2}")
    status, _, restored = sidecar.call("POST", f"/v1/plan/versions/{v2}/restore?reason=undo")
    assert status == 200
    now = sidecar.plan()
    assert now["version"] == restored["version"] == v4 + 1
    # GET /v1/plan adds the store's epoch; stored versions do not carry it.
    assert {**now, "version": 0, "epoch": None} == {**at2, "version": 0, "epoch": None}


def test_cli_assign_agrees_with_the_proxy_for_10000_users(procs, tmp_path):
    sidecar = Sidecar(procs, demo_plan())
    envoy = stack(procs, sidecar.port, concurrency=2)
    v = sidecar.weights("fraud", {"stable": 67.5, "canary": 32.5}, reason="cli check")
    assert wait_in_force(envoy, v, timeout=10)
    users = [f"cli-user-{i}" for i in range(10_000)]
    proxy = variants_of(envoy, users)
    f = tmp_path / "users.txt"
    f.write_text("\n".join(users) + "\n")
    out = cli("--server", sidecar.url, "assign", "--rollout", "fraud", "--users-file", str(f)).stdout
    got = dict(line.split("\t")[:2] for line in out.strip().splitlines())
    assert got == proxy
    share = sum(1 for v in proxy.values() if v == "canary") / len(users) * 100
    assert 31.5 <= share <= 33.5


def test_cli_status_reports_proxies(procs):
    sidecar = Sidecar(procs, demo_plan())
    envoy = stack(procs, sidecar.port, concurrency=1)
    assert wait_for(lambda: in_force(envoy) >= 1, timeout=10)
    time.sleep(1.5)
    status = json.loads(cli("--server", sidecar.url, "--json", "status").stdout)
    assert status["version"] == 1
    assert any(p["id"] == "demo-envoy" and p["plan_version"] == 1 for p in status["proxies"]), status
    text = cli("--server", sidecar.url, "status").stdout
    assert "fraud" in text and "demo-envoy" in text
    r = cli("--server", sidecar.url, "set-weight", "--rollout", "fraud", "--variant", "canary",
            "--weight", "150", check=False)
    assert r.returncode != 0
