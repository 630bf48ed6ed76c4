"""Model metadata (rollouts[].variants[].model): it round-trips through the plan, the
sidecar's API and history, and the response header a real Envoy returns with
`echo.model`; invalid metadata is refused naming the field, by the sidecar's API and by
Envoy's validation of a static plan."""

from __future__ import annotations

import json
import time

import pytest

from harness import Envoy, EnvoyConfig, Model, Sidecar, metric, metric_samples, send_all, validate, wait_for

FRAUD = "/v2/models/fraud/infer"
DIGEST = "sha256:" + "3f" * 32
STABLE_MODEL = {"name": "fraud-xgb", "version": "2.3.0", "uri": "s3://models/fraud-xgb/2.3.0",
                "created": "2025-05-02T09:30:00Z"}
CANARY_MODEL = {"name": "fraud-xgb", "version": "2.4.1", "image_digest": DIGEST,
                "created": "2025-06-01T12:00:00.5+02:00", "notes": "retrained on May data"}


def plan_with_models() -> dict:
    plan = EnvoyConfig().plugin()["plan"]
    r = plan["rollouts"][0]
    r["variants"] = [{"name": "stable", "weight": 50, "model": STABLE_MODEL},
                     {"name": "canary", "weight": 50, "model": CANARY_MODEL}]
    r.pop("targeting", None)
    r["experiment"] = {"metric": "conversion", "samples_per_variant": 100}
    return plan


def in_force(envoy) -> float:
    return metric(metric_samples(envoy.prometheus()), "model_rollout_plan_version")


def test_metadata_round_trips_through_api_history_and_the_response_header(procs):
    sidecar = Sidecar(procs, EnvoyConfig().plugin()["plan"])
    stable, canary = Model(procs, "stable"), Model(procs, "canary")
    cfg = EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port,
                                   "rollout_control": sidecar.port})
    cfg.edit_plugin(lambda c: c["echo"].update({"model": "x-model-version"}))
    envoy = Envoy(procs, cfg)

    plan = plan_with_models()
    plan["version"] = sidecar.plan()["version"] + 1
    status, _, body = sidecar.call("PUT", "/v1/plan?reason=models", plan)
    assert status == 200, body
    version = body["version"]
    # API: exactly what was written
    served = sidecar.plan()["rollouts"][0]["variants"]
    assert [v["model"] for v in served] == [STABLE_MODEL, CANARY_MODEL]
    # history: the version's plan keeps it
    status, _, at = sidecar.call("GET", f"/v1/plan/versions/{version}")
    assert status == 200
    assert at["rollouts"][0]["variants"][1]["model"] == CANARY_MODEL
    # status, the shadow report and the A/B report name the models
    status_doc = sidecar.call("GET", "/v1/status")[2]
    assert [v.get("model") for v in status_doc["rollouts"][0]["variants"]] == [STABLE_MODEL, CANARY_MODEL]
    shadow = sidecar.call("GET", "/v1/shadow-report?rollout=fraud")[2]
    assert shadow["models"] == {"stable": STABLE_MODEL, "canary": CANARY_MODEL}, shadow
    ab = sidecar.call("GET", "/v1/experiments/fraud")[2]
    assert ab["models"] == {"stable": STABLE_MODEL, "canary": CANARY_MODEL}, ab
    # a later weight change keeps the metadata with its variant
    status, _, _ = sidecar.call("POST", "/v1/rollouts/fraud/promote?reason=go", {})
    assert status == 200
    promoted = sidecar.plan()["rollouts"][0]["variants"]
    assert promoted[0]["name"] == "canary" and promoted[0]["model"] == CANARY_MODEL

    # the response header: the variant that served, as name:version
    assert wait_for(lambda: in_force(envoy) == sidecar.plan()["version"], timeout=10)
    time.sleep(0.3)
    sidecar.call("PUT", "/v1/plan?reason=split", {**plan, "version": sidecar.plan()["version"] + 1})
    assert wait_for(lambda: in_force(envoy) == sidecar.plan()["version"], timeout=10)
    time.sleep(0.3)
    rs = send_all(envoy.port(), [(FRAUD, {"x-user-id": f"meta-{i}", "x-model-version": "forged"})
                                 for i in range(300)])
    want = {"stable": "fraud-xgb:2.3.0", "canary": "fraud-xgb:2.4.1"}
    seen = set()
    for r in rs:
        assert r.status == 200
        variant = r.headers["x-model-variant"]
        assert r.headers["x-model-version"] == want[variant]
        # the model that answered is the one the header names
        assert r.json()["model_version"] == variant
        seen.add(variant)
    assert seen == {"stable", "canary"}


def test_the_model_header_is_off_by_default(procs):
    stable, canary = Model(procs, "stable"), Model(procs, "canary")
    cfg = EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port})
    cfg.edit_plugin(lambda c: c.update({"plan": plan_with_models()}))
    envoy = Envoy(procs, cfg)
    rs = send_all(envoy.port(), [(FRAUD, {"x-user-id": f"u{i}"}) for i in range(20)])
    assert all(r.status == 200 and "x-model-version" not in r.headers for r in rs)


@pytest.mark.parametrize("field, value, path", [
    ("image_digest", "sha256:" + "3F" * 32, "model.image_digest"),
    ("uri", "ftp://models/fraud", "model.uri"),
    ("created", "2025-02-30T00:00:00Z", "model.created"),
    ("version", "2.4.1 beta", "model.version"),
])
def test_invalid_metadata_is_refused_naming_the_field(procs, tmp_path, field, value, path):
    sidecar = Sidecar(procs, plan_with_models())
    before = sidecar.plan()
    bad = json.loads(json.dumps(before))
    bad["rollouts"][0]["variants"][1]["model"][field] = value
    status, _, body = sidecar.call("PUT", "/v1/plan?reason=bad", bad)
    assert status == 400, body
    assert body["field"] == f"rollouts[0].variants[1].{path}", body
    assert sidecar.plan() == before, "the plan in force stays"
    # the filter refuses the same plan in a static configuration, naming the field
    cfg = EnvoyConfig().edit_plugin(lambda c: c.update({"plan": bad}))
    r = validate(cfg.write(str(tmp_path)))
    assert r.returncode != 0
    assert f"invalid plugin configuration: plan.rollouts[0].variants[1].{path}:" in r.stdout + r.stderr
