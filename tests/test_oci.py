"""tools/oci.py: the OCI image of the filter (Istio's compat variant) and the digest
pinned in the manifests that deploy it: istio/ (WasmPlugin, TrafficExtension),
gateway-api/ (WasmPlugin) and envoy-gateway/ (EnvoyExtensionPolicy).

The layout is built here, in a temporary directory, from the .wasm `make build` just
produced, so the check needs no build output committed: the manifests must carry the
digest of *this* build, modulo the commit id build.rs compiles into the module (which
changes with every commit; tools/oci.py explains). When the filter changes, this test
fails until `make oci` (tools/oci.py pin) rewrites them.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml

from harness import ROOT, WASM

spec = importlib.util.spec_from_file_location("oci", ROOT / "tools/oci.py")
oci = importlib.util.module_from_spec(spec)
sys.modules["oci"] = oci
spec.loader.exec_module(oci)  # type: ignore[union-attr]

TOOL = [sys.executable, str(ROOT / "tools/oci.py")]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`tools/oci.py build` run like `make oci` runs it."""
    d = tmp_path_factory.mktemp("oci")
    out, tar = d / "model-rollout", d / "model-rollout.tar"
    r = subprocess.run([*TOOL, "build", "--wasm", str(WASM), "--out", str(out), "--tar", str(tar)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out, tar


def test_layout_is_a_valid_oci_image_holding_exactly_the_built_wasm(built):
    out, _ = built
    wasm = WASM.read_bytes()
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((out / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [mdesc] = index["manifests"]
    assert mdesc["annotations"]["org.opencontainers.image.ref.name"] == oci.workspace_version()

    def blob(desc, media_type):
        assert desc["mediaType"] == media_type
        data = (out / "blobs/sha256" / desc["digest"].removeprefix("sha256:")).read_bytes()
        assert desc["digest"] == "sha256:" + sha(data) and desc["size"] == len(data)
        return data

    manifest = json.loads(blob(mdesc, "application/vnd.oci.image.manifest.v1+json"))
    assert manifest["schemaVersion"] == 2
    config = json.loads(blob(manifest["config"], "application/vnd.oci.image.config.v1+json"))
    [ldesc] = manifest["layers"]
    layer = blob(ldesc, "application/vnd.oci.image.layer.v1.tar+gzip")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == ["plugin.wasm"]
        module = tf.extractfile(members[0]).read()  # type: ignore[union-attr]
    assert sha(module) == sha(wasm) and module == wasm
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + sha(gzip.decompress(layer))]}
    assert (config["os"], config["architecture"]) == ("wasi", "wasm")
    # nothing else in the blob store
    assert sorted(p.name for p in (out / "blobs/sha256").iterdir()) == sorted(
        d["digest"][7:] for d in (mdesc, manifest["config"], ldesc))
    # and the tool's own verifier agrees
    facts = oci.verify_layout(out, wasm)
    assert facts["manifest_digest"] == mdesc["digest"][7:] == oci.make_image(wasm).digest


def test_tarball_is_the_layout_plus_a_docker_save_manifest(built):
    out, tar = built
    with tarfile.open(tar) as tf:
        names = tf.getnames()
        assert names == sorted(names)
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.isfile() for m in tf.getmembers())
        files = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}  # type: ignore[union-attr]
    layout = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {k: v for k, v in files.items() if k != "manifest.json"} == layout
    [entry] = json.loads(files["manifest.json"])
    manifest = json.loads(layout["blobs/sha256/" + json.loads(layout["index.json"])["manifests"][0]["digest"][7:]])
    assert entry["Config"] == "blobs/sha256/" + manifest["config"]["digest"][7:]
    assert entry["Layers"] == ["blobs/sha256/" + manifest["layers"][0]["digest"][7:]]
    assert entry["RepoTags"] == [f"model-rollout/filter:{oci.workspace_version()}"]


def test_same_wasm_same_digest_whatever_the_tag(tmp_path, built):
    out, tar = built
    a, b = tmp_path / "a", tmp_path / "b"
    img_a = oci.build(WASM, a, tmp_path / "a.tar", "0.1.0", "x:0.1.0")
    img_b = oci.build(WASM, b, tmp_path / "b.tar", "9.9.9", "x:9.9.9")
    assert img_a.digest == img_b.digest
    assert {p.name: p.read_bytes() for p in (a / "blobs/sha256").iterdir()} == \
        {p.name: p.read_bytes() for p in (b / "blobs/sha256").iterdir()} == \
        {p.name: p.read_bytes() for p in (out / "blobs/sha256").iterdir()}
    # byte-identical tarball for the same tag
    oci.build(WASM, tmp_path / "c", tmp_path / "c.tar", oci.workspace_version(),
              f"model-rollout/filter:{oci.workspace_version()}")
    assert (tmp_path / "c.tar").read_bytes() == tar.read_bytes()
    # a different module is a different image
    other = bytearray(WASM.read_bytes())
    other[-1] ^= 1
    assert oci.make_image(bytes(other)).digest != img_a.digest


@pytest.mark.parametrize("damage, message", [
    (lambda out, m: (out / "blobs/sha256" / m["layers"][0]["digest"][7:]).write_bytes(b"x"), "differs from its name"),
    (lambda out, m: (out / "blobs/sha256" / ("0" * 64)).write_bytes(b"stray"), "unreferenced"),
    (lambda out, m: (out / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}'), "oci-layout"),
])
def test_verifier_rejects_damaged_layouts(tmp_path, built, damage, message):
    out = tmp_path / "layout"
    shutil.copytree(built[0], out)
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    damage(out, manifest)
    with pytest.raises(oci.LayoutError, match=message):
        oci.verify_layout(out, WASM.read_bytes())


def test_verifier_rejects_a_layer_with_another_module_or_extra_files(tmp_path):
    wasm = WASM.read_bytes()
    out = tmp_path / "l"
    oci.build(WASM, out, None, "t")
    other = tmp_path / "other.wasm"
    other.write_bytes(wasm + b"\0")
    with pytest.raises(oci.LayoutError, match="is not the given .wasm"):
        oci.verify_layout(out, other.read_bytes())
    # a hand-made image whose layer holds two files
    img = oci.make_image(wasm)
    layer = oci._gzip(oci._tar([("plugin.wasm", wasm), ("README", b"hi")]))
    config = oci.canonical_json({"architecture": "wasm", "os": "wasi", "config": {}, "rootfs": {
        "type": "layers", "diff_ids": ["sha256:" + sha(gzip.decompress(layer))]}})
    manifest = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.MANIFEST,
                                   "config": oci.descriptor(oci.CONFIG, config),
                                   "layers": [oci.descriptor(oci.LAYER, layer)]})
    bad = oci.Image(layer=layer, config=config, manifest=manifest, diff_id="")
    for name, data in oci.layout_files(bad, "t"):
        (tmp_path / "two" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "two" / name).write_bytes(data)
    with pytest.raises(oci.LayoutError, match="expected only plugin.wasm"):
        oci.verify_layout(tmp_path / "two", wasm)
    assert img.digest != bad.digest


MANIFEST_DIRS = ("istio", "gateway-api", "envoy-gateway")


def image_source(doc: dict) -> dict | None:
    """{url, sha256} of a document that deploys the filter from its image, else None."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind == "WasmPlugin" and "url" in spec:
        return spec
    if kind == "TrafficExtension" and "wasm" in spec:
        return spec["wasm"]
    if kind == "EnvoyExtensionPolicy":
        images = [w["code"]["image"] for w in spec.get("wasm", []) if w["code"].get("type") == "Image"]
        assert len(images) <= 1, "one image per policy"
        return images[0] if images else None
    return None


def filter_specs():
    for d in MANIFEST_DIRS:
        for f in sorted((ROOT / d).glob("*.yaml")):
            for doc in yaml.safe_load_all(f.read_text()):
                src = image_source(doc) if doc else None
                if src is not None:
                    yield f"{d}/{f.name}", doc["kind"], src, doc["metadata"]


def test_manifests_pin_the_image_built_from_the_current_wasm(built):
    """sha256 in every WasmPlugin / TrafficExtension / EnvoyExtensionPolicy = the manifest
    digest Istio and Envoy Gateway will compute for the image of this build (for OCI
    images both compare the image digest), modulo the commit id build.rs compiles in
    (recorded next to it; see tools/oci.py), and that image's plugin.wasm is byte for
    byte the built filter."""
    out, _ = built
    wasm = WASM.read_bytes()
    facts = oci.verify_layout(out, wasm)
    assert facts["wasm_sha256"] == sha(wasm)
    specs = list(filter_specs())
    assert {(f.split("/")[0], k) for f, k, _, _ in specs} == {
        ("istio", "WasmPlugin"), ("istio", "TrafficExtension"), ("gateway-api", "WasmPlugin"),
        ("envoy-gateway", "EnvoyExtensionPolicy")}
    # tools/oci.py pin rewrites exactly these files
    assert sorted(str(p.relative_to(ROOT)) for p in oci.manifest_files()) == sorted({f for f, _, _, _ in specs})
    for fname, kind, spec, meta in specs:
        assert spec["url"].endswith(f"/model-rollout/filter:{oci.workspace_version()}"), (fname, spec["url"])
        commit = meta.get("annotations", {}).get(oci.COMMIT_ANNOTATION)
        assert commit is not None, f"{fname}: no {oci.COMMIT_ANNOTATION} annotation"
        expected = oci.make_image(oci.with_commit(wasm, None if commit == "unknown" else commit)).digest
        assert spec["sha256"] == expected, (
            f"{fname} {kind}: sha256 {spec['sha256']} is not the image digest of the current build "
            f"(at commit {commit}: {expected}); run `make oci`")
    r = subprocess.run([*TOOL, "pin", "--wasm", str(WASM), "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("relpath", ["istio/wasmplugin.yaml", "istio/trafficextension.yaml",
                                     "gateway-api/wasmplugin.yaml", "envoy-gateway/extension.yaml"])
def test_a_stale_digest_in_any_manifest_fails_the_check(tmp_path, monkeypatch, relpath):
    """The check is real for every pinned file: one changed digest there, and `pin
    --check` names that file; `pin` writes it back."""
    copies = []
    for d in MANIFEST_DIRS:
        (tmp_path / d).mkdir()
        for f in (ROOT / d).glob("*.yaml"):
            (tmp_path / d / f.name).write_text(f.read_text())
            copies.append(tmp_path / d / f.name)
    monkeypatch.setattr(oci, "MANIFEST_DIRS", [tmp_path / d for d in MANIFEST_DIRS])
    assert oci.pin(WASM, check=True) == []
    target = tmp_path / relpath
    text = target.read_text()
    [p] = oci.pinned(text)
    target.write_text(text.replace(p["sha256"], "0" * 64))
    assert oci.pin(WASM, check=True) == [str(target)]
    assert str(target) in oci.pin(WASM, check=False)   # `make oci` repairs it (and re-records the commit)
    assert oci.pin(WASM, check=True) == []


def test_check_ignores_only_the_embedded_commit_id(tmp_path):
    """The same code built at another commit passes the check; a changed module fails it."""
    wasm = WASM.read_bytes()
    embedded = oci.embedded_commit(wasm)
    if embedded is None:
        pytest.skip("this build embeds no commit id of this repository (built without git)")
    other = next((c[:12] for c in oci._git("log", "-n50", "--format=%H").split() if c[:12] != embedded), None)
    if other is None:
        pytest.skip("needs a second commit in the history (shallow clone)")
    rebuilt = tmp_path / "rebuilt.wasm"
    rebuilt.write_bytes(wasm.replace(embedded.encode(), other.encode()))
    assert oci.embedded_commit(rebuilt.read_bytes()) == other
    r = subprocess.run([*TOOL, "pin", "--wasm", str(rebuilt), "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    changed = bytearray(rebuilt.read_bytes())
    changed[len(changed) // 2] ^= 0x01
    (tmp_path / "changed.wasm").write_bytes(bytes(changed))
    r = subprocess.run([*TOOL, "pin", "--wasm", str(tmp_path / "changed.wasm"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "run `make oci`" in r.stderr


def test_pin_rewrites_only_digest_tag_and_commit():
    text = (ROOT / "istio/wasmplugin.yaml").read_text()
    [p] = oci.pinned(text)
    stale = text.replace(p["sha256"], "f" * 64).replace(
        f"filter:{oci.workspace_version()}", "filter:0.0.1").replace(
        f"{oci.COMMIT_ANNOTATION}: {p['commit']}", f"{oci.COMMIT_ANNOTATION}: 000000000000")
    assert stale != text
    assert oci.pin_text(stale, p["sha256"], oci.workspace_version(), p["commit"]) == text
    assert oci.pin_text(text, p["sha256"], oci.workspace_version(), p["commit"]) == text
    # documents that are not the filter are left alone
    other = "kind: ConfigMap\nsha256: " + "a" * 64 + "\n"
    assert oci.pin_text(other, "b" * 64, "1.0.0") == other


SKOPEO = shutil.which("skopeo")


@pytest.mark.skipif(SKOPEO is None, reason="skopeo not installed (Debian: apt-get install skopeo); "
                                           "the layout checks above do not need it")
def test_skopeo_reads_layout_archive_and_docker_archive_and_keeps_the_digest(tmp_path, built):
    out, tar = built
    tag = oci.workspace_version()
    digest = oci.make_image(WASM.read_bytes()).digest

    def run(*args):
        r = subprocess.run([SKOPEO, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    raw = run("inspect", "--raw", f"oci:{out}:{tag}")
    assert sha(raw.encode()) == digest
    info = json.loads(run("inspect", f"oci-archive:{tar}:{tag}"))
    assert info["Digest"] == f"sha256:{digest}" and info["Os"] == "wasi" and info["Architecture"] == "wasm"
    # what `skopeo copy --preserve-digests oci-archive:... docker://REGISTRY/...` does, to a local layout
    run("copy", "--preserve-digests", f"oci-archive:{tar}:{tag}", f"oci:{tmp_path / 'copy'}:{tag}")
    copied = json.loads((tmp_path / "copy/index.json").read_text())
    assert copied["manifests"][0]["digest"] == f"sha256:{digest}"
    # the docker-save view of the same tarball (docker load / crane push read this)
    info = json.loads(run("inspect", f"docker-archive:{tar}"))
    assert info["Os"] == "wasi" and len(info["Layers"]) == 1
