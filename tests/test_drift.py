"""Prediction drift in a real Envoy: the filter counts every sampled prediction into the
plan's bins per variant and for the shadow, exported as Envoy stats; the counts equal a
numpy histogram of the very predictions the clients and the shadow model saw, and the
sidecar's drift figures equal a reference PSI / Jensen-Shannon computation (numpy) on
them within 1e-9. A candidate with the stable's distribution passes the
prediction_drift check, a shifted one fails it with the PSI in the reason."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from harness import Envoy, EnvoyConfig, Model, Sidecar, free_port, metric_samples, wait_for

FRAUD = "/v2/models/fraud/infer"
EDGES = [round(0.1 * i, 1) for i in range(11)]  # 10 score bins in [0, 1]
BINS = len(EDGES) + 2  # underflow, 10 intervals, overflow, other


# ------------------------------------------------------------------ reference computations

def reference_bins(predictions) -> np.ndarray:
    """The documented bins (core/src/distribution.rs): underflow, numpy's histogram over
    the edges (half-open, the last closed), overflow, other (not a finite number)."""
    p = np.asarray([x for x in predictions if isinstance(x, (int, float)) and np.isfinite(x)], dtype=float)
    # NaN, null and labels: the other bin
    other = len(predictions) - len(p)
    inner, _ = np.histogram(p, bins=EDGES)
    return np.concatenate([[np.sum(p < EDGES[0])], inner, [np.sum(p > EDGES[-1])], [other]]).astype(float)


def reference_psi(candidate: np.ndarray, stable: np.ndarray) -> float:
    """PSI with the documented smoothing: bins empty in both arms left out, 0.5 added to
    every remaining bin of both arms."""
    keep = (candidate > 0) | (stable > 0)
    c, s = candidate[keep], stable[keep]
    m = keep.sum()
    pc = (c + 0.5) / (c.sum() + 0.5 * m)
    ps = (s + 0.5) / (s.sum() + 0.5 * m)
    return float(np.sum((pc - ps) * np.log(pc / ps)))


def reference_js(candidate: np.ndarray, stable: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2, raw proportions (scipy's jensenshannon(base=2))."""
    p, q = candidate / candidate.sum(), stable / stable.sum()
    m = (p + q) / 2

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.sqrt(max(0.0, 0.5 * kl(p) + 0.5 * kl(q))))


def test_reference_psi_matches_a_hand_computation():
    # candidate 30/70 against stable 50/50 (core/src/analysis/drift.rs computes the same)
    c1, c2, s = 30.5 / 101, 70.5 / 101, 50.5 / 101
    want = (c1 - s) * np.log(c1 / s) + (c2 - s) * np.log(c2 / s)
    assert abs(reference_psi(np.array([30.0, 0, 70]), np.array([50.0, 0, 50])) - want) < 1e-15
    assert abs(reference_js(np.array([1.0, 0]), np.array([0.0, 1])) - 1.0) < 1e-15


# ------------------------------------------------------------------ the stack

def bodies(n: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    return [json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                    "data": [round(rnd.uniform(-6, 6), 3) for _ in range(4)]}]}).encode()
            for _ in range(n)]


def plugin(c: dict, policy: dict | None = None, shadow_percent: float = 100) -> None:
    r = c["plan"]["rollouts"][0]
    r["variants"] = [{"name": "stable", "weight": 50}, {"name": "canary", "weight": 50}]
    r.pop("targeting", None)
    r["output"] = {"pointer": "/outputs/0/data", "min": 0, "max": 1, "distribution": {"edges": EDGES}}
    r["shadow"] = {"cluster": "model_shadow", "percent": shadow_percent, "timeout_ms": 5000, "max_in_flight": 512}
    if policy is not None:
        r["policy"] = policy


def send(envoy: Envoy, n: int, seed: int) -> dict[str, list]:
    """n requests from n users, each with its own body; the predictions answered, by variant."""
    work = list(enumerate(bodies(n, seed)))
    local = threading.local()

    def one(item):
        i, body = item
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = http.client.HTTPConnection("127.0.0.1", envoy.port(), timeout=30)
        c.request("POST", FRAUD, body=body,
                  headers={"content-type": "application/json", "x-user-id": f"user-{seed}-{i}"})
        r = c.getresponse()
        data = r.read()
        assert r.status == 200, data
        return r.getheader("x-model-variant"), json.loads(data.replace(b"NaN", b'"NaN"'))

    out: dict[str, list] = {"stable": [], "canary": []}
    with ThreadPoolExecutor(8) as pool:
        for variant, answer in pool.map(one, work):
            p = answer["outputs"][0]["data"][0]
            out[variant].append(float("nan") if p == "NaN" else p)
    return out


def exported_bins(envoy: Envoy) -> dict[str, np.ndarray]:
    s = metric_samples(envoy.prometheus())
    bins = {"stable": np.zeros(BINS), "canary": np.zeros(BINS), "shadow": np.zeros(BINS)}
    for (name, labels), v in s.items():
        labels = dict(labels)
        if labels.get("rollout") != "fraud" or "bin" not in labels:
            continue
        if name == "model_rollout_predictions_total":
            bins[labels["variant"]][int(labels["bin"])] += v
        elif name == "model_rollout_shadow_predictions_total":
            bins["shadow"][int(labels["bin"])] += v
    return bins


def shadow_predictions(shadow: Model, n: int) -> list:
    with urllib.request.urlopen(f"{shadow.url}/admin/requests?limit={n}", timeout=5) as r:
        entries = json.load(r)
    return [float("nan") if e["prediction"] == "NaN" else e["prediction"]
            for e in entries if e.get("status") == 200]


def test_exported_bins_equal_a_numpy_histogram_of_the_predictions(procs):
    stable = Model(procs, "stable")
    canary = Model(procs, "canary", "--score-shift", "1.0", "--nan-rate", "0.02", "--seed", "3")
    shadow = Model(procs, "shadow", "--score-shift", "-0.5")
    cfg = EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port,
                                   "model_shadow": shadow.port})
    cfg.edit_plugin(plugin)
    envoy = Envoy(procs, cfg, concurrency=2)
    n = 1500
    answered = send(envoy, n, seed=1)
    assert len(answered["stable"]) > 500 and len(answered["canary"]) > 500
    want = {v: reference_bins(p) for v, p in answered.items()}
    assert want["canary"][-1] > 0, "the canary's NaN answers land in the other bin"
    shadow_preds = wait_for(lambda: (lambda p: p if len(p) == n else None)(shadow_predictions(shadow, n)),
                            timeout=15)
    assert shadow_preds, "the shadow answered every copy"
    want["shadow"] = reference_bins(shadow_preds)

    def settled():
        got = exported_bins(envoy)
        return got if all(got[k].sum() == want[k].sum() for k in want) else None

    got = wait_for(settled, timeout=10)
    assert got, f"bins never reached the expected totals: {exported_bins(envoy)} vs {want}"
    for k in want:
        assert np.array_equal(got[k], want[k]), (k, got[k], want[k])
    # the shifted canary drifted, the stable did not drift from itself
    assert reference_psi(want["canary"], want["stable"]) > 0.25
    assert reference_psi(want["stable"], want["stable"]) == 0.0


# ------------------------------------------------------------------ the sidecar's figures

INTERVAL = 15  # one window holds all the traffic of a case


def drift_stack(procs, canary_args):
    """Models, the sidecar judging prediction drift (PSI and JS, one interval of
    INTERVAL s, the first failure rolls back) reading Envoy's admin stats, Envoy."""
    stable = Model(procs, "stable")
    canary = Model(procs, "canary", *canary_args)
    cfg = EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port})
    port = free_port()
    cfg.upstreams({"rollout_control": port})
    policy = {"steps": [{"weight": 50, "min_duration_s": 3600, "min_requests": 1}],
              "interval_s": INTERVAL, "failure_limit": 1, "inconclusive_limit": 1000,
              "checks": [{"name": "psi", "metric": "prediction_drift", "method": "psi", "max": 0.25,
                          "min_samples": 500},
                         {"name": "js", "metric": "prediction_drift", "method": "js", "max": 0.1,
                          "min_samples": 500}]}

    def edit(c):
        plugin(c, policy)
        c["plan"]["rollouts"][0].pop("shadow")

    cfg.edit_plugin(edit)
    plan = cfg.plugin()["plan"]
    sidecar = Sidecar(procs, plan, port=port, extra=[
        "--envoy-admin", f"http://127.0.0.1:{cfg.admin_port}", "--analysis-tick-ms", "250"])
    envoy = Envoy(procs, cfg, concurrency=2)
    return sidecar, envoy


def first_judgement(sidecar) -> dict | None:
    status, _, a = sidecar.call("GET", "/v1/rollouts/fraud/analysis?limit=20")
    assert status == 200, a
    judged = [d for d in a["decisions"] if d.get("verdict")]
    return judged[-1] if judged else None


@pytest.mark.parametrize("case, canary_args", [("identical", ()), ("shifted", ("--score-shift", "1.0"))])
def test_sidecar_drift_figures_equal_numpy_on_the_same_predictions(procs, case, canary_args):
    sidecar, envoy = drift_stack(procs, canary_args)

    def engine_ready():
        s = sidecar.call("GET", "/v1/status")[2]
        envoys = (s.get("policy_engine") or {}).get("envoys") or []
        started = (s["rollouts"][0].get("policy") or {}).get("state") == "progressing"
        return started and envoys and envoys[0]["ok"]

    assert wait_for(engine_ready, timeout=15), sidecar.call("GET", "/v1/status")[2]
    time.sleep(1.0)  # the sidecar's baseline read of Envoy is taken before any traffic
    answered = send(envoy, 3000, seed=5 if case == "identical" else 6)
    want = {v: reference_bins(p) for v, p in answered.items()}
    d = wait_for(lambda: first_judgement(sidecar), timeout=INTERVAL + 10, interval=0.5)
    assert d, "no evaluation"
    checks = {c["name"]: c for c in d["checks"]}
    for name, reference in (("psi", reference_psi), ("js", reference_js)):
        c = checks[name]
        drift = c["drift"]
        # the sidecar's window holds exactly the predictions the clients received
        assert np.array_equal(np.array(drift["candidate_bins"]), want["canary"]), (name, drift, want)
        assert np.array_equal(np.array(drift["stable_bins"]), want["stable"]), (name, drift, want)
        figure = reference(want["canary"], want["stable"])
        assert abs(c["candidate"] - figure) <= 1e-9, (name, c["candidate"], figure)
        expected = "passed" if case == "identical" else "failed"
        assert c["verdict"] == expected, (name, c)
    if case == "identical":
        assert d["verdict"] == "passed" and d["action"] == "stay", d
        assert sidecar.plan()["rollouts"][0]["progress"]["state"] == "progressing"
    else:
        psi = reference_psi(want["canary"], want["stable"])
        assert psi > 0.25
        assert wait_for(lambda: sidecar.plan()["rollouts"][0]["progress"]["state"] == "rolled_back", timeout=5)
        reason = sidecar.plan()["rollouts"][0]["progress"]["note"]
        assert f"PSI {psi:.3f} > max 0.25 (major shift)" in reason, reason
        weights = {v["name"]: v["weight"] for v in sidecar.plan()["rollouts"][0]["variants"]}
        assert weights == {"stable": 100, "canary": 0}
