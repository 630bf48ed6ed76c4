"""Shadow deployments in a real Envoy: sampled copies dispatched by the filter,
compared with production's answers per correlation id, also when the shadow
answers after the primary has finished."""

import hashlib
import json
import random
import statistics
import subprocess
import time
import urllib.request

import pytest

from harness import (DEMO, INFER_BODY, Envoy, EnvoyConfig, Model, free_port, metric, metric_samples,
                     send_all, wait_for, wait_http)

FRAUD = "/v2/models/fraud/infer"


def shadow_stack(procs, shadow_args=(), shadow_port=None, edit_shadow=None, output=True, canary_args=(),
                 concurrency=1, control_port=None, stable_args=()):
    stable = Model(procs, "stable", *stable_args)
    canary = Model(procs, "canary", *canary_args)
    shadow = None
    if shadow_port is None:
        shadow = Model(procs, "shadow", *shadow_args)
        shadow_port = shadow.port
    cfg = EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port,
                                   "model_shadow": shadow_port})
    if control_port:
        cfg.upstreams({"rollout_control": control_port})

    def edit(c):
        r = c["plan"]["rollouts"][0]
        r["shadow"] = {"cluster": "model_shadow", "percent": 100, "timeout_ms": 5000,
                       "strip_headers": ["x-internal-secret"],
                       "records": {"sample_percent": 100, "disagreements_per_minute": 100000}}
        if edit_shadow:
            edit_shadow(r["shadow"])
        if not output:
            r.pop("output", None)
    cfg.edit_plugin(edit)
    return stable, canary, shadow, Envoy(procs, cfg, concurrency)


def samples(envoy):
    return metric_samples(envoy.prometheus())


def m(envoy, name, **labels):
    return metric(samples(envoy), name, rollout="fraud", **labels)


def body_of(i: int) -> bytes:
    rnd = random.Random(i)
    return json.dumps({"id": f"req-{i}", "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                       "data": [round(rnd.uniform(-10, 10), 4) for _ in range(4)]}]}).encode()


def admin_requests(model, limit):
    with urllib.request.urlopen(f"{model.url}/admin/requests?limit={limit}", timeout=10) as r:
        return json.load(r)


def send_bodies(envoy, bodies, headers=None, threads=8):
    import http.client
    from concurrent.futures import ThreadPoolExecutor
    import threading
    local = threading.local()

    def one(b):
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = http.client.HTTPConnection("127.0.0.1", envoy.port(), timeout=30)
        c.request("POST", FRAUD, body=b, headers={"content-type": "application/json", **(headers or {})})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, bodies))


# ---------------------------------------------------------------- copies

def test_every_request_is_copied_with_same_body_and_id_minus_secrets(procs):
    stable, canary, shadow, envoy = shadow_stack(procs)
    n = 400
    bodies = [body_of(i) for i in range(n)]
    secret = {"authorization": "Bearer user-token", "cookie": "uid=u1; session=s", "x-api-key": "k-123",
              "proxy-authorization": "Basic cHJveHk=", "x-internal-secret": "shh", "x-user-id": "user-7"}
    out = send_bodies(envoy, bodies, headers=secret)
    assert all(s == 200 for s, _, _ in out)
    # the client only ever sees production's answer
    assert {json.loads(b)["model_version"] for _, _, b in out} <= {"stable", "canary"}
    assert all("x-shadow-request" not in h for _, h, _ in out)
    assert wait_for(lambda: m(envoy, "model_rollout_shadow_compared_total") == n, timeout=15)
    log = admin_requests(shadow, n)
    assert len(log) == n
    by_id = {e["id"]: e for e in log}
    for status, headers, body in out:
        cid = headers["x-request-id"]
        sent = bodies[int(json.loads(body)["id"].split("-")[1])]
        copy = by_id[cid]  # same correlation id
        assert copy["body_sha256"] == hashlib.sha256(sent).hexdigest()  # same body
        assert copy["method"] == "POST" and copy["path"] == FRAUD
        assert copy["headers"]["x-shadow-request"] == "true"
        for h in ("authorization", "cookie", "x-api-key", "proxy-authorization", "x-internal-secret",
                  "x-model-variant", "x-model-override"):
            assert h not in copy["headers"], h
        assert copy["headers"]["x-user-id"] == "user-7"
    assert m(envoy, "model_rollout_shadow_sent_total") == n
    assert m(envoy, "model_rollout_shadow_agree_total") == n
    # Every nudge (an empty shared-queue item) was accepted by Envoy.
    assert metric(samples(envoy), "model_rollout_host_errors_total") == 0


def test_sticky_sampling_shadows_the_same_users(procs):
    _, _, shadow, envoy = shadow_stack(procs, edit_shadow=lambda s: s.update(percent=30, sticky=True))
    users = [f"user-{i}" for i in range(1500)]
    for _ in range(2):
        send_all(envoy.port(), [(FRAUD, {"x-user-id": u}) for u in users])
    # every copy sent has been answered and compared (so the shadow logged it) before
    # the log is read: reading at a fixed count raced the copies still in flight
    sent = lambda: m(envoy, "model_rollout_shadow_sent_total")  # noqa: E731
    assert wait_for(lambda: sent() >= 2 * 300
                    and m(envoy, "model_rollout_shadow_compared_total") >= sent(), timeout=20)
    log = admin_requests(shadow, 2000)
    seen = [e["headers"]["x-user-id"] for e in log]
    counts = {}
    for u in seen:
        counts[u] = counts.get(u, 0) + 1
    assert set(counts.values()) == {2}, "a sticky user was shadowed once only"
    assert 27 <= len(counts) / len(users) * 100 <= 33


# ---------------------------------------------------------------- slow, broken shadows

def latencies(envoy, n=300):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", envoy.port(), timeout=30)
    out = []
    for i in range(n):
        t = time.perf_counter()
        c.request("POST", FRAUD, body=INFER_BODY, headers={"x-user-id": f"user-{i}"})
        r = c.getresponse()
        r.read()
        assert r.status == 200
        out.append((time.perf_counter() - t) * 1000)
    c.close()
    out.sort()
    return statistics.median(out), out[int(len(out) * 0.99) - 1]


def test_slow_shadow_is_still_compared_and_does_not_slow_the_primary(procs):
    _, _, _, plain = shadow_stack(procs, edit_shadow=lambda s: s.update(percent=0))
    base_p50, base_p99 = latencies(plain)
    # 300 requests in well under 2 s keep up to 300 shadows in flight: size the budget for it
    _, _, shadow, envoy = shadow_stack(procs, shadow_args=("--latency-ms", "2000"),
                                       edit_shadow=lambda s: s.update(max_in_flight=1000))
    p50, p99 = latencies(envoy)
    n = 300
    compared = wait_for(lambda: m(envoy, "model_rollout_shadow_compared_total") >= 0.99 * n, timeout=20)
    report = (f"primary latency without shadowing p50 {base_p50:.2f} ms p99 {base_p99:.2f} ms; "
              f"with a 2 s shadow on every request p50 {p50:.2f} ms p99 {p99:.2f} ms")
    print("\n" + report)
    assert compared, f"only {m(envoy, 'model_rollout_shadow_compared_total')} of {n} compared"
    assert m(envoy, "model_rollout_shadow_expired_total") == 0
    assert m(envoy, "model_rollout_shadow_skipped_total", reason="in_flight_limit") == 0
    assert p99 < 200, report  # never waits for the 2 s shadow
    s = samples(envoy)
    assert metric(s, "model_rollout_shadow_latency_ms_count", rollout="fraud") >= 0.99 * n
    # the shadow's latency histogram sees the 2 s
    assert metric(s, "model_rollout_shadow_latency_ms_bucket", rollout="fraud", le="1000") == 0


@pytest.mark.parametrize("failure", ["down", "503", "reset", "hang"])
def test_broken_shadow_never_hurts_the_primary(procs, failure):
    port = free_port()
    if failure == "503":
        p = procs.start([str(DEMO), "model", "--listen", f"127.0.0.1:{port}", "--version", "shadow",
                         "--status", "503"], "shadow503")
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", proc=p)
    elif failure in ("reset", "hang"):
        p = procs.start([str(DEMO), "blackhole", "--listen", f"127.0.0.1:{port}", "--mode", failure], "blackhole")
        time.sleep(0.3)
    _, _, _, envoy = shadow_stack(procs, shadow_port=port, edit_shadow=lambda s: s.update(timeout_ms=300))
    rs = send_all(envoy.port(), [(FRAUD, {"x-user-id": f"u{i}"}) for i in range(200)])
    assert [r.status for r in rs] == [200] * 200
    name, labels = {
        "down": ("model_rollout_shadow_errors_total", {"reason": "unreachable"}),
        "503": ("model_rollout_shadow_errors_total", {"reason": "status"}),
        "reset": ("model_rollout_shadow_errors_total", {"reason": "unreachable"}),
        "hang": ("model_rollout_shadow_timeouts_total", {}),
    }[failure]
    sent = lambda: m(envoy, "model_rollout_shadow_sent_total")  # noqa: E731
    skipped = lambda: m(envoy, "model_rollout_shadow_skipped_total", reason="in_flight_limit")  # noqa: E731
    # every copy was sent or (a hanging shadow holds its slots) skipped for the in-flight bound ...
    assert wait_for(lambda: sent() + skipped() == 200, timeout=10), (sent(), skipped())
    # ... and every copy sent ended in the failure's counter
    assert wait_for(lambda: m(envoy, name, **labels) == sent() > 0, timeout=15), (failure, m(envoy, name, **labels), sent())
    assert m(envoy, "model_rollout_shadow_expired_total") == 0
    if failure == "503":
        # the shadow answered: compared, and every answer is a status disagreement
        assert m(envoy, "model_rollout_shadow_disagree_total", reason="status") == sent()


def padded(size: int) -> bytes:
    """A valid OIP request of exactly `size` bytes."""
    if size == 0:
        return b""
    base = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}], "parameters": {"pad": ""}}
    empty = len(json.dumps(base).encode())
    base["parameters"]["pad"] = "x" * (size - empty)
    b = json.dumps(base).encode()
    assert len(b) == size
    return b


def test_in_flight_limit_skips_and_counts(procs):
    _, _, _, envoy = shadow_stack(procs, shadow_args=("--latency-ms", "1500"),
                                  edit_shadow=lambda s: s.update(max_in_flight=10))
    rs = send_all(envoy.port(), [(FRAUD, {"x-user-id": f"u{i}"}) for i in range(100)], threads=4)
    assert all(r.status == 200 for r in rs)
    skipped = lambda: m(envoy, "model_rollout_shadow_skipped_total", reason="in_flight_limit")  # noqa: E731
    assert wait_for(lambda: skipped() >= 80, timeout=5), skipped()
    assert wait_for(lambda: m(envoy, "model_rollout_shadow_compared_total") + skipped() == 100, timeout=10)


def test_body_sizes_around_the_limit(procs):
    limit = 100_000
    _, _, shadow, envoy = shadow_stack(procs, edit_shadow=lambda s: s.update(max_body_bytes=limit))
    sizes = [0, 64 * 1024, limit - 1, limit, limit + 1]
    out = send_bodies(envoy, [padded(s) for s in sizes], threads=1)
    assert [s for s, _, _ in out] == [200] * len(sizes), [(s, b[:80]) for s, _, b in out]
    assert wait_for(lambda: m(envoy, "model_rollout_shadow_compared_total") == 4, timeout=10)
    assert m(envoy, "model_rollout_shadow_skipped_total", reason="body_too_large") == 1
    got = sorted(e["body_len"] for e in admin_requests(shadow, 10))
    assert got == [0, 64 * 1024, limit - 1, limit]


def test_chunked_body_over_the_limit_is_skipped(procs):
    """Without content-length the limit is enforced while the body streams."""
    import http.client
    _, _, shadow, envoy = shadow_stack(procs, edit_shadow=lambda s: s.update(max_body_bytes=1000))
    c = http.client.HTTPConnection("127.0.0.1", envoy.port(), timeout=10)
    chunks = [padded(3000)[i:i + 500] for i in range(0, 3000, 500)]
    c.request("POST", FRAUD, body=iter(chunks), encode_chunked=True,
              headers={"content-type": "application/json", "transfer-encoding": "chunked"})
    r = c.getresponse()
    r.read()
    assert r.status == 200
    assert wait_for(lambda: m(envoy, "model_rollout_shadow_skipped_total", reason="body_too_large") == 1, timeout=5)
    assert admin_requests(shadow, 10) == []


@pytest.mark.parametrize("gone", ["mid_body", "before_the_answer"])
def test_a_client_gone_mid_request_counts_the_shadow_aborted(procs, gone):
    """The end of a request runs when Envoy deletes its context, also for a client
    that goes away: mid-body (the copy is never sent) or after sending the whole body
    but before the primary answered (the copy went out; nothing to compare)."""
    import socket
    slow = ("--latency-ms", "5000")
    _, _, shadow, envoy = shadow_stack(procs, stable_args=slow, canary_args=slow)
    body = padded(1000)
    sent_bytes = body[:100] if gone == "mid_body" else body
    s = socket.create_connection(("127.0.0.1", envoy.port()), timeout=10)
    s.sendall(f"POST {FRAUD} HTTP/1.1\r\nhost: models\r\ncontent-type: application/json\r\n"
              f"x-user-id: u1\r\ncontent-length: {len(body)}\r\n\r\n".encode() + sent_bytes)
    if gone == "before_the_answer":
        # the copy is dispatched once the body is complete
        assert wait_for(lambda: m(envoy, "model_rollout_shadow_sent_total") == 1, timeout=10)
    else:
        time.sleep(0.5)
    s.close()
    aborted = lambda: m(envoy, "model_rollout_shadow_skipped_total", reason="aborted")  # noqa: E731
    assert wait_for(lambda: aborted() == 1, timeout=10), aborted()
    assert m(envoy, "model_rollout_shadow_compared_total") == 0
    if gone == "mid_body":
        assert m(envoy, "model_rollout_shadow_sent_total") == 0
        assert admin_requests(shadow, 10) == []
    # the worker goes on serving
    assert send_all(envoy.port(), [(FRAUD, {"x-user-id": "u2"})])[0].status == 200


# ---------------------------------------------------------------- agreement

def test_measured_disagreement_matches_the_truth(procs):
    # Every copy must be compared for the ratio to be exact, also on a loaded CI machine:
    # no in-flight cap below n, a timeout far above any answer time.
    n = 5000
    _, _, shadow, envoy = shadow_stack(procs, shadow_args=("--disagree-rate", "0.3"),
                                       edit_shadow=lambda s: s.update(max_in_flight=n, timeout_ms=30000))
    out = send_bodies(envoy, [body_of(i) for i in range(n)])
    assert all(s == 200 for s, _, _ in out)
    if not wait_for(lambda: m(envoy, "model_rollout_shadow_compared_total") == n, timeout=60):
        lost = {(k, *sorted(labels)): v for (k, labels), v in samples(envoy).items()
                if v and k in ("model_rollout_shadow_skipped_total", "model_rollout_shadow_errors_total",
                               "model_rollout_shadow_expired_total", "model_rollout_shadow_compared_total")}
        pytest.fail(f"not every one of {n} copies was compared: {lost}")
    stats = json.loads(urllib.request.urlopen(f"{shadow.url}/admin/stats").read())
    assert stats["requests"] == n
    truth = stats["disagreed"] / n
    measured = m(envoy, "model_rollout_shadow_disagree_total", reason="prediction") / n
    print(f"\ndisagreement: measured {measured:.4f}, truth {truth:.4f}")
    assert abs(measured - truth) <= 0.01
    assert m(envoy, "model_rollout_shadow_agree_total") + measured * n == n


def test_nan_and_null_outputs_count_as_invalid_for_the_variant(procs):
    _, canary, _, envoy = shadow_stack(procs, canary_args=("--nan-rate", "0.3", "--null-rate", "0.2"),
                                       edit_shadow=lambda s: s.update(percent=0))
    users = [f"user-{i}" for i in range(3000)]
    rs = send_all(envoy.port(), [(FRAUD, {"x-user-id": u}) for u in users])
    assert all(r.status == 200 for r in rs)
    on_canary = sum(1 for r in rs if r.headers["x-model-variant"] == "canary")
    truth = json.loads(urllib.request.urlopen(f"{canary.url}/admin/stats").read())

    def settled():
        return m(envoy, "model_rollout_outputs_checked_total", variant="canary") == on_canary
    assert wait_for(settled, timeout=10)
    assert m(envoy, "model_rollout_invalid_outputs_total", variant="canary", reason="nan") == truth["nan"] > 0
    assert m(envoy, "model_rollout_invalid_outputs_total", variant="canary", reason="null") == truth["null"] > 0
    assert m(envoy, "model_rollout_invalid_outputs_total", variant="stable", reason="nan") == 0


# ---------------------------------------------------------------- memory

def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_memory_stops_growing_over_100000_shadowed_requests(procs):
    _, _, _, envoy = shadow_stack(procs, shadow_args=("--disagree-rate", "0.1"), concurrency=2)
    figures = []
    for phase in range(10):
        r = subprocess.run([str(DEMO), "traffic", "--url", envoy.url(), "--users", "5000", "--rps", "0",
                            "--concurrency", "16", "--requests", "10000", "--interval", "0", "--json"],
                           capture_output=True, text=True, timeout=300)
        summary = json.loads(r.stdout)
        assert summary["errors"] == 0, summary
        time.sleep(0.5)
        figures.append(rss_kb(envoy.proc.pid))
    assert wait_for(lambda: m(envoy, "model_rollout_shadow_compared_total") >= 99_000, timeout=30)
    report = "Envoy RSS (MiB) after each 10k shadowed requests: " + \
        ", ".join(f"{f / 1024:.1f}" for f in figures)
    print("\n" + report)
    warm = figures[2]
    assert max(figures[3:]) - warm < 16 * 1024, report
    assert m(envoy, "model_rollout_shadow_expired_total") == 0
