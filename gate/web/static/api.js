// Gate's public API with the key of this tab: JSON in and out, errors as ApiError.

const KEY = "gate.billing.key";

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `Gate answered ${status}; try again, or reload the page.`);
    this.status = status;
    this.code = err.code || "http_" + status;
    this.field = err.field || fieldOf(err.message || "");
  }
}

// msgspec validation messages name the field as "at `$.amount_usd`" or
// "missing required field `payment_method_id`".
function fieldOf(message) {
  const m = /at `\$\.([\w.]+)`/.exec(message) || /required field `([\w.]+)`/.exec(message);
  return m ? m[1] : null;
}

export function storedKey() { return sessionStorage.getItem(KEY); }
export function storeKey(key) { sessionStorage.setItem(KEY, key); }
export function forgetKey() { sessionStorage.removeItem(KEY); }

export class Api {
  constructor(key) { this.key = key; }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.key}`, Accept: "application/json", ...extra };
  }

  // The raw Response (for 304s, streams and downloads); network failures become ApiError 0.
  async fetch(path, { method = "GET", body, headers = {}, signal } = {}) {
    const init = { method, headers: this.headers(headers), signal, cache: "no-store" };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    try {
      return await fetch(path, init);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, { error: { code: "network", message: "Gate cannot be reached; check the connection and try again." } });
    }
  }

  async json(path, options = {}) {
    const resp = await this.fetch(path, options);
    if (resp.status === 304) return { status: 304, body: null, etag: resp.headers.get("ETag") };
    const text = await resp.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = null; }
    if (!resp.ok) throw new ApiError(resp.status, body);
    return { status: resp.status, body, etag: resp.headers.get("ETag") };
  }
}

// The query string of a filter object, skipping empty values.
export function query(params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && String(value).trim() !== "") q.set(name, String(value).trim());
  }
  const s = q.toString();
  return s ? "?" + s : "";
}
