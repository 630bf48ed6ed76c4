#!/usr/bin/env python3
"""OCI image of the model-rollout filter, for Istio's WasmPlugin / TrafficExtension and
Envoy Gateway's EnvoyExtensionPolicy.

    tools/oci.py build --wasm target/wasm32-wasip1/release/model_rollout.wasm \
                       --out target/oci/model-rollout [--tar target/oci/model-rollout.tar] [--tag 0.1.0]
    tools/oci.py digest --wasm FILE          # the image (manifest) digest, hex, for `sha256:` in manifests
    tools/oci.py pin [--wasm FILE] [--check] # write (or check) that digest and the tag into the manifests
                                             # (istio/, gateway-api/, envoy-gateway/)
    tools/oci.py verify DIR [--wasm FILE]    # check an OCI image layout (structure, media types, digests)

Format: Istio's *compat* variant (solo-io wasm image spec, "spec-compat"): a plain OCI
image whose single layer (`application/vnd.oci.image.layer.v1.tar+gzip`) is a tar holding
one file, `plugin.wasm`; config `application/vnd.oci.image.config.v1+json`
(os "wasi", architecture "wasm", like Docker's wasi/wasm platform). Every registry stores
it (it is an ordinary image), and Istio's fetcher reads it (pkg/wasm/imagefetcher.go:
extractOCIStandardImage takes the last layer and the file named plugin.wasm).

Deterministic: the tar entry has mtime 0, uid/gid 0, mode 0644, USTAR format; gzip has
mtime 0 and no file name; JSON is canonical (sorted keys, no spaces); no timestamps or
version annotations in the manifest. So the same .wasm always gives the same manifest
digest, whatever the tag (the tag lives only in index.json's ref.name annotation).

`sha256:` in a WasmPlugin / TrafficExtension with an `oci://` URL is compared by Istio
with the *image manifest digest* (pkg/wasm/cache.go compares it with the digest that
ImageFetcher.PrepareFetch returns, `img.Digest()`), not with the sha256 of the .wasm; for
http(s) URLs it is the sha256 of the module itself. `pin` therefore writes the manifest
digest, and `verify` checks that the layer holds exactly the .wasm.

The commit id. build.rs embeds `git rev-parse --short=12 HEAD` in the .wasm, so every
commit changes the module and its digest, even when the filter did not change. A digest
committed in a manifest can therefore never equal the digest of a build *of that same
commit* (the commit contains the digest). `pin` records the commit id it found in the
module (annotation model-rollout.io/source-commit), and `check` compares modulo that id:
it puts the recorded id back into the current module (same length, 12 hex digits, one
occurrence) and requires the resulting image digest to equal the pinned sha256. Equal
means: the pinned image holds exactly this build's code; only the logged commit id differs.
(If the module ever stops embedding the commit, this reduces to a plain comparison.)

Outputs of `build`:
  DIR/oci-layout, DIR/index.json, DIR/blobs/sha256/{layer,config,manifest}
  TAR: the same files in one tarball, plus a docker-save style manifest.json, so that
       `skopeo copy oci-archive:TAR:TAG ...`, `docker load` and `crane push TAR ...` accept it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import shutil
import sys
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WASM = ROOT / "target/wasm32-wasip1/release/model_rollout.wasm"
# Folders whose manifests deploy the filter from its OCI image (`pin` rewrites them).
MANIFEST_DIRS = [ROOT / "istio", ROOT / "gateway-api", ROOT / "envoy-gateway"]
# The repository part of the image in the shipped manifests (the registry is the user's).
IMAGE_REPO_SUFFIX = "/model-rollout/filter"

OCI_LAYOUT = "application/vnd.oci.layout.header.v1+json"  # (not a blob; for reference)
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_FILE = "plugin.wasm"
REF_NAME = "org.opencontainers.image.ref.name"


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, annotations: dict | None = None) -> dict:
    d = {"mediaType": media_type, "digest": "sha256:" + sha256_hex(data), "size": len(data)}
    if annotations:
        d["annotations"] = annotations
    return d


def workspace_version() -> str:
    doc = tomllib.loads((ROOT / "Cargo.toml").read_text())
    return doc["workspace"]["package"]["version"]


COMMIT_ANNOTATION = "model-rollout.io/source-commit"
_HEX12 = re.compile(rb"[0-9a-f]{12}")


def _git(*args: str) -> str:
    import subprocess
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except OSError:
        return ""
    return r.stdout if r.returncode == 0 else ""


def embedded_commit(wasm: bytes, history: int = 2000) -> str | None:
    """The 12-hex commit id build.rs put into the module: one of this repository's commits
    occurring exactly once in it; None when none does (no git at build time: "unknown")."""
    found = [c for c in _git("log", f"-n{history}", "--format=%H", "HEAD").split()
             if wasm.count(c[:12].encode()) == 1]
    return found[0][:12] if found else None


def with_commit(wasm: bytes, commit: str | None) -> bytes:
    """`wasm` as it would be had it been built at `commit` (see the module doc)."""
    current = embedded_commit(wasm)
    if commit is None or current is None or current == commit:
        return wasm
    if not re.fullmatch(r"[0-9a-f]{12}", commit):
        raise ValueError(f"recorded commit {commit!r} is not 12 hex digits")
    return wasm.replace(current.encode(), commit.encode(), 1)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    """A deterministic USTAR archive of regular files (sorted by name)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    # filename="" and mtime=0: no name, no time in the gzip header.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


@dataclass
class Image:
    layer: bytes
    config: bytes
    manifest: bytes
    diff_id: str  # sha256 of the uncompressed layer tar

    @property
    def digest(self) -> str:
        """The image digest (of the manifest), hex, as Istio's `sha256:` wants it."""
        return sha256_hex(self.manifest)

    def manifest_descriptor(self, tag: str | None) -> dict:
        return descriptor(MANIFEST, self.manifest, {REF_NAME: tag} if tag else None)

    def index(self, tag: str | None) -> bytes:
        return canonical_json({"schemaVersion": 2, "mediaType": INDEX,
                               "manifests": [self.manifest_descriptor(tag)]})


def make_image(wasm: bytes) -> Image:
    if wasm[:4] != b"\0asm":
        raise ValueError("not a WebAssembly module (no \\0asm magic)")
    layer_tar = _tar([(WASM_FILE, wasm)])
    layer = _gzip(layer_tar)
    diff_id = "sha256:" + sha256_hex(layer_tar)
    config = canonical_json({
        "architecture": "wasm",
        "os": "wasi",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(CONFIG, config),
        "layers": [descriptor(LAYER, layer)],
    })
    return Image(layer=layer, config=config, manifest=manifest, diff_id=diff_id)


def layout_files(img: Image, tag: str | None) -> list[tuple[str, bytes]]:
    files = [("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})),
             ("index.json", img.index(tag))]
    for blob in (img.layer, img.config, img.manifest):
        files.append((f"blobs/sha256/{sha256_hex(blob)}", blob))
    return files


def docker_save_manifest(img: Image, repo_tag: str | None) -> bytes:
    """manifest.json of `docker save` (what `docker load` and crane's tarball reader read)."""
    return canonical_json([{
        "Config": f"blobs/sha256/{sha256_hex(img.config)}",
        "RepoTags": [repo_tag] if repo_tag else [],
        "Layers": [f"blobs/sha256/{sha256_hex(img.layer)}"],
    }])


def build(wasm_path: Path, out: Path, tar_path: Path | None, tag: str | None,
          repo_tag: str | None = None) -> Image:
    img = make_image(wasm_path.read_bytes())
    files = layout_files(img, tag)
    if out.exists():
        shutil.rmtree(out)
    for name, data in files:
        p = out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    if tar_path is not None:
        tar_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tar_path.with_suffix(tar_path.suffix + ".tmp")
        tmp.write_bytes(_tar(files + [("manifest.json", docker_save_manifest(img, repo_tag))]))
        tmp.replace(tar_path)
    return img


# ---------------------------------------------------------------- verification

class LayoutError(AssertionError):
    pass


def _blob(root: Path, desc: dict, media_type: str) -> bytes:
    if desc.get("mediaType") != media_type:
        raise LayoutError(f"media type {desc.get('mediaType')!r}, expected {media_type!r}")
    m = re.fullmatch(r"sha256:([0-9a-f]{64})", desc.get("digest", ""))
    if not m:
        raise LayoutError(f"bad digest {desc.get('digest')!r}")
    path = root / "blobs" / "sha256" / m.group(1)
    if not path.is_file():
        raise LayoutError(f"missing blob {path}")
    data = path.read_bytes()
    if sha256_hex(data) != m.group(1):
        raise LayoutError(f"blob {path.name}: content digest {sha256_hex(data)} differs from its name")
    if desc.get("size") != len(data):
        raise LayoutError(f"blob {path.name}: size {len(data)}, descriptor says {desc.get('size')}")
    return data


def read_layer_files(layer: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer)), mode="r:") as tf:
        for m in tf.getmembers():
            if not m.isfile():
                raise LayoutError(f"layer entry {m.name!r} is not a regular file")
            f = tf.extractfile(m)
            out[m.name] = f.read() if f else b""
    return out


def verify_layout(root: Path, wasm: bytes | None = None) -> dict:
    """Checks an OCI image layout made by `build`; returns facts for the caller's asserts.
    Raises LayoutError naming what is wrong."""
    layout = json.loads((root / "oci-layout").read_text())
    if layout != {"imageLayoutVersion": "1.0.0"}:
        raise LayoutError(f"oci-layout is {layout}")
    index = json.loads((root / "index.json").read_text())
    if index.get("schemaVersion") != 2 or index.get("mediaType") != INDEX:
        raise LayoutError(f"index.json header: {index.get('schemaVersion')}, {index.get('mediaType')}")
    if len(index.get("manifests", [])) != 1:
        raise LayoutError("index.json must name exactly one manifest")
    mdesc = index["manifests"][0]
    manifest_bytes = _blob(root, mdesc, MANIFEST)
    manifest = json.loads(manifest_bytes)
    if manifest.get("schemaVersion") != 2 or manifest.get("mediaType") != MANIFEST:
        raise LayoutError("manifest header")
    config = json.loads(_blob(root, manifest["config"], CONFIG))
    if len(manifest.get("layers", [])) != 1:
        raise LayoutError("the compat variant has exactly one layer")
    layer = _blob(root, manifest["layers"][0], LAYER)
    files = read_layer_files(layer)
    if list(files) != [WASM_FILE]:
        raise LayoutError(f"layer holds {sorted(files)}, expected only {WASM_FILE}")
    diff_id = "sha256:" + sha256_hex(gzip.decompress(layer))
    if config.get("rootfs") != {"type": "layers", "diff_ids": [diff_id]}:
        raise LayoutError(f"config rootfs {config.get('rootfs')} does not match the layer ({diff_id})")
    for key in ("architecture", "os"):
        if not config.get(key):
            raise LayoutError(f"config without {key}")
    module = files[WASM_FILE]
    if module[:4] != b"\0asm":
        raise LayoutError("plugin.wasm is not a WebAssembly module")
    if wasm is not None and module != wasm:
        raise LayoutError(f"plugin.wasm (sha256 {sha256_hex(module)}) is not the given .wasm "
                          f"(sha256 {sha256_hex(wasm)})")
    blobs = {p.name for p in (root / "blobs" / "sha256").iterdir()}
    referenced = {d["digest"][7:] for d in (mdesc, manifest["config"], manifest["layers"][0])}
    if blobs != referenced:
        raise LayoutError(f"unreferenced or missing blobs: {sorted(blobs ^ referenced)}")
    return {"manifest_digest": mdesc["digest"][7:], "wasm_sha256": sha256_hex(module),
            "tag": (mdesc.get("annotations") or {}).get(REF_NAME), "config": config,
            "manifest": manifest, "index": index}


# ---------------------------------------------------------------- manifests that pin the image

_DOC_SPLIT = re.compile(r"(?m)^---[ \t]*$")
_URL = re.compile(r"(?m)^(?P<pre>\s*url:\s*[\"']?oci://[^\s\"':]+(?::\d+)?[^\s\"':@]*"
                  + re.escape(IMAGE_REPO_SUFFIX) + r"):(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})")
_SHA = re.compile(r"(?m)^(?P<pre>\s*sha256:\s*)[\"']?(?P<hex>[0-9a-f]{64})?[\"']?[ \t]*$")


def filter_documents(text: str):
    """(index, document text) of the documents that deploy this filter from an OCI image."""
    for i, doc in enumerate(_DOC_SPLIT.split(text)):
        if re.search(r"(?m)^kind:\s*(WasmPlugin|TrafficExtension|EnvoyExtensionPolicy)\s*$", doc) and _URL.search(doc):
            yield i, doc


_COMMIT = re.compile(r"(?m)^(?P<pre>\s*" + re.escape(COMMIT_ANNOTATION) + r":\s*)[\"']?(?P<id>[0-9a-f]{12}|unknown)[\"']?[ \t]*$")


def pinned(text: str) -> list[dict]:
    """sha256, tag and recorded commit of every filter document of a manifest file."""
    out = []
    for _, doc in filter_documents(text):
        sha, url, commit = _SHA.search(doc), _URL.search(doc), _COMMIT.search(doc)
        out.append({"sha256": sha.group("hex") if sha else None,
                    "tag": url.group("tag") if url else None,
                    "commit": commit.group("id") if commit else None})
    return out


def pin_text(text: str, digest: str, tag: str, commit: str | None = None) -> str:
    parts = _DOC_SPLIT.split(text)
    seps = _DOC_SPLIT.findall(text)
    for i, doc in filter_documents(text):
        if len(_SHA.findall(doc)) != 1:
            raise ValueError("a filter document must carry exactly one `sha256:` line")
        doc = _URL.sub(lambda m: f"{m.group('pre')}:{tag}", doc)
        doc = _SHA.sub(lambda m: f"{m.group('pre')}{digest}", doc)
        if commit is not None:
            if len(_COMMIT.findall(doc)) != 1:
                raise ValueError(f"a filter document must carry exactly one `{COMMIT_ANNOTATION}:` annotation")
            doc = _COMMIT.sub(lambda m: f"{m.group('pre')}{commit}", doc)
        parts[i] = doc
    out = parts[0]
    for sep, part in zip(seps, parts[1:]):
        out += sep + part
    return out


def manifest_files() -> list[Path]:
    return sorted(p for d in MANIFEST_DIRS for p in d.glob("*.yaml") if list(filter_documents(p.read_text())))


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def pin(wasm_path: Path, check: bool) -> list[str]:
    """Writes digest, tag and source commit; with check, only compares (modulo the
    commit id, see the module doc). Returns the files that differ."""
    wasm = wasm_path.read_bytes()
    tag = workspace_version()
    stale = []
    for path in manifest_files():
        old = path.read_text()
        if check:
            for p in pinned(old):
                expect = make_image(with_commit(wasm, p["commit"] if p["commit"] != "unknown" else None))
                if p["sha256"] != expect.digest or p["tag"] != tag:
                    stale.append(_shown(path))
                    break
            continue
        commit = embedded_commit(wasm) or "unknown"
        new = pin_text(old, make_image(wasm).digest, tag, commit)
        if new != old:
            stale.append(_shown(path))
            path.write_text(new)
    return stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write an OCI image layout (and a tarball) of the filter")
    b.add_argument("--wasm", type=Path, default=DEFAULT_WASM)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--tar", type=Path)
    b.add_argument("--tag", default=None, help="ref name in index.json (default: the workspace version)")
    b.add_argument("--repo", default="model-rollout/filter",
                   help="repository written into the tarball's docker-save manifest.json RepoTags")
    d = sub.add_parser("digest", help="print the image digest (hex) of a .wasm")
    d.add_argument("--wasm", type=Path, default=DEFAULT_WASM)
    p = sub.add_parser("pin", help="write the image digest and tag into the manifests that deploy the filter")
    p.add_argument("--wasm", type=Path, default=DEFAULT_WASM)
    p.add_argument("--check", action="store_true", help="only report; exit 1 when a file is stale")
    v = sub.add_parser("verify", help="check an OCI image layout")
    v.add_argument("dir", type=Path)
    v.add_argument("--wasm", type=Path)
    args = ap.parse_args(argv)

    if args.cmd == "build":
        tag = args.tag or workspace_version()
        img = build(args.wasm, args.out, args.tar, tag, f"{args.repo}:{tag}")
        print(f"oci: {args.out} (tag {tag}) digest sha256:{img.digest} "
              f"wasm sha256:{sha256_hex(args.wasm.read_bytes())}")
        if args.tar:
            print(f"oci: {args.tar}")
        return 0
    if args.cmd == "digest":
        print(make_image(args.wasm.read_bytes()).digest)
        return 0
    if args.cmd == "pin":
        stale = pin(args.wasm, args.check)
        digest = make_image(args.wasm.read_bytes()).digest
        if args.check:
            for f in stale:
                print(f"oci: {f}: sha256/tag differ from the current build "
                      f"(sha256:{digest}); run `make oci`", file=sys.stderr)
            return 1 if stale else 0
        for f in stale:
            print(f"oci: pinned {f} to sha256:{digest}")
        return 0
    if args.cmd == "verify":
        try:
            facts = verify_layout(args.dir, args.wasm.read_bytes() if args.wasm else None)
        except (LayoutError, OSError, ValueError, KeyError) as e:
            print(f"oci: invalid layout {args.dir}: {e}", file=sys.stderr)
            return 1
        print(f"oci: {args.dir} ok, digest sha256:{facts['manifest_digest']}, "
              f"plugin.wasm sha256:{facts['wasm_sha256']}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
