"""`make demo` keeps working: models, sidecar with its policy engine and Envoy come up,
traffic flows, a good candidate is promoted, a bad one and a drifted one are rolled back
automatically, and everything shuts down."""

import re
import subprocess
import sys

from harness import ROOT


def test_demo_promotes_a_good_candidate_and_rolls_back_a_bad_and_a_drifted_one():
    r = subprocess.run([sys.executable, "tools/demo.py", "--fast", "--duration", "110", "--rps", "250"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert re.search(r"scenario 1 result: complete: policy: complete: .*canary promoted to stable", out), out[-4000:]
    m = re.search(r"scenario 2 result: rolled_back: policy: rollback at step \d+ \([^)]*\): check(s)? ([a-z_, ]+) failed", out)
    assert m and "error_rate" in m.group(2), out[-4000:]
    # a candidate healthy by status, latency and range, with shifted scores: drift
    m = re.search(r"scenario 3 result: rolled_back: policy: rollback at step \d+ \([^)]*\): check(s)? ([a-z_, ]+) "
                  r"failed \d+ intervals?: .*PSI (\d+\.\d+) > max 0\.5 \(major shift\)", out)
    assert m and "prediction_drift" in m.group(2), out[-4000:]
    assert "error_rate" not in m.group(2) and "invalid_output_rate" not in m.group(2), m.group(0)
    # shadow agreement is shown live, from Envoy's stats
    assert re.search(r"shadow model compared with production on [1-9]\d* requests, agreement \d+\.\d %", out), out[-3000:]
    # every step of scenario 1 went through the sidecar's history
    history = out.split("plan history")[-1]
    for w in (5, 25, 50, 100):
        assert f"({w} %)" in history, history
    # traffic was served throughout: every error is the bad candidate's own 500s
    summary = out.split("=== summary")[-1]
    rows = [line.split() for line in summary.splitlines() if line.strip().startswith("/v2/")]
    assert rows
    assert all(row[1] == row[2] or row[2] == "-" for row in rows), rows  # answered by the routed model
    stable_rows = [row for row in rows if row[1] == "stable" and row[2] == "stable"]
    assert stable_rows and all(row[5] == "0" for row in stable_rows), rows  # stable never errs
