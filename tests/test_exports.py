"""The shipped .wasm exports exactly what the filter needs (src/exports.txt, applied by
tools/wasm-trim in `make wasm`): Envoy enters the VM only for callbacks the filter
implements. The exports are read by V8 itself (Node's WebAssembly.Module, the engine
Envoy runs the filter in), which also proves the trimmed module compiles."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import ROOT, WASM

SPEC = ROOT / "src/exports.txt"


def spec() -> tuple[set[str], set[str]]:
    keep, drop = set(), set()
    for line in SPEC.read_text().splitlines():
        words = line.split("#")[0].split()
        if words:
            verb, name = words
            (keep if verb == "keep" else drop).add(name)
    return keep, drop


def exports(path: Path) -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: make node-deps")
    js = ("const fs = require('fs');"
          "const m = new WebAssembly.Module(fs.readFileSync(process.argv[1]));"
          "console.log(JSON.stringify(WebAssembly.Module.exports(m).map(e => e.name)));")
    r = subprocess.run([node, "-e", js, str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_shipped_wasm_exports_what_the_filter_needs_and_nothing_else():
    keep, drop = spec()
    assert {"proxy_on_request_headers", "proxy_on_delete", "proxy_on_memory_allocate"} <= keep
    assert {"proxy_on_done", "proxy_on_log", "proxy_on_request_trailers", "proxy_on_response_trailers",
            "proxy_on_new_connection", "proxy_on_grpc_receive", "proxy_on_foreign_function"} <= drop
    got = exports(WASM)
    assert len(got) == len(set(got))
    assert set(got) == keep, f"missing {keep - set(got)}, unexpected {set(got) - keep}"


def test_cargo_output_is_trimmed_as_make_wasm_does(tmp_path):
    """tools/wasm-trim on cargo's own output (target/.../deps/) yields the shipped file."""
    untrimmed = WASM.parent / "deps" / WASM.name
    tool = ROOT / "target/native/wasm-trim"
    if not untrimmed.exists() or not tool.exists():
        pytest.fail("build first: make wasm")
    keep, drop = spec()
    before = set(exports(untrimmed))
    assert before & drop, "cargo's output no longer exports what is dropped"
    copy = tmp_path / "m.wasm"
    shutil.copy(untrimmed, copy)
    subprocess.run([tool, "--exports", SPEC, copy], check=True, capture_output=True)
    assert set(exports(copy)) == keep
    # a spec that keeps a dropped callback is refused, and the file is left alone
    strict = tmp_path / "strict.txt"
    strict.write_text(SPEC.read_text().replace("drop proxy_on_done ", "keep proxy_on_done "))
    trimmed = copy.read_bytes()
    r = subprocess.run([tool, "--exports", strict, copy], capture_output=True, text=True)
    assert r.returncode == 1 and "proxy_on_done" in r.stderr
    assert copy.read_bytes() == trimmed
