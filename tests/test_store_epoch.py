"""Store identity: an older backup of the sidecar's store restored under a running Envoy
(--concurrency 2). The restored store serves lower versions than the proxies run, under a
new store epoch; every worker takes them within one poll interval (1000 ms) instead of
refusing them as stale."""

import http.client
import shutil
import threading
import time
from pathlib import Path

from harness import INFER_BODY, Sidecar, metric, metric_samples, wait_for
from test_control import FRAUD, demo_plan, in_force, stack

POLL_INTERVAL_S = 1.0


def stale_rejections(envoy) -> float:
    s = metric_samples(envoy.prometheus())
    return metric(s, "model_rollout_control_plans_rejected_total", reason="stale_version")


def all_workers_see(conns, want: str, t0: float, within: float) -> list:
    """Each keep-alive connection (spread over both workers) probes until its answer
    comes from `want`; returns the seconds each took (None: not within `within`)."""
    seen = [None] * len(conns)

    def probe(i):
        while time.monotonic() < t0 + within:
            conns[i].request("POST", FRAUD, body=INFER_BODY, headers={"x-user-id": f"probe-{i}"})
            r = conns[i].getresponse()
            r.read()
            if r.getheader("x-model-variant") == want:
                seen[i] = time.monotonic() - t0
                return
            time.sleep(0.005)

    threads = [threading.Thread(target=probe, args=(i,)) for i in range(len(conns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seen


def test_restored_backup_reaches_every_worker_within_one_poll(procs):
    sidecar = Sidecar(procs, demo_plan())
    v2 = sidecar.weights("fraud", {"stable": 100, "canary": 0}, reason="the state backed up")
    first_epoch = sidecar.plan()["epoch"]
    envoy = stack(procs, sidecar.port, concurrency=2)
    assert wait_for(lambda: in_force(envoy) == v2, timeout=10)

    # Back up: stop the sidecar, copy the store file.
    sidecar.kill9()
    backup = Path(sidecar.data) / "backup.redb"
    shutil.copy(Path(sidecar.data) / "control.redb", backup)
    sidecar.start()
    for w in (10, 50, 100):
        v = sidecar.weights("fraud", {"stable": 100 - w, "canary": w}, reason=f"ramp {w}")
    assert v == v2 + 3
    assert wait_for(lambda: in_force(envoy) == v, timeout=10)

    conns = [http.client.HTTPConnection("127.0.0.1", envoy.port(), timeout=10) for _ in range(16)]
    try:
        assert all(s is not None for s in all_workers_see(conns, "canary", time.monotonic(), 5))
        rejected_before = stale_rejections(envoy)

        # Restore the backup: its latest version (v2) is lower than the proxies' (v5).
        sidecar.kill9()
        shutil.copy(backup, Path(sidecar.data) / "control.redb")
        sidecar.start()
        t0 = time.monotonic()
        plan = sidecar.plan()
        assert plan["version"] == v2 and plan["epoch"] != first_epoch, plan
        seen = all_workers_see(conns, "stable", t0, 10)
    finally:
        for c in conns:
            c.close()
    assert all(s is not None for s in seen), f"not every worker took the restored plan: {seen}"
    lag = max(seen)
    print(f"\nrestored backup (v{v2} under v{v}): every worker on it {lag * 1000:.0f} ms "
          f"after the sidecar was ready (poll interval {POLL_INTERVAL_S * 1000:.0f} ms)")
    # One poll interval, plus the other root's 100 ms adoption tick and scheduling slack.
    assert lag < POLL_INTERVAL_S + 0.5, lag
    assert wait_for(lambda: in_force(envoy) == v2, timeout=5)
    assert stale_rejections(envoy) == rejected_before, "the restored plan was not refused as stale"
