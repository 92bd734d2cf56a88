// The billing page: sign-in, wallet view, usage view. Everything comes from Gate's public API
// with the pasted key; unknown fields in answers are ignored, missing optional ones tolerated.

import { Api, ApiError, forgetKey, query, storedKey, storeKey } from "./api.js";
import { SERVICES, spendChart } from "./chart.js";
import { micros, seconds, typeName, usd, when } from "./format.js";
import { LiveEvents } from "./live.js";
import { forgetPerson, loadActivity, redeemLink, storedPerson } from "./people.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 3000;  // a call's start emits no event: live calls and holds come from polling
const TX_PAGE = 20;
const USAGE_PAGE = 50;
const CHART_PAGES = 20;  // the chart reads at most 20 pages of 200 rows

const state = {
  api: null, role: null, etag: null, wallet: null, live: null, poll: null,
  txCursor: null, txIds: new Set(), usageCursor: null, usageParams: {},
  pending: null, busy: false, settingsDirty: false, usageShown: false, refreshTimer: null,
  chart: null,
};

// ---- small DOM helpers -------------------------------------------------------------------

// Each cell carries its column name: on phones the tables stack as labelled cards.
function cell(text, cls, label) {
  const td = document.createElement("td");
  if (label) td.dataset.label = label;
  td.textContent = text ?? "";
  if (cls) td.className = cls;
  return td;
}

function amountCell(m) {
  return cell(usd(m, { sign: true }), "num amount " + (m < 0 ? "debit" : "credit"), "Amount");
}

function clearErrors(form) {
  for (const p of form.querySelectorAll(".error")) p.textContent = "";
}

// The API's own message beside the field it names, or at the form's foot.
function showError(form, fallbackId, err) {
  const byField = err.field ? document.getElementById("err-" + err.field) : null;
  const target = byField && form.contains(byField) ? byField : $(fallbackId);
  target.textContent = err.message;
}

function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));  // works outside secure contexts too
  return "billing-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- sign-in -----------------------------------------------------------------------------

async function signIn(key, { quiet = false } = {}) {
  const api = new Api(key);
  const error = $("signin-error");
  error.textContent = "";
  let wallet;
  try {
    wallet = await api.json("/v1/wallet");
  } catch (err) {
    if (!quiet) error.textContent = signInMessage(err);
    else error.textContent = "Your session ended; sign in again.";
    return false;
  }
  let role = "agent";
  let name = null;
  try {
    const ws = await api.json("/v1/workspace");
    role = "admin";
    name = ws.body && ws.body.name;
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 403) {
      error.textContent = err.message;
      return false;
    }
  }
  storeKey(key);
  state.api = api;
  state.role = role;
  $("key").value = "";
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  $("who").hidden = false;
  const person = storedPerson();
  $("who").textContent = `${name || "Workspace"} · ${person ? person + ", " : ""}${role} key`;
  document.body.dataset.role = role;
  for (const node of document.querySelectorAll(".admin-only")) node.hidden = role !== "admin";
  const note = $("role-note");
  note.hidden = role === "admin";
  note.textContent = "This agent key can see the wallet and its history. Adding funds, " +
    "changing settings and exporting CSV need an admin key.";
  renderWallet(wallet.body, wallet.etag);
  startLive();
  if (role === "admin") moreActivity(true);
  await loadTx(true).catch(() => {});  // the event stream's catch-up fills it in later
  return true;
}

function signInMessage(err) {
  if (err.status === 401) return "That key was not accepted (wrong, revoked or expired). Paste a current workspace key, admin or agent.";
  if (err.status === 400 && /platform key/.test(err.message)) return "That is the platform key. Paste a workspace key (admin or agent) instead.";
  if (err.status === 403) return "That key may not read the wallet. Paste a workspace admin or agent key.";
  return err.message;
}

async function moreActivity(first = false) {
  const tbody = $("activity-table").tBodies[0];
  if (first) { tbody.replaceChildren(); state.activityCursor = null; }
  try {
    state.activityCursor = await loadActivity(state.api, tbody, state.activityCursor);
  } catch {
    state.activityCursor = null;  // the view is a courtesy: the wallet works without it
  }
  $("activity-more").hidden = !state.activityCursor;
}

function signOut(message = "") {
  if (state.live) state.live.stop();
  clearInterval(state.poll);
  forgetKey();
  forgetPerson();
  $("activity-table").tBodies[0].replaceChildren();
  Object.assign(state, { api: null, role: null, etag: null, wallet: null, live: null, poll: null,
    txCursor: null, pending: null, usageShown: false, settingsDirty: false, chart: null });
  state.txIds.clear();
  for (const id of ["tx-table", "usage-table", "plan-table"]) $(id).tBodies[0].replaceChildren();
  $("events").replaceChildren();
  $("chart").replaceChildren();
  $("chart-legend").replaceChildren();
  $("app").hidden = true;
  $("signout").hidden = true;
  $("who").hidden = true;
  $("live").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  showView("wallet");
  $("key").focus();
}

// ---- wallet ------------------------------------------------------------------------------

function isLow(w) {
  const alert = w.low_balance_alert || {};
  const available = micros(w, "available");
  if (typeof alert.state === "string") return /low|below|trigger|fired|alert/i.test(alert.state);
  const threshold = micros(alert, "threshold");
  return Boolean(alert.enabled) && threshold !== null && available !== null && available < threshold;
}

function renderWallet(w, etag) {
  if (!w) return;
  state.wallet = w;
  state.etag = etag || null;
  const available = micros(w, "available");
  $("balance").textContent = usd(micros(w, "balance"));
  $("available").textContent = usd(available);
  $("reserved").textContent = usd(micros(w, "reserved"));
  $("live-calls").textContent = String(w.live_calls ?? "–");
  const left = w.minutes_left_estimate;  // per service since plans: {voice, ai_agent}
  $("minutes-left").textContent = left && typeof left === "object"
    ? `voice ${left.voice ?? "–"} · AI agent ${left.ai_agent ?? "–"}` : (left ?? "–");
  $("status").textContent = w.status === "suspended" ? "Suspended: calls are refused until a top-up" : (w.status === "active" ? "Active" : (w.status || "–"));
  const bar = $("low-bar");
  const alert = w.low_balance_alert || {};
  if (w.status === "suspended" || (available !== null && available <= 0)) {
    bar.hidden = false;
    bar.textContent = `No money available (${usd(available)}): calls are refused or cut. Add funds now.`;
  } else if (isLow(w)) {
    bar.hidden = false;
    const t = micros(alert, "threshold");
    bar.textContent = `Low balance: ${usd(available)} available` +
      (t !== null ? `, below your alert threshold of ${usd(t)}` : "") + ". Add funds to keep calls running.";
  } else {
    bar.hidden = true;
    bar.textContent = "";
  }
  renderPaymentMethod(w);
  if (!state.settingsDirty) fillSettings(w);
}

function renderPaymentMethod(w) {
  let onFile = w.payment_method_id || null;
  if (Array.isArray(w.payment_methods) && w.payment_methods.length) {  // richer API (issue 9)
    const preferred = w.payment_methods.find((m) => m && m.default) || w.payment_methods[0];
    onFile = (preferred && (preferred.id || preferred.payment_method_id)) || onFile;
  }
  const input = $("payment_method_id");
  if (onFile && !input.value && document.activeElement !== input) input.value = onFile;
  $("pm-hint").textContent = onFile
    ? `Card on file: ${onFile}. It is charged unless you enter another method.`
    : "No payment method on file yet: enter one (the sandbox accepts pm_card_visa).";
}

function setValue(id, value) {
  const input = $(id);
  if (input.type === "checkbox") input.checked = Boolean(value);
  else input.value = value === null || value === undefined ? "" : String(value);
}

function fillSettings(w) {
  const ar = w.auto_recharge || {};
  const lb = w.low_balance_alert || {};
  setValue("ar-enabled", ar.enabled);
  setValue("ar-threshold", ar.threshold_usd);
  setValue("ar-topup", ar.topup_usd);
  setValue("lb-enabled", lb.enabled);
  setValue("lb-threshold", lb.threshold_usd);
  setValue("lb-email", Array.isArray(lb.email) ? lb.email.join(", ") : lb.email);
}

async function refreshWallet() {
  if (!state.api) return;
  try {
    const headers = state.etag ? { "If-None-Match": state.etag } : {};
    const r = await state.api.json("/v1/wallet", { headers });
    if (r.status !== 304) renderWallet(r.body, r.etag);
  } catch (err) {
    if (err.status === 401) signOut("The key was revoked or expired; sign in with a current key.");
  }
}

function txRow(r) {
  const tr = document.createElement("tr");
  tr.dataset.id = r.id;
  const m = micros(r, "amount");
  tr.append(cell(when(r.at), "date", "Date"), cell(typeName(r.type), "type", "Type"),
    cell(r.description, "desc", "Description"), amountCell(m),
    cell(usd(micros(r, "balance_after")), "num", "Balance after"));
  return tr;
}

async function loadTx(reset) {
  const body = $("tx-table").tBodies[0];
  if (reset) { body.replaceChildren(); state.txIds.clear(); state.txCursor = null; }
  const q = query({ limit: TX_PAGE, cursor: state.txCursor });
  const { body: page } = await state.api.json("/v1/wallet/transactions" + q);
  for (const r of page.data || []) {
    if (state.txIds.has(r.id)) continue;
    state.txIds.add(r.id);
    body.append(txRow(r));
  }
  state.txCursor = page.next_cursor || null;
  $("tx-more").hidden = !state.txCursor;
}

// Rows newer than what the list shows go on top, newest first.
async function newTx() {
  const { body: page } = await state.api.json("/v1/wallet/transactions" + query({ limit: TX_PAGE }));
  const fresh = (page.data || []).filter((r) => !state.txIds.has(r.id));
  if (page.next_cursor && fresh.length === (page.data || []).length) {
    return loadTx(true);  // more new rows than a page: start over rather than leave a gap
  }
  const tbody = $("tx-table").tBodies[0];
  for (const r of fresh.reverse()) {
    state.txIds.add(r.id);
    tbody.prepend(txRow(r));
  }
  if (!state.txCursor && page.next_cursor && tbody.rows.length >= TX_PAGE) {
    state.txCursor = tbody.rows[tbody.rows.length - 1].dataset.id;
    $("tx-more").hidden = false;
  }
}

// ---- live updates ------------------------------------------------------------------------

function describe(ev) {
  const d = ev.data || {};
  switch (ev.type) {
    case "transaction.created":
      return `${typeName(d.type)} ${usd(micros(d, "amount"), { sign: true })}, balance ${usd(micros(d, "balance_after"))}`;
    case "call.cut": return `Call ${d.call_id} cut${d.reason ? ` (${d.reason})` : ""}`;
    case "call.limit":
      return d.max_duration_s == null ? `Call ${d.call_id}: time limit lifted` : `Call ${d.call_id} limited to ${d.max_duration_s} s`;
    case "wallet.recharged": return "Wallet recharged";
    case "wallet.depleted": return "Wallet depleted: no money left for live calls";
    case "wallet.suspended": return "Workspace suspended until a top-up";
    case "wallet.low_balance": return "Balance fell below the alert threshold";
    case "wallet.auto_recharge_failed": return "Auto-recharge failed: check the payment method";
    default: return ev.type;
  }
}

function onEvent(ev) {
  const li = document.createElement("li");
  li.dataset.type = ev.type;
  li.textContent = `${when(ev.at)} · ${describe(ev)}`;
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 20) list.lastElementChild.remove();
  scheduleRefresh();
}

// Many events arrive together (a top-up is two): refresh once for the batch.
function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(() => {
    refreshWallet();
    newTx().catch(() => {});
  }, 100);
}

function setLive(mode, caughtUp) {
  const node = $("live");
  node.hidden = false;
  node.dataset.state = mode;
  node.textContent = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…" }[mode];
  if (mode === "live" && caughtUp) scheduleRefresh();  // catch up on what happened meanwhile
}

function startLive() {
  state.live = new LiveEvents(state.api, {
    onEvent,
    onState: setLive,
    onAuthError: () => signOut("The key was revoked or expired; sign in with a current key."),
  });
  state.live.start();
  state.poll = setInterval(() => { if (!document.hidden) refreshWallet(); }, POLL_MS);
}

// ---- top-up and settings -----------------------------------------------------------------

async function topup(event) {
  event.preventDefault();
  if (state.busy) return;  // a double click sends one request...
  const form = $("topup-form");
  const button = $("topup-submit");
  state.busy = true;
  button.disabled = true;
  clearErrors(form);
  $("topup-result").textContent = "";
  const amount = $("amount_usd").value.trim();
  const method = $("payment_method_id").value.trim();
  const fingerprint = `${amount}|${method}`;
  // ...and a retry of the same top-up reuses its Idempotency-Key, so it never charges twice.
  if (!state.pending || state.pending.fingerprint !== fingerprint) state.pending = { key: randomKey(), fingerprint };
  try {
    const { body } = await state.api.json("/v1/wallet/topup", {
      method: "POST",
      // No method typed: let Gate charge the default on file (or say that it needs one).
      body: method ? { amount_usd: amount, payment_method_id: method } : { amount_usd: amount },
      headers: { "Idempotency-Key": state.pending.key },
    });
    state.pending = null;
    $("amount_usd").value = "";
    for (const b of document.querySelectorAll(".presets button")) b.setAttribute("aria-pressed", "false");
    $("topup-result").textContent = `Added ${usd(micros(body, "amount"))}. Balance: ${usd(micros(body, "balance_after"))}.`;
    scheduleRefresh();
  } catch (err) {
    // A definite refusal frees the key; a lost answer keeps it, so the retry is the same top-up.
    if (err.status >= 400 && err.status < 500 && err.code !== "idempotency_key_in_progress") state.pending = null;
    showError(form, "err-topup", err);
  } finally {
    state.busy = false;
    button.disabled = false;
  }
}

function pickPreset(event) {
  const button = event.target.closest("button[data-amount]");
  if (!button) return;
  $("amount_usd").value = button.dataset.amount;
  for (const b of document.querySelectorAll(".presets button")) b.setAttribute("aria-pressed", String(b === button));
}

async function saveSettings(event) {
  event.preventDefault();
  const form = $("settings-form");
  clearErrors(form);
  $("settings-result").textContent = "";
  const ar = { enabled: $("ar-enabled").checked };
  const lb = { enabled: $("lb-enabled").checked };
  if ($("ar-threshold").value.trim()) ar.threshold_usd = $("ar-threshold").value.trim();
  if ($("ar-topup").value.trim()) ar.topup_usd = $("ar-topup").value.trim();
  if ($("lb-threshold").value.trim()) lb.threshold_usd = $("lb-threshold").value.trim();
  // Several addresses (comma-separated) go as a list, one as a string.
  const emails = $("lb-email").value.split(",").map((e) => e.trim()).filter(Boolean);
  if (emails.length) lb.email = emails.length > 1 ? emails : emails[0];
  try {
    const r = await state.api.json("/v1/wallet/settings", {
      method: "PATCH", body: { auto_recharge: ar, low_balance_alert: lb },
    });
    state.settingsDirty = false;
    renderWallet(r.body, r.etag);
    $("settings-result").textContent = "Settings saved.";
  } catch (err) {
    showError(form, "err-settings", err);
  }
}

// ---- usage view --------------------------------------------------------------------------

function filterParams() {
  const form = $("filters");
  const params = {};
  for (const input of form.querySelectorAll("input[name], select[name]")) params[input.name] = input.value;
  return params;
}

function usageRow(r) {
  const tr = document.createElement("tr");
  tr.dataset.id = r.id;
  const number = r.direction === "inbound" ? r.from : r.to;
  const arrow = r.direction === "inbound" ? "← " : r.direction === "outbound" ? "→ " : "";
  let size = seconds(r.duration_s);
  if (!size && r.segments) size = `${r.segments} seg.`;
  if (!size && r.pages) size = `${r.pages} p.`;
  const rate = typeof r.rate_per_min_usd === "number" ? `${usd(Math.round(r.rate_per_min_usd * 1e6))}/min` : "";
  tr.append(cell(when(r.at), "date", "Date"), cell(typeName(r.type), "type", "Type"),
    cell(r.description, "desc", "Description"), cell(r.user, "", "User"), cell(r.group, "", "Group"),
    cell(number ? arrow + number : "", "", "Number"), cell(size, "num", "Duration"),
    cell(rate, "num", "Rate"), cell(r.source, "", "Source"), amountCell(micros(r, "amount")),
    cell(usd(micros(r, "balance_after")), "num", "Balance after"));
  return tr;
}

async function loadUsage(reset) {
  const tbody = $("usage-table").tBodies[0];
  if (reset) { tbody.replaceChildren(); state.usageCursor = null; }
  const q = query({ ...state.usageParams, limit: USAGE_PAGE, cursor: state.usageCursor });
  const { body: page } = await state.api.json("/v1/wallet/transactions" + q);
  for (const r of page.data || []) tbody.append(usageRow(r));
  state.usageCursor = page.next_cursor || null;
  $("usage-more").hidden = !state.usageCursor;
  $("usage-empty").hidden = tbody.rows.length > 0;
}

async function loadChart(params) {
  const rows = [];
  let cursor = null;
  let pages = 0;
  do {
    const { body: page } = await state.api.json("/v1/wallet/transactions" + query({ ...params, limit: 200, cursor }));
    rows.push(...(page.data || []));
    cursor = page.next_cursor;
    pages += 1;
  } while (cursor && pages < CHART_PAGES);
  state.chart = { rows, params, truncated: Boolean(cursor) };
  drawChart();
}

// Drawn at the width it gets (again when the window changes size), so text stays readable.
function drawChart() {
  if (!state.chart) return;
  const { rows, params, truncated } = state.chart;
  const width = $("chart").clientWidth || 640;
  const { svg, totals } = spendChart(rows, { from: params.from, to: params.to }, usd, width);
  $("chart").replaceChildren(svg);
  $("chart-title").textContent = "Daily spend per service" + (truncated ? ` (newest ${rows.length} rows)` : "");
  const legend = $("chart-legend");
  legend.replaceChildren();
  for (const [key, label] of SERVICES) {
    if (!totals[key]) continue;
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = `swatch s-${key}`;
    li.append(swatch, `${label}: ${usd(totals[key])}`);
    legend.append(li);
  }
  if (!legend.children.length) legend.append(Object.assign(document.createElement("li"), { textContent: "No spend in this range." }));
}

async function applyFilters(event) {
  if (event) event.preventDefault();
  const form = $("filters");
  clearErrors(form);
  state.usageParams = filterParams();
  try {
    await loadUsage(true);
    await loadChart(state.usageParams);
  } catch (err) {
    showError(form, "err-filters", err);
  }
}

function pick(obj, names) {
  for (const n of names) if (obj[n] !== undefined && obj[n] !== null) return [n, obj[n]];
  return [null, null];
}

function amountText([name, value]) {
  if (name === null) return "–";
  if (name.endsWith("_micros")) return usd(value);
  if (name.endsWith("_usd")) return usd(Math.round(Number(value) * 1e6));
  return String(value);
}

// The plan usage table appears only where GET /v1/wallet/buckets exists and answers 200.
async function loadPlan() {
  const section = $("plan");
  let body;
  try {
    body = (await state.api.json("/v1/wallet/buckets")).body;
  } catch {
    section.hidden = true;
    return;
  }
  const list = Array.isArray(body) ? body : (body && (body.data || body.buckets)) || [];
  const tbody = $("plan-table").tBodies[0];
  tbody.replaceChildren();
  for (const b of list) {
    if (!b || typeof b !== "object") continue;
    const tr = document.createElement("tr");
    const committed = pick(b, ["committed_micros", "committed_usd", "committed", "allowance_micros", "allowance_usd", "allowance"]);
    const spent = pick(b, ["spent_micros", "spent_usd", "spent", "used_micros", "used_usd", "used"]);
    const available = pick(b, ["available_micros", "available_usd", "available", "remaining_micros", "remaining_usd", "remaining"]);
    let [, pct] = pick(b, ["used_pct", "used_percent", "percent_used"]);
    if (pct === null && committed[1]) pct = Math.round((Number(spent[1] || 0) / Number(committed[1])) * 100);
    tr.append(cell(b.label || b.name || b.service || b.kind || b.id), cell(amountText(committed), "num"),
      cell(amountText(spent), "num"), cell(amountText(available), "num"), cell(pct === null ? "–" : `${pct}%`, "num"));
    tbody.append(tr);
  }
  section.hidden = tbody.rows.length === 0;
}

async function exportCsv() {
  const form = $("filters");
  clearErrors(form);
  try {
    const resp = await state.api.fetch("/v1/usage/export" + query(filterParams()), { headers: { Accept: "text/csv" } });
    if (!resp.ok) {
      let body = null;
      try { body = await resp.json(); } catch { body = null; }
      throw new ApiError(resp.status, body);
    }
    const blob = await resp.blob();
    const match = /filename="([^"]+)"/.exec(resp.headers.get("Content-Disposition") || "");
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = match ? match[1] : "usage-history.csv";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (err) {
    showError(form, "err-filters", err);
  }
}

// ---- views -------------------------------------------------------------------------------

function showView(name) {
  const usage = name === "usage";
  $("wallet-view").hidden = usage;
  $("usage-view").hidden = !usage;
  $(usage ? "tab-usage" : "tab-wallet").setAttribute("aria-current", "page");
  $(usage ? "tab-wallet" : "tab-usage").removeAttribute("aria-current");
  if (usage && state.api && !state.usageShown) {
    state.usageShown = true;
    applyFilters();
    loadPlan();
  }
}

function wire() {
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) { $("signin-error").textContent = "Paste an API key first (it starts with gk_)."; return; }
    await signIn(key);
  });
  $("signout").addEventListener("click", () => signOut());
  $("tab-wallet").addEventListener("click", () => showView("wallet"));
  $("tab-usage").addEventListener("click", () => showView("usage"));
  $("topup-form").addEventListener("submit", topup);
  $("topup-form").querySelector(".presets").addEventListener("click", pickPreset);
  $("settings-form").addEventListener("submit", saveSettings);
  $("settings-form").addEventListener("input", () => { state.settingsDirty = true; });
  // An edited field's old error goes away: it described the value that was there.
  for (const form of [$("topup-form"), $("settings-form")]) {
    form.addEventListener("input", (event) => {
      const described = event.target.getAttribute("aria-describedby") || "";
      for (const id of described.split(" ")) if (id.startsWith("err-")) document.getElementById(id).textContent = "";
    });
  }
  $("tx-more").addEventListener("click", () => loadTx(false).catch(() => {}));
  $("activity-more").addEventListener("click", () => moreActivity());
  $("usage-more").addEventListener("click", () => loadUsage(false).catch((err) => showError($("filters"), "err-filters", err)));
  $("filters").addEventListener("submit", applyFilters);
  $("f-reset").addEventListener("click", () => { $("filters").reset(); applyFilters(); });
  $("export").addEventListener("click", exportCsv);
  let resizing = null;
  window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(drawChart, 100); });
}

wire();
// A sign-in link first (it names its person), else the key this tab kept.
redeemLink().then((linked) => {
  if (linked) return signIn(linked.key);
  const saved = storedKey();
  if (saved) return signIn(saved, { quiet: true }).then((ok) => { if (!ok) forgetKey(); });
  return null;
}).catch((err) => {
  $("signin-error").textContent = err.status === 401
    ? "That sign-in link was used already or has expired; ask your platform for a new one."
    : err.message;
});
