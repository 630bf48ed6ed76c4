"""`make demo` keeps working: the demo script brings up models, sidecar and Envoy,
walks the rollout through the sidecar under traffic, and shuts everything down."""

import re
import subprocess
import sys

from harness import ROOT


def test_demo_walks_the_rollout_under_traffic():
    r = subprocess.run([sys.executable, "tools/demo.py", "--duration", "9", "--step-seconds", "1.5", "--rps", "300"],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    summary = out.split("=== summary")[-1].split("plan history")[0]
    assert re.search(r"ok (\d+), errors 0", summary), summary
    rows = [line.split() for line in summary.splitlines() if line.strip().startswith("/v2/")]
    seen = {(row[0], row[1], row[2]) for row in rows}
    # every variant is answered by the model its route names
    assert ("/v2/models/fraud/infer", "stable", "stable") in seen
    assert ("/v2/models/fraud/infer", "canary", "canary") in seen
    assert ("/v2/models/churn/infer", "v2", "canary") in seen
    assert all(row[1] == row[2] or (row[1], row[2]) in {("v1", "stable"), ("v2", "canary")} for row in rows)
    # the walk went through the sidecar: every step is in the history
    history = out.split("plan history")[-1]
    for w in (5, 25, 50, 100):
        assert f"demo: canary to {w} %" in history, history
    # and the narration saw shadow comparisons
    assert re.search(r"shadow compared [1-9]\d*", out), out[-2000:]
