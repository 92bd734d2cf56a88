// GET /v1/events read with fetch(), not EventSource: EventSource cannot send the
// Authorization header, and the key must never go into a URL. Reconnects with
// Last-Event-ID and growing back-off, telling the page its state as it goes.

export class LiveEvents {
  constructor(api, { onEvent, onState, onAuthError }) {
    this.api = api;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onAuthError = onAuthError;
    this.lastId = null;
    this.controller = null;
    this.stopped = false;
  }

  start() { this.run(); }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  async run() {
    let delay = 1000;
    let first = true;
    while (!this.stopped) {
      this.onState(first ? "connecting" : "reconnecting");
      try {
        await this.once(() => { delay = 1000; this.onState("live", !first); first = false; });
      } catch (err) {
        if (this.stopped) return;
        if (err.auth) { this.onAuthError(err); return; }
      }
      if (this.stopped) return;
      first = false;
      this.onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }

  async once(opened) {
    this.controller = new AbortController();
    const headers = { Accept: "text/event-stream" };
    if (this.lastId) headers["Last-Event-ID"] = this.lastId;
    const resp = await this.api.fetch("/v1/events", { headers, signal: this.controller.signal });
    if (resp.status === 401 || resp.status === 403) {
      const err = new Error("key refused");
      err.auth = true;
      throw err;
    }
    if (!resp.ok || !resp.body) throw new Error(`events answered ${resp.status}`);
    opened();
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;  // the stream ended (Gate restarting): reconnect
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        this.frame(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  }

  frame(raw) {
    let id = null;
    const data = [];
    for (const line of raw.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (name === "id") id = value;
      else if (name === "data") data.push(value);
    }
    if (id) this.lastId = id;
    if (!data.length) return;
    try {
      this.onEvent(JSON.parse(data.join("\n")));
    } catch (err) {
      console.warn("unreadable event", err);
    }
  }
}
