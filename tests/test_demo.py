"""`make demo` keeps working: the demo script brings up models + Envoy, runs traffic
for a few seconds and shuts everything down again."""

import re
import subprocess
import sys

from harness import ROOT


def test_demo_runs_and_splits_traffic():
    r = subprocess.run([sys.executable, "tools/demo.py", "--duration", "4", "--rps", "300"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = r.stdout.split("=== summary")[-1]
    assert re.search(r"ok (\d+), errors 0", summary), summary
    rows = [line.split() for line in summary.splitlines() if line.strip().startswith("/v2/")]
    seen = {(row[0], row[1], row[2]) for row in rows}
    # every variant is answered by the model its route names
    assert ("/v2/models/fraud/infer", "stable", "stable") in seen
    assert ("/v2/models/fraud/infer", "canary", "canary") in seen
    assert ("/v2/models/churn/infer", "v2", "canary") in seen
    assert all(row[1] == row[2] or (row[1], row[2]) in {("v1", "stable"), ("v2", "canary")} for row in rows)
