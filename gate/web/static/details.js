// The details panel of one transaction (seed 001's side panel): a side panel on a desktop, a
// full-screen sheet on a phone (CSS), a modal <dialog> so focus stays inside and Esc closes.

import { cents, paidFrom, seconds, typeName, usd, utc, when } from "./format.js";

const $ = (id) => document.getElementById(id);
let opener = null;

const LABELS = [
  ["call_id", "Call ID"], ["conversation_id", "Conversation ID"], ["message_id", "Message ID"],
  ["fax_id", "Fax ID"], ["mode", "Mode"], ["fax_line", "Fax line"], ["from", "From"], ["to", "To"],
  ["direction", "Direction"], ["duration_s", "Duration"], ["billable_s", "Billed time"],
  ["location", "Location"], ["segments", "Message segments"], ["pages", "Pages"],
  ["rate_per_min_usd", "Rate per minute"], ["rate_per_segment_usd", "Rate per segment"],
  ["rate_per_message_usd", "Rate per message"], ["rate_per_page_usd", "Rate per page"],
  ["billing_increment", "Billing increment"], ["call_quality", "Call quality"],
  ["delivery_status", "Delivery status"], ["status", "Status"], ["skills", "Skills triggered"],
  ["actions", "Actions executed"], ["sessions", "Sessions consumed"],
  ["hangup_cause", "Hangup cause"], ["number", "Number"], ["period", "Period"],
  ["payment_id", "Payment"], ["payment_method_id", "Card"],
];

function value(name, v) {
  if (name.endsWith("_usd")) return usd(Math.round(Number(v) * 1e6));  // full precision here
  if (name === "duration_s" || name === "billable_s") return `${seconds(v)} (${v} s)`;
  if (name === "direction") return v === "inbound" ? "Inbound" : "Outbound";
  if (name === "status" || name === "delivery_status") return String(v)[0].toUpperCase() + String(v).slice(1);
  return Array.isArray(v) ? v.join(", ") : String(v);
}

function row(list, label, text, title) {
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.textContent = text;
  if (title) dd.title = title;
  list.append(dt, dd);
}

export async function openDetails(api, listed, { office, own, name }) {
  const dialog = $("details");
  opener = document.activeElement;
  $("details-title").textContent = `${typeName(listed.type)} details`;
  $("details-summary").textContent = listed.description || "";
  $("details-list").replaceChildren();
  $("details-error").textContent = "";
  if (!dialog.open) dialog.showModal();
  $("details-close").focus();
  let r;
  try {
    const params = office && office !== own ? `?workspace_id=${encodeURIComponent(office)}` : "";
    r = (await api.json(`/v1/wallet/transactions/${encodeURIComponent(listed.id)}${params}`)).body;
  } catch (err) {
    $("details-error").textContent = err.status === 404
      ? "This transaction cannot be found any more. Reload the page."
      : "The details could not be loaded. Check the connection and try again.";
    return;
  }
  const list = $("details-list");
  row(list, "Date", `${when(r.at)}`, utc(r.at));
  if (name) row(list, "Office", name);
  if (r.user || r.group) row(list, "Member or group", [r.user, r.group].filter(Boolean).join(" · "));
  for (const [key, label] of LABELS) {
    const v = (r.details || {})[key];
    if (v !== undefined && v !== null && v !== "") row(list, label, value(key, v));
  }
  if (typeof r.cost_micros === "number") {
    row(list, "Cost", usd(r.cost_micros));
    row(list, "Paid from", paidFrom(r.paid_from, { full: true }) || "Credits");
  }
  row(list, "Wallet change", cents(r.amount_micros, { sign: true }) + (r.amount_micros % 10000 ? ` (exactly ${usd(r.amount_micros)})` : ""));
  row(list, "Balance after", usd(r.balance_after_micros));
  row(list, "Transaction ID", r.id);
}

export function wireDetails() {
  const dialog = $("details");
  $("details-close").addEventListener("click", () => dialog.close());
  // A click on the backdrop (outside the panel) closes it too.
  dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });
  dialog.addEventListener("close", () => { if (opener && opener.isConnected) opener.focus(); });
}
