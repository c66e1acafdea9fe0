"""The node's status page (``GET /``): one self-contained HTML document.

No external files or CDNs (nodes often have no internet access): the CSS and
the script are inline. The page is rendered with the status at the time of
the request embedded as JSON, then polls ``/v1/status`` once a second and
redraws; a throughput sparkline is kept in the browser. It is kept in a
Python module, not a data file, so it ships with the package as it is.
"""

from __future__ import annotations

import html
import json
from typing import Any


def render_status_page(status: dict[str, Any]) -> str:
    node = status.get("node", {})
    title = f"ramraft {node.get('id', '')} \u2014 {node.get('role', '')}"
    data = json.dumps(status, separators=(",", ":")).replace("<", "\\u003c")
    return (
        _PAGE.replace("{{title}}", html.escape(title))
        .replace("{{node_id}}", html.escape(str(node.get("id", ""))))
        .replace("{{build}}", html.escape(_build(node)))
        .replace("{{data}}", data)
    )


def _build(node: dict[str, Any]) -> str:
    """The version and process, so an operator knows what runs where."""
    return f"ramraft {node.get('version', '?')}, pid {node.get('pid', '?')}"


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<link rel="icon" href="data:,">
<noscript><meta http-equiv="refresh" content="5"></noscript>
<style>
:root {
  --bg: #f5f7fa; --card: #ffffff; --text: #1f2328; --muted: #656d76; --line: #d8dee4;
  --leader: #1a7f37; --follower: #0969da; --candidate: #9a6700; --down: #cf222e;
  --bar: #54aeff; --bar-bad: #fd8c73; --spark: #0969da;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0d1117; --card: #161b22; --text: #e6edf3; --muted: #8d96a0; --line: #30363d;
    --leader: #3fb950; --follower: #4493f8; --candidate: #d29922; --down: #f85149;
    --bar: #4493f8; --bar-bad: #f85149; --spark: #4493f8;
  }
}
* { box-sizing: border-box; }
body {
  margin: 0; background: var(--bg); color: var(--text);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
header { background: var(--card); border-bottom: 1px solid var(--line); }
header .bar {
  display: flex; align-items: center; gap: 14px; flex-wrap: wrap;
  max-width: 1240px; margin: 0 auto; padding: 14px 28px;
}
header h1 { font-size: 19px; margin: 0; font-weight: 600; letter-spacing: -0.01em; }
header h1 .brand { color: var(--muted); font-weight: 500; }
.badge {
  display: inline-block; padding: 2px 10px; border-radius: 999px; font-size: 12.5px;
  font-weight: 600; text-transform: uppercase; letter-spacing: 0.04em; color: #fff;
  background: var(--muted);
}
.badge.leader { background: var(--leader); }
.badge.follower { background: var(--follower); }
.badge.candidate, .badge.pre-candidate { background: var(--candidate); }
.badge.down { background: var(--down); }
.spacer { flex: 1; }
.updated { color: var(--muted); font-size: 13px; }
.dot {
  display: inline-block; width: 8px; height: 8px; border-radius: 50%;
  background: var(--leader); margin-right: 6px; vertical-align: 1px;
}
.dot.stale { background: var(--down); }
main { max-width: 1240px; margin: 0 auto; padding: 20px 28px 32px; }
.alert {
  padding: 10px 14px; border-radius: 8px; margin-bottom: 16px; font-weight: 500;
  border: 1px solid var(--down); color: var(--down); background: var(--card);
}
.alert[hidden] { display: none; }
.cards { display: grid; grid-template-columns: repeat(6, 1fr); gap: 12px; margin-bottom: 18px; }
.card, .panel {
  background: var(--card); border: 1px solid var(--line); border-radius: 10px;
}
.card { padding: 12px 14px; min-width: 0; }
.card .label {
  color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: 0.05em;
}
.card .value {
  font-size: 24px; font-weight: 600; margin-top: 2px; white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; font-variant-numeric: tabular-nums;
}
.card .sub { color: var(--muted); font-size: 12.5px; white-space: nowrap; }
.grid { display: grid; grid-template-columns: 3fr 2fr; gap: 18px; margin-bottom: 18px; }
.panel { padding: 14px 16px 12px; min-width: 0; }
.panel h2 {
  font-size: 14px; margin: 0 0 10px; font-weight: 600; display: flex;
  align-items: baseline; gap: 8px;
}
.panel h2 .note { color: var(--muted); font-weight: 400; font-size: 12.5px; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th {
  text-align: left; color: var(--muted); font-weight: 500; font-size: 12px;
  text-transform: uppercase; letter-spacing: 0.04em; padding: 4px 8px 6px;
  border-bottom: 1px solid var(--line);
}
td { padding: 7px 8px; border-bottom: 1px solid var(--line); font-size: 14px; }
td.node { white-space: nowrap; }
tr:last-child td { border-bottom: 0; }
td.num, th.num { text-align: right; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
.muted { color: var(--muted); }
.lag { display: flex; align-items: center; gap: 8px; }
.lagbar {
  flex: 1; height: 6px; border-radius: 3px; background: var(--line);
  overflow: hidden; min-width: 60px;
}
.lagbar span { display: block; height: 100%; background: var(--bar); }
.lagbar span.bad { background: var(--bar-bad); }
.pill {
  font-size: 12px; padding: 1px 8px; border-radius: 999px; border: 1px solid var(--line);
  color: var(--muted); white-space: nowrap;
}
.pill.leader { color: var(--leader); border-color: var(--leader); font-weight: 600; }
.pill.off { color: var(--down); border-color: var(--down); }
.you { font-size: 11.5px; color: var(--muted); margin-left: 4px; }
.spark { width: 100%; height: 90px; display: block; }
.spark path.line { fill: none; stroke: var(--spark); stroke-width: 2; }
.spark path.area { fill: var(--spark); opacity: 0.12; stroke: none; }
.spark line { stroke: var(--line); stroke-width: 1; }
.figures { display: flex; gap: 22px; margin-top: 8px; flex-wrap: wrap; }
.figures div { font-size: 13px; color: var(--muted); }
.figures b {
  display: block; font-size: 19px; color: var(--text); font-variant-numeric: tabular-nums;
}
.empty { color: var(--muted); font-size: 13.5px; padding: 6px 8px; }
.panel.jobs { margin-bottom: 18px; }
.panel[hidden] { display: none; }
footer { color: var(--muted); font-size: 13px; display: flex; gap: 18px; flex-wrap: wrap; }
footer a, .applink { color: var(--follower); text-decoration: none; }
footer a:hover, .applink:hover { text-decoration: underline; }
@media (max-width: 980px) {
  .cards { grid-template-columns: repeat(3, 1fr); }
  .grid { grid-template-columns: 1fr; }
}
</style>
</head>
<body>
<header><div class="bar">
  <h1><span class="brand">ramraft</span> &middot; node <span id="node-id">{{node_id}}</span></h1>
  <span id="role" class="badge">&hellip;</span>
  <a id="app-link" class="applink" hidden></a>
  <span class="spacer"></span>
  <span class="updated"><span id="live" class="dot"></span><span id="updated">&nbsp;</span></span>
</div></header>
<main>
  <div id="alert" class="alert" hidden></div>
  <section class="cards">
    <div class="card"><div class="label">Leader</div><div class="value" id="leader">&ndash;</div>
      <div class="sub" id="leader-sub">&nbsp;</div></div>
    <div class="card"><div class="label">Term</div><div class="value" id="term">&ndash;</div>
      <div class="sub" id="term-sub">&nbsp;</div></div>
    <div class="card"><div class="label">Commit index</div>
      <div class="value" id="commit">&ndash;</div>
      <div class="sub" id="commit-sub">&nbsp;</div></div>
    <div class="card"><div class="label">Applied index</div>
      <div class="value" id="applied">&ndash;</div>
      <div class="sub" id="applied-sub">&nbsp;</div></div>
    <div class="card"><div class="label">Log</div><div class="value" id="log">&ndash;</div>
      <div class="sub" id="log-sub">&nbsp;</div></div>
    <div class="card"><div class="label">Uptime</div><div class="value" id="uptime">&ndash;</div>
      <div class="sub" id="uptime-sub">&nbsp;</div></div>
  </section>
  <section class="grid">
    <div class="panel">
      <h2>Members <span class="note" id="members-note"></span></h2>
      <table>
        <thead><tr><th>Node</th><th>Address</th><th>Role</th><th class="num">Match</th>
          <th style="width:30%">Lag</th><th>State</th></tr></thead>
        <tbody id="members"></tbody>
      </table>
    </div>
    <div class="panel">
      <h2>Applied entries per second <span class="note">last 2 minutes</span></h2>
      <svg class="spark" id="spark" viewBox="0 0 400 90" preserveAspectRatio="none">
        <line x1="0" y1="89.5" x2="400" y2="89.5"></line>
        <path class="area" d=""></path><path class="line" d=""></path>
      </svg>
      <div class="figures">
        <div><b id="applied-rate">0</b>applied/s</div>
        <div><b id="proposed-rate">0</b>proposed/s (as leader)</div>
        <div><b id="forwarded">0</b>writes forwarded</div>
      </div>
    </div>
  </section>
  <section class="grid">
    <div class="panel">
      <h2>Requests <span class="note" id="requests-note"></span></h2>
      <table>
        <thead><tr><th>API</th><th>Call</th><th class="num">Per second</th></tr></thead>
        <tbody id="requests"></tbody>
      </table>
    </div>
    <div class="panel">
      <h2>Leader changes <span class="note">newest first, as seen by this node</span></h2>
      <table>
        <thead><tr><th>When</th><th class="num">Term</th><th>Leader</th></tr></thead>
        <tbody id="changes"></tbody>
      </table>
    </div>
  </section>
  <section class="panel jobs" id="jobs-panel" hidden>
    <h2>Background jobs <span class="note" id="jobs-note"></span></h2>
    <table>
      <thead><tr><th>Job</th><th>Runs on</th><th class="num">Every</th><th>State</th>
        <th class="num">Runs</th><th class="num">Failures</th><th>Last run</th>
        <th>Last error</th></tr></thead>
      <tbody id="jobs"></tbody>
    </table>
  </section>
  <footer>
    <a href="/v1/status">/v1/status</a><a href="/metrics">/metrics</a>
    <a href="/healthz">/healthz</a><a href="/readyz">/readyz</a>
    <span>refreshes every second</span>
    <span id="build">{{build}}</span>
  </footer>
</main>
<script id="initial-status" type="application/json">{{data}}</script>
<script>
"use strict";
const history = [];
let lastOk = 0;
const $ = (id) => document.getElementById(id);
const esc = (v) => String(v).replace(/[&<>"']/g,
  (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
const num = (n) => (n === null || n === undefined) ? "\\u2013" : Number(n).toLocaleString("en-US");
const rate = (n) => n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(1);

function ago(seconds) {
  if (seconds < 1) return "just now";
  if (seconds < 60) return Math.floor(seconds) + " s ago";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
  if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
  return Math.floor(seconds / 86400) + " d ago";
}
function duration(seconds) {
  if (seconds < 60) return Math.floor(seconds) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}
function clock(unix) {
  return new Date(unix * 1000).toLocaleTimeString("en-GB", {hour12: false});
}

function renderMembers(s) {
  const rows = s.members.map((m) => {
    const role = m.leader ? '<span class="pill leader">leader</span>'
      : '<span class="pill">' + (m.voter ? "voter" : "learner") + "</span>";
    let lag = '<span class="muted">\\u2013</span>';
    if (m.lag !== null && m.lag !== undefined) {
      const width = Math.min(100, m.lag === 0 ? 0 : 8 + Math.log10(m.lag + 1) * 23);
      const bad = m.lag > 1000 || m.active === false;
      lag = '<div class="lag"><div class="lagbar"><span class="' + (bad ? "bad" : "")
        + '" style="width:' + width + '%"></span></div><span class="mono">'
        + num(m.lag) + "</span></div>";
    }
    let state = '<span class="muted">\\u2013</span>';
    if (m.active === true) state = '<span class="pill">reachable</span>';
    if (m.active === false) state = '<span class="pill off">unreachable</span>';
    const you = m.self ? '<span class="you">(this node)</span>' : "";
    return '<tr><td class="node"><b>' + esc(m.id) + "</b>" + you
      + '</td><td class="mono">' + esc(m.address || "\\u2013") + "</td><td>" + role
      + '</td><td class="num mono">' + num(m.match_index) + "</td><td>" + lag + "</td><td>"
      + state + "</td></tr>";
  });
  $("members").innerHTML = rows.join("")
    || '<tr><td colspan="6" class="empty">no members yet</td></tr>';
  $("members-note").textContent = s.members_from
    ? "progress as seen by the leader, " + s.members_from
    : (s.members_error ? "progress unknown: " + s.members_error : "");
}

function renderRequests(s) {
  const entries = Object.entries(s.rates.requests).sort((a, b) => b[1] - a[1]);
  $("requests").innerHTML = entries.map(([name, r]) => {
    const cut = name.indexOf(" ");
    return '<tr><td><span class="pill">' + esc(name.slice(0, cut)) + '</span></td><td class="mono">'
      + esc(name.slice(cut + 1)) + '</td><td class="num mono">' + rate(r) + "</td></tr>";
  }).join("") || '<tr><td colspan="3" class="empty">no requests in the last '
    + s.rates.window_seconds + " seconds</td></tr>";
  $("requests-note").textContent = "average over the last " + s.rates.window_seconds + " s";
}

function renderChanges(s) {
  const now = s.time;
  $("changes").innerHTML = s.leader_changes.map((c) =>
    "<tr><td>" + clock(c.time) + ' <span class="muted">' + ago(now - c.time) + "</span></td>"
    + '<td class="num mono">' + num(c.term) + "</td><td>"
    + (c.leader ? "<b>" + esc(c.leader) + "</b>" : '<span class="muted">none (election)</span>')
    + "</td></tr>").join("")
    || '<tr><td colspan="3" class="empty">none yet</td></tr>';
}

function renderJobs(s) {
  const jobs = s.jobs || [];
  $("jobs-panel").hidden = !jobs.length;
  const n = s.node;
  $("jobs").innerHTML = jobs.map((j) => {
    let where = j.on === "leader" ? "the leader" : "every node";
    if (j.on === "leader") {
      where += j.running_here ? " (this node)" : (n.leader ? " (" + esc(n.leader) + ")" : "");
    }
    const last = j.last_finished ? clock(j.last_finished) + ' <span class="muted">'
      + ago(s.time - j.last_finished) + "</span>" : '<span class="muted">never</span>';
    const state = '<span class="pill' + (j.state === "retrying" ? " off" : "")
      + (j.running_here ? " leader" : "") + '">' + esc(j.state) + "</span>";
    return "<tr><td><b>" + esc(j.name) + "</b></td><td>" + where + '</td><td class="num mono">'
      + (j.every ? esc(j.every) + " s" : "once") + "</td><td>" + state
      + '</td><td class="num mono">' + num(j.runs) + '</td><td class="num mono">'
      + num(j.failures) + "</td><td>" + last + '</td><td class="mono">'
      + esc(j.last_error || "") + "</td></tr>";
  }).join("");
  $("jobs-note").textContent = "runs and failures counted on this node";
}

function renderSpark() {
  const svg = $("spark");
  const points = history.slice(-120);
  if (points.length < 2) return;
  const max = Math.max(1, ...points.map((p) => p.rate));
  const step = 400 / 119;
  const start = 400 - (points.length - 1) * step;
  const xy = points.map((p, i) => [start + i * step, 86 - (p.rate / max) * 78]);
  const line = xy.map(([x, y], i) => (i ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1)).join(" ");
  svg.querySelector("path.line").setAttribute("d", line);
  svg.querySelector("path.area").setAttribute("d",
    line + " L" + xy[xy.length - 1][0].toFixed(1) + " 90 L" + xy[0][0].toFixed(1) + " 90 Z");
}

function render(s) {
  const n = s.node;
  const role = n.failed ? "down" : (n.role || "starting");
  const badge = $("role");
  badge.textContent = n.failed ? "stopped" : role;
  badge.className = "badge " + role;
  document.title = "ramraft " + n.id + " \\u2014 " + badge.textContent;
  $("leader").textContent = n.leader || "none";
  $("leader-sub").textContent = n.leader
    ? (n.leader === n.id ? "this node" : (n.leader_address || "")) : "election in progress";
  $("term").textContent = num(n.term);
  $("term-sub").textContent = s.leader_changes.length
    ? "leader since " + ago(s.time - s.leader_changes[0].time).replace(" ago", "")
    : "";
  $("commit").textContent = num(n.commit_index);
  $("commit-sub").textContent = n.ready ? "ready" : "not ready";
  $("applied").textContent = num(n.applied_index);
  const behind = (n.commit_index || 0) - (n.applied_index || 0);
  $("applied-sub").textContent = behind > 0 ? num(behind) + " to apply" : "up to date";
  $("log").textContent = num(n.last_index);
  $("log-sub").textContent = "from " + num(n.first_index) + ", snapshot " + num(n.snapshot_index);
  $("uptime").textContent = duration(n.uptime_seconds || 0);
  $("uptime-sub").textContent = n.http ? "http " + n.http : "";
  $("build").textContent = "ramraft " + n.version + ", pid " + n.pid
    + (n.cluster_id ? ", cluster " + n.cluster_id : "")
    + ", app version " + n.app_version + (n.upgrade_hold ? " (switches held)" : "");
  $("applied-rate").textContent = rate(s.rates.applied_per_second);
  $("proposed-rate").textContent = rate(s.rates.proposed_per_second);
  $("forwarded").textContent = num(s.forwarded_writes);
  const link = $("app-link");
  if (s.app) {
    link.hidden = false;
    link.href = s.app.url;
    link.textContent = "open " + s.app.title + " \\u2192";
  }
  let alert = "";
  if (n.diverged && n.diverged.length) {
    alert = "STATE DIVERGENCE: " + n.diverged.join(", ") + " hold other state than the "
      + "majority (state check at index " + n.diverged_at + "). Fix the command, then "
      + "remove each named node, move its data directory aside and add it back; if every "
      + "node is named, restore the last good backup as a new cluster (README: the "
      + "divergence alarm).";
  }
  else if (n.halted) alert = "This node stopped applying the log: " + n.halted;
  else if (n.failed) alert = "This node stopped after a storage failure: " + n.failed;
  else if (!n.leader) {
    alert = "No leader is known: an election is in progress, "
      + "or this node cannot reach a quorum.";
  }
  else if (!n.ready) alert = "Not ready: this node is catching up with the leader.";
  $("alert").hidden = !alert;
  $("alert").textContent = alert;
  renderMembers(s);
  renderRequests(s);
  renderChanges(s);
  renderJobs(s);
  const prev = history[history.length - 1];
  if (prev && s.time > prev.time) {
    history.push({time: s.time, applied: n.applied_index,
      rate: Math.max(0, (n.applied_index - prev.applied) / (s.time - prev.time))});
  } else if (!prev) {
    history.push({time: s.time, applied: n.applied_index, rate: 0});
  }
  if (history.length > 240) history.splice(0, history.length - 240);
  renderSpark();
  lastOk = Date.now();
  $("updated").textContent = "updated " + clock(s.time);
  $("live").className = "dot";
}

async function poll() {
  try {
    const response = await fetch("/v1/status", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (e) {
    $("live").className = "dot stale";
    $("updated").textContent = "node unreachable, retrying\\u2026";
    if (Date.now() - lastOk > 3000) {
      $("alert").hidden = false;
      $("alert").textContent = "Cannot reach this node (" + e.message + "): "
        + "the data below is stale.";
    }
  }
}

render(JSON.parse($("initial-status").textContent));
setInterval(poll, 1000);
</script>
</body>
</html>
"""
