"""Envoy's /stats/prometheus with the filter, as dashboards read it: strictly valid text
format, every model_rollout_* family of the README's metrics table present with the
labels the README names, values that add up, and the Grafana dashboard's queries
naming only series that exist. Also rollout-control's /metrics, what Prometheus gets
without stats_tags (Istio's default), and a real Prometheus (Debian's package) scraping
two Envoys, summing the filter's series over both the way the fleet checks do."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from collections import Counter, defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import (CONTROL, ROOT, Envoy, EnvoyConfig, Model, Processes, Prometheus, Sidecar, expected_bucket,
                     send_all, wait_for)

FRAUD = "/v2/models/fraud/infer"
CHURN = "/v2/models/churn/infer"
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+(?P<ts>-?\d+))?$")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
# Families the README lists that exist only with settings the demo plan does not use.
CONDITIONAL = {
    "model_rollout_trips_total": "local trip settings",
    "model_rollout_tripped": "local trip settings",
    "model_rollout_trip_rerouted_total": "local trip settings",
}


# ---------------------------------------------------------------- a strict text-format reader

class Exposition:
    """Prometheus text format 0.0.4, read strictly: every sample belongs to a family whose
    `# TYPE` came first, a family's lines are contiguous, names and labels are valid, no
    series twice, values are numbers, counters are not negative, histograms are complete
    and cumulative. Raises AssertionError naming the line."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.series: dict[tuple[str, frozenset], float] = {}
        self.by_family: dict[str, list[tuple[str, dict, float]]] = defaultdict(list)
        closed: set[str] = set()
        current = None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 2 and parts[1] == "TYPE":
                    assert len(parts) == 4 and parts[3] in TYPES, f"line {n}: bad TYPE: {line}"
                    fam = parts[2]
                    assert NAME.fullmatch(fam), f"line {n}: bad family name {fam!r}"
                    assert fam not in self.types, f"line {n}: second TYPE for {fam}"
                    self.types[fam] = parts[3]
                    if current is not None:
                        closed.add(current)
                    current = fam
                continue
            m = SAMPLE.match(line)
            assert m, f"line {n}: not a sample: {line!r}"
            name, value = m.group("name"), m.group("value")
            fam = self.family_of(name)
            assert fam is not None, f"line {n}: sample {name} before any # TYPE of its family"
            assert fam == current and fam not in closed, f"line {n}: {name} outside its family's block"
            labels = {}
            raw = m.group("labels") or ""
            consumed = ",".join(f'{k}="{v}"' for k, v in LABEL.findall(raw))
            assert consumed == raw.rstrip(","), f"line {n}: bad labels {raw!r}"
            for k, v in LABEL.findall(raw):
                assert k not in labels, f"line {n}: label {k} twice"
                assert not k.startswith("__"), f"line {n}: reserved label {k}"
                labels[k] = v
            try:
                val = float(value)
            except ValueError:
                raise AssertionError(f"line {n}: value {value!r} is not a number") from None
            key = (name, frozenset(labels.items()))
            assert key not in self.series, f"line {n}: duplicate series {name}{labels}"
            if self.types[fam] == "counter":
                assert val >= 0, f"line {n}: negative counter"
            self.series[key] = val
            self.by_family[fam].append((name, labels, val))
        for fam, kind in self.types.items():
            if kind == "histogram":
                self._check_histogram(fam)

    def family_of(self, name: str) -> str | None:
        if name in self.types:
            return name
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[: -len(suffix)] if name.endswith(suffix) else None
            if base and self.types.get(base) in ("histogram", "summary"):
                return base
        return None

    def _check_histogram(self, fam: str) -> None:
        groups: dict[frozenset, dict] = defaultdict(lambda: {"buckets": [], "sum": None, "count": None})
        for name, labels, val in self.by_family[fam]:
            rest = frozenset((k, v) for k, v in labels.items() if k != "le")
            g = groups[rest]
            if name == fam + "_bucket":
                assert "le" in labels, f"{fam}: bucket without le"
                g["buckets"].append((float(labels["le"]), val))
            elif name == fam + "_sum":
                g["sum"] = val
            elif name == fam + "_count":
                g["count"] = val
            else:
                raise AssertionError(f"{fam}: unexpected sample {name}")
        for rest, g in groups.items():
            les = [le for le, _ in g["buckets"]]
            assert les == sorted(les) and les and math.isinf(les[-1]), f"{fam}{dict(rest)}: buckets {les}"
            counts = [c for _, c in g["buckets"]]
            assert counts == sorted(counts), f"{fam}{dict(rest)}: buckets not cumulative"
            assert g["count"] == counts[-1], f"{fam}{dict(rest)}: _count {g['count']} != +Inf bucket {counts[-1]}"
            assert g["sum"] is not None, f"{fam}{dict(rest)}: no _sum"

    def labels_of(self, fam: str) -> set[frozenset]:
        return {frozenset(k for k in labels if k != "le") for _, labels, _ in self.by_family[fam]}

    def value(self, name: str, **labels) -> float:
        return self.series.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels) -> float:
        fam = self.family_of(name) or name
        return sum(v for n, lab, v in self.by_family[fam]
                   if n == name and all(lab.get(k) == x for k, x in labels.items()))


def test_strict_reader_rejects_what_it_should():
    good = "# TYPE a counter\na{x=\"1\"} 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n"
    Exposition(good)
    for bad, why in [
        ("a 1\n", "before any # TYPE"),
        ("# TYPE a counter\na 1\na 2\n", "duplicate series"),
        ("# TYPE a counter\na -1\n", "negative counter"),
        ("# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n", "twice"),
        ("# TYPE a counter\n# TYPE b gauge\nb 1\na 1\n", "outside its family"),
        ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 3\n", "_count"),
        ("# TYPE a counter\na one\n", "not a number"),
    ]:
        with pytest.raises(AssertionError, match=why):
            Exposition(bad)


# ---------------------------------------------------------------- a real Envoy with traffic

USERS = [f"user-{i}" for i in range(3000)]


@pytest.fixture(scope="module")
def scraped():
    procs = Processes()
    try:
        stable = Model(procs, "stable")
        canary = Model(procs, "canary", "--error-rate", "0.2", "--nan-rate", "0.1", "--seed", "7")
        shadow = Model(procs, "shadow", "--disagree-rate", "0.3")
        cfg = EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port,
                                       "model_shadow": shadow.port})
        # prediction bins too: their `bin` label comes from the shipped stats_tags
        cfg.edit_plugin(lambda c: c["plan"]["rollouts"][0]["output"].update(
            distribution={"edges": [0, 0.25, 0.5, 0.75, 1]}))
        envoy = Envoy(procs, cfg, concurrency=2)
        sent = {
            "fraud": send_all(envoy.port(), [(FRAUD, {"x-user-id": u}) for u in USERS]),
            "fraud_testers": send_all(envoy.port("trusted"), [(FRAUD, {"x-tester": "1"})] * 100),
            "churn": send_all(envoy.port(), [(CHURN, {"x-user-id": u}) for u in USERS[:1000]]),
            "keyless": send_all(envoy.port(), [(CHURN, {})] * 200),
            "unmatched": send_all(envoy.port(), [("/v2/models/other/infer", {})] * 50),
        }
        # counters are flushed on the filter's 1 s tick
        total = sum(len(v) for k, v in sent.items() if k != "unmatched")

        def settled():
            exp = Exposition(envoy.prometheus())
            done = (exp.total("model_rollout_requests_total") >= total
                    and exp.total("model_rollout_responses_total") >= total
                    and exp.total("model_rollout_latency_ms_count") >= total
                    and exp.value("model_rollout_unmatched_total") >= len(sent["unmatched"]))
            return exp if done else None
        exp = wait_for(settled, timeout=15)
        assert exp, "counters did not reach the requests sent"
        wait_for(lambda: Exposition(envoy.prometheus()).total("model_rollout_shadow_compared_total") > 0, timeout=15)
        text = envoy.prometheus()
        yield text, Exposition(text), sent, procs
    finally:
        procs.stop_all()


def test_envoy_output_is_strictly_valid_and_prometheus_client_reads_the_same_series(scraped):
    text, exp, _, _ = scraped
    assert len(exp.types) > 100  # Envoy's own families and ours
    theirs = {}
    for fam in text_string_to_metric_families(text):
        assert fam.type in TYPES - {"untyped"} or fam.type == "unknown", fam.name
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in theirs, f"prometheus_client: duplicate {key}"
            theirs[key] = s.value
    # The one difference: Envoy names many of its own counters without `_total`
    # (envoy_cluster_upstream_rq_rx_reset); prometheus_client's parser renames such
    # counter samples to `<name>_total`. Nothing is rejected. Our families all end in _total.
    renamed = {}
    for (name, labels), v in exp.series.items():
        fam = exp.family_of(name)
        if exp.types[fam] == "counter" and not name.endswith("_total"):
            name += "_total"
        renamed[(name, labels)] = v
    assert set(theirs) == set(renamed)
    assert all(theirs[k] == renamed[k] or (math.isnan(theirs[k]) and math.isnan(renamed[k])) for k in theirs)
    assert all(n.endswith("_total") for f, kind in exp.types.items() if f.startswith("model_rollout_")
               and kind == "counter" for n in [f])


def documented_families() -> dict[str, dict]:
    """The README's metrics table: name -> {type, labels, exact}."""
    out = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        if not line.startswith("| `model_rollout_"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`(model_rollout_[a-z0-9_]+)`", cells[0])
        kind = cells[1]
        labels = {w for w in re.sub(r"\(.*?\)", "", cells[2]).replace(",", " ").split() if w.isidentifier()}
        extra = set(re.findall(r"\b(rollout|variant|class|reason)\b", cells[2])) - labels
        for n in names:
            out[n] = {"type": kind, "labels": labels, "optional": extra, "exact": len(names) == 1 and not extra}
    assert len(out) >= 10, "README metrics table not found"
    return out


def test_documented_families_exist_with_the_documented_labels(scraped):
    _, exp, _, _ = scraped
    missing = []
    for name, doc in documented_families().items():
        if name not in exp.types:
            if name not in CONDITIONAL:
                missing.append(name)
            continue
        assert exp.types[name] == doc["type"], (name, exp.types[name], doc["type"])
        for labels in exp.labels_of(name):
            if doc["exact"]:
                assert labels == doc["labels"], (name, set(labels), doc["labels"])
            else:
                assert doc["labels"] <= labels <= doc["labels"] | doc["optional"], (name, set(labels), doc)
    assert not missing, f"documented but not exported: {missing}"
    # the labels dashboards group by, on the core families
    assert exp.labels_of("model_rollout_requests_total") == {frozenset({"rollout", "variant"})}
    assert exp.labels_of("model_rollout_responses_total") == {frozenset({"rollout", "variant", "class"})}
    assert exp.labels_of("model_rollout_assignments_total") == {frozenset({"rollout", "reason"})}
    assert exp.labels_of("model_rollout_latency_ms") == {frozenset({"rollout", "variant"})}
    # and no model_rollout family escaped the README
    undocumented = {f for f in exp.types if f.startswith("model_rollout_")} - set(documented_families())
    assert not undocumented, f"exported but not in the README's table: {sorted(undocumented)}"


def test_values_add_up_to_the_traffic_sent(scraped):
    _, exp, sent, _ = scraped
    canary_users = sum(expected_bucket("fraud-v2", u) >= 9000 for u in USERS)
    assert exp.value("model_rollout_requests_total", rollout="fraud", variant="canary") == canary_users + 100
    assert exp.value("model_rollout_requests_total", rollout="fraud", variant="stable") == len(USERS) - canary_users
    assert exp.total("model_rollout_requests_total", rollout="churn") == 1200
    assert exp.value("model_rollout_assignments_total", rollout="fraud", reason="targeted") == 100
    assert exp.value("model_rollout_assignments_total", rollout="churn", reason="random") == 200
    assert exp.value("model_rollout_unmatched_total") == 50
    # responses by class = what the clients saw
    canary_5xx = sum(r.status >= 500 for r in sent["fraud"] + sent["fraud_testers"]
                     if r.headers.get("x-model-variant") == "canary")
    assert canary_5xx > 0
    assert exp.value("model_rollout_responses_total", rollout="fraud", variant="canary", **{"class": "5xx"}) == canary_5xx
    assert exp.value("model_rollout_responses_total", rollout="fraud", variant="stable", **{"class": "5xx"}) == 0
    assert exp.value("model_rollout_latency_ms_count", rollout="fraud", variant="canary") == canary_users + 100
    # NaN outputs of the canary are counted as invalid
    assert exp.value("model_rollout_invalid_outputs_total", rollout="fraud", variant="canary", reason="nan") > 0
    assert exp.value("model_rollout_invalid_outputs_total", rollout="fraud", variant="stable", reason="nan") == 0
    # every comparison either agreed or disagreed for a reason
    compared = exp.value("model_rollout_shadow_compared_total", rollout="fraud")
    assert compared > 0
    assert exp.value("model_rollout_shadow_agree_total", rollout="fraud") + exp.total(
        "model_rollout_shadow_disagree_total", rollout="fraud") == compared
    assert exp.value("model_rollout_plan_version") == 1


def dashboard_queries() -> list[str]:
    dash = json.loads((ROOT / "compose/grafana/dashboards/model-rollout.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def query_uses(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, labels the query groups or filters it by) for each metric in a PromQL query."""
    out = []
    grouping = set()
    for g in re.findall(r"\b(?:by|ignoring|on)\s*\(([^)]*)\)", expr):
        grouping |= {x.strip() for x in g.split(",") if x.strip()}
    for m in re.finditer(r"\b((?:model_rollout|rollout_control)_[a-z0-9_]+)(\{[^}]*\})?", expr):
        matchers = set(re.findall(r"([a-z_]+)\s*=~?", m.group(2) or ""))
        out.append((m.group(1), matchers | grouping))
    return out


def test_dashboard_queries_name_existing_series_and_labels(scraped):
    _, exp, _, procs = scraped
    control_metrics = None
    for expr in dashboard_queries():
        for metric_name, labels in query_uses(expr):
            if metric_name.startswith("rollout_control_"):
                if control_metrics is None:
                    control_metrics = sidecar_metrics(procs)
                fam = control_metrics.family_of(metric_name)
                assert fam, f"{expr}: {metric_name} is not in rollout-control's /metrics"
                continue
            fam = exp.family_of(metric_name)
            assert fam, f"{expr}: {metric_name} is not exported by Envoy"
            have = set().union(*exp.labels_of(fam)) | ({"le"} if exp.types[fam] == "histogram" else set())
            assert labels <= have, f"{expr}: {metric_name} has labels {have}, the query uses {labels}"


def sidecar_metrics(procs: Processes) -> Exposition:
    if not CONTROL.exists():
        pytest.skip("build first: target/native/rollout-control")
    plan = json.loads((ROOT / "compose/plan.json").read_text())
    sidecar = Sidecar(procs, plan=plan)
    try:
        with urllib.request.urlopen(sidecar.url + "/metrics", timeout=5) as r:
            return Exposition(r.read().decode())
    except urllib.error.HTTPError as e:
        pytest.fail(f"rollout-control has no /metrics ({e.code}); the dashboard's sidecar panel needs it")


def test_sidecar_metrics_are_strictly_valid(procs):
    exp = sidecar_metrics(procs)
    assert exp.types.get("rollout_control_plan_version") == "gauge"
    assert exp.value("rollout_control_plan_version") == 1


def test_without_stats_tags_labels_are_folded_into_names(procs):
    """What an Istio sidecar or gateway exports without our stats_tags (istio/stats.yaml):
    the same data, labels in the name."""
    stable, canary = Model(procs, "stable"), Model(procs, "canary")
    cfg = EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port})
    del cfg.doc["stats_config"]["stats_tags"]
    envoy = Envoy(procs, cfg)
    send_all(envoy.port("trusted"), [(FRAUD, {"x-tester": "1"})] * 7)

    def folded():
        exp = Exposition(envoy.prometheus())
        return exp if exp.value("model_rollout_rollout_fraud_variant_canary_requests_total") == 7 else None
    exp = wait_for(folded, timeout=10)
    assert exp, "folded name not found"
    assert "model_rollout_requests_total" not in exp.types
    assert exp.types["model_rollout_rollout_fraud_variant_canary_class_2xx_responses_total"] == "counter"


def test_dashboard_check_can_fail(scraped):
    _, exp, _, _ = scraped
    [(name, labels)] = query_uses('sum by (rollout, flavour) (rate(model_rollout_requests_total{variant="x"}[1m]))')
    assert name == "model_rollout_requests_total" and labels == {"rollout", "flavour", "variant"}
    assert not labels <= set().union(*exp.labels_of(name))
    assert exp.family_of("model_rollout_request_total") is None


# ---------------------------------------------------------------- a real Prometheus over two Envoys

FLEET_FRAUD = 'model_rollout_requests_total{rollout="fraud"}'


def fraud_split(users) -> Counter:
    return Counter("canary" if expected_bucket("fraud-v2", u) >= 9000 else "stable" for u in users)


def test_prometheus_sums_the_filter_series_over_two_envoys(procs):
    """Two Envoys (envoy/demo.yaml, the built filter, 2 workers each) scraped every second by
    one real Prometheus: the filter's series arrive with their `rollout` and `variant`
    labels, one per Envoy, and the fleet-wide queries the policy checks make
    (`sum by (variant)` of the counter, and of its `increase()` over the interval) give the
    requests sent through both."""
    stable, canary = Model(procs, "stable"), Model(procs, "canary")
    envoys = [Envoy(procs, EnvoyConfig().upstreams({"model_stable": stable.port, "model_canary": canary.port}),
                    concurrency=2) for _ in range(2)]
    prom = Prometheus(procs, [e.admin for e in envoys])
    assert wait_for(prom.scraped_all, timeout=20), prom.query("up")
    users = [f"fleet-{i}" for i in range(2400)]
    first = [users[0:400], users[400:800]]       # per Envoy
    second = [users[800:1600], users[1600:2400]]
    by_variant = f"sum by (variant) ({FLEET_FRAUD})"

    def send(batches):
        for envoy, batch in zip(envoys, batches):
            rs = send_all(envoy.port(), [(FRAUD, {"x-user-id": u}) for u in batch])
            assert all(r.status == 200 for r in rs)

    # phase 1 creates the series
    send(first)
    want1 = fraud_split(first[0] + first[1])
    assert wait_for(lambda: prom.values(by_variant, "variant") == want1, timeout=20), prom.values(by_variant, "variant")
    series = prom.query(FLEET_FRAUD)
    assert {s["metric"]["instance"] for s in series} == set(prom.targets)  # one series set per Envoy
    assert {(s["metric"]["instance"], s["metric"]["variant"]) for s in series} == \
        {(t, v) for t in prom.targets for v in ("stable", "canary")}
    for s in series:
        assert set(s["metric"]) == {"__name__", "job", "instance", "rollout", "variant"}, s["metric"]
    assert prom.query('{__name__=~"model_rollout_rollout_.+"}') == []  # no label folded into a name
    assert prom.values(f"sum by (instance) ({FLEET_FRAUD})", "instance") == \
        {t: len(b) for t, b in zip(prom.targets, first)}

    t1 = time.time()
    time.sleep(2.0)  # a flat second of samples at the phase-1 values opens the window
    send(second)
    want = want1 + fraud_split(second[0] + second[1])
    assert wait_for(lambda: prom.values(by_variant, "variant") == want, timeout=20), prom.values(by_variant, "variant")
    time.sleep(1.5)  # and a flat scrape after phase 2 closes it
    t2 = time.time()
    window_ms = int((t2 - (t1 + 1.0)) * 1000)  # from inside the flat second to now
    sent = fraud_split(second[0] + second[1])

    # exact: the counter sums now minus the sums at the window's start
    exact = prom.values(f"{by_variant} - sum by (variant) ({FLEET_FRAUD} offset {window_ms}ms)", "variant", at=t2)
    assert exact == sent, (exact, sent)
    # increase() over the window, summed over both Envoys: what a fleet check asks. Prometheus
    # extrapolates the first and last samples to the window's ends, so it is never below the
    # true increase and above it by at most the samples missing at the ends (< 1.5 scrape
    # intervals each side here), hence the bound.
    inc = prom.values(f"sum by (variant) (increase({FLEET_FRAUD}[{window_ms}ms]))", "variant", at=t2)
    window_s = window_ms / 1000
    for variant, n in sent.items():
        assert n - 1e-9 <= inc[variant] <= n * window_s / (window_s - 3.0), (variant, inc[variant], n, window_s)
    # and the error-rate shape of query the checks use has data for both variants
    responses = prom.values(f'sum by (variant) (increase(model_rollout_responses_total{{rollout="fraud"}}'
                            f'[{window_ms}ms]))', "variant", at=t2)
    assert set(responses) == {"stable", "canary"} and all(v > 0 for v in responses.values())
