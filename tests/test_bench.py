"""make bench's configs and runner: the generated configs are current and pass
`envoy --mode validate`, and a very short run (`--quick`) prints every figure.

Speed is never asserted here (the targets are printed by `make bench`); this only
checks that the benchmark runs end to end against real Envoys, wrk and the demo
model servers.
"""

import shutil
import subprocess
import sys

import pytest

from harness import ROOT, validate

CONFIG_DIR = ROOT / "envoy" / "bench"
SETUPS = {
    "direct": ("none", "native", "noop", "floor", "ours"),
    "upstream": ("none", "mirror", "ours", "ours-shadow"),
}


def test_generated_configs_are_current():
    res = subprocess.run([sys.executable, "bench/gen_configs.py", "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
    assert names == sorted(f"{s}-{shape}.yaml" for shape, ss in SETUPS.items() for s in ss)


@pytest.mark.parametrize("name", sorted(f"{s}-{shape}" for shape, ss in SETUPS.items() for s in ss))
def test_config_validates(name):
    for wasm in ("noop_filter", "floor_filter"):
        if not (ROOT / f"target/wasm32-wasip1/release/{wasm}.wasm").exists():
            pytest.fail(f"{wasm}.wasm missing: make build")
    res = validate(CONFIG_DIR / f"{name}.yaml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_quick_run_prints_every_figure():
    if not shutil.which("wrk"):
        pytest.fail("wrk is missing: make bench-deps")
    res = subprocess.run([sys.executable, "bench/run.py", "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=150)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    for shape, setups in SETUPS.items():
        assert f"== {shape}: Envoy --concurrency 1" in out, out
        table = out.split(f"== {shape}: Envoy --concurrency 1", 1)[1]
        for setup in setups:
            row = next((line for line in table.splitlines() if line.split()[:1] == [setup]), None)
            assert row is not None, f"no {setup} row in {shape}:\n{out}"
            # RPS, ratio and CPU figures are numbers
            assert float(row.split()[1]) > 0, row
    assert "target: ours - floor <= 1.5 us/req:" in out
    assert "target: ours throughput >= 0.93 of none:" in out
    assert "target: shadow path (ours-shadow - ours)" in out
    # the filter really shadowed in ours-shadow
    assert "shadow_sent_total" in out


def test_rss_compares_envoys_by_memory():
    """bench/rss.py: one row per Envoy with every figure, and the mean per variant."""
    if not shutil.which("wrk"):
        pytest.fail("wrk is missing: make bench-deps")
    res = subprocess.run([sys.executable, "bench/rss.py", "--reps", "1", "--secs", "1",
                          "none=none", "ours=ours"], cwd=ROOT, capture_output=True, text=True,
                         timeout=150)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.split()[:1] in (["none#0"], ["ours#0"])}
    assert set(rows) == {"none#0", "ours#0"}, out
    none, ours = ([float(x) for x in rows[k]] for k in ("none#0", "ours#0"))
    assert len(none) == len(ours) == 5, out
    # the filter's Envoy holds compiled Wasm code; the plain one has none
    assert ours[4] > 0 and none[4] == 0, out
    assert ours[0] > none[0] > 0, out
    assert "ours           mean VmRSS" in out and "over none" in out, out
