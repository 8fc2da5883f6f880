// floodgate's dashboard. Polls three small admin endpoints every two
// seconds and draws what changed; every action goes through the admin API.
// Client keys are untrusted text: they only ever reach the page as
// textContent, never as markup.
"use strict";

const POLL_MS = 2000;
const HISTORY = 150; // points kept: five minutes at one every two seconds
const TOKEN_KEY = "floodgate-admin-token";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY);
let timer = null;
let previous = null; // the last overview, for rates
const history = []; // [{t, rules: {name: {admitted, refused, shadow}}}]

function showError(text) {
  const e = $("error");
  e.textContent = text;
  e.hidden = !text;
}

async function api(method, path, body) {
  const init = { method, headers: { authorization: "Bearer " + token } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) {
    signOut("The admin token was refused.");
    throw new Error("unauthorized");
  }
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) {
    throw new Error((data && (data.detail || data.title)) || r.status + " " + r.statusText);
  }
  return data;
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (cls) td.className = cls;
  td.title = td.textContent;
  return td;
}

function fill(tbody, rows, emptyText, columns) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(emptyText, "empty");
    td.colSpan = columns;
    tr.append(td);
    tbody.append(tr);
  }
  for (const row of rows) tbody.append(row);
}

function humanIn(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  if (h > 0) return h + "h " + m + "m";
  if (m > 0) return m + "m " + (s % 60) + "s";
  return s + "s";
}

function totals(decisions) {
  const d = decisions || {};
  return {
    admitted: d.allowed || 0,
    refused: (d.limited || 0) + (d.blocked || 0),
    shadow: d.shadow_limited || 0,
    blocked: d.blocked || 0,
  };
}

function renderOverview(o) {
  $("instance").textContent = "v" + o.version + " · pid " + o.pid + (o.draining ? " · draining" : "");
  const s = $("store-status");
  s.textContent = "store: " + o.store.backend + (o.store.healthy ? " healthy" : " FAILING") + " · on_error " + o.store.on_error;
  s.className = "badge " + (o.store.healthy ? "ok" : "bad");

  const inst = $("instances");
  if (o.instances) {
    inst.textContent = o.instances.length + (o.instances.length === 1 ? " instance" : " instances") + " seen";
    inst.title = o.instances.join("\n");
  } else {
    inst.textContent = "instances: unknown";
    inst.title = "the store did not answer";
  }
  const select = $("chart-rule");
  const known = new Set([...select.options].map((x) => x.value));
  const rows = [];
  const point = { t: o.time_ms, rules: {} };
  for (const r of o.rules) {
    if (!known.has(r.name)) {
      const opt = document.createElement("option");
      opt.value = r.name;
      opt.textContent = r.name;
      select.append(opt);
    }
    const t = totals(r.decisions);
    point.rules[r.name] = t;
    const tr = document.createElement("tr");
    tr.dataset.rule = r.name;
    const limit = r.algorithm === "concurrency"
      ? r.limit + " in flight"
      : r.limit + " per " + r.window + (r.burst ? ", burst " + r.burst : "") + " (" + r.algorithm + ")"
        + (r.block_for.length ? ", block " + r.block_for.join("→") : "") + (r.shadow ? ", shadow" : "");
    tr.append(
      cell(r.name),
      cell(limit),
      cell(r.key, "key"),
      cell(r.overrides, "num"),
      cell(t.admitted, "num admitted"),
      cell(t.refused, "num refused" + (t.refused > 0 ? " refused-some" : "")),
      cell(t.shadow, "num shadow"),
      cell(t.blocked, "num blocked"),
    );
    rows.push(tr);
  }
  fill($("rules-table").tBodies[0], rows, "no rules", 8);
  history.push(point);
  while (history.length > HISTORY) history.shift();
  previous = o;
  drawChart();
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, h);
  const only = $("chart-rule").value;
  const series = { admitted: [], refused: [], shadow: [] };
  for (let i = 1; i < history.length; i++) {
    const a = history[i - 1], b = history[i];
    const dt = Math.max(1, b.t - a.t) / 1000;
    const sum = { admitted: 0, refused: 0, shadow: 0 };
    for (const [name, now] of Object.entries(b.rules)) {
      if (only && name !== only) continue;
      const before = a.rules[name] || { admitted: 0, refused: 0, shadow: 0 };
      for (const k of Object.keys(sum)) sum[k] += Math.max(0, now[k] - before[k]) / dt;
    }
    for (const k of Object.keys(sum)) series[k].push(sum[k]);
  }
  const max = Math.max(1, ...series.admitted, ...series.refused, ...series.shadow);
  g.strokeStyle = "#e4e7ec";
  g.fillStyle = "#667085";
  g.font = "11px system-ui, sans-serif";
  for (const f of [0, 0.5, 1]) {
    const y = h - 18 - f * (h - 30);
    g.beginPath();
    g.moveTo(36, y);
    g.lineTo(w - 4, y);
    g.stroke();
    g.fillText((max * f).toFixed(max * f < 10 ? 1 : 0), 2, y + 4);
  }
  const span = Math.round((history.length * POLL_MS) / 1000);
  g.fillText("last " + (span < 120 ? span + " s" : Math.round(span / 60) + " min"), w - 70, h - 4);
  const colours = { admitted: "#12805c", refused: "#c4320a", shadow: "#b54708" };
  for (const [k, values] of Object.entries(series)) {
    if (values.length === 0) continue;
    g.strokeStyle = colours[k];
    g.lineWidth = 2;
    g.beginPath();
    values.forEach((v, i) => {
      const x = 36 + ((w - 40) * (HISTORY - 1 - (values.length - 1 - i))) / (HISTORY - 1);
      const y = h - 18 - (v / max) * (h - 30);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  }
}

function blockable(key) {
  return key.startsWith("ip:") || key.startsWith("header:");
}

function renderTop(rows) {
  const out = [];
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.dataset.key = r.key;
    tr.dataset.rule = r.rule;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "block";
    button.textContent = "Block";
    if (blockable(r.key)) {
      button.addEventListener("click", () => block(r.key, r.rule));
    } else {
      button.disabled = true;
      button.title = "not a client address or header: block it with floodgate block";
    }
    const actions = document.createElement("td");
    actions.append(button);
    tr.append(
      cell(r.rule),
      cell(r.key, "key"),
      cell(r.admitted, "num"),
      cell(r.refused, "num" + (r.refused > 0 ? " refused-some" : "")),
      actions,
    );
    out.push(tr);
  }
  fill($("top-table").tBodies[0], out, "no decisions in the last 5 minutes", 5);
}

function renderBlocks(data) {
  const out = [];
  const now = Date.now();
  for (const b of data.blocks) {
    const tr = document.createElement("tr");
    tr.dataset.target = b.target;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "unblock";
    button.textContent = "Unblock";
    button.addEventListener("click", () => unblock(b.target));
    const actions = document.createElement("td");
    actions.append(button);
    tr.append(
      cell(b.target, "key"),
      cell(b.source),
      cell(humanIn(b.until_ms - now), "num"),
      cell(b.reason, "reason"),
      actions,
    );
    out.push(tr);
  }
  fill($("blocks-table").tBodies[0], out, "no blocks in force", 5);
}

async function block(target, rule) {
  try {
    await api("POST", "/admin/blocks", {
      target,
      ttl: $("block-ttl").value,
      reason: "blocked from the dashboard (top client of " + rule + ")",
    });
    showError("");
    await poll();
  } catch (e) {
    showError("Block failed: " + e.message);
  }
}

async function unblock(target) {
  try {
    await api("DELETE", "/admin/blocks/" + encodeURIComponent(target));
    showError("");
    await poll();
  } catch (e) {
    showError("Unblock failed: " + e.message);
  }
}

async function poll() {
  try {
    const [overview, top, blocks] = await Promise.all([
      api("GET", "/admin/overview"),
      api("GET", "/admin/top?n=20"),
      api("GET", "/admin/blocks"),
    ]);
    renderOverview(overview);
    renderTop(top);
    renderBlocks(blocks);
    if ($("error").textContent.startsWith("Cannot reach")) showError("");
  } catch (e) {
    if (e.message !== "unauthorized") showError("Cannot reach floodgate's admin API: " + e.message);
  }
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  poll();
  timer = setInterval(poll, POLL_MS);
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  if (timer) clearInterval(timer);
  timer = null;
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  showError(message || "");
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token-input").value.trim();
    $("token-input").value = "";
    sessionStorage.setItem(TOKEN_KEY, token);
    showError("");
    start();
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("chart-rule").addEventListener("change", drawChart);
  if (token) start();
});
