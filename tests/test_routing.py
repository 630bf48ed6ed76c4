"""The routing core in a real Envoy 1.40 running the built model_rollout.wasm with
the shipped envoy/demo.yaml (ports substituted) and demo model servers."""

import json
import re
import uuid
from pathlib import Path

import pytest
import yaml

from harness import (ROOT, Envoy, EnvoyConfig, Model, Processes, expected_bucket, metric,
                     metric_samples, send_all, validate, wait_for)

FRAUD = "/v2/models/fraud/infer"
CHURN = "/v2/models/churn/infer"
USERS = [f"user-{i}" for i in range(20_000)]


@pytest.fixture(scope="module")
def stack():
    procs = Processes()
    try:
        stable = Model(procs, "stable")
        canary = Model(procs, "canary")
        cfg = EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port})
        envoy = Envoy(procs, cfg)
        yield procs, stable, canary, cfg, envoy
    finally:
        procs.stop_all()


def start(procs, edit=None, concurrency=1, native_echo=True):
    stable = Model(procs, "stable")
    canary = Model(procs, "canary")
    cfg = EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port})
    if edit:
        cfg.edit_plugin(edit)
    if not native_echo:
        cfg.without_native_echo()
    return Envoy(procs, cfg, concurrency)


def assign_users(envoy, users, path=FRAUD, listener="public"):
    rs = send_all(envoy.port(listener), [(path, {"x-user-id": u}) for u in users])
    assert all(r.status == 200 for r in rs), {r.status for r in rs}
    return {u: r for u, r in zip(users, rs)}


def set_weights(cfg, stable, canary):
    cfg["plan"]["rollouts"][0]["variants"] = [
        {"name": "stable", "weight": stable}, {"name": "canary", "weight": canary}]


# ---------------------------------------------------------------- configs

def test_every_shipped_envoy_config_validates():
    files = sorted((ROOT / "envoy").rglob("*.yaml"))
    assert files
    for f in files:
        r = validate(f)
        assert r.returncode == 0, f"{f}: {r.stdout}{r.stderr}"


@pytest.mark.parametrize("edit, field", [
    (lambda c: set_weights(c, 90, 11), "plan.rollouts[0].variants"),
    (lambda c: c["plan"]["rollouts"][0]["variants"][0].update(weight=89.999), "plan.rollouts[0].variants[0].weight"),
    (lambda c: c["plan"]["rollouts"][0].update(salt=""), "plan.rollouts[0].salt"),
    (lambda c: c.update(subjekt={}), "subjekt"),
    (lambda c: c["plan"]["rollouts"][0]["targeting"][0].update(variant="nope"), "plan.rollouts[0].targeting[0].variant"),
])
def test_invalid_config_fails_validate_naming_the_field(tmp_path, edit, field):
    cfg = EnvoyConfig().edit_plugin(edit)
    r = validate(cfg.write(str(tmp_path)))
    assert r.returncode != 0
    assert f"invalid plugin configuration: {field}:" in r.stdout + r.stderr


# ---------------------------------------------------------------- assignment

def test_route_follows_the_variant_header_set_by_the_filter(stack):
    """Envoy picks the route before filters run; the canary route exists only via the
    header the filter sets, so a canary answer proves the route was re-evaluated."""
    _, _, canary, _, envoy = stack
    before = canary.stats()["requests"]
    # the trusted listener keeps x-tester (the public one sets it from a verified JWT only)
    r = send_all(envoy.port("trusted"), [(FRAUD, {"x-tester": "yes"})])[0]
    assert r.headers["x-model-variant"] == "canary"
    assert r.json()["model_version"] == "canary"
    assert canary.stats()["requests"] == before + 1


def test_header_bytes_that_are_not_utf8_neither_break_the_filter_nor_unstick(stack):
    """HTTP allows obs-text bytes (0x80-0xff) in header values. The proxy-wasm SDK's
    header parse aborted the VM on them, and every later request on that worker went
    unrouted; the filter reads them in place as U+FFFD, so the key stays sticky."""
    _, _, _, _, envoy = stack
    users = ["caf\xe9", "\xff\xfe-9", "user-1"]  # sent as Latin-1 bytes by http.client
    rs = send_all(envoy.port(), [(FRAUD, {"x-user-id": u}) for u in users * 2], threads=1)
    assert [r.status for r in rs] == [200] * 6
    for u, r in zip(users * 2, rs):
        key = u.encode("latin-1").decode("utf-8", errors="replace")
        want = "canary" if expected_bucket("fraud-v2", key) >= 9000 else "stable"
        assert r.headers.get("x-model-variant") == want, u
        assert r.json()["model_version"] == want, u


def test_sticky_split_of_20000_users_matches_weights_and_documented_hash(stack):
    _, _, _, _, envoy = stack
    got = assign_users(envoy, USERS)
    canary = [u for u, r in got.items() if r.headers["x-model-variant"] == "canary"]
    share = len(canary) / len(USERS) * 100
    assert 9.0 <= share <= 11.0, share
    for u, r in got.items():
        # the model that answered is the one the variant header names
        assert r.json()["model_version"] == r.headers["x-model-variant"], u
        # and it is exactly the README's formula
        want = "canary" if expected_bucket("fraud-v2", u) >= 9000 else "stable"
        assert r.headers["x-model-variant"] == want, u


def test_same_users_land_identically_on_two_workers_and_after_restart(procs, stack):
    _, _, _, _, one_worker = stack
    baseline = {u: r.headers["x-model-variant"] for u, r in assign_users(one_worker, USERS).items()}
    envoy = start(procs, concurrency=2)
    two = {u: r.headers["x-model-variant"] for u, r in assign_users(envoy, USERS).items()}
    assert two == baseline
    envoy.restart()
    again = {u: r.headers["x-model-variant"] for u, r in assign_users(envoy, USERS).items()}
    assert again == baseline


def test_raising_canary_from_5_to_25_keeps_every_canary_user(procs):
    envoy = start(procs, edit=lambda c: set_weights(c, 95, 5))
    at5 = {u for u, r in assign_users(envoy, USERS).items() if r.headers["x-model-variant"] == "canary"}
    procs.stop(envoy.proc)
    envoy = start(procs, edit=lambda c: set_weights(c, 75, 25))
    at25 = {u for u, r in assign_users(envoy, USERS).items() if r.headers["x-model-variant"] == "canary"}
    assert 4.0 <= len(at5) / len(USERS) * 100 <= 6.0
    assert 24.0 <= len(at25) / len(USERS) * 100 <= 26.0
    assert at5 <= at25, f"{len(at5 - at25)} users left the canary"


def test_new_salt_reshuffles_users(procs, stack):
    _, _, _, _, envoy = stack
    old = {u for u, r in assign_users(envoy, USERS[:5000]).items() if r.headers["x-model-variant"] == "canary"}
    resalted = start(procs, edit=lambda c: c["plan"]["rollouts"][0].update(salt="fraud-v3"))
    new = {u for u, r in assign_users(resalted, USERS[:5000]).items() if r.headers["x-model-variant"] == "canary"}
    # independent 10 % draws overlap on about 10 % of the canary users
    assert len(old & new) < 0.25 * len(old)


def test_requests_without_a_key_split_by_weight(stack):
    _, _, _, _, envoy = stack
    rs = send_all(envoy.port(), [(FRAUD, {})] * 10_000)
    share = sum(r.headers["x-model-variant"] == "canary" for r in rs) / len(rs) * 100
    assert 8.5 <= share <= 11.5, share
    assert all(r.json()["model_version"] == r.headers["x-model-variant"] for r in rs)


def test_cookie_is_the_subject_when_no_header(stack):
    _, _, _, _, envoy = stack
    users = USERS[:2000]
    by_header = assign_users(envoy, users)
    by_cookie = send_all(envoy.port(), [(FRAUD, {"cookie": f"theme=dark; uid={u}"}) for u in users])
    for u, r in zip(users, by_cookie):
        assert r.headers["x-model-variant"] == by_header[u].headers["x-model-variant"]


def test_two_rollouts_on_two_path_prefixes(stack):
    _, _, _, _, envoy = stack
    got = assign_users(envoy, USERS[:4000], path=CHURN)
    names = [r.headers["x-model-variant"] for r in got.values()]
    assert set(names) == {"v1", "v2"}
    share = names.count("v2") / len(names) * 100
    assert 47 <= share <= 53, share
    for u, r in got.items():
        assert r.headers["x-model-variant"] == ("v2" if expected_bucket("churn-ab-1", u) >= 5000 else "v1")
        assert r.json()["model_version"] == ("canary" if r.headers["x-model-variant"] == "v2" else "stable")


def test_unmatched_path_passes_untouched(stack):
    _, stable, _, _, envoy = stack
    r = send_all(envoy.port(), [("/v2/models/other/infer", {"x-user-id": "user-1", "x-model-variant": "canary"})])[0]
    assert r.status == 200
    assert "x-model-variant" not in r.headers
    body = r.json()
    assert body["model_version"] == "stable"  # the client's header was stripped at the edge
    upstream = body["parameters"]["headers"]
    assert "x-model-variant" not in upstream
    assert "x-request-id" not in upstream  # the filter did not touch it


# ---------------------------------------------------------------- targeting / override

def test_targeting_pins_matching_requests(stack):
    _, _, _, _, envoy = stack
    canary_users = [u for u in USERS[:3000] if expected_bucket("fraud-v2", u) >= 9000]
    stable_users = [u for u in USERS[:3000] if expected_bucket("fraud-v2", u) < 9000][:300]
    # on the trusted listener: the public one strips both (tests/test_trust.py)
    eu = send_all(envoy.port("trusted"), [(FRAUD, {"x-user-id": u, "x-region": "eu"}) for u in canary_users])
    assert {r.headers["x-model-variant"] for r in eu} == {"stable"}
    testers = send_all(envoy.port("trusted"), [(FRAUD, {"x-user-id": u, "x-tester": "1"}) for u in stable_users])
    assert {r.headers["x-model-variant"] for r in testers} == {"canary"}
    assert {r.json()["model_version"] for r in testers} == {"canary"}


@pytest.mark.parametrize("enabled", [False, True])
def test_override_header(procs, enabled):
    envoy = start(procs, edit=lambda c: c["override"].update(enabled=enabled))
    stable_users = [u for u in USERS[:500] if expected_bucket("fraud-v2", u) < 9000][:100]
    # trusted listener: the override header reaches the filter
    rs = send_all(envoy.port("trusted"), [(FRAUD, {"x-user-id": u, "x-model-override": "canary"}) for u in stable_users])
    want = "canary" if enabled else "stable"
    for r in rs:
        assert r.headers["x-model-variant"] == want
        assert r.json()["model_version"] == want
        assert "x-model-override" not in r.json()["parameters"]["headers"]
    # public edge: stripped before the filter whatever the filter's setting
    rs = send_all(envoy.port("public"), [(FRAUD, {"x-user-id": u, "x-model-override": "canary"}) for u in stable_users])
    assert {r.headers["x-model-variant"] for r in rs} == {"stable"}
    assert all("x-model-override" not in r.json()["parameters"]["headers"] for r in rs)


# ---------------------------------------------------------------- correlation ids

def test_correlation_ids(stack):
    _, _, _, _, envoy = stack
    rs = send_all(envoy.port(), [(FRAUD, {"x-user-id": f"u{i}"}) for i in range(10_000)])
    ids = [r.headers["x-request-id"] for r in rs]
    assert len(set(ids)) == len(ids) == 10_000
    for r in rs[:500]:
        rid = r.headers["x-request-id"]
        assert uuid.UUID(rid).version == 4
        assert r.json()["parameters"]["headers"]["x-request-id"] == rid  # upstream saw the same id

    # a client's own id is never kept: the proxy mints the key that attributes outcomes
    mine = "trace-0af7651916cd43dd8448eb211c80319c"
    r = send_all(envoy.port(), [(FRAUD, {"x-request-id": mine})])[0]
    assert r.headers["x-request-id"] != mine and uuid.UUID(r.headers["x-request-id"]).version == 4
    assert r.json()["parameters"]["headers"]["x-request-id"] == r.headers["x-request-id"]
    r = send_all(envoy.port(), [(FRAUD, {"x-request-id": "<bad id>"})])[0]
    assert r.headers["x-request-id"] != "<bad id>"
    assert uuid.UUID(r.headers["x-request-id"]).version == 4


def test_echo_can_be_turned_off(procs):
    # Neither the filter (echo off) nor Envoy (the shipped native echo removed) echoes.
    envoy = start(procs, edit=lambda c: c.update(echo={"correlation_id": False, "variant": False}),
                  native_echo=False)
    r = send_all(envoy.port(), [(FRAUD, {"x-user-id": "user-1"})])[0]
    assert "x-model-variant" not in r.headers and "x-request-id" not in r.headers
    upstream = r.json()["parameters"]["headers"]
    assert upstream["x-model-variant"] in ("stable", "canary") and upstream["x-request-id"]


def test_echo_by_envoy_as_shipped_or_by_the_filter(procs):
    # As shipped (issue 13): the filter's echo is off and Envoy echoes the id and the
    # variant the filter set; without Envoy's echo, the filter's (its default) does.
    shipped = start(procs)
    assert shipped.config.plugin()["echo"] == {"correlation_id": False, "variant": False}
    by_filter = start(procs, edit=lambda c: c.pop("echo"), native_echo=False)
    for envoy in (shipped, by_filter):
        rs = send_all(envoy.port(), [(FRAUD, {"x-user-id": f"user-{i}"}) for i in range(40)]
                      + [(FRAUD, {"x-request-id": "trace-0af7651916cd43dd"})])
        for r in rs:
            upstream = r.json()["parameters"]["headers"]
            assert r.headers["x-model-variant"] == upstream["x-model-variant"]
            assert r.headers["x-request-id"] == upstream["x-request-id"]
        assert {r.headers["x-model-variant"] for r in rs} == {"stable", "canary"}
        assert rs[-1].headers["x-request-id"] != "trace-0af7651916cd43dd"  # the proxy's own id
        # an unmatched request is not assigned: no variant is echoed
        other = send_all(envoy.port(), [("/v2/models/other/infer", {})])[0]
        assert other.status == 200 and "x-model-variant" not in other.headers


# ---------------------------------------------------------------- metrics

def test_metrics_equal_the_requests_sent(procs):
    stable = Model(procs, "stable")
    canary = Model(procs, "canary", "--error-rate", "1")
    cfg = EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port})
    envoy = Envoy(procs, cfg, concurrency=2)
    rs = send_all(envoy.port(), [(FRAUD, {"x-user-id": u}) for u in USERS[:3000]]
                  + [(FRAUD, {})] * 500 + [(CHURN, {"x-user-id": u}) for u in USERS[:700]]
                  + [("/v2/models/other/infer", {})] * 50)
    count = {}
    for r in rs:
        v = r.headers.get("x-model-variant", "-")
        count[v] = count.get(v, 0) + 1
    fraud_canary = sum(1 for r in rs[:3500] if r.headers["x-model-variant"] == "canary")
    assert all(r.status == 500 for r in rs[:3500] if r.headers["x-model-variant"] == "canary")

    def settled():
        s = metric_samples(envoy.prometheus())
        return s if metric(s, "model_rollout_unmatched_total") == 50 and \
            metric(s, "model_rollout_latency_ms_count", rollout="churn", variant="v2") \
            + metric(s, "model_rollout_latency_ms_count", rollout="churn", variant="v1") == 700 else None

    s = wait_for(settled, timeout=15)
    assert s, "metrics did not settle"
    assert metric(s, "model_rollout_requests_total", rollout="fraud", variant="canary") == fraud_canary
    assert metric(s, "model_rollout_requests_total", rollout="fraud", variant="stable") == 3500 - fraud_canary
    assert metric(s, "model_rollout_responses_total", rollout="fraud", variant="canary", **{"class": "5xx"}) == fraud_canary
    assert metric(s, "model_rollout_responses_total", rollout="fraud", variant="stable", **{"class": "2xx"}) == 3500 - fraud_canary
    assert metric(s, "model_rollout_requests_total", rollout="churn", variant="v1") == count["v1"]
    assert metric(s, "model_rollout_requests_total", rollout="churn", variant="v2") == count["v2"]
    assert metric(s, "model_rollout_latency_ms_count", rollout="fraud", variant="stable") == 3500 - fraud_canary
    assert metric(s, "model_rollout_assignments_total", rollout="fraud", reason="random") == 500
    assert metric(s, "model_rollout_assignments_total", rollout="fraud", reason="sticky") == 3000
    assert metric(s, "model_rollout_plan_version") == 1
    assert metric(s, "model_rollout_host_errors_total") == 0
    # and no VM crashed: a failed VM would have been reloaded or failed open
    assert metric(s, "envoy_wasm_model_rollout_vm_reload") == 0
    assert metric(s, "envoy_wasm_model_rollout_vm_reload_failure") == 0
