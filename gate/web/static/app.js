// The billing page: sign-in, wallet, usage history, month summary, details panel. Everything
// comes from Gate's public API with the pasted key; unknown fields in answers are ignored,
// missing optional ones tolerated.

import { Api, ApiError, forgetKey, query, storedKey, storeKey } from "./api.js";
import { SERVICES, spendChart } from "./chart.js";
import { connect } from "./connection.js";
import { openDetails, wireDetails } from "./details.js";
import { cents, dollars, micros, paidFrom, seconds, typeName, usd, utc, when } from "./format.js";
import { forgetPerson, loadActivity, redeemLink, storedPerson } from "./people.js";
import { describe, plainError } from "./words.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 3000;  // a call's start emits no event: live calls and holds come from polling
const TX_PAGE = 20;
const USAGE_PAGE = 50;
const CHART_PAGES = 20;  // the chart reads at most 20 pages of 200 rows
const ALL = "*";  // the office filter's "every office"

const state = {
  api: null, role: null, etag: null, wallet: null, live: null, poll: null,
  txCursor: null, txIds: new Set(), usage: null, usageParams: {},
  pending: null, busy: false, settingsDirty: false, shown: new Set(), refreshTimer: null,
  chart: null, methods: [], streamMode: "connecting", unavailable: false, callNames: new Map(),
  own: null, office: null, offices: [], orgId: null, company: false, alert: null,
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

function dateCell(iso) {
  const td = cell(when(iso), "date", "Date");
  td.title = utc(iso);
  return td;
}

function amountCell(m, label = "Amount") {
  return cell(cents(m, { sign: true }), "num amount " + (m < 0 ? "debit" : "credit"), label);
}

function clearErrors(form) {
  for (const p of form.querySelectorAll(".error")) p.textContent = "";
}

// A message a person can act on, beside the field it names or at the form's foot.
function showError(form, fallbackId, err) {
  const byField = err.field ? document.getElementById("err-" + err.field) : null;
  const target = byField && form.contains(byField) ? byField : $(fallbackId);
  target.textContent = plainError(err);
}

function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));  // works outside secure contexts too
  return "billing-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// The office the page shows: the key's own, or (company admins) the one picked.
function scoped(path, params = {}) {
  const office = state.office && state.office !== state.own ? state.office : null;
  return path + query({ ...params, workspace_id: office });
}

function officeName(id) {
  const o = state.offices.find((x) => x.workspace_id === id);
  return o ? o.name : id;
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
    error.textContent = quiet ? "Your session ended; sign in again." : signInMessage(err);
    return false;
  }
  let role = "agent";
  let ws = null;
  try {
    ws = (await api.json("/v1/workspace")).body;
    role = "admin";
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 403) {
      error.textContent = plainError(err);
      return false;
    }
  }
  storeKey(key);
  Object.assign(state, { api, role, own: ws ? ws.id : null, office: ws ? ws.id : null });
  if (ws && ws.organization_id) await loadOrganization(ws.organization_id);
  $("key").value = "";
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  $("who").hidden = false;
  const name = (ws && ws.name) || "Workspace";
  const title = state.company ? "company admin" : role === "admin" ? "office admin" : "read-only (agent key)";
  const person = storedPerson();  // who a sign-in link named
  $("who").textContent = `${name} · ${person ? person + ", " : ""}${title}`;
  document.body.dataset.role = role;
  document.body.classList.toggle("company", state.company);
  for (const node of document.querySelectorAll(".admin-only")) node.hidden = role !== "admin";
  const note = $("role-note");
  note.hidden = role === "admin";
  note.textContent = "This agent key can see the wallet and its history. Adding funds, " +
    "changing settings and exporting CSV need an admin key.";
  renderWallet(wallet.body, wallet.etag);
  startLive();
  if (role === "admin") moreActivity(true);
  $("wallet-title").focus();  // where a screen reader and the keyboard start reading
  await loadMethods();  // first: the transactions name their cards
  await Promise.all([loadTx(true).catch(() => {}), checkSpendAlert(), loadCalls()]);
  return true;
}

function signInMessage(err) {
  if (err.status === 401) return "That key was not accepted (wrong, revoked or expired). Paste a current workspace key, admin or agent.";
  if (err.status === 400 && /platform key/.test(err.message)) return "That is the platform key. Paste a workspace key (admin or agent) instead.";
  if (err.status === 403) return "That key may not read the wallet. Paste a workspace admin or agent key.";
  return plainError(err);
}

// A company admin (org_admin key) sees every office; an office admin's key gets 403/404.
async function loadOrganization(orgId) {
  try {
    const { body } = await state.api.json(`/v1/organizations/${encodeURIComponent(orgId)}/wallets`);
    state.orgId = orgId;
    state.company = true;
    state.offices = (body.data || []).slice().sort((a, b) => String(a.name).localeCompare(String(b.name)));
    renderOffices(body);
  } catch {
    state.company = false;
  }
}

function renderOffices(body) {
  $("offices").hidden = false;
  const list = $("office-list");
  list.replaceChildren(...state.offices.map((o) => Object.assign(document.createElement("option"), { value: o.name })));
  $("office-search").value = officeName(state.office);
  $("office-hint").textContent = `${state.offices.length} offices · together ${cents(body.total_balance_micros)}`;
  const tbody = $("org-table").tBodies[0];
  tbody.replaceChildren(...state.offices.map((o) => {
    const tr = document.createElement("tr");
    tr.append(cell(o.name, "", "Office"), cell(cents(o.balance_micros), "num", "Balance"),
      cell(cents(o.available_micros), "num", "Available"), cell(String(o.live_calls ?? 0), "num", "Live calls"),
      cell(statusText(o), "", "Status"));
    return tr;
  }));
  const filter = $("f-office");
  filter.replaceChildren(Object.assign(document.createElement("option"), { value: ALL, textContent: "All offices" }),
    ...state.offices.map((o) => Object.assign(document.createElement("option"), { value: o.workspace_id, textContent: o.name })));
  filter.value = state.office;
  $("f-office-field").hidden = false;
}

async function pickOffice() {
  const wanted = $("office-search").value.trim().toLowerCase();
  const match = state.offices.find((o) => o.name.toLowerCase() === wanted) ||
    state.offices.filter((o) => o.name.toLowerCase().includes(wanted)).slice(0, 2).reduce((a, o, i, all) => (all.length === 1 ? o : a), null);
  if (!match) {
    $("office-hint").textContent = wanted ? `No office is called “${$("office-search").value.trim()}”; pick one from the list.` : "Pick an office from the list.";
    return;
  }
  if (match.workspace_id === state.office) return;
  state.office = match.workspace_id;
  $("office-search").value = match.name;
  $("office-hint").textContent = `Showing ${match.name}.`;
  $("f-office").value = match.workspace_id;
  state.etag = null;
  state.shown.clear();
  await refreshWallet();
  await Promise.all([loadTx(true).catch(() => {}), loadMethods(), checkSpendAlert()]);
  const visible = ["usage", "month"].find((v) => !$(v + "-view").hidden);
  if (visible) showView(visible);
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
    txCursor: null, pending: null, settingsDirty: false, chart: null, usage: null, methods: [],
    own: null, office: null, offices: [], orgId: null, company: false, unavailable: false, alert: null });
  state.txIds.clear();
  state.shown.clear();
  state.callNames.clear();
  for (const id of ["tx-table", "usage-table", "plan-table", "org-table"]) $(id).tBodies[0].replaceChildren();
  for (const id of ["events", "chart", "chart-legend", "card-list"]) $(id).replaceChildren();
  for (const id of ["app", "signout", "who", "live", "offices", "spend-alert"]) $(id).hidden = true;
  document.body.classList.remove("company");
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  showView("wallet");
  $("key").focus();
}

// ---- wallet ------------------------------------------------------------------------------

function statusText(w) {
  const available = micros(w, "available");
  if (w.status === "suspended") return "Suspended: calls are refused until a top-up";
  if (available !== null && available < 0) return "Overdrawn: calls are refused until a top-up";
  if (available !== null && available === 0) return "Empty: calls are refused until a top-up";
  return w.status === "active" ? "Active" : (w.status || "–");
}

function renderWallet(w, etag) {
  if (!w) return;
  state.wallet = w;
  state.etag = etag || null;
  const available = micros(w, "available");
  $("balance").textContent = cents(micros(w, "balance"));
  $("available").textContent = cents(available);
  $("reserved").textContent = cents(micros(w, "reserved"));
  $("live-calls").textContent = String(w.live_calls ?? "–");
  const left = w.minutes_left_estimate;  // per service since plans: {voice, ai_agent}
  $("minutes-left").textContent = left && typeof left === "object"
    ? `voice ${left.voice ?? "–"} · AI agent ${left.ai_agent ?? "–"}` : (left ?? "–");
  $("status").textContent = statusText(w);
  const bar = $("low-bar");
  const alert = w.low_balance_alert || {};
  const threshold = micros(alert, "threshold");
  if (w.status === "suspended" || (available !== null && available <= 0)) {
    bar.hidden = false;
    bar.textContent = `No money available (${cents(available)}): calls are refused or cut. Add funds now.`;
  } else if (alert.enabled && threshold !== null && available < threshold) {
    bar.hidden = false;
    bar.textContent = `Low balance: ${cents(available)} available, below your alert threshold of ` +
      `${cents(threshold)}. Add funds to keep calls running.`;
  } else {
    bar.hidden = true;
    bar.textContent = "";
  }
  renderAutoRecharge(w.auto_recharge || {});
  if (!state.settingsDirty) fillSettings(w);
}

function renderAutoRecharge(ar) {
  const node = $("ar-state");
  const parts = [];
  if (!ar.enabled) parts.push(state.methods.length ? "Automatic payments: Not active." : "Automatic payments: Not active. Connect a card first.");
  else if (ar.state === "failed") {
    parts.push(`Automatic payments: the last charge failed${ar.last_error ? ` (${ar.last_error})` : ""}.`);
    parts.push(ar.next_attempt_at ? `Gate tries again at ${when(ar.next_attempt_at)}.` : "");
    parts.push("Connect another card or top up by hand.");
  } else if (ar.state === "capped") {
    parts.push("Automatic payments paused: this month's cap is reached. Raise the cap or top up by hand.");
  } else parts.push(`Automatic payments: Active (${ar.state === "charging" ? "charging now" : "waiting"}).`);
  if (ar.monthly_cap_usd !== undefined) {
    parts.push(`Charged this month ${cents(micros(ar, "spent_this_month"))} of a ${cents(micros(ar, "monthly_cap"))} monthly cap.`);
  }
  node.textContent = parts.filter(Boolean).join(" ");
  node.dataset.state = ar.enabled ? (ar.state || "idle") : "off";
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
  setValue("ar-cap", ar.monthly_cap_usd);
  setValue("lb-enabled", lb.enabled);
  setValue("lb-threshold", lb.threshold_usd);
  setValue("lb-email", Array.isArray(lb.email) ? lb.email.join(", ") : lb.email);
}

async function refreshWallet() {
  if (!state.api) return;
  try {
    const headers = state.etag ? { "If-None-Match": state.etag } : {};
    const r = await state.api.json(scoped("/v1/wallet"), { headers });
    setUnavailable(false);
    if (r.status !== 304) {
      renderWallet(r.body, r.etag);
      // The event stream follows the key's own office; another office's new rows come with
      // its wallet's change, read by this poll.
      if (state.office && state.office !== state.own) newTx().catch(() => {});
    }
    await loadCalls();
  } catch (err) {
    if (err.status === 401) signOut("The key was revoked or expired; sign in with a current key.");
    else if (err.status === 503 || err.status === 0 || err.status >= 500) setUnavailable(true, err);
  }
}

// Calls in progress with their cost so far, as the page reads them every poll: the billed
// seconds Gate last wrote, or (between heartbeats) the time since the answer, billed in the
// call's increments at its rate.
async function loadCalls() {
  const section = $("calls");
  if (!state.api || (state.office && state.office !== state.own)) { section.hidden = true; return; }
  if (!state.wallet || !state.wallet.live_calls) {
    section.hidden = true;
    $("calls-table").tBodies[0].replaceChildren();
    return;
  }
  let calls;
  try {
    calls = (await state.api.json("/v1/calls?state=live")).body.data || [];
  } catch {
    return;
  }
  const tbody = $("calls-table").tBodies[0];
  tbody.replaceChildren(...calls.map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.id = c.call_id;
    const far = c.direction === "inbound" ? `From ${c.from}` : `To ${c.to}`;
    state.callNames.set(c.call_id, c.direction === "inbound" ? `from ${c.from}` : `to ${c.to}`);
    if (state.callNames.size > 1000) state.callNames.delete(state.callNames.keys().next().value);
    const rate = Math.round(Number(c.rate_per_min_usd) * 1e6);
    const [first, next] = String(c.increment || "60/60").split("/").map(Number);
    const t = c.elapsed_s || 0;
    const billable = t <= 0 ? 0 : first + Math.ceil(Math.max(t - first, 0) / next) * next;
    const cost = Math.max(Math.round((billable * rate) / 60), Math.round(Number(c.cost_so_far_usd || 0) * 1e6));
    tr.append(cell(`${c.service === "ai_agent" ? "AI agent · " : ""}${far}`, "", "Call"),
      cell([c.user, c.group].filter(Boolean).join(" · "), "", "Member or group"),
      cell(c.state === "pending" ? "ringing" : seconds(t), "num", "Time"),
      cell(`${usd(rate)}/min`, "num", "Rate"), cell(cents(cost), "num cost", "Cost so far"));
    return tr;
  }));
  section.hidden = calls.length === 0;
}

function txRow(r) {
  const tr = document.createElement("tr");
  tr.dataset.id = r.id;
  const method = state.methods.find((m) => m.id === r.payment_method_id);
  const text = method ? String(r.description).replace(`(${method.id})`, `(${cardName(method)})`) : r.description;
  tr.append(dateCell(r.at), cell(typeName(r.type), "type", "Type"),
    detailsCell(r, text), amountCell(micros(r, "amount")),
    cell(cents(micros(r, "balance_after")), "num", "Balance after"));
  return tr;
}

// The description opens the details panel: a real button, so keyboards reach it.
function detailsCell(r, text = r.description) {
  const td = document.createElement("td");
  td.className = "desc";
  td.dataset.label = "Description";
  const b = document.createElement("button");
  b.type = "button";
  b.className = "row-link";
  b.textContent = text || typeName(r.type);
  b.addEventListener("click", () => openDetails(state.api, r, { office: r._office || state.office, own: state.own, name: r._office ? officeName(r._office) : null }));
  td.append(b);
  return td;
}

async function loadTx(reset) {
  const body = $("tx-table").tBodies[0];
  if (reset) { body.replaceChildren(); state.txIds.clear(); state.txCursor = null; }
  const { body: page } = await state.api.json(scoped("/v1/wallet/transactions", { limit: TX_PAGE, cursor: state.txCursor }));
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
  const { body: page } = await state.api.json(scoped("/v1/wallet/transactions", { limit: TX_PAGE }));
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

// ---- cards -------------------------------------------------------------------------------

function cardName(m) {
  const brand = { visa: "Visa", mastercard: "Mastercard", amex: "American Express" }[m.brand] || (m.brand ? m.brand[0].toUpperCase() + m.brand.slice(1) : "Card");
  return `${brand} •••• ${m.last4 || "????"}`;
}

function expiry(m) {
  return m.exp_month && m.exp_year ? `expires ${String(m.exp_month).padStart(2, "0")}/${m.exp_year}` : "";
}

async function loadMethods() {
  try {
    const { body } = await state.api.json(scoped("/v1/wallet/payment_methods"));
    state.methods = body.data || [];
  } catch {
    state.methods = [];
  }
  renderMethods();
  if (state.wallet) renderAutoRecharge(state.wallet.auto_recharge || {});
}

function renderMethods() {
  const list = $("card-list");
  list.replaceChildren(...state.methods.map((m) => {
    const li = document.createElement("li");
    li.textContent = `${cardName(m)} · ${expiry(m)}${m.default ? " · default" : ""}`;
    li.dataset.id = m.id;
    return li;
  }));
  $("cards-empty").hidden = state.methods.length > 0;
  // POST /v1/wallet/payment_methods acts on the key's own office: another office's cards are
  // connected by its own admins.
  const elsewhere = Boolean(state.office && state.own && state.office !== state.own);
  $("add-card").hidden = state.role !== "admin" || elsewhere;
  $("cards-other").hidden = !elsewhere;
  const select = $("topup-card");
  const before = select.value;
  select.replaceChildren(...state.methods.map((m) => Object.assign(document.createElement("option"), {
    value: m.id, textContent: `${cardName(m)} (${expiry(m)})`, selected: m.default,
  })));
  if (!state.methods.length) select.append(Object.assign(document.createElement("option"), { value: "", textContent: "No card connected: connect one below" }));
  if (state.methods.some((m) => m.id === before)) select.value = before;
}

// The hook where the payment provider's own card form plugs in (see docs/billing-page.md):
// it resolves to a payment method id the provider created; the sandbox picks a test card.
export let collectCard = async () => $("sandbox-card").value;
export function useCardProvider(fn) { collectCard = fn; }

async function addCard() {
  const result = $("cards-result");
  const error = $("err-cards");
  result.textContent = "";
  error.textContent = "";
  const button = $("add-card-submit");
  button.disabled = true;
  try {
    const id = await collectCard();
    const { body } = await state.api.json(scoped("/v1/wallet/payment_methods"), { method: "POST", body: { payment_method_id: id } });
    result.textContent = `${cardName(body)} is connected.`;
    $("add-card-flow").hidden = true;
    await loadMethods();
  } catch (err) {
    error.textContent = plainError(err);
  } finally {
    button.disabled = false;
  }
}

// ---- live updates ------------------------------------------------------------------------

function onEvent(ev) {
  const sentence = describe(ev, { cents, typeName, callName: (id) => state.callNames.get(id) || null });
  if (ev.type === "wallet.spend_threshold" || ev.type === "wallet.spend_spike") showSpendAlert(ev);
  scheduleRefresh();
  if (!sentence) return;  // plumbing (call.extended, holds): nothing a person needs to read
  const li = document.createElement("li");
  li.dataset.type = ev.type;
  const time = document.createElement("time");
  time.dateTime = ev.at || "";
  time.title = utc(ev.at);
  time.textContent = when(ev.at);
  li.append(time, " · " + sentence);
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 20) list.lastElementChild.remove();
}

// Many events arrive together (a top-up is two): refresh once for the batch.
function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(() => {
    refreshWallet();
    newTx().catch(() => {});
  }, 100);
}

// The badge says what is true: the stream's state, unless Gate itself answers that it
// cannot serve (503: Redis away) — then the numbers on screen may be old.
function renderBadge() {
  const node = $("live");
  node.hidden = false;
  const mode = state.unavailable ? "unavailable" : state.streamMode;
  node.dataset.state = mode;
  node.textContent = {
    connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…",
    unavailable: "Gate unavailable: figures may be out of date",
  }[mode];
}

function setLive(mode, caughtUp) {
  state.streamMode = mode;
  renderBadge();
  if (mode === "live" && caughtUp) scheduleRefresh();  // catch up on what happened meanwhile
}

function setUnavailable(on) {
  if (state.unavailable === on) return;
  state.unavailable = on;
  renderBadge();
}

function startLive() {
  state.live = connect(state.api, {
    onEvent,
    onState: setLive,
    onAuthError: () => signOut("The key was revoked or expired; sign in with a current key."),
  });
  document.body.dataset.connection = state.live.mode;
  state.poll = setInterval(() => { if (!document.hidden) refreshWallet(); }, POLL_MS);
}

// ---- spending alert (seed 001): shown once per alert, dismissed per workspace -------------

const DISMISSED = "gate.billing.dismissed.";  // + workspace id -> the alert's marker

async function checkSpendAlert() {
  if (state.role !== "admin") return;
  try {
    const [{ body: cfg }, { body: sum }] = await Promise.all([
      state.api.json(scoped("/v1/wallet/spending-alerts")),
      state.api.json(scoped("/v1/usage/summary")),
    ]);
    const budget = cfg.monthly_budget_micros;
    const spent = sum.total_spend_micros || 0;
    const crossed = (cfg.thresholds_pct || []).filter((p) => budget && spent * 100 >= budget * p);
    if (!crossed.length) { hideSpendAlert(); return; }
    const pct = Math.max(...crossed);
    const top = (sum.services || []).slice().sort((a, b) => b.spend_micros - a.spend_micros)[0];
    showSpendAlert({ type: "wallet.spend_threshold", data: { month: sum.month, threshold_pct: pct, budget_micros: budget, spent_micros: spent, service: top && top.service } });
  } catch {
    // no alerts configured or no right to read them: no banner
  }
}

function showSpendAlert(ev) {
  const d = ev.data || {};
  const marker = ev.type === "wallet.spend_spike" ? `spike:${d.day}` : `spend:${d.month}:${d.threshold_pct}`;
  const workspace = state.office || state.own || "own";
  if (localStorage.getItem(DISMISSED + workspace) === marker) return;
  const service = d.service ? ` Most of it: ${({ voice: "calling", call: "calling", ai_agent: "AI agent" })[d.service] || d.service}.` : "";
  $("spend-alert-text").textContent = ev.type === "wallet.spend_spike"
    ? `Spending jumped today: ${cents(Number(d.spent_micros))}, ${d.factor}× the daily average.${service}`
    : `You have spent ${cents(Number(d.spent_micros))} this month, ${d.threshold_pct}% of your ${cents(Number(d.budget_micros))} budget.${service}`;
  $("spend-alert").hidden = false;
  state.alert = { workspace, marker };
}

function hideSpendAlert() {
  $("spend-alert").hidden = true;
  state.alert = null;
}

function dismissSpendAlert() {
  if (state.alert) localStorage.setItem(DISMISSED + state.alert.workspace, state.alert.marker);
  hideSpendAlert();
  $("wallet-title").focus();
}

// ---- top-up and settings -----------------------------------------------------------------

function reviewTopup(event) {
  event.preventDefault();
  const form = $("topup-form");
  clearErrors(form);
  $("topup-result").textContent = "";
  const amount = dollars($("amount_usd").value, { min: 1, max: 1000 });
  if (amount.error) { $("err-amount_usd").textContent = amount.error; $("amount_usd").focus(); return; }
  const method = state.methods.find((m) => m.id === $("topup-card").value);
  if (!method) { $("err-payment_method_id").textContent = "Connect a card first (Cards, below), then add funds."; return; }
  state.review = { amount: amount.value, micros: amount.micros, method: method.id };
  $("review-text").textContent = `Charge ${cents(amount.micros)} to ${cardName(method)}?` +
    (state.company ? ` It goes to ${officeName(state.office)}.` : "");
  $("review").hidden = false;
  $("topup-submit").hidden = true;
  $("review-confirm").focus();
}

function cancelReview() {
  state.review = null;
  $("review").hidden = true;
  $("topup-submit").hidden = false;
}

async function topup() {
  if (state.busy || !state.review) return;  // a double click sends one request...
  const form = $("topup-form");
  const button = $("review-confirm");
  state.busy = true;
  button.disabled = true;
  const { amount, method } = state.review;
  const fingerprint = `${state.office}|${amount}|${method}`;
  // ...and a retry of the same top-up reuses its Idempotency-Key, so it never charges twice.
  if (!state.pending || state.pending.fingerprint !== fingerprint) state.pending = { key: randomKey(), fingerprint };
  try {
    const { body } = await state.api.json(scoped("/v1/wallet/topup"), {
      method: "POST",
      body: { amount_usd: amount, payment_method_id: method },
      headers: { "Idempotency-Key": state.pending.key },
    });
    state.pending = null;
    $("amount_usd").value = "";
    for (const b of document.querySelectorAll(".presets button")) b.setAttribute("aria-pressed", "false");
    cancelReview();
    $("topup-result").textContent = `Added ${cents(micros(body, "amount"))}. Balance: ${cents(micros(body, "balance_after"))}.`;
    scheduleRefresh();
  } catch (err) {
    // A definite refusal frees the key; a lost answer keeps it, so the retry is the same top-up.
    if (err.status >= 400 && err.status < 500 && err.code !== "idempotency_key_in_progress") state.pending = null;
    cancelReview();
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
  $("err-amount_usd").textContent = "";
  for (const b of document.querySelectorAll(".presets button")) b.setAttribute("aria-pressed", String(b === button));
}

async function saveSettings(event) {
  event.preventDefault();
  const form = $("settings-form");
  clearErrors(form);
  $("settings-result").textContent = "";
  const ar = { enabled: $("ar-enabled").checked };
  const lb = { enabled: $("lb-enabled").checked };
  const fields = [["ar-threshold", ar, "threshold_usd", "auto_recharge.threshold_usd", 0, 1000],
    ["ar-topup", ar, "topup_usd", "auto_recharge.topup_usd", 1, 1000],
    ["ar-cap", ar, "monthly_cap_usd", "auto_recharge.monthly_cap_usd", 1, 100000],
    ["lb-threshold", lb, "threshold_usd", "low_balance_alert.threshold_usd", 0, 1000000]];
  let bad = false;
  for (const [id, target, name, field, min, max] of fields) {
    if (!$(id).value.trim()) continue;
    const amount = dollars($(id).value, { min, max });
    if (amount.error) { $("err-" + field).textContent = amount.error; bad = true; } else target[name] = amount.value;
  }
  if (bad) return;
  // Several addresses (comma-separated) go as a list, one as a string.
  const emails = $("lb-email").value.split(",").map((e) => e.trim()).filter(Boolean);
  if (emails.length) lb.email = emails.length > 1 ? emails : emails[0];
  try {
    const r = await state.api.json(scoped("/v1/wallet/settings"), {
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
  delete params.office;
  for (const name of ["min_amount_usd", "max_amount_usd"]) {
    if (!params[name]) continue;
    const amount = dollars(params[name]);
    if (amount.error) throw Object.assign(new ApiError(400, { error: { message: amount.error } }), { field: name });
    params[name] = amount.value;
  }
  if (params.month) { delete params.from; delete params.to; }
  return params;
}

// The offices the usage view reads: one, or (company admins, "All offices") every one.
function usageOffices() {
  const pick = state.company ? $("f-office").value : null;
  if (pick === ALL) return state.offices.map((o) => o.workspace_id);
  return [pick || state.office];
}

function usageRow(r) {
  const tr = document.createElement("tr");
  tr.dataset.id = r.id;
  if (r._office) tr.dataset.office = r._office;
  const number = r.direction === "inbound" ? r.from : r.to;
  const arrow = r.direction === "inbound" ? "← " : r.direction === "outbound" ? "→ " : "";
  let size = r.duration_s !== undefined ? seconds(r.duration_s) : "";
  if (!size && r.segments) size = `${r.segments} seg.`;
  if (!size && r.pages) size = `${r.pages} p.`;
  const rate = typeof r.rate_per_min_usd === "number" ? `${usd(Math.round(r.rate_per_min_usd * 1e6))}/min` : "";
  const who = [r.user, r.group].filter(Boolean).join(" · ");
  const cost = typeof r.cost_micros === "number" ? cents(r.cost_micros) : "";
  tr.append(dateCell(r.at), cell(officeName(r._office || state.office), "office-col", "Office"),
    cell(who, "", "Member or group"), cell(number ? arrow + number : "", "number", "Number"),
    detailsCell(r, typeName(r.type)), cell(size, "num", "Duration"), cell(rate, "num", "Rate"),
    cell(paidFrom(r.paid_from) || sourceName(r.source), "paid", "Paid from"),
    cell(cost, "num cost", "Cost"), amountCell(micros(r, "amount"), "Wallet"));
  return tr;
}

function sourceName(source) {
  return { card: "Card", auto_recharge: "Automatic top-up", operator: "Gate operator", plan: "Plan" }[source] || source || "";
}

// A page of usage across offices: each office's own cursor; rows merged newest first.
async function loadUsage(reset) {
  const tbody = $("usage-table").tBodies[0];
  if (reset) {
    tbody.replaceChildren();
    state.usage = { feeds: usageOffices().map((id) => ({ id, rows: [], cursor: null, done: false })) };
  }
  const feeds = state.usage.feeds;
  const fill = (f) => state.api.json("/v1/wallet/transactions" + query({
    ...state.usageParams, limit: USAGE_PAGE, cursor: f.cursor,
    workspace_id: f.id && f.id !== state.own ? f.id : null,
  })).then(({ body: page }) => {
    f.rows.push(...(page.data || []).map((r) => (feeds.length > 1 || state.company ? { ...r, _office: f.id } : r)));
    f.cursor = page.next_cursor || null;
    f.done = !f.cursor;
  });
  const shown = [];
  while (shown.length < USAGE_PAGE) {
    await Promise.all(feeds.filter((f) => !f.rows.length && !f.done).map(fill));
    const live = feeds.filter((f) => f.rows.length);
    if (!live.length) break;
    live.sort((a, b) => idKey(b.rows[0].id) - idKey(a.rows[0].id) || (a.id < b.id ? -1 : 1));
    shown.push(live[0].rows.shift());
  }
  for (const r of shown) tbody.append(usageRow(r));
  const more = feeds.some((f) => f.rows.length || !f.done);
  $("usage-more").hidden = !more;
  $("usage-empty").hidden = tbody.rows.length > 0;
  people(shown);
}

function idKey(id) {
  const [ms, seq] = String(id).split("-");
  return Number(ms) * 1e4 + Number(seq || 0);
}

// The user / group picker offers who appears in the rows read so far.
function people(rows) {
  const list = $("people");
  const known = new Set(Array.from(list.options, (o) => o.value));
  for (const r of rows) {
    for (const name of [r.user, r.group, r.contact]) {
      if (!name || known.has(name)) continue;
      known.add(name);
      list.append(Object.assign(document.createElement("option"), { value: name }));
    }
  }
}

// The chart reads at most CHART_PAGES pages in all: across 50 offices that is a page or so
// of each (newest rows), four offices at a time, never a thousand requests.
async function loadChart(params) {
  const offices = usageOffices();
  const perOffice = Math.max(1, Math.floor(CHART_PAGES / offices.length));
  const rows = [];
  let truncated = false;
  const read = async (office) => {
    let cursor = null;
    let pages = 0;
    do {
      const { body: page } = await state.api.json("/v1/wallet/transactions" + query({
        ...params, limit: 200, cursor, workspace_id: office && office !== state.own ? office : null,
      }));
      rows.push(...(page.data || []));
      cursor = page.next_cursor;
      pages += 1;
    } while (cursor && pages < perOffice);
    truncated = truncated || Boolean(cursor);
  };
  const queue = offices.slice();
  await Promise.all(Array.from({ length: Math.min(4, queue.length) }, async () => {
    while (queue.length) await read(queue.shift());
  }));
  state.chart = { rows, params, truncated };
  drawChart();
}

// Drawn at the width it gets (again when the window changes size), so text stays readable.
function drawChart() {
  if (!state.chart) return;
  const { rows, params, truncated } = state.chart;
  const width = $("chart").clientWidth || 640;
  let range = { from: params.from, to: params.to };
  if (params.month) {
    const [y, m] = params.month.split("-").map(Number);
    range = { from: `${params.month}-01`, to: new Date(Date.UTC(y, m, 0)).toISOString().slice(0, 10) };
  }
  const { svg, totals, bySource } = spendChart(rows, range, cents, width);
  $("chart").replaceChildren(svg);
  $("chart-title").textContent = "Daily spend per service" + (truncated ? ` (newest ${rows.length} rows)` : "");
  const legend = $("chart-legend");
  legend.replaceChildren();
  for (const [key, label] of SERVICES) {
    if (!totals[key]) continue;
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = `swatch s-${key}`;
    const split = bySource[key];
    const detail = split.commitment && split.credits
      ? ` (commitment ${cents(split.commitment)}, credits ${cents(split.credits)})`
      : split.commitment ? " (from commitment)" : "";
    li.append(swatch, `${label}: ${cents(totals[key])}${detail}`);
    legend.append(li);
  }
  if (!legend.children.length) legend.append(Object.assign(document.createElement("li"), { textContent: "No spend in this range." }));
}

async function applyFilters(event) {
  if (event) event.preventDefault();
  const form = $("filters");
  clearErrors(form);
  try {
    state.usageParams = filterParams();
    await loadUsage(true);
    await loadChart(state.usageParams);
  } catch (err) {
    showError(form, "err-filters", err);
  }
}

// The plan usage table (seed 001): committed, spent, held for live calls, available, used %.
async function loadPlan() {
  const section = $("plan");
  let body;
  try {
    body = (await state.api.json(scoped("/v1/wallet/buckets"))).body;
  } catch {
    section.hidden = true;
    return;
  }
  const tbody = $("plan-table").tBodies[0];
  tbody.replaceChildren();
  for (const b of (body && body.buckets) || []) {
    if (!b || b.type === "universal") continue;
    const tr = document.createElement("tr");
    let figures;
    if (b.type === "commitment") {
      figures = [b.committed_micros, b.spent_micros, b.reserved_micros, b.available_micros].map((m) => cents(m));
    } else {
      const unit = b.units_are || b.unit;
      const u = (n) => units(n, unit);
      figures = [u(b.committed_units), u(b.committed_units - b.available_units), "–", u(b.available_units)];
    }
    const name = b.type === "commitment" ? `${b.name} commitment` : `${SERVICE_NAMES[b.name] || b.name} allowance`;
    tr.append(cell(name, "", "Service"), cell(figures[0], "num", "Committed"), cell(figures[1], "num", "Spent"),
      cell(figures[2], "num", "Held for live calls"), cell(figures[3], "num", "Available"),
      cell(typeof b.used_pct === "number" ? `${b.used_pct}%` : "–", "num", "Used"));
    tbody.append(tr);
  }
  section.hidden = tbody.rows.length === 0;
}

function units(n, unit) {
  if (typeof n !== "number") return "–";
  return unit === "s" || unit === "seconds" ? `${Math.round(n / 60).toLocaleString("en-US")} min` : `${n.toLocaleString("en-US")} ${unit || ""}`.trim();
}

async function download(path, fallbackName) {
  const resp = await state.api.fetch(path, { headers: { Accept: "text/csv" } });
  if (!resp.ok) {
    let body = null;
    try { body = await resp.json(); } catch { body = null; }
    throw new ApiError(resp.status, body);
  }
  const blob = await resp.blob();
  const match = /filename="([^"]+)"/.exec(resp.headers.get("Content-Disposition") || "");
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = match ? match[1] : fallbackName;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// Every matching row, not only the rows on screen; a company's "All offices" is the org CSV.
async function exportCsv() {
  const form = $("filters");
  clearErrors(form);
  try {
    const params = filterParams();
    const offices = usageOffices();
    const path = state.company && offices.length > 1
      ? `/v1/organizations/${encodeURIComponent(state.orgId)}/usage/export` + query(params)
      : "/v1/usage/export" + query({ ...params, workspace_id: offices[0] !== state.own ? offices[0] : null });
    await download(path, "usage-history.csv");
  } catch (err) {
    showError(form, "err-filters", err);
  }
}

// ---- month view (seed 002's monthly usage summary) ---------------------------------------

const SERVICE_NAMES = { voice: "Calling", ai_agent: "AI agent", sms: "SMS", mms: "MMS", fax: "Fax", chat: "Chat", numbers: "Numbers" };

async function loadMonth(event) {
  if (event) event.preventDefault();
  $("err-month").textContent = "";
  const month = $("m-month").value || thisMonth();
  try {
    const { body } = await state.api.json(scoped("/v1/usage/summary", { month }));
    $("m-name").textContent = new Date(month + "-15T00:00:00Z").toLocaleDateString(undefined, { month: "long", year: "numeric", timeZone: "UTC" });
    $("m-total").textContent = cents(body.total_spend_micros);
    $("m-credits").textContent = `Credits added this month: ${cents(body.credits_micros)}.`;
    const rows = (id, items, name) => {
      const tbody = $(id).tBodies[0];
      tbody.replaceChildren(...items.map((x) => {
        const tr = document.createElement("tr");
        tr.append(cell(name(x), "", ""), cell(String(x.count ?? ""), "num", "Records"), cell(cents(x.spend_micros), "num", "Spent"));
        return tr;
      }));
      if (!items.length) {
        const tr = document.createElement("tr");
        tr.append(Object.assign(cell("Nothing this month.", "note", ""), { colSpan: 3 }));
        tbody.append(tr);
      }
    };
    rows("m-services", (body.services || []).filter((s) => s.count || s.spend_micros), (s) => SERVICE_NAMES[s.service] || s.service);
    rows("m-users", body.top_users || [], (u) => u.user);
    rows("m-groups", body.top_groups || [], (g) => g.group);
    const plan = $("m-plan").tBodies[0];
    plan.replaceChildren(...(body.plan_usage || []).map((b) => {
      const tr = document.createElement("tr");
      const money = b.type === "commitment";
      tr.append(cell(b.bucket, "", "Credits"),
        cell(money ? cents(b.used_micros) : units(b.used_units, b.unit || "s"), "num", "Used"),
        cell(money ? cents(b.expired_micros) : units(b.expired_units, b.unit || "s"), "num", "Expired"));
      return tr;
    }));
  } catch (err) {
    $("err-month").textContent = plainError(err);
  }
}

function thisMonth() { return new Date().toISOString().slice(0, 7); }

async function exportMonth() {
  try {
    await download(scoped("/v1/usage/summary", { month: $("m-month").value || thisMonth(), format: "csv" }), "usage-summary.csv");
  } catch (err) {
    $("err-month").textContent = plainError(err);
  }
}

// ---- views -------------------------------------------------------------------------------

const VIEWS = ["wallet", "usage", "month"];

function showView(name) {
  for (const v of VIEWS) {
    $(v + "-view").hidden = v !== name;
    if (v === name) $("tab-" + v).setAttribute("aria-current", "page");
    else $("tab-" + v).removeAttribute("aria-current");
  }
  if (!state.api || state.shown.has(name)) return;
  state.shown.add(name);
  if (name === "usage") { applyFilters(); loadPlan(); }
  if (name === "month") { if (!$("m-month").value) $("m-month").value = thisMonth(); loadMonth(); }
}

function wire() {
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) { $("signin-error").textContent = "Paste an API key first (it starts with gk_)."; return; }
    await signIn(key);
  });
  $("signout").addEventListener("click", () => signOut());
  for (const v of VIEWS) $("tab-" + v).addEventListener("click", () => showView(v));
  $("topup-form").addEventListener("submit", reviewTopup);
  $("review-confirm").addEventListener("click", topup);
  $("review-cancel").addEventListener("click", () => { cancelReview(); $("amount_usd").focus(); });
  $("topup-form").querySelector(".presets").addEventListener("click", pickPreset);
  $("add-card-open").addEventListener("click", () => { $("add-card-flow").hidden = false; $("sandbox-card").focus(); });
  $("add-card-submit").addEventListener("click", addCard);
  $("settings-form").addEventListener("submit", saveSettings);
  $("settings-form").addEventListener("input", () => { state.settingsDirty = true; });
  // An edited field's old error goes away: it described the value that was there.
  for (const form of [$("topup-form"), $("settings-form"), $("filters")]) {
    form.addEventListener("input", (event) => {
      const described = event.target.getAttribute("aria-describedby") || "";
      for (const id of described.split(" ")) if (id.startsWith("err-")) document.getElementById(id).textContent = "";
      if (form.id === "topup-form" && !$("review").hidden) cancelReview();
    });
  }
  $("tx-more").addEventListener("click", () => loadTx(false).catch(() => {}));
  $("activity-more").addEventListener("click", () => moreActivity());
  $("usage-more").addEventListener("click", () => loadUsage(false).catch((err) => showError($("filters"), "err-filters", err)));
  $("filters").addEventListener("submit", applyFilters);
  $("f-month").addEventListener("change", () => { if ($("f-month").value) { $("f-from").value = ""; $("f-to").value = ""; } });
  for (const id of ["f-from", "f-to"]) $(id).addEventListener("change", () => { if ($(id).value) $("f-month").value = ""; });
  $("f-reset").addEventListener("click", () => { $("filters").reset(); if (state.company) $("f-office").value = state.office; applyFilters(); });
  $("export").addEventListener("click", exportCsv);
  $("office-search").addEventListener("change", pickOffice);
  $("office-search").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); pickOffice(); } });
  $("spend-alert-dismiss").addEventListener("click", dismissSpendAlert);
  $("month-form").addEventListener("submit", loadMonth);
  $("m-export").addEventListener("click", exportMonth);
  wireDetails();
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
    : plainError(err);
});
