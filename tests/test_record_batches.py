"""Shadow records with large predictions reach the real sidecar whole (issue 11, item 4).

The filter buffers comparison records and posts them to rollout-control. Batches are
split by bytes under half the sidecar's 4 MiB body limit (`rollout_core::wire`), so
records whose predictions are tens of kilobytes are not lost to a 413; a single record
over 128 KiB has its predictions cut and is counted.

Real parts: Envoy running the built .wasm, demo model servers answering with
`--output-len` elements per output (large predictions), the real rollout-control."""

import json

from harness import EnvoyConfig, Envoy, Model, Sidecar, metric, metric_samples, wait_for
from test_shadow import body_of, send_bodies

MAX_INGEST_BODY = 4 * 1024 * 1024  # rollout_core::wire::MAX_INGEST_BODY


def stack(procs, output_len: int, shadow_args=()):
    plan = EnvoyConfig().plugin()["plan"]
    plan["rollouts"][0]["shadow"] = {
        "cluster": "model_shadow", "percent": 100, "timeout_ms": 10000, "max_in_flight": 500,
        "records": {"sample_percent": 100, "disagreements_per_minute": 100000}}
    sidecar = Sidecar(procs, plan)
    n = str(output_len)
    stable = Model(procs, "stable", "--output-len", n)
    canary = Model(procs, "canary", "--output-len", n)
    # The shadow answers late, so the records of a burst of requests complete together
    # and wait in one worker's buffer: one unsplit post would be over the limit.
    shadow = Model(procs, "shadow", "--output-len", n, "--latency-ms", "2000", *shadow_args)
    cfg = EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port,
                                   "model_shadow": shadow.port, "rollout_control": sidecar.port})
    cfg.edit_plugin(lambda c: c.update(plan=plan))
    return sidecar, Envoy(procs, cfg, concurrency=1)


def counters(envoy) -> dict:
    s = metric_samples(envoy.prometheus())
    return {
        "sent": metric(s, "model_rollout_shadow_records_sent_total"),
        "failed": metric(s, "model_rollout_shadow_records_dropped_total", reason="post_failed"),
        "full": metric(s, "model_rollout_shadow_records_dropped_total", reason="buffer_full"),
        "truncated": metric(s, "model_rollout_shadow_records_truncated_total"),
    }


def report(sidecar) -> dict:
    status, _, body = sidecar.call("GET", "/v1/shadow-report?rollout=fraud&limit=5")
    assert status == 200, body
    return body


def test_a_burst_of_large_records_arrives_whole_split_by_bytes(procs):
    n = 120
    sidecar, envoy = stack(procs, output_len=6500)
    rs = send_bodies(envoy, [body_of(i) for i in range(n)], threads=n)
    assert all(status == 200 for status, _, _ in rs)
    prediction_bytes = len(json.dumps(json.loads(rs[0][2])["outputs"][0]["data"]))
    # Each record holds two predictions: together more than the sidecar takes in one body.
    assert 2 * prediction_bytes * n > MAX_INGEST_BODY, prediction_bytes
    assert 2 * prediction_bytes < 128 * 1024, "each record stays under the cut"
    assert wait_for(lambda: counters(envoy)["sent"] >= n, timeout=30), counters(envoy)
    got = counters(envoy)
    assert got == {"sent": n, "failed": 0, "full": 0, "truncated": 0}, got
    r = report(sidecar)
    assert r["records"] == n and r["compared"] == n, r


def test_an_oversize_record_is_cut_counted_and_still_stored(procs):
    n = 5
    # 20,000 elements: about 180 kB per prediction, over the 128 KiB record limit.
    sidecar, envoy = stack(procs, output_len=20000, shadow_args=("--disagree-rate", "1"))
    rs = send_bodies(envoy, [body_of(i) for i in range(n)], threads=n)
    assert all(status == 200 for status, _, _ in rs)
    assert wait_for(lambda: counters(envoy)["sent"] >= n, timeout=30), counters(envoy)
    got = counters(envoy)
    assert got == {"sent": n, "failed": 0, "full": 0, "truncated": n}, got
    r = report(sidecar)
    assert r["records"] == n and r["disagree"] == n, r
    cut = r["recent_disagreements"][0]["primary_prediction"]
    # The verdict was computed on the whole answers; the stored prediction says how
    # large it was and keeps its beginning.
    assert cut["truncated_from_bytes"] > 128 * 1024, cut
    assert cut["prefix"].startswith("[[0."), cut["prefix"][:40]
