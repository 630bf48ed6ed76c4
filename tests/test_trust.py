"""Trust boundaries of the shipped Envoy configs, in real Envoy with the built filter:
nothing a client sends on the public listener changes its variant; testers are
identified by a verified JWT claim (jwt_authn with the demo's local JWKS).

- For 1,000 users on the public listener of envoy/demo.yaml and envoy/compose.yaml:
  every header and cookie any shipped plan's targeting reads, plus the variant and
  override headers, change no user's variant.
- A JWT signed by the demo key with `"tester": true` goes to the canary; one that is
  expired, signed by another key or from another issuer is ignored (the documented
  behaviour of `requires_any: [demo, allow_missing_or_failed]`: served as anyone, its
  claims set nothing); no token: as anyone. (Istio's RequestAuthentication refuses an
  invalid token with 401: tests/test_istio.py.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from harness import (ROOT, Envoy, EnvoyConfig, Model, Processes, expected_bucket, plugin_config,
                     send_all)

FRAUD = "/v2/models/fraud/infer"
CONFIGS = [ROOT / "envoy/demo.yaml", ROOT / "envoy/compose.yaml"]
DEMO_KEY = ROOT / "envoy/demo-jwt/DEMO-ONLY-private-key.pem"
KID = "model-rollout-demo-1"
ISSUER = "model-rollout-demo"
USERS = [f"trust-user-{i}" for i in range(1000)]


def shipped_plans() -> list[dict]:
    """Every plan the repository ships: the Envoy configs', compose's, the mesh manifests'."""
    plans = [plugin_config(yaml.safe_load(p.read_text()))["plan"] for p in CONFIGS]
    plans.append(json.loads((ROOT / "compose/plan.json").read_text()))
    for d in ("istio", "gateway-api", "envoy-gateway"):
        for f in sorted((ROOT / d).glob("*.yaml")):
            for doc in yaml.safe_load_all(f.read_text().replace("${ROLLOUT_PROXY_TOKEN}", "t")):
                if not doc:
                    continue
                spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
                wasm = spec.get("wasm") if isinstance(spec.get("wasm"), list) else []
                for cfg in [spec.get("pluginConfig")] + [w.get("config") for w in wasm if isinstance(w, dict)]:
                    if isinstance(cfg, dict) and "plan" in cfg:
                        plans.append(cfg["plan"])
                if doc.get("kind") == "ConfigMap" and "plan.json" in doc.get("data", {}):
                    plans.append(json.loads(doc["data"]["plan.json"]))
    return plans


def hostile_headers() -> dict[str, str]:
    """Every header and cookie the shipped plans' targeting reads, with a value that
    would satisfy its condition, plus the variant and override headers."""
    h: dict[str, str] = {"x-model-variant": "canary", "x-model-override": "canary"}
    cookies = []
    for plan in shipped_plans():
        for r in plan["rollouts"]:
            for t in r.get("targeting", []):
                for c in t["when"]:
                    value = c.get("equals") or (c.get("prefix", "") + "x") if "present" not in c else "1"
                    if "header" in c:
                        h[c["header"]] = value
                    else:
                        cookies.append(f"{c['cookie']}={value}")
    assert {"x-tester", "x-region"} <= set(h), h  # the shipped plans' targeting
    if cookies:
        h["cookie"] = "; ".join(cookies)
    return h


def local_config(path: Path, models: dict[str, Model]) -> EnvoyConfig:
    """A shipped config on loopback: listeners and clusters on local ports."""
    cfg = EnvoyConfig(path)
    for listener in cfg.doc["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["address"] = "127.0.0.1"
    for c in cfg.doc["static_resources"]["clusters"]:
        c["type"] = "STATIC"
        c.pop("dns_lookup_family", None)
        sa = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        sa["address"] = "127.0.0.1"
        if c["name"] in models:
            sa["port_value"] = models[c["name"]].port
        else:
            sa["port_value"] = cfg.control_port
    cfg.doc["admin"]["address"]["socket_address"]["address"] = "127.0.0.1"
    return cfg


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda p: p.name)
def shipped(request):
    procs = Processes()
    try:
        models = {"model_stable": Model(procs, "stable"), "model_canary": Model(procs, "canary"),
                  "model_shadow": Model(procs, "shadow")}
        yield Envoy(procs, local_config(request.param, models), concurrency=2)
    finally:
        procs.stop_all()


def variants(envoy: Envoy, extra: dict[str, str] | None = None, users=USERS) -> dict[str, tuple[str, str]]:
    rs = send_all(envoy.port(), [(FRAUD, {"x-user-id": u, **(extra or {})}) for u in users])
    out = {}
    for u, r in zip(users, rs):
        assert r.status == 200, (u, r.status)
        out[u] = (r.headers["x-model-variant"], r.json()["model_version"])
    return out


def token(claims: dict, key=None, **over) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "tester-1", "iat": now, "exp": now + 600, **claims, **over}
    return jwt.encode(body, key or DEMO_KEY.read_text(), algorithm="ES256", headers={"kid": KID})


def test_client_headers_and_cookies_change_no_users_variant(shipped):
    baseline = variants(shipped)
    for u, (variant, model) in baseline.items():
        want = "canary" if expected_bucket("fraud-v2", u) >= 9000 else "stable"
        assert variant == model == want, u
    hostile = hostile_headers()
    assert variants(shipped, hostile) == baseline, hostile
    # the same headers on the trusted listener (loopback, for internal testers) do pin
    rs = send_all(shipped.port("trusted"), [(FRAUD, {"x-user-id": USERS[0], "x-tester": "1"})])
    assert rs[0].json()["model_version"] == "canary"


def test_a_verified_tester_claim_goes_to_the_canary(shipped):
    stable_users = [u for u in USERS if expected_bucket("fraud-v2", u) < 9000][:200]
    good = token({"tester": True})
    got = variants(shipped, {"authorization": f"Bearer {good}"}, users=stable_users)
    assert {v for v in got.values()} == {("canary", "canary")}
    # the token never reaches the model (forward: false)
    r = send_all(shipped.port(), [(FRAUD, {"x-user-id": "u", "authorization": f"Bearer {good}"})])[0]
    assert "authorization" not in r.json()["parameters"]["headers"]
    # a verified region claim pins canary users to stable
    canary_users = [u for u in USERS if expected_bucket("fraud-v2", u) >= 9000][:50]
    eu = token({"region": "eu"})
    got = variants(shipped, {"authorization": f"Bearer {eu}"}, users=canary_users)
    assert {v for v in got.values()} == {("stable", "stable")}


@pytest.mark.parametrize("bad", ["expired", "other-key", "other-issuer", "garbage"])
def test_an_invalid_token_is_ignored(shipped, bad):
    other = ec.generate_private_key(ec.SECP256R1())
    t = {
        "expired": lambda: token({"tester": True}, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "other-key": lambda: token({"tester": True}, key=other),
        "other-issuer": lambda: token({"tester": True}, iss="someone-else"),
        "garbage": lambda: "not.a.jwt",
    }[bad]()
    stable_user = next(u for u in USERS if expected_bucket("fraud-v2", u) < 9000)
    rs = send_all(shipped.port(), [(FRAUD, {"x-user-id": stable_user, "authorization": f"Bearer {t}"})])
    assert rs[0].status == 200, (bad, rs[0].status)
    assert rs[0].headers["x-model-variant"] == rs[0].json()["model_version"] == "stable", bad


# ---------------------------------------------------------------- verified identity

def test_a_verified_sub_is_the_subject_whatever_the_client_sends(shipped):
    """subject.claim "sub" (jwt_authn's payload_in_metadata, read through properties)
    decides the bucket; the x-user-id header and uid cookie sent alongside change nothing.
    Anonymous traffic keeps its client-controlled key (test above)."""
    subs = USERS[:200]
    # each token's sub paired with a client id of the other bucket
    other = {True: next(u for u in USERS if expected_bucket("fraud-v2", u) >= 9000),
             False: next(u for u in USERS if expected_bucket("fraud-v2", u) < 9000)}
    reqs = []
    for u in subs:
        theirs = other[expected_bucket("fraud-v2", u) < 9000]
        reqs.append((FRAUD, {"authorization": f"Bearer {token({}, sub=u)}", "x-user-id": theirs,
                             "cookie": f"uid={theirs}"}))
    rs = send_all(shipped.port(), reqs)
    for u, r in zip(subs, rs):
        want = "canary" if expected_bucket("fraud-v2", u) >= 9000 else "stable"
        assert r.status == 200 and r.headers["x-model-variant"] == r.json()["model_version"] == want, u
    # an invalid token's sub is nobody's: the client's key decides
    stale = token({}, sub=other[True], exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)
    r = send_all(shipped.port(), [(FRAUD, {"authorization": f"Bearer {stale}",
                                           "x-user-id": other[False]})])[0]
    assert r.json()["model_version"] == "stable"


@pytest.fixture(scope="module")
def groups():
    """envoy/demo.yaml whose fraud rollout pins the "testers" group (a list claim read
    from jwt_authn's dynamic metadata) to the canary; the plan served by the real
    sidecar, adopted by the filter."""
    from harness import Sidecar
    procs = Processes()
    try:
        models = {"model_stable": Model(procs, "stable"), "model_canary": Model(procs, "canary"),
                  "model_shadow": Model(procs, "shadow")}
        cfg = EnvoyConfig()
        plan = cfg.plugin()["plan"]
        fraud = next(r for r in plan["rollouts"] if r["name"] == "fraud")
        fraud["targeting"].insert(0, {"name": "tester-group", "variant": "canary",
                                      "when": [{"claim": "groups", "contains": "testers"}]})
        sidecar = Sidecar(procs, plan=plan)
        cfg.upstreams({**{k: m.port for k, m in models.items()}, "rollout_control": sidecar.port})
        envoy = Envoy(procs, cfg, concurrency=2)
        from harness import metric, metric_samples, wait_for
        assert wait_for(lambda: metric(metric_samples(envoy.prometheus()),
                                       "model_rollout_control_plans_accepted_total") >= 1, timeout=20)
        yield envoy
    finally:
        procs.stop_all()


def test_a_groups_claim_pins_testers_and_a_bad_token_does_not(groups):
    stable = [u for u in USERS if expected_bucket("fraud-v2", u) < 9000][:100]
    now = int(time.time())
    other = ec.generate_private_key(ec.SECP256R1())
    cases = {
        "member": (token({"groups": ["staff", "testers"]}), "canary"),
        "single": (token({"groups": "testers"}), "canary"),
        "not-a-member": (token({"groups": ["staff", "testers-2"]}), "stable"),
        "an-object": (token({"groups": {"testers": True}}), "stable"),
        "expired": (token({"groups": ["testers"]}, exp=now - 3600, iat=now - 7200), "stable"),
        "other-key": (token({"groups": ["testers"]}, key=other), "stable"),
    }
    for name, (t, want) in cases.items():
        # sub "tester-1" is in the stable bucket, so only the group can pin the canary
        assert expected_bucket("fraud-v2", "tester-1") < 9000
        rs = send_all(groups.port(), [(FRAUD, {"x-user-id": u, "authorization": f"Bearer {t}"})
                                      for u in stable])
        got = {(r.status, r.headers["x-model-variant"], r.json()["model_version"]) for r in rs}
        assert got == {(200, want, want)}, name


# ---------------------------------------------------------------- attribution

CHURN = "/v2/models/churn/infer"
SHARED_ID = "shared-id-0af7651916cd43dd"


@pytest.fixture(scope="module")
def experiment():
    """envoy/demo.yaml with the proxy credential as control.token, against rollout-control
    with one credential per role; churn is an A/B experiment recording every request."""
    from harness import Sidecar
    procs = Processes()
    try:
        models = {"model_stable": Model(procs, "stable"), "model_canary": Model(procs, "canary"),
                  "model_shadow": Model(procs, "shadow")}
        cfg = EnvoyConfig()
        plan = cfg.plugin()["plan"]
        churn = next(r for r in plan["rollouts"] if r["name"] == "churn")
        churn["experiment"] = {"metric": "conversion", "samples_per_variant": 1000, "record_percent": 100}
        tokens = {"operator": "op-7f3a", "proxy": "proxy-91bc", "feedback": "fb-22de"}
        sidecar = Sidecar(procs, plan=plan, tokens=tokens)
        cfg.upstreams({**{k: m.port for k, m in models.items()}, "rollout_control": sidecar.port})
        cfg.edit_plugin(lambda c: (c.update(plan=plan), c["control"].update(token=tokens["proxy"])))
        yield sidecar, Envoy(procs, cfg, concurrency=2)
    finally:
        procs.stop_all()


def test_a_reused_client_id_cannot_move_outcomes_between_arms(experiment):
    sidecar, envoy = experiment
    users = USERS[:300]
    rs = send_all(envoy.port(), [(CHURN, {"x-user-id": u, "x-request-id": SHARED_ID}) for u in users])
    served = {r.headers["x-request-id"]: r.headers["x-model-variant"] for r in rs}
    assert SHARED_ID not in served and len(served) == len(users), "the proxy mints every id"
    want = {v: sum(1 for x in served.values() if x == v) for v in ("v1", "v2")}

    def post(outcomes):
        s, _, res = sidecar.call("POST", "/v1/feedback", {"outcomes": outcomes}, role="feedback")
        assert s == 200, res
        return res
    outcomes = [{"correlation_id": i, "reward": 1} for i in served]
    from harness import wait_for
    assert wait_for(lambda: post(outcomes)["unknown"] == 0, timeout=20), "assignments did not arrive"
    # the client's id attributes nothing: counted as unknown, not stored
    assert post([{"correlation_id": SHARED_ID, "reward": 1}] * 1) == {"accepted": 0, "unknown": 1, "dropped": 0}

    def counts():
        s, _, rep = sidecar.call("GET", "/v1/experiments/churn")
        assert s == 200, rep
        return {v["name"]: v["count"] for v in rep["variants"]}
    assert counts() == want
    # a replayed assignment with the other variant (with the proxy's own credential) is
    # refused and counted; the counts do not move
    some = next(iter(served))
    other = "v2" if served[some] == "v1" else "v1"
    s, _, res = sidecar.call("POST", "/v1/assignments", {"assignments": [
        {"correlation_id": some, "rollout": "churn", "variant": other, "unix_ms": 1}]}, role="proxy")
    assert s == 200 and res == {"stored": 0, "refused": 1}, res
    post([{"correlation_id": some, "reward": 0}])
    assert counts() == want
    import urllib.request
    with urllib.request.urlopen(sidecar.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "rollout_control_assignments_refused_total 1\n" in text
    # nobody else may post assignments or outcomes
    for role in ("feedback", "operator"):
        s, _, _ = sidecar.call("POST", "/v1/assignments", {"assignments": []}, role=role)
        assert s == 403
    s, _, _ = sidecar.call("POST", "/v1/feedback", {"outcomes": []}, role="proxy")
    assert s == 403


# ---------------------------------------------------------------- mTLS peer

def _cert(subject_cn: str, issuer_key, issuer_name, key, *, ca=False, uri=None, dns=None):
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(hours=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    sans = [x509.UniformResourceIdentifier(uri)] if uri else []
    sans += [x509.DNSName(dns)] if dns else []
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(directory: Path, name: str, cert, key) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    c, k = directory / f"{name}.crt", directory / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


def test_a_client_certificates_uri_san_is_the_subject_and_a_target(tmp_path):
    """A throwaway CA signs the listener's and the clients' certificates; the public
    listener (127.0.0.1) requires and verifies a client certificate. subject.peer
    "uri_san" decides the bucket whatever x-user-id says, and a condition on the peer
    pins a tester's SAN to the canary."""
    import http.client
    import ssl
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("model-rollout test CA", ca_key, None, ca_key, ca=True)
    ca_pem, _ = _pem(tmp_path, "ca", ca, ca_key)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv_crt, srv_k = _pem(tmp_path, "server", _cert("localhost", ca_key, ca.subject, srv_key,
                                                     dns="localhost"), srv_key)
    procs = Processes()
    try:
        models = {"model_stable": Model(procs, "stable"), "model_canary": Model(procs, "canary"),
                  "model_shadow": Model(procs, "shadow")}
        cfg = EnvoyConfig().upstreams({k: m.port for k, m in models.items()})
        public = next(x for x in cfg.doc["static_resources"]["listeners"] if x["name"] == "public")
        public["filter_chains"][0]["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": {"filename": str(srv_crt)},
                                          "private_key": {"filename": str(srv_k)}}],
                    "validation_context": {"trusted_ca": {"filename": str(ca_pem)}}}}}

        def plugin(c):
            c["subject"] = {"peer": "uri_san", "header": "x-user-id", "client_controlled": True}
            fraud = next(r for r in c["plan"]["rollouts"] if r["name"] == "fraud")
            fraud["targeting"].insert(0, {"variant": "canary", "when": [
                {"peer": "uri_san", "prefix": "spiffe://model-rollout.test/testers/"}]})
        cfg.edit_plugin(plugin)
        envoy = Envoy(procs, cfg)

        def san(prefix, canary):
            return next(f"spiffe://model-rollout.test/{prefix}/{i}" for i in range(10_000)
                        if (expected_bucket("fraud-v2", f"spiffe://model-rollout.test/{prefix}/{i}")
                            >= 9000) == canary)
        cases = [(san("users", True), "canary"), (san("users", False), "stable"),
                 (san("testers", False), "canary")]
        stable_id = next(u for u in USERS if expected_bucket("fraud-v2", u) < 9000)
        canary_id = next(u for u in USERS if expected_bucket("fraud-v2", u) >= 9000)
        for i, (uri, want) in enumerate(cases):
            key = ec.generate_private_key(ec.SECP256R1())
            crt, k = _pem(tmp_path, f"client-{i}", _cert(f"client-{i}", ca_key, ca.subject, key, uri=uri), key)
            ctx = ssl.create_default_context(cafile=str(ca_pem))
            ctx.load_cert_chain(str(crt), str(k))
            conn = http.client.HTTPSConnection("localhost", envoy.port(), context=ctx, timeout=10)
            # the client's own id names the other bucket: the certificate decides
            conn.request("POST", FRAUD, body=b'{"inputs":[]}', headers={
                "x-user-id": stable_id if want == "canary" else canary_id,
                "content-type": "application/json"})
            r = conn.getresponse()
            body = json.loads(r.read())
            conn.close()
            assert r.status == 200, (uri, r.status)
            assert (r.getheader("x-model-variant"), body["model_version"]) == (want, want), uri
    finally:
        procs.stop_all()
