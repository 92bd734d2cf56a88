// Daily spend per service, stacked by the credits that paid it (commitment hatched, credits
// solid), as a small SVG drawn here (no chart library needed). Spend is what usage cost, not
// what left the wallet: commitment-paid calls count.

const NS = "http://www.w3.org/2000/svg";
export const SERVICES = [
  ["call", "Calling"], ["ai_agent", "AI agent"], ["messaging", "Messaging"], ["fax", "Fax"],
  ["numbers", "Numbers"], ["other", "Other"],
];
const SERVICE_OF = {
  call: "call", ai_agent: "ai_agent", sms: "messaging", mms: "messaging", chat: "messaging",
  fax: "fax", number_rental: "numbers",
};

const SOURCES = ["commitment", "credits"];  // stacked in this order, commitment at the bottom
export const SOURCE_LABEL = { commitment: "commitment", credits: "credits" };

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function days(fromDay, toDay) {
  const out = [];
  for (let t = Date.parse(fromDay + "T00:00:00Z"); t <= Date.parse(toDay + "T00:00:00Z"); t += 86400000) {
    out.push(new Date(t).toISOString().slice(0, 10));
  }
  return out;
}

// What a row cost per source: commitment dollars and universal dollars (credits). Rows
// without a cost (credits, plan rows) are not spend.
function costParts(r) {
  if (typeof r.cost_micros !== "number") return null;
  let commitment = 0;
  for (const p of r.paid_from || []) if (p.source === "commitment") commitment += p.micros || 0;
  return { commitment, credits: r.cost_micros - commitment };
}

// rows: ledger rows (any order); range: {from, to} as YYYY-MM-DD or empty; width: the pixels
// the chart gets, so its text stays readable on a phone. Returns {svg, totals} where totals
// is micros spent per service key.
export function spendChart(rows, range, formatUsd, width = 640) {
  const debits = rows.filter((r) => costParts(r) && r.cost_micros > 0);
  const newest = debits.reduce((m, r) => (r.at > m ? r.at : m), "");
  let toDay = range.to || (newest ? newest.slice(0, 10) : new Date().toISOString().slice(0, 10));
  let fromDay = range.from;
  if (!fromDay) {
    // No range chosen: the days that have spend (a week at least, a month at most).
    const oldest = debits.reduce((m, r) => (r.at < m ? r.at : m), newest || toDay).slice(0, 10);
    const back = (n) => new Date(Date.parse(toDay + "T00:00:00Z") - n * 86400000).toISOString().slice(0, 10);
    fromDay = oldest < back(29) ? back(29) : oldest > back(6) ? back(6) : oldest;
  }
  if (fromDay > toDay) [fromDay, toDay] = [toDay, fromDay];
  let span = days(fromDay, toDay);
  if (span.length > 92) span = span.slice(-92);  // at most a quarter, newest days
  const perDay = new Map(span.map((d) => [d, {}]));
  const totals = {};
  const bySource = {};  // service -> {commitment, credits}
  for (const r of debits) {
    const d = perDay.get(String(r.at).slice(0, 10));
    if (!d) continue;
    const s = SERVICE_OF[r.type] || "other";
    const parts = costParts(r);
    for (const src of SOURCES) {
      if (!parts[src]) continue;
      d[s + ":" + src] = (d[s + ":" + src] || 0) + parts[src];
    }
    const m = r.cost_micros;
    totals[s] = (totals[s] || 0) + m;
    bySource[s] = bySource[s] || { commitment: 0, credits: 0 };
    bySource[s].commitment += parts.commitment;
    bySource[s].credits += parts.credits;
  }
  const max = Math.max(1, ...[...perDay.values()].map((d) => Object.values(d).reduce((a, b) => a + b, 0)));
  const W = Math.max(280, Math.min(Math.round(width), 1000)), H = 220, left = 56, bottom = 24, top = 8, plotH = H - top - bottom;
  const slot = (W - left - 8) / span.length;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "chart-svg-title" });
  const sum = Object.values(totals).reduce((a, b) => a + b, 0);
  svg.append(el("title", { id: "chart-svg-title" },
    `Daily spend per service from ${span[0]} to ${span[span.length - 1]}: ${formatUsd(sum)} in all`));
  for (const f of [0, 0.5, 1]) {
    const y = top + plotH * (1 - f);
    svg.append(el("line", { x1: left, x2: W - 8, y1: y, y2: y, class: "grid" }));
    svg.append(el("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "axis" }, formatUsd(Math.round(max * f))));
  }
  span.forEach((d, i) => {
    let y = top + plotH;
    const x = left + i * slot + slot * 0.15;
    for (const [s, label] of SERVICES) {
      for (const src of SOURCES) {
        const m = perDay.get(d)[s + ":" + src];
        if (!m) continue;
        const h = Math.max(1, (m / max) * plotH);
        y -= h;
        const bar = el("rect", { x, y, width: Math.max(1, slot * 0.7), height: h,
          class: `bar s-${s} src-${src}`, "data-day": d, "data-service": s, "data-source": src });
        bar.append(el("title", {}, `${d} ${label}, paid from ${SOURCE_LABEL[src]}: ${formatUsd(m)}`));
        svg.append(bar);
      }
    }
    const every = Math.ceil(span.length / 6);
    if (i % every === 0) {
      svg.append(el("text", { x: left + i * slot + slot / 2, y: H - 6, "text-anchor": "middle", class: "axis" }, d.slice(5)));
    }
  });
  return { svg, totals, bySource };
}
