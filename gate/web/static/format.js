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

// Lists show cents: "$0.02" for $0.0158 (rounded half away from zero); the details panel
// shows the exact amount with usd().
export function cents(micros, { sign = false } = {}) {
  if (micros === null || micros === undefined) return "–";
  const m = Math.round(Number(micros));
  const c = Math.round(Math.abs(m) / 10000);
  const text = "$" + Math.floor(c / 100).toLocaleString("en-US") + "." + String(c % 100).padStart(2, "0");
  if (m < 0 && c > 0) return "−" + text;
  return sign && m > 0 ? "+" + text : text;
}

const LOCAL = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
});

// The browser's own time zone for reading; the UTC time for a hover title (and the CSV).
export function when(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso || "";
  return LOCAL.format(d);
}

export function utc(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  return d.toISOString().slice(0, 19).replace("T", " ") + " UTC";
}

// A dollar amount as a person types it ("$40", "1,000", " 37.50 ") as the API's decimal
// string, or an error in words. Never rounds: "12.345" is a question, not a guess.
export function dollars(raw, { min = null, max = null } = {}) {
  const text = String(raw ?? "").trim().replace(/^\$\s*/, "").replace(/^US\$/i, "");
  if (!text) return { error: "Enter an amount in dollars, like 25 or 37.50." };
  if (!/^\d{1,3}(,\d{3})*(\.\d+)?$|^\d+(\.\d+)?$/.test(text)) {
    return { error: `“${String(raw).trim()}” is not an amount in dollars; write it like 25 or 37.50.` };
  }
  const plain = text.replace(/,/g, "");
  const [whole, frac = ""] = plain.split(".");
  if (frac.length > 2) {
    const near = (Math.round(Number(plain) * 100) / 100).toFixed(2);
    return { error: `Amounts are in dollars and cents: ${text} has ${frac.length} decimals. Did you mean ${near}?` };
  }
  const value = Number(plain);
  if (min !== null && value < min) return { error: `The smallest amount is $${min.toLocaleString("en-US")}; enter ${min} or more.` };
  if (max !== null && value > max) return { error: `The largest amount is $${max.toLocaleString("en-US")}; enter ${max.toLocaleString("en-US")} or less.` };
  return { value: whole + (frac ? "." + frac : ""), micros: Math.round(value * 100) * 10000 };
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
  plan_cycle: "Plan renewed",
};

export function typeName(type) { return TYPE_NAMES[type] || type; }

const SOURCE_NAMES = { plan_allowance: "Plan allowance", commitment: "Commitment", universal: "Credits" };
const UNIT_NAMES = { s: "min", segment: "segments", message: "messages", page: "pages" };

// Which credits paid a usage row, as a person reads it: "Commitment $1.00 + Credits $1.00",
// "Plan allowance 2 min". full: exact amounts (the details panel), else cents.
export function paidFrom(parts, { full = false } = {}) {
  if (!Array.isArray(parts) || !parts.length) return "";
  return parts.map((p) => {
    const name = SOURCE_NAMES[p.source] || p.source;
    if (p.source === "plan_allowance") {
      const amount = p.unit === "s" ? seconds(p.units) : String(p.units);
      return `${name} ${amount} ${UNIT_NAMES[p.unit] || p.unit}`;
    }
    const label = p.source === "commitment" && p.name ? `${name} (${p.name})` : name;
    return `${label} ${full ? usd(p.micros) : cents(p.micros)}`;
  }).join(" + ");
}
