"""Progressive delivery end to end: real Envoy running model_rollout.wasm, the real
rollout-control sidecar with its policy engine reading Envoy's admin stats, demo
models with fault knobs. Short intervals here; the defaults users get are minutes."""

import json
import time
import urllib.request

import pytest

from harness import (Envoy, EnvoyConfig, Load, Model, Sidecar, free_port, metric, metric_samples,
                     send_all, wait_for)

FRAUD = "/v2/models/fraud/infer"
USERS = [f"user-{i}" for i in range(4000)]
INTERVAL = 1


def faults(model, **knobs):
    req = urllib.request.Request(f"{model.url}/admin/faults", data=json.dumps(knobs).encode(),
                                 method="POST", headers={"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def policy(steps, checks, **extra):
    return {"steps": steps, "interval_s": INTERVAL, "checks": checks, "failure_limit": 2,
            "inconclusive_limit": 1000, **extra}


CHECKS = [
    {"metric": "error_rate", "max_increase": 0.05, "min_samples": 20},
    {"metric": "latency", "percentile": 99, "max_increase": 150, "min_samples": 20},
    {"metric": "invalid_output_rate", "max": 0.05, "min_samples": 20},
    {"metric": "shadow_disagreement_rate", "max": 0.1, "min_samples": 20},
]


def step(weight, **kw):
    return {"weight": weight, "min_duration_s": 1, "min_requests": 20, **kw}


class Stack:
    """Models, sidecar (policy engine on) and Envoy, wired together."""

    def __init__(self, procs, pol, canary_args=(), shadow_args=(), trip=None, shadow_percent=100,
                 experiment=None):
        self.procs = procs
        self.stable = Model(procs, "stable")
        self.canary = Model(procs, "canary", *canary_args)
        self.shadow = Model(procs, "shadow", *shadow_args)
        cfg = EnvoyConfig().upstreams({"model_stable": self.stable.port, "model_canary": self.canary.port,
                                       "model_shadow": self.shadow.port})
        plan = cfg.plugin()["plan"]
        r = plan["rollouts"][0]
        r["variants"] = [{"name": "stable", "weight": 100}, {"name": "canary", "weight": 0}]
        r["shadow"]["percent"] = shadow_percent
        r["shadow"]["max_in_flight"] = 1000
        r.pop("targeting", None)
        if trip:
            pol = {**pol, "trip": trip}
        r["policy"] = pol
        if experiment:
            r["experiment"] = experiment
        self.plan = plan
        port = free_port()
        cfg.upstreams({"rollout_control": port})
        self.sidecar = Sidecar(procs, plan, port=port, extra=[
            "--envoy-admin", f"http://127.0.0.1:{cfg.admin_port}", "--analysis-tick-ms", "250"])
        cfg.edit_plugin(lambda c: c.update(plan=plan))
        self.envoy = Envoy(procs, cfg, concurrency=1)

    def rollout(self) -> dict:
        return next(r for r in self.sidecar.plan()["rollouts"] if r["name"] == "fraud")

    def progress(self) -> dict:
        return self.rollout().get("progress") or {}

    def weights(self) -> dict:
        return {v["name"]: v["weight"] for v in self.rollout()["variants"]}

    def history(self) -> list:
        return self.sidecar.call("GET", "/v1/history?limit=1000")[2]

    def in_force(self) -> float:
        return metric(metric_samples(self.envoy.prometheus()), "model_rollout_plan_version")


def test_healthy_candidate_walks_every_step_and_becomes_stable(procs):
    s = Stack(procs, policy([step(5), step(25), step(50), step(100)], CHECKS))
    load = Load(s.envoy.port(), USERS, threads=3, max_seconds=90)
    try:
        done = wait_for(lambda: s.progress().get("state") == "complete", timeout=80, interval=0.5)
    finally:
        rows = load.stop()
    assert done, s.progress()
    assert all(r[1] == 200 for r in rows)
    r = s.rollout()
    assert [v["name"] for v in r["variants"]][0] == "canary" and r["variants"][0]["weight"] == 100
    reasons = [h["reason"] for h in s.history() if h["author"] == "policy"]
    for w in (5, 25, 50, 100):
        assert any(f"({w} %)" in x or f"{w} %" in x for x in reasons), (w, reasons)
    # the proxies follow: everyone is on the candidate now
    assert wait_for(lambda: s.in_force() == s.sidecar.plan()["version"], timeout=5)
    time.sleep(0.3)  # the version gauge is shared by the listeners' root contexts: one tick for the other
    rs = send_all(s.envoy.port(), [(FRAUD, {"x-user-id": u}) for u in USERS[:300]])
    assert {x.json()["model_version"] for x in rs} == {"canary"}


@pytest.mark.parametrize("fault, check", [
    ({"error_rate": 0.2}, "error_rate"),
    ({"latency_ms": 300}, "latency"),
    ({"nan_rate": 0.1}, "invalid_output_rate"),
])
def test_bad_candidate_is_rolled_back_naming_the_check(procs, fault, check):
    s = Stack(procs, policy([step(25), step(50), step(100)], CHECKS))
    # enough concurrency that a 300 ms candidate still answers min_samples per window
    load = Load(s.envoy.port(), USERS, threads=16, max_seconds=90)
    try:
        assert wait_for(lambda: s.weights().get("canary") == 25, timeout=15), s.rollout()
        t_bad = time.monotonic()
        faults(s.canary, **fault)
        rolled = wait_for(lambda: s.progress().get("state") == "rolled_back", timeout=30, interval=0.2)
        took = time.monotonic() - t_bad
    finally:
        load.stop()
    assert rolled, s.progress()
    reason = [h["reason"] for h in s.history() if h["author"] == "policy"][0]
    print(f"\n{check}: rolled back {took:.1f} s after the fault (interval {INTERVAL} s): {reason}")
    assert check in reason and "rollback" in reason
    # first bad window + failure_limit (2) intervals, plus Envoy's 1 s stats flush and the tick
    assert took <= 2 * INTERVAL + 4, took
    assert s.weights()["canary"] == 0
    assert wait_for(lambda: s.in_force() == s.sidecar.plan()["version"], timeout=5)
    time.sleep(0.3)  # the version gauge is shared by the listeners' root contexts: one tick for the other
    rs = send_all(s.envoy.port(), [(FRAUD, {"x-user-id": u}) for u in USERS[:1000]])
    leaked = [(x.headers["x-model-variant"], x.headers.get("x-request-id")) for x in rs
              if x.headers["x-model-variant"] != "stable"]
    assert not leaked, (len(leaked), leaked[:3], s.rollout(), s.in_force())
    # no flapping: it stays rolled back
    time.sleep(3 * INTERVAL)
    assert s.progress()["state"] == "rolled_back" and s.weights()["canary"] == 0


def test_shadow_disagreement_rolls_back_at_the_shadow_step(procs):
    s = Stack(procs, policy([{"shadow_only": True, "min_duration_s": 1, "min_requests": 20}, step(50)], CHECKS),
              shadow_args=("--disagree-rate", "0.3"))
    # the demo shadow disagrees on a fixed share of *inputs*: vary them
    load = Load(s.envoy.port(), USERS, threads=3, max_seconds=60, vary_body=True)
    try:
        t0 = time.monotonic()
        rolled = wait_for(lambda: s.progress().get("state") == "rolled_back", timeout=30, interval=0.2)
        took = time.monotonic() - t0
    finally:
        rows = load.stop()
    assert rolled, s.progress()
    reason = [h["reason"] for h in s.history() if h["author"] == "policy"][0]
    print(f"\nshadow_disagreement_rate: rolled back {took:.1f} s after start: {reason}")
    assert "shadow_disagreement_rate" in reason
    assert not any(r[2] == "canary" for r in rows), "a shadow-only step never routes users to the candidate"


def test_no_traffic_stays_inconclusive_and_never_advances(procs):
    s = Stack(procs, policy([step(5), step(100)], CHECKS))
    assert wait_for(lambda: s.progress().get("step") == 0, timeout=10)
    time.sleep(6 * INTERVAL)
    p = s.progress()
    assert p["step"] == 0 and p["state"] == "progressing", p
    status = s.sidecar.call("GET", "/v1/status")[2]
    pol = next(r for r in status["rollouts"] if r["name"] == "fraud")["policy"]
    assert "inconclusive" in json.dumps(pol), pol


def test_sidecar_restart_mid_rollout_resumes_at_the_same_step(procs):
    s = Stack(procs, policy([step(5), step(25, gate=True), step(100)], CHECKS))
    load = Load(s.envoy.port(), USERS, threads=3, max_seconds=90)
    try:
        assert wait_for(lambda: s.progress().get("state") == "waiting", timeout=40, interval=0.3), s.progress()
        before = s.progress()
        version = s.sidecar.plan()["version"]
        s.sidecar.kill9()
        time.sleep(1)
        s.sidecar.start()
        time.sleep(3 * INTERVAL)
        after = s.progress()
        assert after["step"] == before["step"] == 1 and after["state"] == "waiting", (before, after)
        assert s.sidecar.plan()["version"] == version
        # and it carries on from there when promoted
        s.sidecar.op("fraud", "promote", reason="looks good")
        assert wait_for(lambda: s.progress().get("state") == "complete", timeout=30, interval=0.3), s.progress()
    finally:
        load.stop()


def test_local_trip_beats_the_global_rollback(procs):
    # the gate holds the candidate at 30 % (still watched) until the fault comes
    s = Stack(procs, policy([step(30, gate=True), step(100)], CHECKS),
              trip={"window_s": 3, "min_requests": 20, "max_error_rate": 0.3})
    load = Load(s.envoy.port(), USERS, threads=3, max_seconds=90, pause=0.002)
    try:
        assert wait_for(lambda: s.weights().get("canary") == 30, timeout=15)
        assert wait_for(lambda: s.in_force() == s.sidecar.plan()["version"], timeout=5)
        time.sleep(2)
        t_bad = time.monotonic()
        faults(s.canary, error_rate=1.0)
        assert wait_for(lambda: s.progress().get("state") == "rolled_back", timeout=30, interval=0.1), s.progress()
        t_global = time.monotonic()
        reason = [h["reason"] for h in s.history() if h["author"] == "policy"][0]
        version = s.sidecar.plan()["version"]
        assert wait_for(lambda: s.in_force() == version, timeout=5)
        t_global_proxy = time.monotonic()
        time.sleep(1)
    finally:
        rows = load.stop()
    bad = [r for r in rows if r[0] >= t_bad and r[2] == "canary" and r[1] >= 500]
    assert bad
    first_bad = bad[0][0]
    last_canary = max(r[0] for r in rows if r[2] == "canary")
    local = last_canary - first_bad
    global_ = t_global_proxy - first_bad
    print(f"\nfirst bad answer -> last request routed to the candidate: local trip {local * 1000:.0f} ms; "
          f"global rollback in force at the proxy after {global_ * 1000:.0f} ms "
          f"(decided {1000 * (t_global - first_bad):.0f} ms)")
    print(f"global rollback reason: {reason}")
    assert local < 3.0
    assert last_canary < t_global, "the proxy stopped the candidate before the global rollback"
    # the global loop confirmed the proxy's trip (the candidate had no traffic left to judge)
    assert "local_trip" in reason or "error_rate" in reason, reason


def test_ab_verdict_through_envoy(procs):
    """Outcomes keyed by the correlation ids Envoy returned: a big lift is found significant."""
    import random
    s = Stack(procs, policy([step(50, gate=True)], []),
              experiment={"metric": "conversion", "alpha": 0.05, "samples_per_variant": 1500})
    assert wait_for(lambda: s.weights().get("canary") == 50, timeout=15)
    assert wait_for(lambda: s.in_force() == s.sidecar.plan()["version"], timeout=5)
    rs = send_all(s.envoy.port(), [(FRAUD, {"x-user-id": u}) for u in USERS[:3600]])
    rnd = random.Random(7)
    outcomes = [{"correlation_id": r.headers["x-request-id"],
                 "reward": int(rnd.random() < (0.2 if r.headers["x-model-variant"] == "canary" else 0.1))}
                for r in rs]
    time.sleep(2)  # assignment records flush every second
    for i in range(0, len(outcomes), 1000):
        status, _, body = s.sidecar.call("POST", "/v1/feedback", {"outcomes": outcomes[i:i + 1000]})
        assert status == 200 and body["unknown"] == 0, body
    status, _, rep = s.sidecar.call("GET", "/v1/experiments/fraud")
    assert status == 200, rep
    assert rep["status"] == "complete", rep
    text = json.dumps(rep)
    assert '"significant": true' in text and "canary" in text
