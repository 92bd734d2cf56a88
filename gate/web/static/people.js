// A key per person: redeem a one-time sign-in link (#signin=<token>), and the activity view
// (the workspace's audit log: who changed what).

import { ApiError, query } from "./api.js";
import { when } from "./format.js";

const PERSON = "gate.billing.person";

export function storedPerson() { return sessionStorage.getItem(PERSON); }
export function forgetPerson() { sessionStorage.removeItem(PERSON); }

// The link's token leaves the address bar at once (history, screenshots, shoulder-surfing);
// redeemed, it is used up: a reload signs in with the stored key, not the link.
export async function redeemLink() {
  const m = /^#signin=([\w-]+)$/.exec(location.hash);
  if (!m) return null;
  history.replaceState(null, "", location.pathname + location.search);
  let resp;
  try {
    resp = await fetch("/v1/signin", {
      method: "POST", cache: "no-store",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ token: m[1] }),
    });
  } catch {
    throw new ApiError(0, { error: { message: "Gate cannot be reached; open the link again in a moment." } });
  }
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, body);
  sessionStorage.setItem(PERSON, body.person);
  return body;
}

function describe(entry) {
  const after = entry.after || {};
  const before = entry.before || {};
  const names = Object.keys(after).length ? Object.keys(after) : Object.keys(before);
  return names.map((n) => `${n}: ${fmt(before[n])} → ${fmt(after[n])}`).join("; ");
}

function fmt(value) {
  if (value === undefined || value === null) return "–";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

// One page of the audit log into the table; returns the next cursor (null: the end).
export async function loadActivity(api, tbody, cursor) {
  const { body } = await api.json("/v1/audit" + query({ limit: 20, cursor }));
  for (const e of body.data) {
    const tr = document.createElement("tr");
    for (const [text, label] of [[when(e.at), "Date"], [e.action, "Change"],
      [e.person || e.key_id, "By"], [describe(e), "Details"]]) {
      const td = document.createElement("td");
      td.dataset.label = label;
      td.textContent = text;
      tr.append(td);
    }
    tbody.append(tr);
  }
  return body.next_cursor;
}
