"""The local fast trip in a real Envoy (2 workers): when the candidate turns bad,
this proxy stops sending it traffic on its own, within the trip window."""

import json
import time
import urllib.request

from harness import Envoy, EnvoyConfig, Load, Model, metric, metric_samples

USERS = [f"user-{i}" for i in range(3000)]


def faults(model, **knobs):
    req = urllib.request.Request(f"{model.url}/admin/faults", data=json.dumps(knobs).encode(),
                                 method="POST", headers={"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def trip_stack(procs, trip):
    stable = Model(procs, "stable")
    canary = Model(procs, "canary")
    cfg = EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port})

    def edit(c):
        r = c["plan"]["rollouts"][0]
        r["variants"] = [{"name": "stable", "weight": 70}, {"name": "canary", "weight": 30}]
        r.pop("shadow", None)
        r["policy"] = {"steps": [{"weight": 30}], "trip": trip}
    cfg.edit_plugin(edit)
    return stable, canary, Envoy(procs, cfg, concurrency=2)


def measure(envoy, canary, bad):
    load = Load(envoy.port(), USERS, threads=4, pause=0.002)
    try:
        time.sleep(2.0)
        t_bad = time.monotonic()
        faults(canary, **bad)
        time.sleep(8.0)
    finally:
        rows = load.stop()
    assert not load.errors, load.errors[:3]
    before = [r for r in rows if r[0] < t_bad]
    after = [r for r in rows if r[0] >= t_bad]
    assert any(r[2] == "canary" for r in before), "canary had traffic before"
    return rows, t_bad, after


def test_errors_trip_the_proxy_within_the_window(procs):
    _, canary, envoy = trip_stack(procs, {"window_s": 3, "min_requests": 20, "max_error_rate": 0.2})
    rows, t_bad, after = measure(envoy, canary, {"error_rate": 1.0})
    bad = [r for r in after if r[2] == "canary" and r[1] >= 500]
    assert bad, "the canary never answered badly"
    first_bad = bad[0][0]
    last_canary = max(r[0] for r in after if r[2] == "canary")
    took = last_canary - first_bad
    print(f"\nlocal trip: first bad answer -> last request routed to the canary: {took * 1000:.0f} ms "
          f"({len(bad)} bad answers reached clients)")
    assert took < 3.0, took
    # afterwards: every user, canary users included, is served by stable without errors
    tail = [r for r in rows if r[0] > last_canary + 0.05]
    assert tail and {r[2] for r in tail} == {"stable"} and {r[1] for r in tail} == {200}
    s = metric_samples(envoy.prometheus())
    assert metric(s, "model_rollout_tripped", rollout="fraud") == 1
    assert metric(s, "model_rollout_trips_total", rollout="fraud") >= 1
    assert metric(s, "model_rollout_trip_rerouted_total", rollout="fraud") > 0


def test_invalid_outputs_trip_the_proxy(procs):
    _, canary, envoy = trip_stack(procs, {"window_s": 3, "min_requests": 20, "max_invalid_rate": 0.1})
    rows, t_bad, after = measure(envoy, canary, {"nan_rate": 0.5})
    canary_after = [r for r in after if r[2] == "canary"]
    assert canary_after
    took = max(r[0] for r in canary_after) - t_bad
    print(f"\nlocal trip on NaN outputs: fault start -> last request routed to the canary: {took * 1000:.0f} ms")
    assert took < 3.0
    assert metric(metric_samples(envoy.prometheus()), "model_rollout_tripped", rollout="fraud") == 1


def test_healthy_canary_never_trips(procs):
    _, canary, envoy = trip_stack(procs, {"window_s": 3, "min_requests": 20, "max_error_rate": 0.2})
    rows, t_bad, after = measure(envoy, canary, {"error_rate": 0.05})
    share = sum(1 for r in after if r[2] == "canary") / len(after)
    assert 0.25 <= share <= 0.35, share
    assert metric(metric_samples(envoy.prometheus()), "model_rollout_trips_total", rollout="fraud") == 0
