"""Progressive delivery across a fleet: three real Envoys (two workers each, the built
.wasm) in front of the same demo models, one real Prometheus (Debian's package) scraping
their /stats/prometheus every second, and rollout-control reading only Prometheus
(`--prometheus-url`): the checks are judged on figures summed over the three gateways.

Short intervals: the sidecar reads Prometheus every 2 s over the last 2 s, evaluations
every 2 s."""

from __future__ import annotations

import json
import re
import time
import urllib.request

from harness import (Envoy, EnvoyConfig, Load, Model, Prometheus, Sidecar, free_port, metric, metric_samples,
                     wait_for)

USERS = [f"user-{i}" for i in range(3000)]
INTERVAL = 2
GATEWAYS = 3


def faults(model, **knobs):
    req = urllib.request.Request(f"{model.url}/admin/faults", data=json.dumps(knobs).encode(),
                                 method="POST", headers={"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def step(weight, **kw):
    return {"weight": weight, "min_duration_s": 1, "min_requests": 20, **kw}


def policy(steps, checks=None, **extra):
    return {"steps": steps, "interval_s": INTERVAL, "failure_limit": 2, "inconclusive_limit": 1000,
            "checks": checks or [{"metric": "error_rate", "max": 0.1, "min_samples": 30}], **extra}


class Fleet:
    """Models, three gateways, Prometheus scraping them, the sidecar reading Prometheus.
    `canary_behind_last`: the last gateway's canary cluster is its own instance of the
    canary model (so a fault can hit the candidate behind one gateway only)."""

    def __init__(self, procs, pol, canary_behind_last: bool = False, models_scraped: bool = False,
                 canary_args=()):
        self.procs = procs
        self.stable = Model(procs, "stable")
        self.canary = Model(procs, "canary", *canary_args)
        self.shadow = Model(procs, "shadow")
        self.canary_last = Model(procs, "canary") if canary_behind_last else self.canary
        control = free_port()
        configs = []
        for i in range(GATEWAYS):
            canary = self.canary_last if i == GATEWAYS - 1 else self.canary
            cfg = EnvoyConfig().upstreams({"model_stable": self.stable.port, "model_canary": canary.port,
                                           "model_shadow": self.shadow.port, "rollout_control": control})
            cfg.doc["node"]["id"] = f"gateway-{i}"
            configs.append(cfg)
        plan = configs[0].plugin()["plan"]
        r = plan["rollouts"][0]
        r["variants"] = [{"name": "stable", "weight": 100}, {"name": "canary", "weight": 0}]
        r.pop("targeting", None)
        r.pop("shadow", None)
        r["policy"] = pol
        self.plan = plan
        models = [self.stable.url, self.canary.url] if models_scraped else None
        self.prom = Prometheus(procs, [f"http://127.0.0.1:{c.admin_port}" for c in configs], models=models)
        self.sidecar = Sidecar(procs, plan, port=control, extra=[
            "--prometheus-url", self.prom.url, "--analysis-tick-ms", str(INTERVAL * 1000),
            "--prometheus-min-range-ms", "1800", "--prometheus-timeout-ms", "1000"])
        self.envoys = []
        for cfg in configs:
            cfg.edit_plugin(lambda c: c.update(plan=plan))
            self.envoys.append(Envoy(procs, cfg, concurrency=2))

    def load(self, **kw) -> list[Load]:
        """The same steady load through every gateway."""
        return [Load(e.port(), USERS, threads=2, max_seconds=150, **kw) for e in self.envoys]

    def rollout(self) -> dict:
        return next(r for r in self.sidecar.plan()["rollouts"] if r["name"] == "fraud")

    def progress(self) -> dict:
        return self.rollout().get("progress") or {}

    def weights(self) -> dict:
        return {v["name"]: v["weight"] for v in self.rollout()["variants"]}

    def policy_status(self) -> dict:
        status = self.sidecar.call("GET", "/v1/status")[2]
        return next(r for r in status["rollouts"] if r["name"] == "fraud")["policy"]

    def engine(self) -> dict:
        return self.sidecar.call("GET", "/v1/status")[2]["policy_engine"]

    def reasons(self) -> list[str]:
        return [h["reason"] for h in self.sidecar.call("GET", "/v1/history?limit=1000")[2] if h["author"] == "policy"]

    def reads(self, result: str) -> float:
        with urllib.request.urlopen(self.sidecar.url + "/metrics", timeout=5) as r:
            samples = metric_samples(r.read().decode())
        return metric(samples, "rollout_control_metrics_source_reads_total", source="prometheus", result=result)

    def fleet_error_rate(self, seconds: int) -> float:
        """The candidate's 5xx share over every gateway, asked of Prometheus directly."""
        q = (f'sum(increase(model_rollout_responses_total{{rollout="fraud",variant="canary",class="5xx"}}[{seconds}s]))'
             f' / sum(increase(model_rollout_responses_total{{rollout="fraud",variant="canary"}}[{seconds}s]))')
        res = self.prom.query(q)
        return float(res[0]["value"][1]) if res else float("nan")


def stop_all(loads: list[Load]) -> list:
    rows = []
    for load in loads:
        rows += load.stop()
    return rows


def error_rate_in(reason: str) -> float:
    """The candidate's error rate a rollback reason quotes (`check error_rate failed 2 intervals: candidate 0.305 > max 0.1`)."""
    m = re.search(r"error_rate.*?candidate ([0-9]+\.[0-9]+)", reason)
    assert m, reason
    return float(m.group(1))


def test_healthy_candidate_walks_to_100_and_a_prometheus_outage_holds_the_step(procs):
    f = Fleet(procs, policy([step(20), step(40, min_duration_s=12), step(100)]))
    loads = f.load()
    try:
        assert wait_for(lambda: f.weights().get("canary") == 40, timeout=40, interval=0.5), f.rollout()
        assert wait_for(lambda: f.engine()["envoys"][0]["ok"], timeout=10), f.engine()
        f.prom.stop()
        t_stop = time.monotonic()
        # Held: not a single interval judged healthy while Prometheus is gone.
        assert wait_for(lambda: f.reads("unreachable") >= 2, timeout=15), f.engine()
        assert wait_for(lambda: f.policy_status()["consecutive_inconclusive"] >= 3, timeout=15), f.policy_status()
        pol = f.policy_status()
        assert f.weights()["canary"] == 40 and pol["state"] == "progressing", pol
        assert pol["verdict"] == "inconclusive", pol
        eng = f.engine()["envoys"][0]
        assert not eng["ok"] and eng["error"], eng
        outage = time.monotonic() - t_stop
        # Back on the same port with the same storage: the rollout goes on.
        f.prom.start()
        assert wait_for(lambda: f.progress().get("state") == "complete", timeout=60, interval=0.5), f.rollout()
    finally:
        rows = stop_all(loads)
    print(f"\nPrometheus down {outage:.1f} s: held at 40 %, "
          f"{f.reads('unreachable'):.0f} unreachable reads, {f.reads('ok'):.0f} ok")
    assert rows and all(r[1] == 200 for r in rows)
    assert f.rollout()["variants"][0] == {"name": "canary", "weight": 100} or \
        f.weights() == {"canary": 100, "stable": 0}, f.rollout()
    reasons = f.reasons()
    assert any("40 %" in x for x in reasons) and any("100 %" in x or "complete" in x for x in reasons), reasons


def test_candidate_failing_30_percent_rolled_back_on_the_fleet_wide_figure(procs):
    f = Fleet(procs, policy([step(30, gate=True), step(100)]), canary_args=("--error-rate", "0.3"))
    loads = f.load()
    try:
        rolled = wait_for(lambda: f.progress().get("state") == "rolled_back", timeout=40, interval=0.3)
        fleet = f.fleet_error_rate(10)
    finally:
        rows = stop_all(loads)
    assert rolled, f.rollout()
    reason = f.reasons()[-1] if "rollback" in f.reasons()[-1] else next(x for x in f.reasons() if "rollback" in x)
    quoted = error_rate_in(reason)
    by_gateway = {e.config.doc["node"]["id"] for e in f.envoys}
    print(f"\nrolled back: {reason}\n(Prometheus, last 10 s, every gateway: {fleet:.3f})")
    assert "error_rate" in reason and "rollback" in reason
    assert 0.18 <= quoted <= 0.42, quoted
    assert len(by_gateway) == GATEWAYS
    # every gateway sent candidate traffic: the figure is the fleet's, not one proxy's
    assert {r[2] for r in rows} >= {"stable", "canary"}
    assert f.weights()["canary"] == 0


def test_candidate_failing_behind_one_gateway_caught_when_the_fleet_rate_crosses(procs):
    f = Fleet(procs, policy([step(30, gate=True), step(100)]), canary_behind_last=True)
    loads = f.load()
    try:
        assert wait_for(lambda: f.progress().get("state") == "waiting", timeout=30, interval=0.3), f.rollout()
        # 15 % of the candidate's answers fail behind one gateway of three: ~5 % fleet-wide,
        # under the 10 % threshold. It stays.
        faults(f.canary_last, error_rate=0.15)
        time.sleep(5 * INTERVAL)
        quiet = f.fleet_error_rate(8)
        assert f.progress()["state"] == "waiting", (f.rollout(), quiet)
        # 60 % behind that gateway: ~20 % fleet-wide. Rolled back.
        faults(f.canary_last, error_rate=0.6)
        rolled = wait_for(lambda: f.progress().get("state") == "rolled_back", timeout=30, interval=0.3)
    finally:
        stop_all(loads)
    assert rolled, f.rollout()
    reason = next(x for x in f.reasons() if "rollback" in x)
    quoted = error_rate_in(reason)
    print(f"\none gateway at 15 %: fleet {quiet:.3f}, stayed; at 60 %: {reason}")
    assert quiet < 0.1, quiet
    # the figure judged is the fleet's (~0.2), far below what the one gateway saw (0.6)
    assert 0.1 < quoted < 0.35, quoted



def test_custom_promql_check_on_a_business_metric(procs):
    # The demo models export demo_model_answers_total{version, decision} (a fraud score
    # >= 0.5 declines the transaction); Prometheus scrapes them too. The candidate's
    # scores are shifted up: healthy by status and latency, but it declines far more.
    # The check's own PromQL is judged per variant ({variant} substituted).
    decline = ('sum(increase(demo_model_answers_total{version="{variant}",decision="decline"}[10s]))'
               ' / sum(increase(demo_model_answers_total{version="{variant}"}[10s]))')
    checks = [{"metric": "error_rate", "max": 0.1, "min_samples": 30},
              {"metric": "stat", "name": "decline_rate", "stat": decline, "max_increase": 0.2, "min_samples": 30}]
    f = Fleet(procs, policy([step(30, gate=True), step(100)], checks), models_scraped=True,
              canary_args=("--score-shift", "8"))
    # inputs summing to -100..100: the stable model's score sigmoid(0.1 * sum) declines
    # about half of them, the candidate's (+8 logits) about 90 %
    def body_of(i: int) -> bytes:
        return json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                       "data": [(i % 201) - 100, 0]}]}).encode()

    loads = f.load(body_of=body_of)
    try:
        rolled = wait_for(lambda: f.progress().get("state") == "rolled_back", timeout=60, interval=0.3)
        shares = f.prom.values('sum by (version) (increase(demo_model_answers_total{decision="decline"}[20s]))'
                               ' / sum by (version) (increase(demo_model_answers_total[20s]))', "version")
        status = f.policy_status()
    finally:
        stop_all(loads)
    assert rolled, (status, shares)
    reason = next(x for x in f.reasons() if "rollback" in x)
    print(f"\ndecline share by version (Prometheus): {shares}\n{reason}")
    assert "decline_rate" in reason and "error_rate" not in reason, reason
    assert shares["canary"] > shares["stable"] + 0.2, shares
