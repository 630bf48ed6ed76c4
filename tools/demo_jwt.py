#!/usr/bin/env python3
"""Mints a JWT the demo configs accept (envoy/demo.yaml, envoy/compose.yaml,
istio/request-authn.yaml): ES256, issuer model-rollout-demo, signed by the DEMO-ONLY key
of envoy/demo-jwt/. Never use that key outside the demo.

    curl -H "authorization: Bearer $(.venv/bin/python tools/demo_jwt.py --tester)" ...
"""

import argparse
import time
from pathlib import Path

import jwt

KEY = Path(__file__).resolve().parent.parent / "envoy/demo-jwt/DEMO-ONLY-private-key.pem"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sub", default="demo-user", help="claim sub: the subject key (sticky bucket)")
    p.add_argument("--tester", action="store_true", help='claim "tester": true (routed to the canary)')
    p.add_argument("--region", help='claim "region" (e.g. eu)')
    p.add_argument("--groups", help='claim "groups", comma-separated (a list claim for {"claim": "groups", ...})')
    p.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    a = p.parse_args()
    now = int(time.time())
    claims = {"iss": "model-rollout-demo", "sub": a.sub, "iat": now, "exp": now + a.ttl}
    if a.tester:
        claims["tester"] = True
    if a.region:
        claims["region"] = a.region
    if a.groups:
        claims["groups"] = [g for g in a.groups.split(",") if g]
    print(jwt.encode(claims, KEY.read_text(), algorithm="ES256", headers={"kid": "model-rollout-demo-1"}))


if __name__ == "__main__":
    main()
