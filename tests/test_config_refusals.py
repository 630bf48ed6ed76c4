"""Nonsense configuration is refused, naming the field (issue 11, item 8): reserved,
hop-by-hop and pseudo headers for the filter's header roles, one header in two roles,
control characters in header names and values, authorities and paths, plan
versions above 2^53 - 1; and (issue 10) a subject key or targeting condition reading an
undeclared client header, a cookie, or a claim without a configured JWT payload.

Each configuration is the shipped envoy/demo.yaml with one edit, checked by the real
filter in a real Envoy (`envoy --mode validate` loads the .wasm and runs its
`on_configure`; one is also started for real and must refuse to start) and by
`rollout-control validate-config`. The sidecar refuses the same values in a plan PUT."""

import json
import subprocess

import pytest

from harness import CONTROL, ENVOY, ROOT, EnvoyConfig, Sidecar, validate

# (edit of the demo plugin configuration, field named, words of the reason)
CASES = [
    (lambda c: c.update(correlation_header="content-length"), "correlation_header", "reserved"),
    (lambda c: c.update(variant_header="authorization"), "variant_header", "reserved"),
    (lambda c: c.update(variant_header=":authority"), "variant_header", "pseudo header"),
    (lambda c: c["override"].update(header="transfer-encoding"), "override.header", "reserved"),
    (lambda c: c["echo"].update(model="set-cookie"), "echo.model", "reserved"),
    (lambda c: c["subject"].update(header="x-request-id"), "subject.header",
     "already correlation_header"),
    (lambda c: c.update(correlation_header="x-id\r\nx-evil"), "correlation_header",
     "control character"),
    (lambda c: c["control"].update(authority="rollout-control\r\nx-evil: 1"), "control.authority",
     "control character"),
    (lambda c: c["plan"]["rollouts"][0]["shadow"].update(path="/v2\r\nx-evil: 1"),
     "plan.rollouts[0].shadow.path", "control character"),
    (lambda c: c["plan"]["rollouts"][0]["match"].update(path_prefix="/v2/models/fraud/\n"),
     "plan.rollouts[0].match.path_prefix", "control character"),
    (lambda c: c["plan"]["rollouts"][0]["targeting"][0]["when"][0].update(equals="eu\x00"),
     "plan.rollouts[0].targeting[0].when[0].equals", "control character"),
    (lambda c: c["plan"].update(version=18446744073709551615), "plan.version", "2^53"),
    # issue 10: the subject key and targeting read only declared or verified sources
    (lambda c: c["subject"].pop("client_controlled"), "subject.header", "sent by clients"),
    (lambda c: c.update(subject={"cookie": "uid"}), "subject.cookie", "set by clients"),
    (lambda c: c.pop("jwt"), "subject.claim", "jwt.payload_in_metadata"),
    (lambda c: (c.pop("jwt"), c["subject"].pop("claim"),
                c["plan"]["rollouts"][0]["targeting"][0].update(
                    when=[{"claim": "groups", "contains": "testers"}])),
     "plan.rollouts[0].targeting[0].when[0].claim", "jwt.payload_in_metadata"),
    (lambda c: c["subject"].update(peer="spiffe"), "subject.peer", "uri_san"),
]
IDS = [c[1] + ":" + c[2].split()[0] for c in CASES]


def bad_config(edit) -> EnvoyConfig:
    return EnvoyConfig().edit_plugin(edit)


@pytest.mark.parametrize("edit, field, words", CASES, ids=IDS)
def test_the_filter_in_envoy_refuses_it_naming_the_field(tmp_path, edit, field, words):
    r = validate(bad_config(edit).write(str(tmp_path)))
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    line = next((ln for ln in out.splitlines() if "invalid plugin configuration:" in ln), "")
    assert f"invalid plugin configuration: {field}: " in line, out
    assert words in line, line


@pytest.mark.skipif(not CONTROL.exists(), reason="build first: target/native/rollout-control")
@pytest.mark.parametrize("edit, field, words", CASES, ids=IDS)
def test_validate_config_exits_non_zero_naming_the_field(tmp_path, edit, field, words):
    path = tmp_path / "plugin.json"
    path.write_text(json.dumps(bad_config(edit).plugin()))
    r = subprocess.run([str(CONTROL), "validate-config", str(path)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0, r.stdout
    assert f"{field}: " in r.stderr + r.stdout and words in r.stderr + r.stdout, r.stderr


def test_a_real_envoy_does_not_start_with_it(tmp_path):
    """Not only validation: an Envoy started with a refused configuration exits, naming
    the field, instead of serving with it."""
    path = bad_config(CASES[0][0]).write(str(tmp_path))
    r = subprocess.run([ENVOY, "-c", str(path), "--disable-hot-restart", "-l", "critical"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "invalid plugin configuration: correlation_header: " in r.stdout + r.stderr


@pytest.mark.skipif(not CONTROL.exists(), reason="build first: target/native/rollout-control")
def test_the_shipped_configuration_passes(tmp_path):
    path = tmp_path / "plugin.json"
    path.write_text(json.dumps(EnvoyConfig().plugin()))
    r = subprocess.run([str(CONTROL), "validate-config", str(path)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not CONTROL.exists(), reason="build first: target/native/rollout-control")
def test_the_sidecar_refuses_a_plan_put_with_a_control_character(procs):
    plan = EnvoyConfig().plugin()["plan"]
    sidecar = Sidecar(procs, plan)
    before = sidecar.plan()["version"]
    bad = json.loads(json.dumps(plan))
    bad["rollouts"][0]["match"]["path_prefix"] = "/v2/models/fraud/\r\nx-evil: 1"
    status, _, body = sidecar.call("PUT", "/v1/plan?reason=test", bad)
    assert status == 400, body
    assert body["field"] == "rollouts[0].match.path_prefix", body
    assert sidecar.plan()["version"] == before
