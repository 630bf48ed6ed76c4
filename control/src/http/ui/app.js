// The status page of rollout-control (served at /ui, no dependency). Polls the
// sidecar's public JSON endpoints every second and redraws; operator actions only
// with a credential entered here (kept in sessionStorage, sent as a bearer token).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 1000;
const KEY = "rollout-control.credential";
let selected = null;
let busy = false;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "-" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows.map(row));
}

function num(v, metric) {
  if (v === null || v === undefined) return "-";
  if (metric && metric.endsWith("rate")) return (v * 100).toFixed(2) + " %";
  if (metric === "latency") return v.toFixed(1) + " ms";
  return Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3);
}

function pred(v) {
  const s = JSON.stringify(v);
  return s && s.length > 60 ? s.slice(0, 57) + "..." : s;
}

function time(ms) {
  return new Date(ms).toISOString().slice(11, 19);
}

async function get(path) {
  // with a read credential configured on the sidecar, reads need one too
  const headers = { accept: "application/json" };
  if (credential()) headers.authorization = `Bearer ${credential()}`;
  const r = await fetch(path, { headers, cache: "no-store" });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function credential() {
  return sessionStorage.getItem(KEY) || "";
}

function showCredential() {
  const has = credential() !== "";
  $("actions").hidden = !has;
  $("cred-clear").hidden = !has;
  $("cred").hidden = has;
  $("cred-set").hidden = has;
}

// ---------------------------------------------------------------- charts

// A line chart of points [{t, v, cls?, label?}] over [t0, t1], y in [0, ymax],
// with an optional dashed threshold line; points drawn as dots with their class.
function chart(node, series, opts) {
  const W = 600, H = opts.height || 200, L = 44, R = 10, T = 10, B = 22;
  node.setAttribute("viewBox", `0 0 ${W} ${H}`);
  node.replaceChildren();
  const pts = series.filter((p) => p.v !== null && p.v !== undefined);
  node.setAttribute("data-points", String(pts.length));
  node.setAttribute("data-last", pts.length ? String(pts[pts.length - 1].v) : "");
  const t0 = opts.t0, t1 = Math.max(opts.t1, t0 + 1);
  let ymax = opts.ymax || 0;
  for (const p of pts) ymax = Math.max(ymax, p.v);
  if (opts.threshold !== null && opts.threshold !== undefined) ymax = Math.max(ymax, opts.threshold * 1.2);
  if (ymax <= 0) ymax = 1;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => H - B - (v / ymax) * (H - T - B);
  for (const f of [0, 0.5, 1]) {
    node.appendChild(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(ymax * f), y2: y(ymax * f) }));
    node.appendChild(svg("text", { x: 2, y: y(ymax * f) + 3 }, opts.fmt ? opts.fmt(ymax * f) : (ymax * f).toPrecision(2)));
  }
  node.appendChild(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  node.appendChild(svg("text", { x: L, y: H - 6 }, time(t0)));
  node.appendChild(svg("text", { x: W - R - 44, y: H - 6 }, time(t1)));
  if (opts.threshold !== null && opts.threshold !== undefined) {
    node.appendChild(svg("line", { class: "threshold", x1: L, x2: W - R, y1: y(opts.threshold), y2: y(opts.threshold) }));
  }
  if (pts.length) {
    let d = "";
    pts.forEach((p, i) => {
      // steps: hold the previous value until the next point
      if (i === 0) d += `M${x(p.t)},${y(p.v)}`;
      else d += (opts.stepped ? `H${x(p.t)}` : "") + `L${x(p.t)},${y(p.v)}`;
    });
    if (opts.stepped) d += `H${x(t1)}`;
    node.appendChild(svg("path", { class: "line", d }));
  }
  for (const p of pts) {
    const c = svg("circle", { cx: x(p.t), cy: y(p.v), r: 3.5, class: p.cls || "ver" });
    c.appendChild(svg("title", {}, p.label || num(p.v)));
    node.appendChild(c);
    if (p.mark) node.appendChild(svg("text", { x: x(p.t) + 4, y: y(p.v) - 5, class: "ver" }, p.mark));
  }
}

// ---------------------------------------------------------------- sections

function drawSummary(r, plan) {
  const p = r.policy;
  $("r-name").textContent = `${r.name}` + (p ? `: ${p.stable} → ${p.candidate}` : "");
  const weights = r.variants.map((v) => `${v.name} ${v.weight} %`).join(", ");
  $("r-state").textContent = p
    ? `${p.state || "not started"} at ${p.step_label}${r.paused ? " (paused)" : ""} — weights ${weights}`
    : `no policy — weights ${weights}`;
  $("r-state").setAttribute("data-state", p && p.state ? p.state : "");
  const spec = plan.rollouts.find((x) => x.name === r.name);
  const steps = (spec && spec.policy && spec.policy.steps) || [];
  $("steps").replaceChildren(...steps.map((s, i) => {
    let cls = "";
    if (p && p.state === "complete") cls = "done";
    else if (p && i < p.step) cls = "done";
    else if (p && i === p.step) cls = p.state === "rolled_back" ? "failed" : "current";
    const label = s.shadow_only ? "shadow" : `${s.weight} %`;
    return el("li", { class: cls, "data-step": String(i) }, label + (s.gate ? " ⏸" : ""));
  }));
  $("r-next").textContent = p ? `next: ${p.next_action.text}` : "";
  $("r-held").hidden = !(p && p.held_by);
  $("r-held").textContent = p && p.held_by ? `holding: ${p.held_by}` : "";
}

function drawWeights(r, history) {
  const candidate = r.policy ? r.policy.candidate : (r.variants[r.variants.length - 1] || {}).name;
  const pts = history.slice().reverse()
    .filter((h) => h.weights[r.name])
    .map((h) => ({
      t: h.unix_ms,
      v: h.weights[r.name][candidate] ?? 0,
      mark: `v${h.version}`,
      label: `v${h.version} ${candidate} ${h.weights[r.name][candidate] ?? 0} % (${h.author}): ${h.reason}`,
    }));
  const now = Date.now();
  const t0 = pts.length ? pts[0].t : now - 60000;
  chart($("weights-chart"), pts, { t0, t1: now, ymax: 100, stepped: true, fmt: (v) => v.toFixed(0) + " %" });
}

function drawChecks(r, analysis) {
  const checks = (r.policy && r.policy.checks) || [];
  fill($("checks-body"), checks.map((c) => [
    c.name, el("span", { class: "v-" + c.verdict }, c.verdict), num(c.candidate, c.metric),
    num(c.stable, c.metric), num(c.threshold, c.metric), c.detail,
  ]));
  const decisions = (analysis.decisions || []).filter((d) => d.checks && d.checks.length).slice().reverse();
  const names = [...new Set(decisions.flatMap((d) => d.checks.map((c) => c.name)))];
  const now = Date.now();
  const t0 = decisions.length ? decisions[0].unix_ms : now - 60000;
  const box = $("checks-charts");
  const keep = new Map([...box.children].map((n) => [n.getAttribute("data-check"), n]));
  const nodes = names.map((name) => {
    let fig = keep.get(name);
    if (!fig) {
      fig = el("figure", { "data-check": name });
      fig.appendChild(el("figcaption", {}, name));
      fig.appendChild(svg("svg", { class: "chart small", "data-chart": "check" }));
    }
    const series = decisions.map((d) => {
      const c = d.checks.find((x) => x.name === name);
      return c ? { t: d.unix_ms, v: c.candidate, cls: "pt-" + c.verdict, label: `${c.verdict}: ${c.detail}`, thr: c.threshold, metric: c.metric } : null;
    }).filter((x) => x);
    const last = series[series.length - 1];
    chart(fig.querySelector("svg"), series, {
      t0, t1: now, height: 120, threshold: last ? last.thr : null, fmt: (v) => num(v, last && last.metric),
    });
    return fig;
  });
  box.replaceChildren(...nodes);
}

function drawShadow(r, report) {
  if (!report) {
    $("shadow-summary").textContent = "no shadow for this rollout";
    fill($("disagreements"), []);
    return;
  }
  // The engine's shadow_disagreement_rate check counts every comparison the proxies
  // made (exact, over its last window): that figure leads. The stored records are a
  // sample (every disagreement, some agreements), so theirs is only an estimate.
  const check = ((r.policy && r.policy.checks) || []).find((c) => c.metric === "shadow_disagreement_rate");
  const pct = (v) => (v === null || v === undefined ? "-" : (v * 100).toFixed(2) + " %");
  const est = report.estimated_agreement_rate ?? report.agreement_rate;
  const sample = `estimated ${pct(est)} from ${report.records} stored records, ${report.disagree} disagreements`;
  $("shadow-summary").textContent = check && check.candidate !== null && check.candidate !== undefined
    ? `agreement ${pct(1 - check.candidate)} over ${check.candidate_samples} comparisons (engine, last window); ${sample}`
    : `agreement ${sample}`;
  fill($("disagreements"), (report.recent_disagreements || []).slice(0, 10).map((d) => [
    el("code", {}, d.correlation_id), d.verdict, pred(d.primary_prediction), pred(d.shadow_prediction),
  ]));
}

function drawTrips(r, events) {
  const trips = events.filter((e) => e.kind === "local_trip");
  const check = ((r.policy && r.policy.checks) || []).find((c) => c.name === "local_trip");
  $("trip-state").textContent = check
    ? `local_trip check: ${check.verdict} (${check.detail})`
    : (trips.length ? "" : "no local trip configured or seen");
  $("trip-list").replaceChildren(...trips.map((e) => el("li", {}, `${e.time} ${e.step_label}: ${e.reason}`)));
}

function drawProxies(status) {
  fill($("proxies-body"), status.proxies.map((p) => [
    p.id, p.plan_version, p.behind, `${p.last_seen_seconds_ago.toFixed(1)} s ago`,
  ]));
}

function drawEvents(events) {
  $("events-list").replaceChildren(...events.slice().reverse().slice(0, 20).map((e) =>
    el("li", { "data-kind": e.kind }, `${e.time.slice(11, 19)} ${e.kind} ${e.step_label}: ${e.reason}`)));
}

function drawHistory(r, history) {
  fill($("history-body"), history.filter((h) => h.weights[r.name]).slice(0, 50).map((h) => [
    `v${h.version}`, h.time.slice(0, 19).replace("T", " "), h.author, h.op,
    Object.entries(h.weights[r.name]).map(([k, v]) => `${k} ${v}`).join(", "), h.reason,
  ]));
}

function drawTabs(status) {
  const names = status.rollouts.map((r) => r.name);
  if (!names.includes(selected)) selected = names[0] || null;
  $("tabs").replaceChildren(...names.map((n) => {
    const b = el("button", { class: n === selected ? "active" : "", type: "button" }, n);
    b.addEventListener("click", () => { selected = n; refresh(); });
    return b;
  }));
}

// ---------------------------------------------------------------- loop

async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const [status, plan, history] = await Promise.all([get("/v1/status"), get("/v1/plan"), get("/v1/history?limit=200")]);
    $("plan-version").textContent = `plan v${status.version}`;
    $("updated").textContent = `updated ${time(Date.now())}`;
    $("conn").textContent = "";
    drawTabs(status);
    const r = status.rollouts.find((x) => x.name === selected);
    $("empty").hidden = !!r;
    $("rollout").hidden = !r;
    if (!r) return;
    const q = encodeURIComponent(r.name);
    const spec = plan.rollouts.find((x) => x.name === r.name);
    const [analysis, events, shadow] = await Promise.all([
      r.policy ? get(`/v1/rollouts/${q}/analysis?limit=60`) : Promise.resolve({ decisions: [] }),
      get(`/v1/events?rollout=${q}&limit=100`),
      spec && spec.shadow ? get(`/v1/shadow-report?rollout=${q}&limit=10`) : Promise.resolve(null),
    ]);
    drawSummary(r, plan);
    drawWeights(r, history);
    drawChecks(r, analysis);
    drawShadow(r, shadow);
    drawTrips(r, events.events);
    drawProxies(status);
    drawEvents(events.events);
    drawHistory(r, history);
    document.body.setAttribute("data-ready", "1");
  } catch (e) {
    $("conn").textContent = `sidecar unreachable: ${e.message}`;
  } finally {
    busy = false;
  }
}

async function act(op) {
  if (!selected || !confirm(`${op} rollout ${selected}?`)) return;
  const out = $("action-result");
  out.textContent = `${op}...`;
  try {
    const r = await fetch(`/v1/rollouts/${encodeURIComponent(selected)}/${op}?reason=${encodeURIComponent(op + " from the status page")}`, {
      method: "POST",
      headers: { authorization: `Bearer ${credential()}`, "content-type": "application/json", "x-rollout-author": "ui" },
      body: "{}",
      cache: "no-store",
    });
    const body = await r.json().catch(() => ({}));
    if (r.ok) {
      out.textContent = `${op}: plan v${body.version}`;
    } else {
      out.textContent = `${op} refused (${r.status}): ${body.error || ""}`;
      if (r.status === 401) { // not a valid credential: forget it
        sessionStorage.removeItem(KEY);
        showCredential();
        $("action-result").textContent = out.textContent;
      }
    }
    out.setAttribute("data-status", String(r.status));
  } catch (e) {
    out.textContent = `${op} failed: ${e.message}`;
  }
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("cred-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("cred").value.trim();
    if (v) sessionStorage.setItem(KEY, v);
    $("cred").value = "";
    showCredential();
  });
  $("cred-clear").addEventListener("click", () => { sessionStorage.removeItem(KEY); showCredential(); });
  for (const b of document.querySelectorAll("#actions button[data-op]")) {
    b.addEventListener("click", () => act(b.getAttribute("data-op")));
  }
  showCredential();
  refresh();
  setInterval(refresh, POLL_MS);
});
