#!/usr/bin/env python3
"""Where an Envoy's memory goes, per setup or per .wasm build: a quick comparison.

Starts one Envoy per variant and repetition at once (bench/run.py's direct-shape
configs, `--concurrency 1`, pinned to core 0 like `make bench`), drives each with a
few seconds of wrk, waits for the freed heap to be released, and prints per Envoy:
VmRSS, and from Envoy's `/memory` (tcmalloc) the heap in use, the page heap's free
bytes and the thread caches, plus the compiled code (V8's rwx mappings in
/proc/PID/smaps). Then the mean VmRSS per variant.

    .venv/bin/python bench/rss.py none=none noop=noop ours=ours
    .venv/bin/python bench/rss.py --reps 3 ours=ours small=ours:/tmp/small.wasm

A variant is NAME=SETUP[:WASM]: SETUP is a direct-shape setup of bench/run.py
(none, native, noop, floor, ours), WASM another .wasm for its filter. Figures are
printed, never judged: the exit status is 1 only when an Envoy could not start.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402


def code_mb(pid: int) -> float:
    """Resident size of the process's anonymous rwx mappings (V8's Wasm code)."""
    kb, rwx = 0, False
    with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                rwx = head[1] == "rwxp" and len(head) == 5
            elif rwx and line.startswith("Rss:"):
                kb += int(head[1])
    return kb / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", metavar="NAME=SETUP[:WASM]")
    ap.add_argument("--reps", type=int, default=2, help="Envoys per variant (2)")
    ap.add_argument("--secs", type=int, default=4, help="seconds of wrk per Envoy (4)")
    ap.add_argument("--envoy", default=str(R.ROOT / ".venv/bin/envoy"))
    ap.add_argument("--wrk", default="wrk")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rss-"))
    lua = work / "bench.lua"
    lua.write_text(R.WRK_LUA)
    envoys: list[tuple[str, subprocess.Popen[bytes], str, str, Path]] = []
    try:
        for rep in range(a.reps):
            for v in a.variants:
                name, spec = v.split("=", 1)
                setup, _, wasm = spec.partition(":")
                cfg = work / f"{name}-{rep}.yaml"
                admin, listen = R.free_port(), R.free_port()
                R.rewrite_config(R.CONFIG_DIR / f"{setup}-direct.yaml", cfg, admin=admin, listen=listen,
                                 upstreams={})
                if wasm:
                    doc = R.load_yaml(cfg)

                    def other(d: dict, wasm: str = wasm) -> None:
                        if str(d.get("filename", "")).endswith(".wasm"):
                            d["filename"] = str(Path(wasm).resolve())

                    R.walk(doc, other)
                    R.dump_yaml(doc, cfg)
                log = work / f"{name}-{rep}.log"
                argv = [a.envoy, "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
                        "--log-level", "warning"]
                with open(log, "wb") as out:
                    p = subprocess.Popen(R.pinned(0, argv), stdout=out, stderr=subprocess.STDOUT, cwd=R.ROOT)
                envoys.append((name, p, f"http://127.0.0.1:{admin}",
                               f"http://127.0.0.1:{listen}{R.INFER_PATH}", log))
        for name, p, admin, _, log in envoys:
            if not R.wait_until(lambda admin=admin: R.http(f"{admin}/ready", timeout=1)[0] == 200, 180, p):
                print(f"{name}: Envoy did not become ready\n{R.tail(log)}", file=sys.stderr)
                return 1
        for _, _, _, url, _ in envoys:
            subprocess.run([a.wrk, "-t1", "-c8", f"-d{a.secs}s", "-s", str(lua), url, "--", "10000", "rss"],
                           capture_output=True, check=False)
        time.sleep(3)  # memory_allocator_manager releases freed heap every second
        print(f"{'envoy':14s} {'VmRSS':>7s} {'in use':>7s} {'pg free':>7s} {'thr cache':>9s} {'code':>6s}  (MB)")
        means: dict[str, list[float]] = {}
        for i, (name, p, admin, _, _) in enumerate(envoys):
            rss = R.rss_mb(p.pid)
            m = json.loads(R.http(f"{admin}/memory")[2])
            mb = {k: int(m[k]) / 2**20 for k in ("allocated", "pageheap_free", "total_thread_cache")}
            means.setdefault(name, []).append(rss)
            print(f"{name + '#' + str(i // len(a.variants)):14s} {rss:7.1f} {mb['allocated']:7.1f} "
                  f"{mb['pageheap_free']:7.1f} {mb['total_thread_cache']:9.1f} {code_mb(p.pid):6.1f}")
        base = means.get("none")
        for name, xs in means.items():
            mean = sum(xs) / len(xs)
            extra = f"  {mean - sum(base) / len(base):+.1f} over none" if base and name != "none" else ""
            print(f"{name:14s} mean VmRSS {mean:6.1f} MB{extra}")
        return 0
    finally:
        for name, p, *_ in envoys:
            R.stop_process(p, f"Envoy ({name})")


if __name__ == "__main__":
    sys.exit(main())
