"""gateway-api/ (Istio with the Kubernetes Gateway API) and envoy-gateway/ (Envoy Gateway):
every document validated offline and strictly (tests/kube.py: Gateway API v1.6.1, Envoy
Gateway v1.9.0 and Istio 1.30.3 CRD schemas with their CEL rules; Kubernetes 1.34 for
built-in kinds), the schema check shown to refuse broken documents, the plugin
configurations parsed by the filter itself (in Envoy, and by `rollout-control
validate-config`), the pieces checked against each other and against istio/, and each
gateway's filter chain, built the way Istio and Envoy Gateway build it from these
manifests, run for real in Envoy 1.40 with the built .wasm.

envoy-gateway/envoyproxy.yaml is the one document without a CRD schema here (no
EnvoyProxy CRD in ../shared/schemas): its shape is checked field by field and its
bootstrap is validated by Envoy.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from harness import (CONTROL, ENVOY, ROOT, WASM, Model, Processes, Sidecar, demo_with_plugin, expected_bucket,
                     free_port, metric, metric_samples, send_all, validate, wait_for, wait_http)
from kube import crd_errors, documents, errors, go_json, istio_plugin_json, k8s_errors

FOLDERS = ("gateway-api", "envoy-gateway")
FRAUD = "/v2/models/fraud/infer"
CHURN = "/v2/models/churn/infer"
ROUTING_HEADERS = {"x-model-variant", "x-model-override"}


def docs(folder: str) -> list[dict]:
    return [d for _, d in documents(folder)]


def one(folder: str, kind: str, name: str | None = None) -> dict:
    found = [d for d in docs(folder) if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{folder}: {kind}/{name}: {len(found)} found"
    return found[0]


# ---------------------------------------------------------------- every document, strictly

def manifest_files() -> list[str]:
    return [f"{d}/{f.name}" for d in FOLDERS for f in sorted((ROOT / d).glob("*.yaml"))]


@pytest.mark.parametrize("relpath", manifest_files())
def test_every_document_validates_strictly(relpath):
    failures = []
    for i, doc in enumerate(yaml.safe_load_all((ROOT / relpath).read_text())):
        if doc is None:
            continue
        if doc.get("kind") == "EnvoyProxy":
            errs = envoyproxy_shape_errors(doc)
        else:
            errs = errors(doc)
        failures += [f"{relpath}#{i} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {e}" for e in errs]
    assert not failures, "\n".join(failures)


def test_the_folders_ship_what_each_style_needs():
    kinds = {f: {d["kind"] for d in docs(f)} for f in FOLDERS}
    assert kinds["gateway-api"] == {"Gateway", "ConfigMap", "HTTPRoute", "Service", "WasmPlugin",
                                    "TrafficExtension", "AuthorizationPolicy"}
    assert kinds["envoy-gateway"] == {"GatewayClass", "Gateway", "HTTPRoute", "EnvoyExtensionPolicy",
                                      "EnvoyProxy", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim",
                                      "Deployment", "Service", "NetworkPolicy"}
    # the Gateway API style deploys no control Deployment of its own: it uses istio/control.yaml's
    assert not any(d["kind"] == "Deployment" for d in docs("gateway-api"))


def good(folder: str, kind: str, name: str | None = None) -> dict:
    doc = copy.deepcopy(one(folder, kind, name))
    assert crd_errors(doc) == [], (kind, name)
    return doc


def _route_rule(d):
    return d["spec"]["rules"][0]


@pytest.mark.parametrize("folder, kind, mutate, expect", [
    # Gateway API: HTTPRoute
    ("gateway-api", "HTTPRoute", lambda d: _route_rule(d).update(backendRef=[]), "backendRef"),
    ("gateway-api", "HTTPRoute", lambda d: _route_rule(d)["matches"][0]["path"].update(value="v2/models/"),
     "must be an absolute path"),
    ("gateway-api", "HTTPRoute", lambda d: _route_rule(d)["matches"][0]["headers"][0].update(type="Prefix"),
     "Prefix"),
    ("gateway-api", "HTTPRoute", lambda d: _route_rule(d)["filters"].append(
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["x"]}}), "cannot be repeated"),
    ("gateway-api", "HTTPRoute", lambda d: _route_rule(d)["filters"][0].update(type="URLRewrite"),
     "filter.urlRewrite must be specified"),
    ("gateway-api", "HTTPRoute", lambda d: d["spec"]["parentRefs"].append(dict(d["spec"]["parentRefs"][0])),
     "sectionName must be unique"),
    ("gateway-api", "HTTPRoute", lambda d: _route_rule(d)["backendRefs"][0].pop("port"),
     "Must have port for Service reference"),
    # Gateway API: Gateway
    ("gateway-api", "Gateway", lambda d: d["spec"]["listeners"].append(dict(d["spec"]["listeners"][0])),
     "Listener name must be unique"),
    ("gateway-api", "Gateway", lambda d: d["spec"].pop("gatewayClassName"), "gatewayClassName"),
    ("gateway-api", "Gateway", lambda d: d["spec"]["listeners"][0].update(tls={"mode": "Terminate"}),
     "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']"),
    ("gateway-api", "Gateway", lambda d: d["spec"]["infrastructure"]["annotations"].update({"bad key!": "x"}),
     "Annotation keys must be in the form"),
    ("gateway-api", "Gateway", lambda d: d["spec"]["infrastructure"].update(parametersRefs=[]), "parametersRefs"),
    # Istio on the Gateway: policy attachment
    ("gateway-api", "WasmPlugin", lambda d: d["spec"].update(selector={"matchLabels": {"istio": "x"}}),
     "only one of targetRefs or selector"),
    ("gateway-api", "WasmPlugin", lambda d: d["spec"]["targetRefs"][0].update(namespace="models"),
     "cross namespace referencing is not currently supported"),
    ("gateway-api", "TrafficExtension", lambda d: d["spec"].update(wasm={"url": "oci://r/f:1"}),
     "exactly one of wasm or lua"),
    # Envoy Gateway: EnvoyExtensionPolicy
    ("envoy-gateway", "EnvoyExtensionPolicy", lambda d: d["spec"].update(targetRef=d["spec"]["targetRefs"][0]),
     "either targetRef or targetRefs must be used"),
    ("envoy-gateway", "EnvoyExtensionPolicy", lambda d: d["spec"]["targetRefs"][0].update(group="networking.istio.io"),
     "can only have a targetRefs[*].group of gateway.networking.k8s.io"),
    ("envoy-gateway", "EnvoyExtensionPolicy", lambda d: d["spec"]["targetRefs"][0].update(kind="Service"),
     "can only have a targetRefs[*].kind of Gateway"),
    ("envoy-gateway", "EnvoyExtensionPolicy", lambda d: d["spec"].update(mergeType="StrategicMerge"),
     "mergeType can only be used with xRoute targets"),
    ("envoy-gateway", "EnvoyExtensionPolicy", lambda d: d["spec"]["wasm"][0]["code"].update(type="HTTP"),
     "If type is HTTP, http field needs to be set"),
    ("envoy-gateway", "EnvoyExtensionPolicy", lambda d: d["spec"]["wasm"][0]["code"]["image"].update(sha265="x"),
     "sha265"),
    ("envoy-gateway", "EnvoyExtensionPolicy", lambda d: d["spec"]["wasm"][0].update(failOpen="yes"),
     "is not of type 'boolean'"),
    ("envoy-gateway", "EnvoyExtensionPolicy", lambda d: d["spec"]["wasm"][0]["code"].update(pullPolicy="Never"),
     "Never"),
    ("envoy-gateway", "EnvoyExtensionPolicy", lambda d: d["spec"]["wasm"][0]["code"]["image"].update(
        pullSecretRef={"kind": "ConfigMap", "name": "x"}), "only support Secret kind"),
    ("envoy-gateway", "EnvoyExtensionPolicy", lambda d: d["spec"]["lua"][0].update(type="ValueRef"),
     "Exactly one of inline or valueRef must be set"),
    ("envoy-gateway", "EnvoyExtensionPolicy", lambda d: d["spec"].update(wasms=[]), "wasms"),
    ("envoy-gateway", "GatewayClass", lambda d: d["spec"].update(controllerName="no-domain"), "does not match"),
])
def test_schema_check_rejects_broken_documents(folder, kind, mutate, expect):
    doc = good(folder, kind)
    if kind == "EnvoyExtensionPolicy":
        doc["spec"]["wasm"][0]["config"]["anything"] = {"goes": ["here"]}  # free-form config
        assert crd_errors(doc) == []
    mutate(doc)
    errs = crd_errors(doc)
    assert any(expect in e for e in errs), errs


# ---------------------------------------------------------------- EnvoyProxy: no CRD schema here

ENVOYPROXY_FIELDS = {"apiVersion", "kind", "metadata", "spec"}


def envoyproxy_shape_errors(doc: dict) -> list[str]:
    """What can be checked without the EnvoyProxy CRD: the fields this document uses, and
    nothing else; metadata as Kubernetes ObjectMeta (via a ConfigMap of the same metadata)."""
    errs = []
    if doc.get("apiVersion") != "gateway.envoyproxy.io/v1alpha1":
        errs.append(f"apiVersion {doc.get('apiVersion')!r}")
    if set(doc) != ENVOYPROXY_FIELDS:
        errs.append(f"top-level fields {sorted(set(doc) ^ ENVOYPROXY_FIELDS)}")
    spec = doc.get("spec") or {}
    if set(spec) != {"bootstrap"}:
        errs.append(f"spec fields {sorted(spec)} (only bootstrap is used)")
    boot = spec.get("bootstrap") or {}
    if boot.get("type") != "Merge" or set(boot) != {"type", "value"} or not isinstance(boot.get("value"), str):
        errs.append(f"spec.bootstrap must be {{type: Merge, value: <YAML string>}}, is {sorted(boot)}")
    errs += [f"metadata: {e}" for e in k8s_errors({"apiVersion": "v1", "kind": "ConfigMap",
                                                    "metadata": doc.get("metadata")})]
    return errs


def test_envoyproxy_shape_check_is_real():
    ep = one("envoy-gateway", "EnvoyProxy")
    assert envoyproxy_shape_errors(ep) == []
    for mutate in (lambda d: d["spec"].update(telemetry={}), lambda d: d["spec"]["bootstrap"].update(type="Replace"),
                   lambda d: d["metadata"].update(labelz={}), lambda d: d.update(status={})):
        bad = copy.deepcopy(ep)
        mutate(bad)
        assert envoyproxy_shape_errors(bad), bad


def bootstrap_merge() -> dict:
    return yaml.safe_load(one("envoy-gateway", "EnvoyProxy")["spec"]["bootstrap"]["value"])


def test_envoyproxy_bootstrap_is_valid_envoy_config_with_the_demo_stats_tags(tmp_path):
    merge = bootstrap_merge()
    assert set(merge) == {"stats_config", "static_resources"}
    demo = yaml.safe_load((ROOT / "envoy/demo.yaml").read_text())
    assert merge["stats_config"] == {"stats_tags": demo["stats_config"]["stats_tags"]}
    # Envoy Gateway's bootstrap (admin, its ready/stats listener) with ours merged in, through Envoy
    boot = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 19000}}},
            **merge}
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(boot))
    r = validate(path)
    assert r.returncode == 0, r.stdout + r.stderr
    broken = copy.deepcopy(boot)
    broken["static_resources"]["clusters"][0]["type"] = "STRICTER_DNS"
    path.write_text(yaml.safe_dump(broken))
    assert validate(path).returncode != 0


# ---------------------------------------------------------------- the plugin configuration, by the filter

def istio_plugin() -> dict:
    return next(d for _, d in documents("istio") if d["kind"] == "WasmPlugin")["spec"]["pluginConfig"]


def configs() -> dict[str, str]:
    """Each style's plugin configuration as the filter receives it."""
    wp = one("gateway-api", "WasmPlugin")["spec"]["pluginConfig"]
    eep = one("envoy-gateway", "EnvoyExtensionPolicy")["spec"]["wasm"][0]["config"]
    return {"gateway-api": istio_plugin_json(wp), "envoy-gateway": go_json(eep)}


@pytest.mark.parametrize("style", FOLDERS)
def test_plugin_config_is_accepted_by_the_filter_in_envoy(tmp_path, style):
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(demo_with_plugin(configs()[style])))
    r = validate(path)
    assert r.returncode == 0, r.stdout + r.stderr
    broken = json.loads(configs()[style])
    broken["plan"]["rollouts"][0]["shadow"]["percnt"] = 5
    path.write_text(yaml.safe_dump(demo_with_plugin(json.dumps(broken))))
    r = validate(path)
    assert r.returncode != 0
    assert "invalid plugin configuration: plan.rollouts[0].shadow.percnt" in r.stdout + r.stderr


@pytest.mark.parametrize("style", FOLDERS)
def test_plugin_config_passes_rollout_control_validate_config(tmp_path, style):
    good_file = tmp_path / "good.json"
    good_file.write_text(configs()[style])
    r = subprocess.run([str(CONTROL), "validate-config", str(good_file)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    broken = json.loads(configs()[style])
    broken["plan"]["rollouts"][0]["variants"][1]["weight"] = 11
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    r = subprocess.run([str(CONTROL), "validate-config", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "plan.rollouts[0].variants" in r.stdout + r.stderr


def test_every_style_hands_the_filter_the_same_configuration_and_plan():
    """One plan for every style: a plan, its history and a rollback work whichever gateway
    serves them (Envoy Gateway's proxies get clusters under Istio's names, envoyproxy.yaml)."""
    want = istio_plugin()
    assert one("gateway-api", "WasmPlugin")["spec"]["pluginConfig"] == want
    assert one("envoy-gateway", "EnvoyExtensionPolicy")["spec"]["wasm"][0]["config"] == want
    assert json.loads(configs()["envoy-gateway"]) == json.loads(configs()["gateway-api"]) == want
    initial = json.loads(one("envoy-gateway", "ConfigMap", "rollout-control-plan")["data"]["plan.json"])
    assert initial == want["plan"]
    clusters = {c["name"]: c for c in bootstrap_merge()["static_resources"]["clusters"]}
    shadow = {r["shadow"]["cluster"] for r in want["plan"]["rollouts"] if "shadow" in r}
    assert set(clusters) == {want["control"]["cluster"]} | shadow
    # each names the Service it resolves: outbound|<port>||<name>.<ns>.svc.cluster.local
    services = {(d["metadata"]["name"], d["metadata"]["namespace"]): d for _, d in documents("istio", "envoy-gateway")
                if d["kind"] == "Service"}
    for name, c in clusters.items():
        _, port, subset, fqdn = name.split("|")
        addr = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        assert (addr["address"], addr["port_value"], subset) == (fqdn, int(port), "")
        svc_name, ns = fqdn.split(".")[:2]
        assert int(port) in {p["port"] for p in services[(svc_name, ns)]["spec"]["ports"]}
    assert want["control"]["authority"] == want["control"]["cluster"].split("|")[3] + ":" + \
        want["control"]["cluster"].split("|")[1]


# ---------------------------------------------------------------- the pieces against each other and istio/

def istio_doc(kind: str, name: str) -> dict:
    [d] = [d for _, d in documents("istio") if d["kind"] == kind and d["metadata"]["name"] == name]
    return d


def test_gateway_api_wasmplugin_is_the_classic_one_bound_to_the_gateway():
    classic = istio_doc("WasmPlugin", "model-rollout")["spec"]
    wp = one("gateway-api", "WasmPlugin")
    gw = one("gateway-api", "Gateway")
    assert {k: v for k, v in wp["spec"].items() if k != "targetRefs"} == \
        {k: v for k, v in classic.items() if k != "selector"}
    assert wp["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                         "name": gw["metadata"]["name"]}]
    assert wp["metadata"]["namespace"] == gw["metadata"]["namespace"]
    assert wp["metadata"]["name"] != istio_doc("WasmPlugin", "model-rollout")["metadata"]["name"]


def test_the_wasmplugin_reads_the_jwt_payload_where_istio_stores_it():
    """Istio's RequestAuthentication stores a verified payload under the issuer: the
    pluginConfig's jwt.payload_in_metadata must name that issuer, or subject.claim
    "sub" is never found (tests/test_istio.py runs it behind Istio's jwt filter)."""
    issuers = [r["issuer"] for r in istio_doc("RequestAuthentication", "model-rollout-testers")
               ["spec"]["jwtRules"]]
    plugin = istio_plugin()
    assert plugin["jwt"]["payload_in_metadata"] in issuers
    assert plugin["subject"]["claim"] == "sub"


def lua_strip() -> str:
    return istio_doc("TrafficExtension", "strip-model-routing-headers")["spec"]["lua"]["inlineCode"]


def test_every_style_strips_client_routing_headers_with_the_same_rule_before_the_filter():
    te = one("gateway-api", "TrafficExtension")
    gw = one("gateway-api", "Gateway")
    assert te["spec"]["lua"]["inlineCode"] == lua_strip()
    assert te["spec"]["targetRefs"] == one("gateway-api", "WasmPlugin")["spec"]["targetRefs"]
    assert te["metadata"]["namespace"] == gw["metadata"]["namespace"]
    # AUTHN runs before the filter's STATS phase
    assert (te["spec"]["phase"], one("gateway-api", "WasmPlugin")["spec"]["phase"]) == ("AUTHN", "STATS")
    eep = one("envoy-gateway", "EnvoyExtensionPolicy")["spec"]
    assert [lua["inline"] for lua in eep["lua"]] == [lua_strip()]
    assert eep["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                  "name": one("envoy-gateway", "Gateway")["metadata"]["name"]}]
    for header in ROUTING_HEADERS:
        assert f'headers:remove("{header}")' in lua_strip()


def routes(folder: str) -> dict:
    return one(folder, "HTTPRoute")


def test_both_httproutes_have_the_same_rules_and_attach_to_their_gateway():
    assert routes("gateway-api")["spec"]["rules"] == routes("envoy-gateway")["spec"]["rules"]
    for folder in FOLDERS:
        route, gw = routes(folder), one(folder, "Gateway")
        [parent] = route["spec"]["parentRefs"]
        assert parent["name"] == gw["metadata"]["name"]
        assert parent.get("namespace", route["metadata"]["namespace"]) == gw["metadata"]["namespace"]
        [listener] = [x for x in gw["spec"]["listeners"] if x["name"] == parent["sectionName"]]
        assert route["spec"]["hostnames"] == [listener["hostname"]]
        allowed = listener["allowedRoutes"]["namespaces"]
        if allowed["from"] == "Same":
            assert route["metadata"]["namespace"] == gw["metadata"]["namespace"]
        else:
            assert allowed["selector"]["matchLabels"] == {"kubernetes.io/metadata.name": route["metadata"]["namespace"]}
    assert one("gateway-api", "Gateway")["spec"]["gatewayClassName"] == "istio"
    eg = one("envoy-gateway", "Gateway")["spec"]["gatewayClassName"]
    assert one("envoy-gateway", "GatewayClass", eg)["spec"]["controllerName"] == \
        "gateway.envoyproxy.io/gatewayclass-controller"


def test_routes_send_each_variant_to_its_own_service_and_default_to_the_first():
    plan = istio_plugin()["plan"]
    variant_header = istio_plugin()["variant_header"]
    rules = routes("gateway-api")["spec"]["rules"]
    services = {d["metadata"]["name"]: d for d in docs("gateway-api") if d["kind"] == "Service"}
    pods = {(d["spec"]["template"]["metadata"]["labels"]["app"], d["spec"]["template"]["metadata"]["labels"]["version"])
            for _, d in documents("istio") if d["kind"] == "Deployment" and d["metadata"]["namespace"] == "models"}
    for rollout in plan["rollouts"]:
        prefix = rollout["match"]["path_prefix"]
        variants = [v["name"] for v in rollout["variants"]]
        mine = [r for r in rules if r["matches"][0]["path"] == {"type": "PathPrefix", "value": prefix}]
        by_header, default = {}, []
        for r in mine:
            [backend] = r["backendRefs"]
            svc = services[backend["name"]]
            assert backend["port"] in {p["port"] for p in svc["spec"]["ports"]}
            labels = svc["spec"]["selector"]
            assert (labels["app"], labels["version"]) in pods, labels  # real pods behind it
            headers = r["matches"][0].get("headers", [])
            if headers:
                [h] = headers
                assert (h["type"], h["name"]) == ("Exact", variant_header)
                by_header[h["value"]] = labels["version"]
            else:
                default.append(labels["version"])
        assert by_header == {v: v for v in variants[1:]}, rollout["name"]
        assert default == [variants[0]], rollout["name"]
    # no header rule outside a rollout's prefix; every rule removes the routing headers upstream
    prefixes = {r["match"]["path_prefix"] for r in plan["rollouts"]}
    for r in rules:
        assert r["matches"][0]["path"]["value"] in prefixes
        [f] = r["filters"]
        assert f["type"] == "RequestHeaderModifier" and set(f["requestHeaderModifier"]["remove"]) == ROUTING_HEADERS


def test_gateway_api_proxy_gets_the_stats_inclusion_and_the_stats_tags():
    gw = one("gateway-api", "Gateway")
    infra = gw["spec"]["infrastructure"]
    helm = yaml.safe_load((ROOT / "istio/helm/gateway-values.yaml").read_text())["podAnnotations"]
    assert yaml.safe_load(infra["annotations"]["proxy.istio.io/config"]) == \
        yaml.safe_load(helm["proxy.istio.io/config"]) == \
        {"proxyStatsMatcher": {"inclusionPrefixes": ["wasmcustom.model_rollout"]}}
    ref = infra["parametersRef"]
    assert (ref["group"], ref["kind"]) == ("", "ConfigMap")
    options = one("gateway-api", "ConfigMap", ref["name"])
    assert options["metadata"]["namespace"] == gw["metadata"]["namespace"]
    patch = yaml.safe_load(options["data"]["deployment"])
    # the patch is a valid Deployment fragment (strict Kubernetes schema, merged into a skeleton)
    skeleton = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "model-gateway-istio"},
                "spec": {"selector": {"matchLabels": {"a": "b"}},
                         "template": {"metadata": {"labels": {"a": "b"}}, **patch["spec"]["template"]}}}
    assert k8s_errors(skeleton) == []
    pod = patch["spec"]["template"]["spec"]
    [proxy] = pod["containers"]
    assert proxy["name"] == "istio-proxy"
    env = {e["name"]: e["value"] for e in proxy["env"]}
    [mount] = proxy["volumeMounts"]
    [volume] = pod["volumes"]
    assert volume["name"] == mount["name"]
    stats = istio_doc("ConfigMap", "model-rollout-stats-tags")
    assert volume["configMap"]["name"] == stats["metadata"]["name"]
    assert stats["metadata"]["namespace"] == gw["metadata"]["namespace"]  # a pod mounts ConfigMaps of its namespace
    assert env["ISTIO_BOOTSTRAP_OVERRIDE"] == f"{mount['mountPath']}/{next(iter(stats['data']))}"


def test_gateway_api_gateway_identity_is_admitted_like_the_classic_one():
    gw = one("gateway-api", "Gateway")
    extra = one("gateway-api", "AuthorizationPolicy")
    classic = istio_doc("AuthorizationPolicy", "rollout-control")
    assert extra["metadata"]["namespace"] == classic["metadata"]["namespace"]
    assert extra["spec"]["selector"] == classic["spec"]["selector"]
    assert extra["spec"]["action"] == classic["spec"]["action"] == "ALLOW"
    [rule] = extra["spec"]["rules"]
    # Istio's Gateway API deployment runs as <gateway>-istio in the Gateway's namespace
    sa = f"cluster.local/ns/{gw['metadata']['namespace']}/sa/{gw['metadata']['name']}-istio"
    assert rule["from"] == [{"source": {"principals": [sa]}}]
    [gateway_rule] = [r for r in classic["spec"]["rules"] if "principals" in r["from"][0]["source"]]
    assert rule["to"] == gateway_rule["to"]  # the same two operations, nothing more


def control_args(doc: dict) -> list[str]:
    return doc["spec"]["template"]["spec"]["containers"][0]["args"]


def flag(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


def test_control_reads_prometheus_in_every_style():
    istio = istio_doc("Deployment", "rollout-control")
    eg = one("envoy-gateway", "Deployment", "rollout-control")
    assert flag(control_args(istio), "--prometheus-url") == ["http://prometheus.istio-system.svc:9090"]
    assert flag(control_args(eg), "--prometheus-url") == ["http://prometheus.monitoring.svc:80"]
    for dep in (istio, eg):
        assert "--envoy-admin" not in control_args(dep)


def test_envoy_gateway_control_is_istio_control_but_for_the_prometheus_url():
    def normal(d):
        d = copy.deepcopy(d)
        if d["kind"] == "Deployment":
            args = control_args(d)
            args[args.index("--prometheus-url") + 1] = "<prometheus>"
        return d
    istio = {(d["kind"], d["metadata"]["name"]): normal(d) for _, d in documents("istio")
             if d["metadata"].get("namespace") == "models" and "rollout-control" in d["metadata"]["name"]
             and not d["apiVersion"].endswith(".istio.io/v1")}
    eg = {(d["kind"], d["metadata"]["name"]): normal(d) for d in docs("envoy-gateway")
          if "rollout-control" in d["metadata"]["name"] and d["kind"] != "NetworkPolicy"}
    assert set(istio) == set(eg) == {("ServiceAccount", "rollout-control"), ("ConfigMap", "rollout-control-plan"),
                                     ("PersistentVolumeClaim", "rollout-control-data"),
                                     ("Deployment", "rollout-control"), ("Service", "rollout-control")}
    assert istio == eg


def test_envoy_gateway_control_admits_only_the_gateway_proxies_and_the_namespace():
    np = one("envoy-gateway", "NetworkPolicy")["spec"]
    dep = one("envoy-gateway", "Deployment", "rollout-control")
    gw = one("envoy-gateway", "Gateway")
    assert np["podSelector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert np["policyTypes"] == ["Ingress"]
    [rule] = np["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9090}]
    proxies, same_ns = rule["from"]
    assert proxies["podSelector"]["matchLabels"] == {
        "gateway.envoyproxy.io/owning-gateway-name": gw["metadata"]["name"],
        "gateway.envoyproxy.io/owning-gateway-namespace": gw["metadata"]["namespace"]}
    assert same_ns == {"podSelector": {}}


def test_envoy_gateway_attachments_live_with_the_gateway():
    gw = one("envoy-gateway", "Gateway")
    ns = gw["metadata"]["namespace"]
    ref = gw["spec"]["infrastructure"]["parametersRef"]
    ep = one("envoy-gateway", "EnvoyProxy")
    assert (ref["group"], ref["kind"], ref["name"]) == ("gateway.envoyproxy.io", "EnvoyProxy", ep["metadata"]["name"])
    for d in docs("envoy-gateway"):
        if d["kind"] != "GatewayClass":
            assert d["metadata"]["namespace"] == ns, d["metadata"]
    w = one("envoy-gateway", "EnvoyExtensionPolicy")["spec"]["wasm"][0]
    classic = istio_doc("WasmPlugin", "model-rollout")["spec"]
    assert w["failOpen"] is True and classic["failStrategy"] == "FAIL_OPEN"
    assert w["rootID"] == classic["pluginName"]
    assert (w["code"]["image"]["url"], w["code"]["image"]["sha256"], w["code"]["pullPolicy"]) == \
        (classic["url"], classic["sha256"], classic["imagePullPolicy"])


# ---------------------------------------------------------------- the gateways, for real

def backend_cluster(style: str, index: int) -> str:
    """The Envoy cluster each gateway builds for the backend of the route's rule `index`:
    Istio's outbound|port||FQDN, Envoy Gateway's httproute/<namespace>/<name>/rule/<index>."""
    route = routes(style)
    [backend] = route["spec"]["rules"][index]["backendRefs"]
    ns = route["metadata"]["namespace"]
    if style == "gateway-api":
        return f"outbound|{backend['port']}||{backend['name']}.{ns}.svc.cluster.local"
    return f"httproute/{ns}/{route['metadata']['name']}/rule/{index}"


def http_route_table(style: str) -> list[dict]:
    """The HTTPRoute as Envoy routes: header rules before the bare prefix of the same path
    (Gateway API precedence), each removing the routing headers it forwards."""
    out = []
    rules = list(enumerate(routes(style)["spec"]["rules"]))
    for i, r in sorted(rules, key=lambda ir: -len(ir[1]["matches"][0].get("headers", []))):
        m = r["matches"][0]
        out.append({
            "name": r["name"],
            "match": {"prefix": m["path"]["value"],
                      "headers": [{"name": h["name"], "string_match": {"exact": h["value"]}}
                                  for h in m.get("headers", [])]},
            "route": {"cluster": backend_cluster(style, i), "timeout": "30s"},
            "request_headers_to_remove": r["filters"][0]["requestHeaderModifier"]["remove"],
        })
    return out


LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
WASM_FILTER = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def gateway_filters(style: str, with_lua: bool, with_wasm: bool, plugin_json: str) -> tuple[list, dict]:
    """HTTP filters, and the per-route configs, as each control plane builds them.

    Istio: the TrafficExtension's Lua (phase AUTHN) then the WasmPlugin (phase STATS), no vm_id.
    Envoy Gateway: every policy filter sits in the chain disabled and is enabled per route
    (typed_per_filter_config), Lua before Wasm; Lua by script name, Wasm with vm_id and fail_open."""
    per_route: dict = {}
    filters = []
    if style == "gateway-api":
        wp = one("gateway-api", "WasmPlugin")
        if with_lua:
            filters.append({"name": "istio-ingress.strip", "typed_config": {
                "@type": LUA, "default_source_code": {"inline_string": one("gateway-api", "TrafficExtension")
                                                      ["spec"]["lua"]["inlineCode"]}}})
        if with_wasm:
            filters.append({"name": "istio-ingress.model-rollout", "typed_config": {"@type": WASM_FILTER, "config": {
                "name": f"{wp['metadata']['namespace']}.{wp['metadata']['name']}",
                "root_id": wp["spec"]["pluginName"], "failure_policy": "FAIL_OPEN",
                "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(WASM)}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_json}}}})
        return filters, per_route
    eep = one("envoy-gateway", "EnvoyExtensionPolicy")
    base = f"envoyextensionpolicy/{eep['metadata']['namespace']}/{eep['metadata']['name']}"
    if with_lua:
        name = "envoy.filters.http.lua/models/http/0"
        filters.append({"name": name, "disabled": True, "typed_config": {
            "@type": LUA, "source_codes": {f"{base}/lua/0": {"inline_string": eep["spec"]["lua"][0]["inline"]}}}})
        per_route[name] = {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
                           "name": f"{base}/lua/0"}
    if with_wasm:
        w = eep["spec"]["wasm"][0]
        name = f"envoy.filters.http.wasm/{base}/wasm/0"
        filters.append({"name": name, "disabled": True, "typed_config": {"@type": WASM_FILTER, "config": {
            "name": w["name"], "root_id": w["rootID"], "fail_open": w["failOpen"],
            "vm_config": {"vm_id": f"{base}/wasm/0", "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": str(WASM)}}},
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_json}}}})
        per_route[name] = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}
    return filters, per_route


def gateway_envoy(style: str, ports: dict[str, int], *, with_lua: bool = True, with_wasm: bool = True) -> dict:
    """The gateway's Envoy as Istio / Envoy Gateway build it from these manifests, reduced to
    what matters: the edge strip, the filter with the style's pluginConfig as the filter
    receives it, the router; routes from the HTTPRoute; stats_tags (Istio: istio/stats.yaml
    via the Gateway's parametersRef; Envoy Gateway: envoyproxy.yaml); clusters under each
    control plane's names, pointing at the local processes in `ports`."""
    filters, per_route = gateway_filters(style, with_lua, with_wasm, configs()[style])
    filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    table = http_route_table(style)
    for r in table:
        if per_route:
            r["typed_per_filter_config"] = per_route
    if style == "gateway-api":
        stats = json.loads(istio_doc("ConfigMap", "model-rollout-stats-tags")["data"]["custom_bootstrap.json"])
        static_clusters = []
    else:
        merge = bootstrap_merge()
        stats = {"stats_config": merge["stats_config"]}
        static_clusters = copy.deepcopy(merge["static_resources"]["clusters"])
    clusters = []
    for c in static_clusters:  # the bootstrap's own, re-pointed at the local process
        c.update(type="STATIC")
        ep = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        ep.update(address="127.0.0.1", port_value=ports[c["name"]])
        clusters.append(c)
    named = {c["name"] for c in clusters}
    for name, port in ports.items():
        if name not in named:
            clusters.append({"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
                "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}})
    return {
        "node": {"id": f"{style}-gateway-0", "cluster": f"{style}-gateway"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        **stats,
        "stats_flush_interval": "1s",
        "static_resources": {
            "listeners": [{"name": "http-80", "address": {"socket_address": {
                "address": "127.0.0.1", "port_value": free_port()}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "http-80",
                        "route_config": {"name": "http-80", "virtual_hosts": [{
                            "name": "models.example.com", "domains": ["*"], "routes": table}]},
                        "http_filters": filters}}]}]}],
            "clusters": clusters,
        },
    }


class GatewayEnvoy:
    def __init__(self, procs: Processes, style: str, ports: dict[str, int], **kw) -> None:
        cfg = gateway_envoy(style, ports, **kw)
        self.admin = cfg["admin"]["address"]["socket_address"]["port_value"]
        self.port = cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        path = Path(procs.tmp.name) / f"{style}-{self.admin}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        r = validate(path)
        assert r.returncode == 0, r.stdout + r.stderr
        self.proc = procs.start([ENVOY, "-c", str(path), "--concurrency", "2", "--disable-hot-restart",
                                 "-l", "warning"], f"gateway-{style}")
        wait_http(f"http://127.0.0.1:{self.admin}/ready", proc=self.proc)

    def prometheus(self) -> dict:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/stats/prometheus", timeout=5) as r:
            return metric_samples(r.read().decode())


@pytest.fixture(scope="module", params=FOLDERS)
def gateway(request):
    """Per style: demo models under the style's cluster names, rollout-control with the
    shipped initial plan, the gateway's Envoy."""
    style = request.param
    procs = Processes()
    try:
        want = istio_plugin()
        models = {}
        for i, rule in enumerate(routes(style)["spec"]["rules"]):
            [backend] = rule["backendRefs"]
            version = backend["name"].rsplit("-", 1)[1]  # fraud-model-canary: a model answering "canary"
            models[backend_cluster(style, i)] = Model(procs, version)
        shadow = next(r["shadow"]["cluster"] for r in want["plan"]["rollouts"] if "shadow" in r)
        models[shadow] = Model(procs, "shadow")
        plan = json.loads(istio_doc("ConfigMap", "rollout-control-plan")["data"]["plan.json"])
        control = Sidecar(procs, plan=plan)
        ports = {name: m.port for name, m in models.items()}
        ports[want["control"]["cluster"]] = control.port
        yield style, procs, ports, control, GatewayEnvoy(procs, style, ports)
    finally:
        procs.stop_all()


USERS = [f"user-{i}" for i in range(2000)]


def test_gateway_splits_by_the_plan_and_clients_cannot_choose(gateway):
    style, procs, ports, control, gw = gateway
    assert wait_for(lambda: metric(gw.prometheus(), "model_rollout_plan_version") >= 1, timeout=15)
    rs = send_all(gw.port, [(FRAUD, {"x-user-id": u, "x-model-variant": "canary", "x-model-override": "canary"})
                            for u in USERS])
    assert all(r.status == 200 for r in rs), {r.status for r in rs}
    for u, r in zip(USERS, rs):
        want = "canary" if expected_bucket("fraud-v2", u) >= 9000 else "stable"
        assert r.headers["x-model-variant"] == want, u
        body = r.json()
        assert body["model_version"] == want, u            # the variant's own Service answered
        assert not ROUTING_HEADERS & set(body["parameters"]["headers"])  # and got no routing header
    rs = send_all(gw.port, [(CHURN, {"x-user-id": u}) for u in USERS[:500]])
    for u, r in zip(USERS, rs):
        want = "v2" if expected_bucket("churn-ab-1", u) >= 5000 else "v1"
        assert r.json()["model_version"] == want, u
    # the filter's stats carry their labels, and its polls reached rollout-control
    assert wait_for(lambda: metric(gw.prometheus(), "model_rollout_requests_total",
                                   rollout="fraud", variant="canary") > 0, timeout=10)
    assert not any(name.startswith("model_rollout_rollout_") for name, _ in gw.prometheus())
    status = control.call("GET", "/v1/status")[2]
    assert any(p["behind"] == 0 for p in status["proxies"]), status


def test_shadow_copies_reach_the_shadow_service(gateway):
    style, procs, ports, control, gw = gateway
    send_all(gw.port, [(FRAUD, {"x-user-id": u}) for u in USERS[:200]])
    assert wait_for(lambda: metric(gw.prometheus(), "model_rollout_shadow_compared_total", rollout="fraud") > 0,
                    timeout=15)


@pytest.mark.parametrize("with_lua, expected", [
    (True, "stable"),    # the edge strip: a skipped filter cannot be steered by a client
    (False, "canary"),   # without it the client's header picks the canary rule: what the strip prevents
])
def test_edge_strip_protects_a_skipped_filter(procs, gateway, with_lua, expected):
    style, _, ports, _, _ = gateway
    gw = GatewayEnvoy(procs, style, ports, with_lua=with_lua, with_wasm=False)
    [r] = send_all(gw.port, [(FRAUD, {"x-user-id": "user-1", "x-model-variant": "canary"})])
    assert r.status == 200
    assert r.json()["model_version"] == expected
    assert "x-model-variant" not in r.json()["parameters"]["headers"]  # the route's rule, either way
