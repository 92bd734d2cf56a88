// One event stream for every tab of this browser: a SharedWorker holds one GET /v1/events per
// key and fans its events out to the tabs that use that key. Six tabs each holding a stream
// used all six of the browser's HTTP/1.1 connections to Gate and froze every tab.
//
// Messages from a tab: {type: "hello", key} to join (the key travels in memory only) and
// {type: "bye"} when it closes. To a tab: {type: "event", event}, {type: "state", mode,
// caughtUp} and {type: "auth"} when Gate refuses the key.

import { Api } from "./api.js";
import { LiveEvents } from "./live.js";

const streams = new Map();  // key -> {live, ports: Set, mode}

function join(port, key) {
  let s = streams.get(key);
  if (!s) {
    s = { ports: new Set(), mode: "connecting", live: null };
    const send = (msg) => { for (const p of s.ports) p.postMessage(msg); };
    s.live = new LiveEvents(new Api(key), {
      onEvent: (event) => send({ type: "event", event }),
      onState: (mode, caughtUp) => { s.mode = mode; send({ type: "state", mode, caughtUp: Boolean(caughtUp) }); },
      onAuthError: () => { send({ type: "auth" }); streams.delete(key); },
    });
    streams.set(key, s);
    s.live.start();
  }
  s.ports.add(port);
  port.postMessage({ type: "state", mode: s.mode, caughtUp: false });
  return s;
}

function leave(port) {
  for (const [key, s] of streams) {
    if (!s.ports.delete(port) || s.ports.size) continue;
    s.live.stop();  // the last tab of this key closed: the stream goes too
    streams.delete(key);
  }
}

self.addEventListener("connect", (event) => {
  const port = event.ports[0];
  port.addEventListener("message", (msg) => {
    const data = msg.data || {};
    if (data.type === "hello" && typeof data.key === "string") { leave(port); join(port, data.key); }
    else if (data.type === "bye") leave(port);
    else if (data.type === "count") port.postMessage({ type: "count", streams: streams.size });
  });
  port.start();
});
