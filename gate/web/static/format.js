// Money and dates for people: money arrives as integer micros and stays integers here.

const MICROS = 1_000_000;

// "$1,234.50" from micros; more than 2 decimals only when the amount has them ($0.0079).
export function usd(micros, { sign = false } = {}) {
  if (micros === null || micros === undefined) return "–";
  const m = Math.round(Number(micros));
  const abs = Math.abs(m);
  const whole = Math.floor(abs / MICROS);
  let frac = String(abs % MICROS).padStart(6, "0").replace(/0+$/, "");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  const text = "$" + whole.toLocaleString("en-US") + "." + frac;
  if (m < 0) return "−" + text;
  return sign && m > 0 ? "+" + text : text;
}

// Micros of a *_usd number when an API answer lacks the *_micros twin.
export function micros(obj, name) {
  if (!obj) return null;
  const exact = obj[name + "_micros"];
  if (typeof exact === "number") return exact;
  const dollars = obj[name + "_usd"];
  return typeof dollars === "number" ? Math.round(dollars * MICROS) : null;
}

export function when(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso || "";
  return d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

export function day(iso) { return String(iso).slice(0, 10); }

export function seconds(s) {
  if (s === undefined || s === null || s === "") return "";
  const n = Number(s);
  return `${Math.floor(n / 60)}:${String(n % 60).padStart(2, "0")}`;
}

export const TYPE_NAMES = {
  recharge: "Recharge", call: "Call", ai_agent: "AI agent", sms: "SMS", mms: "MMS", fax: "Fax",
  chat: "Chat", number_rental: "Number rental", adjustment: "Adjustment", refund: "Refund",
};

export function typeName(type) { return TYPE_NAMES[type] || type; }
