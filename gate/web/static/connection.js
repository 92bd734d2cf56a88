// The page's live connection. Every tab shares one event stream: through a SharedWorker
// where the browser has one, else one tab (the leader, elected with a Web Lock) holds the
// stream and passes its events to the others over a BroadcastChannel. Only where neither
// exists does each tab read its own stream.

import { LiveEvents } from "./live.js";

const WORKER_URL = "/billing/assets/events-worker.js";

// handlers: {onEvent(event), onState(mode, caughtUp), onAuthError()}
export function connect(api, handlers) {
  if (typeof SharedWorker === "function") {
    try { return viaWorker(api, handlers); } catch (err) { console.warn("no shared worker", err); }
  }
  if (navigator.locks && typeof BroadcastChannel === "function") return viaLeader(api, handlers);
  const live = new LiveEvents(api, handlers);
  live.start();
  return { mode: "tab", stop: () => live.stop() };
}

function viaWorker(api, { onEvent, onState, onAuthError }) {
  const worker = new SharedWorker(WORKER_URL, { type: "module", name: "gate-billing-events" });
  const port = worker.port;
  port.onmessage = (msg) => {
    const data = msg.data || {};
    if (data.type === "event") onEvent(data.event);
    else if (data.type === "state") onState(data.mode, data.caughtUp);
    else if (data.type === "auth") onAuthError();
  };
  port.start();
  port.postMessage({ type: "hello", key: api.key });
  const bye = () => port.postMessage({ type: "bye" });
  window.addEventListener("pagehide", bye);
  return {
    mode: "shared-worker",
    stop() { bye(); window.removeEventListener("pagehide", bye); port.close(); },
  };
}

// Tabs of one key share a channel named after a hash of it (the key itself is not a name
// anything else can read). The lock's holder reads the stream; when it closes, the lock
// passes to another tab, which opens the stream and resumes.
function viaLeader(api, { onEvent, onState, onAuthError }) {
  let stopped = false;
  let channel = null;
  let release = null;
  let leading = null;  // the stream's last state, while this tab is the leader
  let lastId = null;  // the last event id seen: a new leader resumes the stream after it
  const ready = digest(api.key).then((name) => {
    if (stopped) return;
    channel = new BroadcastChannel("gate-billing-" + name);
    channel.onmessage = (msg) => {
      const d = msg.data || {};
      if (d.type === "ask" && leading) channel.postMessage({ type: "state", mode: leading, caughtUp: false });
      else if (d.type === "event") { lastId = d.id || lastId; onEvent(d.event); }
      else if (d.type === "state") onState(d.mode, d.caughtUp);
      else if (d.type === "auth") onAuthError();
    };
    const asked = Date.now();
    navigator.locks.request("gate-billing-" + name, () => new Promise((resolve) => {
      if (stopped) { resolve(); return; }
      const took = Date.now() - asked > 200;  // waited for a leader that went away
      const send = (m) => channel.postMessage(m);
      const live = new LiveEvents(api, {
        onEvent: (event) => { onEvent(event); send({ type: "event", event, id: live.lastId }); },
        // A tab that takes over catches up as after a reconnect: every tab reloads figures.
        onState: (mode, caughtUp) => {
          const fresh = caughtUp || (mode === "live" && lastId === null && took);
          leading = mode;
          onState(mode, fresh);
          send({ type: "state", mode, caughtUp: fresh });
        },
        onAuthError: () => { onAuthError(); send({ type: "auth" }); },
      });
      live.lastId = lastId;
      live.start();
      release = () => { leading = null; live.stop(); resolve(); };
    }));
    channel.postMessage({ type: "ask" });  // a new follower learns the leader's state
  });
  return {
    mode: "leader",
    ready,
    stop() { stopped = true; if (release) release(); if (channel) channel.close(); },
  };
}

async function digest(text) {
  if (crypto.subtle) {
    const hash = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
    return Array.from(new Uint8Array(hash).slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  let h = 0;
  for (const ch of text) h = (h * 31 + ch.charCodeAt(0)) | 0;
  return String(h >>> 0);
}
