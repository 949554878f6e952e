// The socket: connecting with backoff, close codes, keep-alive, chunk frames.
//
// It knows the transport rules of docs/protocol.md and nothing about rooms:
// what the frames mean is sync.js's business. It hands on every frame, whole
// (a frame the server split into `chunk` frames is joined back first), and
// reports the connection's state.

const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 10_000;
const PING_EVERY_MS = 25_000;
const PONG_TIMEOUT_MS = 10_000;

// Close codes after which retrying cannot help.
export const TERMINAL_CLOSES = {
  4401: "signed-out",
  4403: "forbidden",
  4404: "missing",
};

export class Socket {
  // url(): where to connect (with the resume cursor); onFrame(frame);
  // onState(kind, detail): "connecting" | "reconnecting" {retryAt, attempt} |
  // "offline" | "closed" {code}; onStop(reason): a terminal close.
  constructor({ url, onFrame, onState, onStop }) {
    this.url = url;
    this.onFrame = onFrame;
    this.onState = onState;
    this.onStop = onStop;
    this.ws = null;
    this.attempt = 0;
    this.everOpen = false;
    this.retryTimer = null;
    this.retryAt = 0;
    this.pingTimer = null;
    this.pongTimer = null;
    this.stopped = false;
    this.chunks = new Map(); // chunk id -> {count, parts}
    this.resumeNow = false;
  }

  start() {
    window.addEventListener("online", () => this.reconnectNow());
    window.addEventListener("offline", () => this.wentOffline());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.reconnectNow();
    });
    if (navigator.onLine === false) this.wentOffline();
    else this.connect();
  }

  get open() {
    return Boolean(this.ws && this.ws.readyState === WebSocket.OPEN);
  }

  connect() {
    this.retryClear();
    if (this.stopped || this.ws) return;
    this.onState(this.everOpen ? "reconnecting" : "connecting", { retryAt: 0, attempt: this.attempt });
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch {
      this.schedule();
      return;
    }
    this.ws = ws;
    this.chunks.clear();
    ws.addEventListener("open", () => {
      if (this.ws === ws) this.everOpen = true;
    });
    ws.addEventListener("message", (event) => {
      if (this.ws === ws) this.received(event.data);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws === ws) this.gone(event.code);
    });
  }

  // A hello arrived: the connection is good, start over with the backoff.
  live() {
    this.attempt = 0;
    this.pingStart();
  }

  send(payload) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(payload));
    return true;
  }

  // Close and reconnect at once (e.g. after a lost last event).
  resume() {
    if (!this.ws) return;
    this.resumeNow = true;
    this.ws.close(1000);
  }

  stop(reason) {
    this.stopped = true;
    this.retryClear();
    this.pingStop();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
    this.onStop(reason);
  }

  received(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    // Any frame proves the socket is alive.
    if (this.pongTimer !== null) {
      window.clearTimeout(this.pongTimer);
      this.pongTimer = null;
    }
    if (frame.type === "chunk") {
      this.chunkAdd(frame);
      return;
    }
    this.onFrame(frame);
  }

  // One frame too large for the server to send whole arrives as `chunk` frames
  // (other frames may come between them); joined in order they are its text.
  chunkAdd(frame) {
    const id = String(frame.id);
    const count = Number(frame.count);
    const index = Number(frame.index);
    if (!Number.isInteger(count) || !Number.isInteger(index) || index < 0 || index >= count) return;
    let entry = this.chunks.get(id);
    if (!entry) {
      entry = { count, parts: new Array(count), have: 0 };
      this.chunks.set(id, entry);
    }
    if (entry.parts[index] === undefined) {
      entry.parts[index] = String(frame.data || "");
      entry.have += 1;
    }
    if (entry.have === entry.count) {
      this.chunks.delete(id);
      this.received(entry.parts.join(""));
    }
  }

  gone(code) {
    this.ws = null;
    this.pingStop();
    this.onState("closed", { code });
    if (TERMINAL_CLOSES[code]) {
      this.stop(TERMINAL_CLOSES[code]);
      return;
    }
    if (this.resumeNow) {
      this.resumeNow = false;
      this.connect();
      return;
    }
    if (navigator.onLine === false) {
      this.wentOffline();
      return;
    }
    this.schedule();
  }

  // The browser says the network is gone: say so now, not when pings time out.
  wentOffline() {
    if (this.stopped) return;
    this.retryClear();
    this.pingStop();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
      this.onState("closed", { code: 1006 });
    }
    this.onState("offline", {});
  }

  schedule() {
    if (this.stopped) return;
    this.retryClear();
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    // Full jitter on the upper half: spreads a crowd of reconnecting tabs.
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.retryTimer = window.setTimeout(() => this.connect(), delay);
    this.onState("reconnecting", { retryAt: this.retryAt, attempt: this.attempt });
  }

  retryClear() {
    if (this.retryTimer !== null) window.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.retryAt = 0;
  }

  reconnectNow() {
    if (this.stopped) return;
    if (navigator.onLine === false) {
      this.wentOffline();
      return;
    }
    if (!this.ws) {
      this.connect();
    } else if (this.open) {
      this.ping(); // back from sleep or a network change: make sure the socket still answers
    }
  }

  // A socket that stopped answering: drop it without waiting for a close handshake.
  abandon() {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    try {
      ws.close();
    } catch {
      // already closing
    }
    this.gone(1006);
  }

  ping() {
    if (this.pongTimer !== null) return;
    if (this.send({ type: "ping" })) {
      this.pongTimer = window.setTimeout(() => this.abandon(), PONG_TIMEOUT_MS);
    }
  }

  pingStart() {
    this.pingStop();
    this.pingTimer = window.setInterval(() => this.ping(), PING_EVERY_MS);
  }

  pingStop() {
    if (this.pingTimer !== null) window.clearInterval(this.pingTimer);
    if (this.pongTimer !== null) window.clearTimeout(this.pongTimer);
    this.pingTimer = null;
    this.pongTimer = null;
  }
}
