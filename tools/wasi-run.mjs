// Cargo test runner for wasm32-wasip1: runs a test binary under Node's WASI
// (preview1), so rollout-core's tests also run compiled to wasm, the way the
// filter runs them. Usage (set by the Makefile):
//   CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings tools/wasi-run.mjs"
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import process from "node:process";

const [, , wasmPath, ...args] = process.argv;
const wasi = new WASI({
  version: "preview1",
  args: [wasmPath, ...args],
  env: { RUST_BACKTRACE: "0" },
  preopens: { "/": "/" },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(wasmPath));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
