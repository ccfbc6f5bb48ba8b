// plexi admin panel: plain JavaScript, no framework, nothing fetched from
// elsewhere. Signs in with a token kept in sessionStorage, calls the REST API
// of the node that served it, listens to the event stream (ticket auth) and
// polls slowly as a fallback. Charts are SVG drawn here.
"use strict";

// ---- bounds -------------------------------------------------------------
const POLL_MS = 4000;            // fallback refresh of the visible tab
const SAMPLE_MS = 3000;          // /metrics sampling for the live charts
const SAMPLES_KEPT = 60;         // points per live chart (3 minutes)
const STREAM_RETRY_MIN_MS = 1000;
const STREAM_RETRY_MAX_MS = 30000;
const EVENT_DEBOUNCE_MS = 300;
const PAGE_SIZE = 50;            // objects per browser page
const ERRORS_KEPT = 100;         // console errors kept for tests
const HISTORY_LIMIT = 20;
const ALERTS_LIMIT = 50;
const JOB_POLL_MS = 1000;
const JOB_POLL_MAX = 600;        // polls of one job (10 minutes)

// ---- error capture (read by tests/panel.rs) ------------------------------
window.__plexiErrors = [];
function recordError(msg) {
  if (window.__plexiErrors.length < ERRORS_KEPT) window.__plexiErrors.push(String(msg));
}
window.addEventListener("error", (e) => recordError("error: " + e.message));
window.addEventListener("unhandledrejection", (e) => recordError("unhandled: " + (e.reason && e.reason.message || e.reason)));
const origConsoleError = console.error.bind(console);
console.error = (...a) => { recordError("console.error: " + a.join(" ")); origConsoleError(...a); };

// ---- small helpers --------------------------------------------------------
const $ = (id) => document.getElementById(id);
const SVGNS = "http://www.w3.org/2000/svg";

/** Element builder: h("td", {class: "x"}, "text", child...). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVGNS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}
function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}
function append(el, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}
function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
function put(id, ...children) { append(clear($(id)), children); }
function pill(value) { return h("span", { class: "pill s-" + value }, value); }
function fmtBytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; n = Number(n) || 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function fmtNum(n, d = 1) { return (Number(n) || 0).toFixed(d); }
function fmtDuration(sec) {
  sec = Math.max(0, Math.round(sec));
  const d = Math.floor(sec / 86400), hh = Math.floor(sec % 86400 / 3600), m = Math.floor(sec % 3600 / 60);
  if (d) return d + "d " + hh + "h";
  if (hh) return hh + "h " + m + "m";
  if (m) return m + "m " + (sec % 60) + "s";
  return sec + "s";
}
function fmtTime(t) { return t ? new Date(t).toLocaleString() : "—"; }
function table(headers, rows) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows));
}
function bar(pct) {
  const b = h("div", { class: "bar" + (pct >= 85 ? " hot" : ""), role: "img", "aria-label": fmtNum(pct) + " % used" }, h("span"));
  b.firstChild.style.width = Math.min(100, Math.max(0, pct)) + "%";
  return b;
}

// ---- session and API ------------------------------------------------------
const TOKEN_KEY = "plexi.token";
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  role: null,
  tab: "nodes",
  nodes: [],
  alerts: { active: [], recent: [] },
  releases: [],
  browseAfter: null,
  browsePrefix: "",
  samples: [],
  stream: null,
  streamRetryMs: STREAM_RETRY_MIN_MS,
  pending: new Set(),
  debounce: null,
  planned: null,
};
const isAdmin = () => state.role === "admin";

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.token }, opts.headers || {});
  const res = await fetch(path, Object.assign({}, opts, { headers }));
  if (res.status === 401 && path !== "/api/v1/whoami") { signOut("Your token is no longer accepted; sign in again."); }
  if (!res.ok) {
    let code = "http_" + res.status, message = res.statusText;
    try { const b = await res.json(); code = b.error.code; message = b.error.message; } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, code, message);
  }
  if (opts.raw) return res;
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : res.text();
}
const post = (path, body) => api(path, {
  method: "POST",
  headers: body === undefined ? {} : { "Content-Type": "application/json" },
  body: body === undefined ? undefined : JSON.stringify(body),
});
function showError(where, e) { put(where, e instanceof ApiError ? `${e.message} (${e.code})` : String(e && e.message || e)); }

// ---- sign in ---------------------------------------------------------------
async function signIn(token) {
  state.token = token;
  const me = await api("/api/v1/whoami");
  state.role = me.role;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("whoami").textContent = `signed in as ${me.name} (${me.role})`;
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  document.body.dataset.role = me.role;
  if (!isAdmin()) for (const el of document.querySelectorAll(".admin-only")) el.remove();
  try {
    const live = await fetch("/health").then((r) => r.json());
    $("answering").textContent = `answered by ${live.node_id} · ${live.version}`;
  } catch (_) { /* liveness is decoration */ }
  openStream();
  refreshAll();
  sampleMetrics();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.stream) state.stream.close();
  location.hash = "";
  if (message) sessionStorage.setItem("plexi.signout", message);
  location.reload();
}

$("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  put("signin-error");
  try { await signIn($("token").value.trim()); }
  catch (err) { state.token = null; showError("signin-error", err.status === 401 ? new Error("That token is not accepted by this node.") : err); }
});
$("signout").addEventListener("click", () => signOut());

// ---- tabs ----------------------------------------------------------------------
const TABS = ["nodes", "updates", "storage"];
function selectTab(tab, focus) {
  state.tab = tab;
  for (const t of TABS) {
    const b = $("tab-" + t);
    b.setAttribute("aria-selected", String(t === tab));
    b.tabIndex = t === tab ? 0 : -1;
    $("view-" + t).hidden = t !== tab;
  }
  if (focus) $("tab-" + tab).focus();
  if (location.hash !== "#" + tab) history.replaceState(null, "", "#" + tab);
  refreshTab();
}
for (const t of TABS) $("tab-" + t).addEventListener("click", () => selectTab(t));
document.querySelector(".tabs").addEventListener("keydown", (e) => {
  const i = TABS.indexOf(state.tab);
  if (e.key === "ArrowRight") selectTab(TABS[(i + 1) % TABS.length], true);
  else if (e.key === "ArrowLeft") selectTab(TABS[(i + TABS.length - 1) % TABS.length], true);
});

// ---- refresh scheduling ---------------------------------------------------------
async function refreshAll() {
  await Promise.all([refreshNodes(), refreshAlerts()]);
  await refreshTab();
}
function refreshTab() {
  if (state.tab === "nodes") return refreshNodesTab();
  if (state.tab === "updates") return refreshUpdates();
  return refreshStorage();
}
/** An event asks for views to be refreshed; several within the debounce merge. */
function want(...what) {
  for (const w of what) state.pending.add(w);
  if (state.debounce) return;
  state.debounce = setTimeout(async () => {
    const p = state.pending; state.pending = new Set(); state.debounce = null;
    const jobs = [];
    if (p.has("nodes")) jobs.push(refreshNodes().then(() => state.tab === "nodes" && refreshNodesTab()));
    if (p.has("alerts")) jobs.push(refreshAlerts());
    if (p.has("updates") && state.tab === "updates") jobs.push(refreshUpdates());
    if (p.has("storage") && state.tab === "storage") jobs.push(refreshStorage());
    await Promise.all(jobs);
  }, EVENT_DEBOUNCE_MS);
}
setInterval(() => { if (state.role) refreshAll(); }, POLL_MS);

// ---- event stream ------------------------------------------------------------------
const EVENT_VIEWS = {
  "alert.raised": ["alerts"], "alert.resolved": ["alerts"],
  "member": ["nodes", "alerts"],
  "update.progress": ["updates"], "update.status": ["updates", "nodes"],
  "maintenance": ["updates"], "audit": [], "lagged": ["nodes", "alerts", "updates", "storage"],
};
async function openStream() {
  if (state.stream) { state.stream.close(); state.stream = null; }
  let ticket;
  try { ticket = await api("/api/v1/events/ticket"); }
  catch (e) { setLive(false, "polling (no event stream: " + e.code + ")"); return retryStream(); }
  const es = new EventSource("/api/v1/events?ticket=" + encodeURIComponent(ticket.ticket));
  state.stream = es;
  es.onopen = () => { state.streamRetryMs = STREAM_RETRY_MIN_MS; setLive(true, "live"); };
  for (const [kind, views] of Object.entries(EVENT_VIEWS)) {
    es.addEventListener(kind, (ev) => {
      want(...views);
      if (kind.startsWith("alert.")) try { onAlertEvent(JSON.parse(ev.data)); } catch (_) { /* refreshed anyway */ }
    });
  }
  // A closed stream needs a new ticket (each opens once): never let the
  // browser retry the same URL.
  es.onerror = () => { es.close(); if (state.stream === es) state.stream = null; setLive(false, "reconnecting"); retryStream(); };
}
function retryStream() {
  const wait = state.streamRetryMs;
  state.streamRetryMs = Math.min(STREAM_RETRY_MAX_MS, wait * 2);
  setTimeout(() => { if (state.role) openStream(); }, wait);
}
function setLive(on, text) {
  const el = $("live");
  el.textContent = text;
  el.className = "pill " + (on ? "s-ok" : "s-warning");
}
function onAlertEvent(ev) {
  const a = ev && ev.data;
  if (!a || !a.alert_id) return;
  const active = state.alerts.active.filter((x) => x.alert_id !== a.alert_id);
  if (a.state === "active") active.unshift(a);
  state.alerts.active = active;
  renderAlerts();
}

// ---- majority banner ------------------------------------------------------------
function majorityLost(nodes) {
  const members = nodes.filter((n) => n.status !== "left");
  const alive = members.filter((n) => n.status === "alive").length;
  return members.length > 0 && alive * 2 <= members.length ? { alive, members: members.length } : null;
}
function renderBanner() {
  const lost = majorityLost(state.nodes);
  const b = $("banner");
  b.hidden = !lost;
  if (lost) b.textContent = `This node sees only ${lost.alive} of ${lost.members} members alive: it has lost its majority. ` +
    "Shown data may be stale. Updates, update leases and strong reads and writes cannot be done from here until the majority is back; try another node.";
}

// ---- Nodes tab --------------------------------------------------------------------
async function refreshNodes() {
  try { state.nodes = (await api("/api/v1/clustering/nodes")).nodes; put("error"); }
  catch (e) { showError("error", e); }
  renderBanner();
}
async function refreshAlerts() {
  try { state.alerts = await api("/api/v1/clustering/alerts?limit=" + ALERTS_LIMIT); }
  catch (e) { state.alerts = { active: [], recent: [], error: e }; }
  renderAlerts();
}
function alertRows(list) {
  return list.map((a) => h("tr", { "data-alert": a.kind, "data-subject": a.subject },
    h("td", {}, pill(a.severity)), h("td", {}, a.kind), h("td", {}, a.subject), h("td", {}, a.message),
    h("td", {}, fmtTime(a.raised_at)), h("td", {}, a.resolved_at ? fmtTime(a.resolved_at) : pill(a.state))));
}
function renderAlerts() {
  const { active, recent, error } = state.alerts;
  $("alert-count").textContent = String(active.length);
  $("alert-count").className = "pill " + (active.length ? "s-critical" : "s-ok");
  const heads = ["Severity", "Kind", "Subject", "Message", "Raised", "Resolved"];
  if (error) put("alerts", h("p", { class: "muted" }, "Alerts unavailable: " + error.message));
  else put("alerts", active.length ? table(heads, alertRows(active)) : h("p", { class: "muted" }, "No active alert."));
  put("alerts-recent", (recent || []).length ? table(heads, alertRows(recent)) : h("p", { class: "muted" }, "None."));
}
async function refreshNodesTab() {
  const nodes = state.nodes;
  const health = await Promise.all(nodes.map((n) =>
    api("/api/v1/clustering/nodes/" + encodeURIComponent(n.node_id) + "/health").catch(() => null)));
  const groups = new Map();
  nodes.forEach((n, i) => {
    const key = n.region + " / " + n.zone;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push([n, health[i]]);
  });
  const keys = [...groups.keys()].sort();
  put("node-groups", keys.map((k) => h("div", { class: "card group" },
    h("h2", {}, "Region / zone: " + k),
    table(["Node", "Status", "Version", "Uptime", "Last heartbeat", "Capacity", "Objects", "Health checks"],
      groups.get(k).map(([n, r]) => h("tr", { "data-node": n.node_id, "data-status": n.status },
        h("td", {}, n.node_id, n.is_local ? h("span", { class: "muted" }, " (this node)") : null),
        h("td", {}, pill(n.status)),
        h("td", {}, n.version),
        h("td", {}, r && n.status === "alive" ? fmtDuration(r.uptime_seconds) : "—"),
        h("td", {}, fmtTime(n.last_heartbeat), h("div", { class: "muted" }, fmtDuration(n.last_heartbeat_age_ms / 1000) + " ago")),
        h("td", {}, bar(n.total_capacity_gb ? 100 * n.used_capacity_gb / n.total_capacity_gb : 0),
          h("div", { class: "muted" }, fmtNum(n.used_capacity_gb, 3) + " / " + fmtNum(n.total_capacity_gb) + " GB")),
        h("td", {}, n.object_count),
        h("td", {}, r ? h("ul", { class: "checks" }, r.checks.map((c) =>
          h("li", { class: c.ok ? "" : "fail" }, (c.ok ? "✓ " : "✗ ") + c.name + (c.detail ? ": " + c.detail : "")))) : "unavailable")))))));
}

// ---- Updates tab ---------------------------------------------------------------------
async function refreshUpdates() {
  const [rel, active, hist, maint] = await Promise.all([
    api("/api/v1/clustering/updates/releases").catch((e) => ({ error: e })),
    api("/api/v1/clustering/updates/active").catch((e) => ({ error: e })),
    api("/api/v1/clustering/updates/history?limit=" + HISTORY_LIMIT).catch((e) => ({ error: e })),
    api("/api/v1/clustering/maintenance").catch((e) => ({ error: e })),
  ]);
  renderMaintenance(maint);
  renderReleases(rel);
  renderActive(active, hist);
  renderHistory(hist);
}
function renderMaintenance(m) {
  if (m.error) return put("maint-state", "unavailable: " + m.error.message);
  put("maint-state", m.enabled
    ? [pill("warning"), ` on since ${fmtTime(m.started_at)} by ${m.set_by}` + (m.reason ? ` (${m.reason})` : "") + `, ends ${fmtTime(m.expires_at)}`]
    : [pill("ok"), " off"]);
  if ($("maint-on")) { $("maint-on").disabled = m.enabled; $("maint-off").disabled = !m.enabled; }
}
function renderReleases(rel) {
  if (rel.error) return put("releases", "unavailable: " + rel.error.message);
  state.releases = rel.releases;
  put("releases", rel.releases.length ? table(["Version", "Trust", "Size", "Breaking", "Signed", "Notes"],
    rel.releases.map((r) => h("tr", { "data-release": r.version },
      h("td", {}, r.version), h("td", {}, pill(r.trusted ? "ok" : "bad"), r.trusted ? " trusted" : " untrusted key"),
      h("td", {}, fmtBytes(r.size_bytes)), h("td", {}, r.breaking ? "yes" : "no"), h("td", {}, fmtTime(r.created_at)),
      h("td", {}, r.notes)))) : h("p", { class: "muted" }, "No release is published (plexi release publish)."));
  const sel = $("plan-version");
  if (sel) syncOptions(sel, rel.releases.map((r) => [r.version, r.version + (r.trusted ? "" : " (untrusted)")]));
  const nodesSel = $("plan-nodes");
  if (nodesSel) syncOptions(nodesSel, state.nodes.filter((x) => x.status !== "left")
    .map((n) => [n.node_id, `${n.node_id} (${n.version}, ${n.status})`]));
}
// Replaces a select's options only when they changed, keeping what is
// selected: a refresh must not close an open list or move the choice.
function syncOptions(sel, items) {
  const key = JSON.stringify(items);
  if (sel.dataset.options === key) return;
  const chosen = new Set([...sel.selectedOptions].map((o) => o.value));
  clear(sel);
  for (const [value, label] of items) sel.append(h("option", { value, selected: chosen.has(value) }, label));
  sel.dataset.options = key;
}
function opSummary(op) {
  return h("div", {},
    h("p", {}, "Operation ", h("code", {}, op.operation_id), " ", pill(op.status), ` ${op.update_type} to ${op.target_version}, ${op.strategy}`),
    h("p", {}, "Batches: ", op.batches.map((b, i) => `${i + 1}: ${b.join(", ")}`).join(" · ")),
    op.breaking_changes.length ? h("div", {}, h("h3", {}, "Breaking changes"), h("ul", { class: "plain" }, op.breaking_changes.map((x) => h("li", {}, x)))) : null,
    op.warnings.length ? h("div", {}, h("h3", {}, "Warnings"), h("ul", { class: "plain" }, op.warnings.map((x) => h("li", {}, x)))) : null,
    h("p", {}, "Estimated completion: ", op.estimated_completion ? fmtTime(op.estimated_completion) +
      ` (about ${fmtDuration((new Date(op.estimated_completion) - Date.now()) / 1000)} from now)` : "—"));
}
function progressOf(op) {
  const rows = Object.values(op.node_statuses).map((n) => h("tr", { "data-update-node": n.node_id },
    h("td", {}, n.node_id), h("td", {}, pill(n.status)), h("td", {}, n.current_phase),
    h("td", {}, bar(n.progress_percentage), fmtNum(n.progress_percentage, 0) + " %"),
    h("td", {}, n.from_version + " → " + n.to_version),
    h("td", { "data-staged": n.staged_at ? "yes" : "no" }, n.staged_at ? "staged " + fmtTime(n.staged_at) : "not yet"),
    h("td", {}, n.error_message || "")));
  return h("div", { "data-operation": op.operation_id, "data-status": op.status },
    opSummary(op),
    h("p", {}, "Overall: ", h("strong", { class: "overall" }, fmtNum(op.overall_progress, 0) + " %"), " · ", op.current_phase,
      op.halted_reason ? h("span", { class: "error" }, " · halted: " + op.halted_reason) : null),
    bar(op.overall_progress),
    table(["Node", "Status", "Phase", "Progress", "Versions", "Release on the node", "Error"], rows),
    isAdmin() && ["running", "failed", "completed"].includes(op.status)
      ? h("button", { type: "button", class: "danger", "data-action": "rollback", "data-op": op.operation_id, onclick: () => rollback(op.operation_id) }, "Roll back") : null);
}
function renderActive(active, hist) {
  if (active.error) return put("active-op", "unavailable: " + active.error.message);
  let ops = active.operations;
  // Show the latest finished one too, so a completed run stays visible with its rollback button.
  if (!ops.length && hist.operations && hist.operations.length && hist.operations[0].status !== "planned") ops = [hist.operations[0]];
  put("active-op", ops.length ? ops.map(progressOf) : h("p", { class: "muted" }, "No update is running."));
}
function renderHistory(hist) {
  if (hist.error) return put("history", "unavailable: " + hist.error.message);
  put("history", hist.operations.length ? table(["Operation", "Status", "Target", "Strategy", "Created", "Completed", ""],
    hist.operations.map((op) => h("tr", {},
      h("td", {}, h("code", {}, op.operation_id.slice(0, 8))), h("td", {}, pill(op.status)),
      h("td", {}, op.update_type + " " + op.target_version), h("td", {}, op.strategy),
      h("td", {}, fmtTime(op.created_at) + " by " + op.created_by), h("td", {}, fmtTime(op.completed_at)),
      h("td", {}, isAdmin() && ["running", "failed", "completed"].includes(op.status)
        ? h("button", { type: "button", class: "secondary", "data-action": "rollback", onclick: () => rollback(op.operation_id) }, "Roll back") : null)))) : h("p", { class: "muted" }, "No update yet."));
}
async function rollback(id) {
  if (!confirm("Roll back operation " + id + "?")) return;
  try { await post(`/api/v1/clustering/updates/${id}/rollback`); want("updates"); }
  catch (e) { showError("error", e); }
}
if ($("plan-form")) $("plan-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = {
    target_version: $("plan-version").value,
    update_type: $("plan-type").value,
    strategy: $("plan-strategy").value,
    target_nodes: [...$("plan-nodes").selectedOptions].map((o) => o.value),
    force: $("plan-force").checked,
  };
  put("plan-result");
  try {
    const op = await post("/api/v1/clustering/updates/plan", body);
    state.planned = op;
    put("plan-result", h("div", { class: "card", "data-planned": op.operation_id }, h("h3", {}, "Plan"), opSummary(op),
      h("button", { type: "button", id: "plan-execute", "data-action": "execute", onclick: () => execute(op.operation_id) }, "Execute")));
  } catch (err) { showError("plan-result", err); }
});
async function execute(id) {
  try { await post(`/api/v1/clustering/updates/${id}/execute`); put("plan-result", h("p", {}, "Executing " + id + ".")); want("updates"); }
  catch (e) { showError("plan-result", e); }
}
async function setMaintenance(enabled) {
  try { await post("/api/v1/clustering/maintenance", { enabled, reason: $("maint-reason").value || null }); want("updates"); }
  catch (e) { showError("error", e); }
}
if ($("maint-on")) {
  $("maint-on").addEventListener("click", () => setMaintenance(true));
  $("maint-off").addEventListener("click", () => setMaintenance(false));
}

// ---- Storage tab -------------------------------------------------------------------------
async function refreshStorage() {
  const [ov, sn, dist] = await Promise.all([
    api("/api/v1/clustering/storage/overview").catch((e) => ({ error: e })),
    api("/api/v1/clustering/storage/nodes").catch((e) => ({ error: e })),
    api("/api/v1/clustering/storage/distribution").catch((e) => ({ error: e })),
  ]);
  renderOverview(ov, dist);
  renderStorageNodes(sn);
  renderDistribution(dist);
  renderGeo(dist);
  renderLive();
}
function stat(key, label, value) { return h("div", { class: "stat", "data-stat": key }, h("div", { class: "v" }, value), h("div", { class: "k" }, label)); }
function renderOverview(ov, dist) {
  if (ov.error) return put("overview-cards", h("p", { class: "error" }, "Overview unavailable: " + ov.error.message));
  put("overview-cards",
    stat("total_capacity_gb", "capacity (GB)", fmtNum(ov.total_capacity_gb)),
    stat("used_capacity_gb", "used (GB) · " + fmtNum(ov.usage_percentage) + " %", fmtNum(ov.used_capacity_gb, 3)),
    stat("healthy_nodes", "healthy nodes", `${ov.healthy_nodes} / ${ov.total_nodes}`),
    stat("total_data_objects", "objects", ov.total_data_objects),
    stat("replication_factor", "replication factor", ov.replication_factor),
    stat("storage_strategy", "strategy", ov.storage_strategy),
    stat("consistency_level", "consistency", ov.consistency_level),
    stat("replication_efficiency", "replication efficiency", dist.error ? "—" : fmtNum(100 * dist.replication_efficiency) + " %"),
    stat("under_replicated_objects", "under-replicated", ov.under_replicated_objects),
    ov.unreachable_nodes.length ? stat("unreachable", "not answering", ov.unreachable_nodes.join(", ")) : null);
}
function renderStorageNodes(sn) {
  if (sn.error) return put("storage-nodes", "unavailable: " + sn.error.message);
  put("storage-nodes", table(["Node", "Region / zone", "Status", "Capacity", "Objects", "Performance", "Reliability", "Store latency", "Read / write latency", "Healthy"],
    sn.nodes.map((n) => h("tr", { "data-storage-node": n.node_id },
      h("td", {}, n.node_id), h("td", {}, n.region + " / " + n.zone), h("td", {}, pill(n.status)),
      h("td", {}, bar(n.usage_percentage), h("div", { class: "muted" }, `${fmtNum(n.used_capacity_gb, 3)} / ${fmtNum(n.total_capacity_gb)} GB (${fmtNum(n.usage_percentage)} %)`)),
      h("td", {}, n.object_count), h("td", {}, fmtNum(n.performance_score, 0)), h("td", {}, fmtNum(n.reliability_score, 0)),
      h("td", {}, n.store_latency_ms === null ? "—" : fmtNum(n.store_latency_ms, 2) + " ms"),
      h("td", {}, (n.read_latency_ms === null ? "—" : fmtNum(n.read_latency_ms, 2)) + " / " + (n.write_latency_ms === null ? "—" : fmtNum(n.write_latency_ms, 2)) + " ms"),
      h("td", {}, pill(n.is_healthy ? "healthy" : "bad"))))));
}

/** A horizontal bar chart: items [{label, value}], values formatted by fmt. */
function barChart(title, items, fmt = String) {
  const rowH = 18, labelW = 110, w = 320, max = Math.max(1, ...items.map((i) => i.value));
  const svg = s("svg", { viewBox: `0 0 ${w} ${items.length * rowH + 8}`, role: "img", "aria-label": title });
  items.forEach((it, i) => {
    const y = i * rowH + 4, bw = (w - labelW - 60) * it.value / max;
    svg.append(s("text", { x: 0, y: y + 12 }, it.label.length > 16 ? it.label.slice(0, 15) + "…" : it.label),
      s("rect", { x: labelW, y: y + 2, width: Math.max(0.5, bw), height: rowH - 6, fill: "#2458a6" }),
      s("text", { x: labelW + bw + 4, y: y + 12 }, fmt(it.value)));
  });
  return h("figure", { class: "chart", "data-chart": title }, h("figcaption", {}, h("strong", {}, title)),
    items.length ? svg : h("p", { class: "muted" }, "nothing yet"));
}
function renderDistribution(d) {
  if (d.error) return put("distribution", "unavailable: " + d.error.message);
  const fromMap = (m, f) => Object.entries(m).map(([label, v]) => ({ label, value: f(v) }));
  put("distribution",
    barChart("Objects per node", d.nodes.map((n) => ({ label: n.node_id, value: n.objects }))),
    barChart("Bytes per node", d.nodes.map((n) => ({ label: n.node_id, value: n.bytes })), fmtBytes),
    barChart("Objects per region", fromMap(d.regions, (v) => v.objects)),
    barChart("Bytes per zone", fromMap(d.zones, (v) => v.bytes), fmtBytes),
    barChart("Objects by replica count", fromMap(d.replica_histogram, (v) => v).map((x) => ({ label: x.label + " replicas", value: x.value }))),
    h("div", {}, h("p", {}, h("strong", {}, "Under-replicated objects: "), h("span", { "data-stat": "dist_under_replicated" }, d.under_replicated_objects)),
      h("p", {}, "Average replicas per object: " + fmtNum(d.average_replication_factor, 2)),
      h("p", {}, "Objects (logical): " + d.total_objects)));
}

// Rough coastlines (lon, lat), drawn by hand: enough to place dots, not a map to navigate by.
const LAND = [
  [[-168, 65], [-140, 70], [-95, 72], [-80, 63], [-60, 55], [-66, 45], [-80, 25], [-97, 18], [-105, 20], [-118, 32], [-125, 48], [-140, 60], [-165, 60]],
  [[-80, 10], [-60, 10], [-35, -7], [-40, -22], [-58, -38], [-68, -55], [-75, -45], [-72, -18], [-81, -5]],
  [[-10, 36], [-9, 43], [-2, 48], [-5, 58], [5, 62], [20, 70], [30, 70], [40, 65], [40, 45], [28, 41], [20, 38], [12, 44], [5, 43]],
  [[-17, 21], [-10, 35], [10, 37], [32, 31], [43, 12], [51, 11], [40, -15], [32, -28], [20, -35], [12, -18], [8, 4], [-8, 5], [-17, 14]],
  [[40, 65], [60, 70], [100, 77], [140, 72], [180, 66], [160, 58], [140, 50], [122, 40], [120, 22], [108, 10], [100, 2], [92, 20], [80, 8], [72, 20], [57, 25], [48, 30], [40, 45]],
  [[114, -22], [130, -12], [142, -11], [153, -27], [146, -39], [135, -35], [115, -34]],
];
const proj = ([lon, lat]) => [lon + 180, 90 - lat];
function renderGeo(d) {
  const located = state.nodes.filter((n) => n.location);
  const bytesOf = new Map((d.nodes || []).map((n) => [n.node_id, n]));
  if (located.length) {
    const svg = s("svg", { viewBox: "0 0 360 180", role: "img", "aria-label": "Map of the nodes", "data-chart": "map" });
    svg.append(s("rect", { x: 0, y: 0, width: 360, height: 180, fill: "#f7fafc" }));
    for (let x = 0; x <= 360; x += 30) svg.append(s("line", { class: "grid", x1: x, y1: 0, x2: x, y2: 180 }));
    for (let y = 0; y <= 180; y += 30) svg.append(s("line", { class: "grid", x1: 0, y1: y, x2: 360, y2: y }));
    for (const poly of LAND) svg.append(s("polygon", { class: "land", points: poly.map(proj).map((p) => p.join(",")).join(" ") }));
    const maxObj = Math.max(1, ...located.map((n) => (bytesOf.get(n.node_id) || {}).objects || 0));
    for (const n of located) {
      const [x, y] = proj([n.location.lon, n.location.lat]);
      const held = (bytesOf.get(n.node_id) || {}).objects || 0;
      const color = n.status === "alive" ? "#1d7a3a" : n.status === "suspect" ? "#a86400" : "#b3261e";
      svg.append(s("circle", { class: "node-dot", cx: x, cy: y, r: 2.5 + 4 * held / maxObj, fill: color, "data-node": n.node_id },
        s("title", {}, `${n.node_id} (${n.region}/${n.zone}): ${n.status}, ${held} objects`)),
        s("text", { x: x + 4, y: y - 3 }, n.node_id));
    }
    put("geo", svg, located.length < state.nodes.length ? h("p", { class: "muted" }, (state.nodes.length - located.length) + " node(s) without node.location are not on the map.") : null);
    return;
  }
  // No coordinates: each region as a box sized by its share of the bytes.
  const regions = Object.entries(d.regions || {});
  const total = regions.reduce((a, [, v]) => a + v.bytes, 0) || 1;
  const svg = s("svg", { viewBox: `0 0 360 ${Math.max(1, regions.length) * 34}`, role: "img", "aria-label": "Data share per region", "data-chart": "regions" });
  regions.forEach(([name, v], i) => {
    const share = v.bytes / total;
    svg.append(s("rect", { x: 0, y: i * 34 + 4, width: Math.max(2, 250 * share), height: 24, fill: "#2458a6", rx: 3 }),
      s("text", { x: 256, y: i * 34 + 20 }, `${name}: ${fmtNum(100 * share)} % (${v.objects} objects)`));
  });
  put("geo", h("p", { class: "muted" }, "No node has node.location; data share per region:"), svg);
}

// Live charts from /metrics: operations per second (plexi_storage_ops) and
// mean latency from any *_seconds histogram of storage requests.
function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+([^\s]+)/.exec(line);
    if (!m) continue;
    const v = Number(m[3]);
    if (!Number.isFinite(v)) continue;
    out.set(m[1], (out.get(m[1]) || 0) + v);
  }
  return out;
}
async function sampleMetrics() {
  if (state.role) {
    try {
      const text = await api("/metrics");
      const m = parseMetrics(text);
      // Coordinated storage operations; a request counter only when that is absent (never both).
      let ops = m.has("plexi_storage_ops_total") ? m.get("plexi_storage_ops_total") : 0, latSum = 0, latCount = 0;
      for (const [k, v] of m) {
        if (!m.has("plexi_storage_ops_total") && (/^plexi_storage_requests?_total$/).test(k)) ops += v;
        if (/^plexi_storage_.*seconds_sum$/.test(k) && /(request|latency|duration|op)/.test(k)) latSum += v;
        if (/^plexi_storage_.*seconds_count$/.test(k) && /(request|latency|duration|op)/.test(k)) latCount += v;
      }
      state.samples.push({ t: Date.now(), ops, latSum, latCount });
      if (state.samples.length > SAMPLES_KEPT + 1) state.samples.shift();
      if (state.tab === "storage") renderLive();
    } catch (_) { /* the next sample retries */ }
  }
  setTimeout(sampleMetrics, SAMPLE_MS);
}
function lineChart(title, points, unit) {
  const w = 320, hgt = 90, max = Math.max(1e-9, ...points);
  const svg = s("svg", { viewBox: `0 0 ${w} ${hgt + 14}`, role: "img", "aria-label": title });
  svg.append(s("line", { class: "grid", x1: 0, y1: hgt, x2: w, y2: hgt }));
  if (points.length > 1) {
    const pts = points.map((p, i) => `${(i * w / (SAMPLES_KEPT - 1)).toFixed(1)},${(hgt - (hgt - 4) * p / max).toFixed(1)}`);
    svg.append(s("polyline", { points: pts.join(" "), fill: "none", stroke: "#2458a6", "stroke-width": 1.5 }));
  }
  const last = points.length ? points[points.length - 1] : 0;
  svg.append(s("text", { x: 0, y: hgt + 12 }, `now ${fmtNum(last, 2)} ${unit} · peak ${fmtNum(points.length ? max : 0, 2)} ${unit}`));
  return h("figure", { class: "chart", "data-chart": title }, h("figcaption", {}, h("strong", {}, title)), svg);
}
function renderLive() {
  const ss = state.samples, ops = [], lat = [];
  for (let i = 1; i < ss.length; i++) {
    const dt = (ss[i].t - ss[i - 1].t) / 1000;
    ops.push(dt > 0 ? Math.max(0, ss[i].ops - ss[i - 1].ops) / dt : 0);
    const dc = ss[i].latCount - ss[i - 1].latCount;
    lat.push(dc > 0 ? 1000 * (ss[i].latSum - ss[i - 1].latSum) / dc : 0);
  }
  put("chart-ops", lineChart("Storage operations per second (this node)", ops, "op/s"));
  put("chart-latency", ss.length && ss[ss.length - 1].latCount === 0 && ss[ss.length - 1].latSum === 0
    ? h("p", { class: "muted" }, "No storage latency histogram in /metrics yet.")
    : lineChart("Mean storage request latency (this node)", lat, "ms"));
}

// Jobs: rebalance and cleanup, followed until they finish.
async function startJob(kind) {
  try {
    const job = await post("/api/v1/clustering/storage/" + kind);
    renderJob(job);
    for (let i = 0; i < JOB_POLL_MAX; i++) {
      await new Promise((r) => setTimeout(r, JOB_POLL_MS));
      const j = await api("/api/v1/clustering/storage/jobs/" + job.job_id);
      renderJob(j);
      if (!["running", "pending"].includes(j.status)) { want("storage"); return; }
    }
  } catch (e) { showError("job", e); }
}
function renderJob(j) {
  put("job", h("div", { "data-job": j.job_id, "data-status": j.status },
    h("p", {}, `${j.kind} job `, h("code", {}, j.job_id.slice(0, 8)), " ", pill(j.status), ` ${fmtNum(j.progress_percentage, 0)} % · moved ${j.moved_objects} objects (${fmtBytes(j.moved_bytes)}), removed ${j.removed_replicas}, repaired ${j.repaired_replicas}`,
      j.error ? h("span", { class: "error" }, " " + j.error) : null),
    bar(j.progress_percentage),
    h("p", { class: "muted" }, j.nodes.map((p) => `${p.node_id}: ${p.status} ${fmtNum(p.progress_percentage, 0)} %`).join(" · "))));
}
if ($("job-rebalance")) {
  $("job-rebalance").addEventListener("click", () => startJob("rebalance"));
  $("job-cleanup").addEventListener("click", () => startJob("cleanup"));
}

// Object browser.
const dataPath = (id) => "/api/v1/clustering/storage/data/" + encodeURIComponent(id);
async function listObjects(after) {
  const q = new URLSearchParams({ prefix: state.browsePrefix, limit: String(PAGE_SIZE) });
  if (after) q.set("after", after);
  try {
    const page = await api("/api/v1/clustering/storage/data?" + q);
    state.browseAfter = page.next_after;
    $("browse-next").disabled = !page.next_after;
    put("browse-status", `${page.objects.length} object(s)` + (page.complete ? "" : " — listing incomplete") +
      (page.unreachable_nodes.length ? `; not answering: ${page.unreachable_nodes.join(", ")}` : ""));
    put("objects", page.objects.length ? table(["Data id", "Type", "Size", "Version", "Replicas", "Health", ""],
      page.objects.map((o) => h("tr", { "data-object": o.data_id },
        h("td", {}, o.data_id), h("td", {}, o.data_type), h("td", {}, fmtBytes(o.size_bytes)), h("td", {}, h("code", {}, o.version)),
        h("td", {}, `${o.replicas_found} / ${o.replication_factor}`), h("td", {}, pill(o.replica_health)),
        h("td", {},
          h("button", { type: "button", class: "secondary", onclick: () => showInfo(o.data_id), "aria-label": "Info on " + o.data_id }, "Info"), " ",
          h("button", { type: "button", class: "secondary", onclick: () => download(o.data_id), "aria-label": "Download " + o.data_id }, "Download"), " ",
          isAdmin() ? h("button", { type: "button", class: "danger", "data-action": "delete", onclick: () => removeObject(o.data_id), "aria-label": "Delete " + o.data_id }, "Delete") : null))))
      : h("p", { class: "muted" }, "No object under this prefix."));
  } catch (e) { showError("browse-status", e); }
}
$("browse-form").addEventListener("submit", (e) => { e.preventDefault(); state.browsePrefix = $("browse-prefix").value; listObjects(null); });
$("browse-next").addEventListener("click", () => listObjects(state.browseAfter));
async function showInfo(id) {
  try {
    const i = await api(dataPath(id) + "/info");
    put("object-info", h("div", { class: "card", "data-info": id }, h("h3", {}, "Object " + id),
      h("p", {}, `${i.data_type}, ${fmtBytes(i.size_bytes)}, version ${i.version}, RF ${i.replication_factor}, ${i.consistency_level}, partition ${i.partition}, created ${fmtTime(i.created_at)}`),
      h("p", {}, "blake3 ", h("code", {}, i.checksum)),
      table(["Replica node", "Member status", "Has copy", "Version", "Current", "Healthy"],
        (i.replicas || []).map((r) => h("tr", {}, h("td", {}, r.node_id), h("td", {}, pill(r.status)), h("td", {}, r.has_copy ? "yes" : "no"),
          h("td", {}, r.version || "—"), h("td", {}, r.is_current ? "yes" : "no"), h("td", {}, pill(r.is_healthy ? "healthy" : "bad")))))));
  } catch (e) { showError("object-info", e); }
}
async function download(id) {
  try {
    const res = await api(dataPath(id), { raw: true });
    const url = URL.createObjectURL(await res.blob());
    const a = h("a", { href: url, download: id.split("/").pop() || "object" });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) { showError("object-info", e); }
}
async function removeObject(id) {
  if (!confirm("Delete " + id + "?")) return;
  try { await api(dataPath(id), { method: "DELETE" }); listObjects(null); }
  catch (e) { showError("object-info", e); }
}
if ($("upload-form")) $("upload-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("upload-file").files[0];
  if (!file) return;
  const id = $("upload-id").value.trim() || file.name;
  const q = new URLSearchParams({ data_type: file.type || "application/octet-stream" });
  if ($("upload-consistency").value) q.set("consistency", $("upload-consistency").value);
  put("upload-status", "Uploading " + id + "…");
  try {
    const r = await api(dataPath(id) + "?" + q, { method: "PUT", body: file });
    put("upload-status", h("span", { "data-uploaded": r.data_id }, `Stored ${r.data_id} (${fmtBytes(r.size_bytes)}) on ${r.replicas.join(", ")}` + (r.under_replicated ? " — under-replicated for now" : "")));
    want("storage");
  } catch (err) { showError("upload-status", err); }
});

// ---- start -------------------------------------------------------------------------------
(async function start() {
  const bye = sessionStorage.getItem("plexi.signout");
  if (bye) { sessionStorage.removeItem("plexi.signout"); put("signin-error", bye); }
  const initial = (location.hash || "").slice(1);
  if (TABS.includes(initial)) state.tab = initial;
  if (state.token) {
    try { await signIn(state.token); } catch (_) { sessionStorage.removeItem(TOKEN_KEY); state.token = null; }
  }
  if (state.role) selectTab(state.tab);
  else $("token").focus();
})();
