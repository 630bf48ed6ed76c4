"""A policy-driven rollout on real processes (demo models, the sidecar with its policy
engine, Envoy running the .wasm) and a real local webhook receiver, shared by
tests/test_notify.py and tests/test_ui.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import Envoy, EnvoyConfig, Model, Sidecar, free_port

FRAUD = "/v2/models/fraud/infer"
USERS = [f"user-{i}" for i in range(4000)]
SECRET = "webhook-secret-for-tests"
CHECKS = [
    {"metric": "error_rate", "max_increase": 0.05, "min_samples": 20},
    {"metric": "latency", "percentile": 99, "max_increase": 150, "min_samples": 20},
    {"metric": "shadow_disagreement_rate", "max": 0.1, "min_samples": 20},
]


def step(weight, **kw):
    return {"weight": weight, "min_duration_s": 1, "min_requests": 20, **kw}


def policy(steps, checks=CHECKS, **extra):
    return {"steps": steps, "interval_s": 1, "checks": checks, "failure_limit": 2,
            "inconclusive_limit": 1000, **extra}


class Receiver:
    """A webhook receiver (Python's http.server on a free loopback port): records every
    request with its arrival time; answers `status` (settable), or never answers while
    `hang` is set."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.hang = threading.Event()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with outer.lock:
                    outer.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                           "body": body, "at": time.time()})
                if outer.hang.is_set():
                    time.sleep(30)
                    return
                self.send_response(outer.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def got(self, path: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if path is None or r["path"] == path]

    def events(self, path: str = "/hook") -> list[dict]:
        return [json.loads(r["body"]) for r in self.got(path)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def signature_ok(req: dict, secret: str = SECRET) -> bool:
    want = "sha256=" + hmac.new(secret.encode(), req["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(req["headers"].get("x-rollout-signature", ""), want)


class Stack:
    """Models, the sidecar (policy engine, notifier) and Envoy, wired together; the
    rollout `fraud` goes stable -> canary under `pol`."""

    def __init__(self, procs, pol, canary_args=(), shadow_args=(), notify=None, extra=(), token=None):
        self.procs = procs
        self.stable = Model(procs, "stable")
        self.canary = Model(procs, "canary", *canary_args)
        self.shadow = Model(procs, "shadow", *shadow_args)
        cfg = EnvoyConfig().upstreams({"model_stable": self.stable.port, "model_canary": self.canary.port,
                                       "model_shadow": self.shadow.port})
        plan = cfg.plugin()["plan"]
        r = plan["rollouts"][0]
        r["variants"] = [{"name": "stable", "weight": 100}, {"name": "canary", "weight": 0}]
        r["shadow"]["percent"] = 100
        r["shadow"]["max_in_flight"] = 1000
        r.pop("targeting", None)
        r["policy"] = pol
        if notify:
            r["notify"] = notify
        self.plan = plan
        port = free_port()
        cfg.upstreams({"rollout_control": port})
        secret = f"{procs.tmp.name}/webhook-secret"
        with open(secret, "w") as f:
            f.write(SECRET + "\n")
        proxy_token = None if token is None else token + "-proxy"
        self.sidecar = Sidecar(procs, plan, port=port, token=token,
                               tokens=None if token is None else {"proxy": proxy_token}, extra=[
            "--envoy-admin", f"http://127.0.0.1:{cfg.admin_port}", "--analysis-tick-ms", "250",
            "--webhook-secret-file", secret, *extra])
        cfg.edit_plugin(lambda c: c.update(plan=plan))
        if token is not None:
            def with_token(c):
                if "control" in c:
                    c["control"]["token"] = proxy_token
            cfg.edit_plugin(with_token)
        self.envoy = Envoy(procs, cfg, concurrency=1)

    def rollout(self) -> dict:
        return next(r for r in self.sidecar.plan()["rollouts"] if r["name"] == "fraud")

    def progress(self) -> dict:
        return self.rollout().get("progress") or {}

    def history(self) -> list:
        return self.sidecar.call("GET", "/v1/history?limit=1000")[2]

    def policy_status(self) -> dict:
        st = self.sidecar.call("GET", "/v1/status")[2]
        return next(r for r in st["rollouts"] if r["name"] == "fraud")["policy"]
