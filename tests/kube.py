"""Offline validation of Kubernetes manifests, as strict as the API server.

- Custom resources: against the CRD schemas in ../shared/schemas/ (Istio 1.30.3, Gateway
  API v1.6.1, Envoy Gateway v1.9.0; read from there, never copied into the repo). Each
  served version's openAPIV3Schema is made strict (unknown fields rejected wherever the
  CRD does not preserve unknown fields: a free-form `pluginConfig` stays open), defaults
  are applied first as the API server does, metadata is checked as Kubernetes
  ObjectMeta, `x-kubernetes-list-type` map/set keys must be unique, and every CEL rule
  (x-kubernetes-validations) on a node the document reaches is evaluated by a real CEL
  implementation (cel-python) with the Kubernetes library functions the rules use. A
  rule that does not compile or calls an unknown function is reported as a failure,
  never skipped; transition rules (those reading `oldSelf`) only run on updates and are
  not evaluated here.
- Built-in kinds: kubernetes-validate --strict, Kubernetes 1.34.
"""

from __future__ import annotations

import copy
import json
import math
import re
import urllib.parse
from decimal import Decimal
from functools import lru_cache

import jsonschema
import pytest
import yaml

from harness import ROOT

SCHEMAS = ROOT.parent / "shared/schemas"
CRD_FILES = {
    "istio": [SCHEMAS / "istio-1.30.3-crds.yaml"],
    "gateway-api": sorted((SCHEMAS / "gateway-api-v1.6.1").glob("*.yaml")),
    "envoy-gateway": sorted((SCHEMAS / "envoy-gateway-v1.9.0").glob("*.yaml")),
}
K8S_VERSION = "1.34.0"


# ---------------------------------------------------------------- loading

def documents(*folders: str) -> list[tuple[str, dict]]:
    """(`folder/file#index`, document) of every YAML document in the folders' *.yaml."""
    out = []
    for folder in folders:
        files = sorted((ROOT / folder).glob("*.yaml"))
        assert files, f"{folder}/*.yaml: no manifests"
        for f in files:
            for i, doc in enumerate(yaml.safe_load_all(f.read_text())):
                if doc is not None:
                    out.append((f"{folder}/{f.name}#{i}", doc))
    return out


@lru_cache(maxsize=None)
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema of every served version of every CRD."""
    out = {}
    for name, files in CRD_FILES.items():
        if not files or not all(f.exists() for f in files):
            pytest.skip(f"{name} CRD schemas not found under {SCHEMAS} (the shared/ directory beside the repo)")
        for f in files:
            for crd in yaml.safe_load_all(f.read_text()):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for v in crd["spec"]["versions"]:
                    if v.get("served"):
                        out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out


def is_custom(doc: dict) -> bool:
    return (doc.get("apiVersion"), doc.get("kind")) in crd_schemas()


# ---------------------------------------------------------------- structural schema -> strict JSON schema

def strict(node):
    """A Kubernetes structural schema as a JSON schema that rejects unknown fields.

    - a node with `properties` gets `additionalProperties: false`, unless it says
      x-kubernetes-preserve-unknown-fields or has its own additionalProperties (a map);
    - a free-form object (preserve-unknown-fields, no properties: `pluginConfig`) stays open;
    - `nullable: true` also admits null."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) if k in ("items", "not", "additionalProperties") and isinstance(v, dict)
           else {p: strict(s) for p, s in v.items()} if k == "properties"
           else [strict(s) for s in v] if k in ("anyOf", "oneOf", "allOf")
           else v
           for k, v in node.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@lru_cache(maxsize=None)
def k8s_definitions() -> dict:
    from kubernetes_validate import utils
    return utils.schema_contents(f"kubernetes-json-schema/v{K8S_VERSION}-local-strict/_definitions.json",
                                 K8S_VERSION)


@lru_cache(maxsize=None)
def _validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    """The whole object: apiVersion/kind fixed, metadata as Kubernetes' strict ObjectMeta,
    spec/status from the CRD, nothing else at the top."""
    top = strict(crd_schemas()[(api_version, kind)])
    wrapper = {
        "$defs": k8s_definitions()["$defs"],
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"] + top.get("required", []),
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
            **top.get("properties", {}),
        },
    }
    return jsonschema.Draft202012Validator(wrapper)


# ---------------------------------------------------------------- defaulting (what the API server stores)

def with_defaults(schema: dict, data):
    """`data` with the schema's `default`s filled in, recursively (structural defaulting)."""
    if isinstance(data, dict):
        out = dict(data)
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
        for k, v in out.items():
            sub = props.get(k)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                out[k] = with_defaults(sub, v)
        return out
    if isinstance(data, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(schema["items"], v) for v in data]
    return data


# ---------------------------------------------------------------- CEL (x-kubernetes-validations)

def _cel():
    import celpy
    from celpy import celtypes
    return celpy, celtypes


def _k8s_functions() -> dict:
    """The Kubernetes CEL library functions our CRDs' rules call (k8s.io/apiserver/pkg/cel/library)."""
    celpy, ct = _cel()

    def is_url(s):
        # Go url.ParseRequestURI: an absolute URI, or an absolute path
        s = str(s)
        try:
            u = urllib.parse.urlsplit(s)
        except ValueError:
            return ct.BoolType(False)
        ok = bool(u.scheme and (u.netloc or u.path)) or s.startswith("/")
        return ct.BoolType(ok and " " not in s)

    def url(s):
        if not is_url(s):
            raise ValueError(f"url(): {s!r} is not a URL")
        u = urllib.parse.urlsplit(str(s))
        return ct.MapType({ct.StringType("__url_scheme"): ct.StringType(u.scheme),
                           ct.StringType("__url_host"): ct.StringType(u.netloc),
                           ct.StringType("__url_hostname"): ct.StringType(u.hostname or ""),
                           ct.StringType("__url_port"): ct.StringType(str(u.port or "")),
                           ct.StringType("__url_path"): ct.StringType(u.path),
                           ct.StringType("__url_query"): ct.StringType(u.query)})

    def url_part(key):
        return lambda m: m[ct.StringType(key)]

    def split(s, sep, n=None):
        parts = str(s).split(str(sep)) if n is None else str(s).split(str(sep), int(n) - 1 if int(n) > 0 else -1)
        return ct.ListType([ct.StringType(p) for p in parts])

    def lower_ascii(s):
        return ct.StringType(str(s).lower())

    def upper_ascii(s):
        return ct.StringType(str(s).upper())

    def join(lst, sep=""):
        return ct.StringType(str(sep).join(str(x) for x in lst))

    def index_of(s, sub):
        return ct.IntType(str(s).find(str(sub)))

    def trim(s):
        return ct.StringType(str(s).strip())

    def replace(s, a, b, n=None):
        return ct.StringType(str(s).replace(str(a), str(b)) if n is None else str(s).replace(str(a), str(b), int(n)))

    def substring(s, a, b=None):
        return ct.StringType(str(s)[int(a):] if b is None else str(s)[int(a):int(b)])

    def is_sorted(lst):
        return ct.BoolType(list(lst) == sorted(lst))

    return {"isURL": is_url, "url": url, "getScheme": url_part("__url_scheme"),
            "getHost": url_part("__url_host"), "getHostname": url_part("__url_hostname"),
            "getPort": url_part("__url_port"), "getEscapedPath": url_part("__url_path"),
            "getQuery": url_part("__url_query"), "split": split, "lowerAscii": lower_ascii,
            "upperAscii": upper_ascii, "join": join, "indexOf": index_of, "trim": trim,
            "replace": replace, "substring": substring, "isSorted": is_sorted}


@lru_cache(maxsize=None)
def _program(rule: str):
    celpy, _ = _cel()
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=_k8s_functions())


# k8s.io/apiserver/pkg/cel/escaping.go: property names that are CEL keywords, or hold
# characters CEL identifiers cannot, are seen by rules under an escaped name
# (`namespace` -> `__namespace__`, `a-b` -> `a__dash__b`).
_CEL_RESERVED = {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for",
                 "function", "if", "import", "let", "loop", "package", "namespace", "return", "var",
                 "void", "while"}


def cel_property_name(name: str) -> str:
    if name in _CEL_RESERVED:
        return f"__{name}__"
    return (name.replace("__", "__underscores__").replace(".", "__dot__")
            .replace("-", "__dash__").replace("/", "__slash__"))


def to_cel_value(schema: dict, value):
    """`value` as the rules see it: object properties under their escaped names, map keys
    (additionalProperties) and free-form objects as they are."""
    celpy, _ = _cel()
    if isinstance(value, dict) and schema.get("properties"):
        props = schema["properties"]
        return {cel_property_name(k): to_cel_value(props.get(k) or {}, v) for k, v in value.items()}
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: to_cel_value(schema["additionalProperties"], v) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [to_cel_value(schema["items"], v) for v in value]
    return value


def cel_rule_holds(rule: str, value, schema: dict | None = None) -> bool:
    """Evaluates one rule with `self` bound to `value` (shaped by `schema`); raises on a
    rule we cannot evaluate."""
    celpy, ct = _cel()
    result = _program(rule).evaluate({"self": celpy.json_to_cel(to_cel_value(schema or {}, value))})
    if isinstance(result, Exception):  # cel-python returns evaluation errors as values
        raise result
    if not isinstance(result, ct.BoolType):
        raise TypeError(f"rule {rule!r} gave {type(result).__name__}, not bool")
    return bool(result)


def _list_key_violations(schema: dict, data, path: str) -> list[str]:
    out = []
    kind = schema.get("x-kubernetes-list-type")
    if isinstance(data, list) and kind == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen = set()
        for item in data:
            sub = (schema.get("items") or {}).get("properties") or {}
            key = tuple(item.get(k, (sub.get(k) or {}).get("default")) for k in keys) if isinstance(item, dict) else item
            if key in seen:
                out.append(f"{path}: duplicate entry for map-list keys {keys} = {key}")
            seen.add(key)
    elif isinstance(data, list) and kind == "set":
        seen = []
        for item in data:
            if item in seen:
                out.append(f"{path}: duplicate entry {item!r} in a set-list")
            seen.append(item)
    return out


def cel_violations(schema: dict, data, path: str = "") -> list[str]:
    """Evaluates the CEL rules of every schema node that `data` reaches (and list keys)."""
    out = _list_key_violations(schema, data, path or ".")
    for rule in schema.get("x-kubernetes-validations", []):
        text = rule["rule"]
        if re.search(r"\boldSelf\b", text):
            continue  # transition rule: only evaluated on update
        try:
            ok = cel_rule_holds(text, data, schema)
        except Exception as e:  # noqa: BLE001 - a rule we cannot evaluate is a failure, named
            out.append(f"{path or '.'}: CEL rule not evaluable here ({type(e).__name__}: {e}): {text!r}")
            continue
        if not ok:
            out.append(f"{path or '.'}: {rule.get('message', text)}")
    if isinstance(data, dict):
        for k, v in data.items():
            sub = (schema.get("properties") or {}).get(k)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                out += cel_violations(sub, v, f"{path}.{k}")
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(data):
            out += cel_violations(schema["items"], v, f"{path}[{i}]")
    return out


# ---------------------------------------------------------------- the checks

def crd_errors(doc: dict) -> list[str]:
    """Everything the API server would refuse in a custom resource (create)."""
    schemas = crd_schemas()
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in schemas:
        return [f"no CRD in {SCHEMAS} serves {key}"]
    schema = schemas[key]
    stored = with_defaults(schema, doc)
    errs = [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}"
            for e in sorted(_validator(*key).iter_errors(stored), key=lambda e: list(map(str, e.absolute_path)))]
    # root rules see the object with apiVersion, kind and metadata.name/generateName
    meta = {k: v for k, v in (stored.get("metadata") or {}).items() if k in ("name", "generateName")}
    root = {**{k: v for k, v in stored.items() if k != "metadata"}, "metadata": meta}
    rules_only = {k: v for k, v in schema.items() if k in ("x-kubernetes-validations",)}
    errs += cel_violations(rules_only, root)
    body = {k: v for k, v in schema.items() if k != "x-kubernetes-validations"}
    return errs + cel_violations(body, {k: v for k, v in stored.items() if k not in ("apiVersion", "kind", "metadata")})


def k8s_errors(doc: dict) -> list[str]:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except SchemaNotFoundError as e:
        return [e.message]
    except jsonschema.ValidationError as e:
        return [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}"]
    return []


def errors(doc: dict) -> list[str]:
    """The check for any document: CRD schema for custom kinds, Kubernetes' own otherwise."""
    return crd_errors(doc) if is_custom(doc) else k8s_errors(doc)


# ---------------------------------------------------------------- what controllers hand the filter

def go_number(x: float) -> str:
    """protojson's encoding of a double (Go strconv 'f', or 'e' below 1e-6 / from 1e21)."""
    if math.isnan(x) or math.isinf(x):
        raise ValueError("NaN/Inf cannot be a Struct number in JSON")
    a = abs(x)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        s = repr(x).replace("e-0", "e-").replace("e+0", "e+")
        return s
    d = Decimal(repr(x))
    s = format(d, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def istio_plugin_json(value) -> str:
    """What istiod hands the filter: pluginConfig (a protobuf Struct, every number a
    double) marshalled by protojson."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return go_number(float(value))
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ",".join(istio_plugin_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{istio_plugin_json(v)}"
                              for k, v in sorted(value.items())) + "}"
    raise TypeError(type(value))


def go_json(value) -> str:
    """The JSON Kubernetes stores for a free-form field (Envoy Gateway's `config`) and its
    Go clients read back: integers stay integers, other numbers in Go's float format."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_number(value)
    if isinstance(value, list):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{go_json(v)}" for k, v in sorted(value.items())) + "}"
    raise TypeError(type(value))
