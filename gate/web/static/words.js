// Gate's answers in a person's words: event sentences for the live list, and error messages
// that say what happened and what to do (the API's own messages are written for developers).

const CUT_REASONS = {
  balance: "the balance ran out", suspended: "the workspace is suspended",
  limit: "it reached its time limit", max_duration: "it reached its time limit",
  stale: "the switch stopped reporting it", concurrency: "too many calls at once",
};

// One sentence per event a person cares about; null for plumbing (holds extended every
// second, limits moved), which never reaches the list or a screen reader.
// callName(id): "to +44 20 7123 4567" for a call the page has seen live, else null.
export function describe(ev, { cents, typeName, callName = () => null }) {
  const d = ev.data || {};
  switch (ev.type) {
    case "transaction.created": {
      const amount = Number(d.amount_micros);
      if (d.type === "recharge") return `${cents(amount)} added. Balance ${cents(Number(d.balance_after_micros))}.`;
      if (amount === 0) return null;  // a plan-paid record: its cost shows in Usage history
      const what = typeName(d.type);
      return `${what} ${amount < 0 ? "charged" : "credited"} ${cents(Math.abs(amount))}. Balance ${cents(Number(d.balance_after_micros))}.`;
    }
    case "call.cut": return `Call ${callName(d.call_id) || d.call_id} was cut: ${CUT_REASONS[d.reason] || d.reason || "Gate ended it"}.`;
    case "wallet.recharged": return null;  // the recharge row says it
    case "wallet.depleted": return "The balance ran out: live calls are being cut. Add funds.";
    case "wallet.suspended": return "Calls are suspended until you add funds.";
    case "wallet.low_balance": return "The balance fell below your alert threshold.";
    case "wallet.auto_recharge_started": return "Automatic payment started.";
    case "wallet.auto_recharge_failed": return "Automatic payment failed: check the card, or add funds by hand.";
    case "wallet.auto_recharge_capped": return "Automatic payments paused: this month's cap is reached.";
    case "wallet.spend_threshold": return `This month's spending passed ${d.threshold_pct}% of the budget.`;
    case "wallet.spend_spike": return "Spending today is well above the daily average.";
    default: return null;
  }
}

const FIELD_NAMES = {
  amount_usd: "Amount", payment_method_id: "Card", min_amount_usd: "Amount from",
  max_amount_usd: "Amount to", "auto_recharge.threshold_usd": "Recharge when below",
  "auto_recharge.topup_usd": "Recharge amount", "auto_recharge.monthly_cap_usd": "Monthly cap",
  "low_balance_alert.threshold_usd": "Alert when below", "low_balance_alert.email": "Email",
  from: "From", to: "To", month: "Month",
};

// A message a person can act on. The API's messages name JSON paths and routes; these say
// which box is wrong and how to fix it, and keep the API's words only when they already do.
export function plainError(err) {
  const status = err.status;
  const message = String(err.message || "");
  const field = FIELD_NAMES[err.field] || null;
  if (status === 0) return "Gate cannot be reached. Check your connection; the page keeps trying.";
  if (status === 401) return "Your key was revoked or has expired. Sign in again with a current key.";
  if (status === 403) return "This key may not do that. Sign in with an admin key.";
  if (status === 402 && /declin/i.test(message)) return "The card was declined. Nothing was charged. Use another card or ask your bank.";
  if (status === 503) return "Gate cannot reach its database right now. Nothing was changed; try again in a minute.";
  if (status === 429) return "Too many requests at once. Wait a few seconds and try again.";
  if (status >= 500) return "Gate had a problem and changed nothing. Try again; if it keeps happening, tell your Gate operator.";
  if (/must be from ([\d.]+) to ([\d.]+) USD/.test(message)) {
    const [, low, high] = /must be from ([\d.]+) to ([\d.]+) USD/.exec(message);
    return `${field || "The amount"} must be between $${Number(low).toLocaleString("en-US")} and $${Number(high).toLocaleString("en-US")}, in dollars and cents.`;
  }
  if (/Invalid decimal|Expected `(number|str|decimal)/i.test(message)) return `${field || "That value"} is not an amount in dollars; write it like 25 or 37.50.`;
  if (/email/i.test(err.field || "") && status === 400) return "Enter an email address to send the alert to, like ops@example.com.";
  if (/no payment method on file/.test(message)) return "Connect a card first (Cards), then add funds.";
  if (/auto-recharge needs a payment method/.test(message)) return "Connect a card before turning on automatic payments.";
  if (/auto-recharge needs threshold_usd and topup_usd/.test(message)) return "Fill in both “Recharge when below” and “Recharge amount” to turn on automatic payments.";
  if (/monthly_cap_usd must be at least/.test(message)) return "The monthly cap must be at least the recharge amount.";
  if (/low-balance alerts need threshold_usd/.test(message)) return "Fill in “Alert when below” to turn on low-balance alerts.";
  if (/from must be before to/.test(message)) return "“From” must be before “To”.";
  if (/min_amount_usd must not be above/.test(message)) return "“Amount from” must not be above “Amount to”.";
  if (/either month or from\/to/.test(message)) return "Pick a month or a date range, not both.";
  if (/has not begun/.test(message)) return "That month has not begun; pick this month or an earlier one.";
  if (/at most \d+ payment methods/.test(message)) return "This workspace has as many cards as it can keep. Remove one first.";
  if (/^no such/.test(message)) return "That is not there any more. Reload the page.";
  // Nothing better known: the API's message without its developer pointers.
  const clean = message.replace(/\s*-\s*at `\$[^`]*`/g, "").replace(/;?\s*see (GET|POST) \S+.*$/i, "").trim();
  return clean ? clean[0].toUpperCase() + clean.slice(1) + (/[.!?]$/.test(clean) ? "" : ".") : "Something went wrong; try again.";
}
