// The room page: one WebSocket, a message log kept complete by seq, a composer.
//
// Protocol: docs/protocol.md. Trust rules: the server-sanitized `html` field of a
// message is the only HTML ever inserted; every other string goes in as text.
// Completeness never relies on the transport: every message carries its room
// `seq`, a jump is filled with history.fetch, and every reconnect resumes with
// ?after=<newest id seen>.

const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 10_000;
const TYPING_RESEND_MS = 3_000;
const TYPING_IDLE_MS = 4_000;
const TYPING_EXPIRE_MS = 6_000;
const PING_EVERY_MS = 25_000;
const PONG_TIMEOUT_MS = 10_000;
const NEAR_BOTTOM_PX = 80;
const HISTORY_PAGE = 50;
const HISTORY_MAX = 100;
const NOTE_MS = 10_000;
const AVATAR_COLOURS = 8;
const STATUSES = new Set(["complete", "streaming", "cancelled", "error", "interrupted"]);

// Close codes after which retrying cannot help.
const TERMINAL_CLOSES = {
  4401: "signed-out",
  4403: "forbidden",
  4404: "missing",
};

const config = JSON.parse(document.getElementById("room-config").textContent);
const root = document.getElementById("room");
const els = {
  log: document.getElementById("log"),
  list: document.getElementById("messages"),
  pending: document.getElementById("pending"),
  older: document.getElementById("older"),
  pill: document.getElementById("new-pill"),
  presence: document.getElementById("presence"),
  presenceCount: document.getElementById("presence-count"),
  typing: document.getElementById("typing"),
  notices: document.getElementById("notices"),
  form: document.getElementById("composer"),
  text: document.getElementById("text"),
  send: document.getElementById("send"),
  connection: document.getElementById("connection"),
};

const state = {
  me: config.username,
  assistant: config.assistant,
  messages: new Map(), // id -> {msg, el}
  streams: new Map(), // reply id -> {text, seq, known}
  pending: new Map(), // client_id -> {text, el}
  inflight: [], // client_ids sent on the current socket, awaiting their answer
  historyKinds: [], // "older" | "gap", one per history.fetch on the current socket
  holesAsked: new Set(), // message ids a hole below was already fetched for (per socket)
  lastSeq: 0,
  lastId: 0,
  reachedStart: false,
  olderLoading: false,
  ws: null,
  everLive: false,
  attempt: 0,
  retryTimer: null,
  retryAt: 0,
  countdownTimer: null,
  resumeNow: false,
  stopped: false,
  pingTimer: null,
  suspect: null,
  pongTimer: null,
  typers: new Map(), // username -> expiry timer
  typingActive: false,
  typingSentAt: 0,
  typingIdleTimer: null,
  queuedNotes: new Map(), // in_reply_to -> notice element
};

// --- Small helpers -----------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function clientIdNew() {
  if (window.crypto && typeof window.crypto.randomUUID === "function") {
    return window.crypto.randomUUID();
  }
  // randomUUID needs a secure context; plain-http hosts still have getRandomValues.
  const bytes = window.crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function avatarClass(name) {
  let hash = 0;
  for (const ch of String(name)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `av-${hash % AVATAR_COLOURS}`;
}

function avatar(name, role) {
  const node = el("span", `avatar ${role === "assistant" ? "av-ai" : avatarClass(name)}`);
  node.setAttribute("aria-hidden", "true");
  node.textContent = role === "assistant" ? "AI" : String(name).slice(0, 1).toUpperCase();
  return node;
}

function timeLabel(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return null;
  const now = new Date();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === now.toDateString()) return time;
  return `${date.toLocaleDateString([], { month: "short", day: "numeric" })}, ${time}`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

// --- Connection state --------------------------------------------------------

function connectionShow(kind, text, link) {
  els.connection.dataset.state = kind;
  const label = els.connection.querySelector(".connection-text");
  label.textContent = text;
  if (link) {
    label.append(" ");
    const a = el("a", "connection-link", link.text);
    a.href = link.href;
    label.append(a);
  }
}

function composerEnable(enabled) {
  els.text.disabled = !enabled;
  els.send.disabled = !enabled;
}

function loginHref() {
  const url = new URL(root.dataset.loginUrl || "/accounts/login/", window.location.href);
  url.searchParams.set("next", window.location.pathname);
  return url.pathname + url.search;
}

function stopForGood(reason) {
  state.stopped = true;
  retryClear();
  composerEnable(false);
  typersClear();
  for (const item of state.pending.values()) {
    item.el.classList.add("failed");
    item.el.querySelector(".msg-time").textContent = "not sent";
  }
  if (reason === "signed-out") {
    connectionShow("signed-out", "Signed out.", { text: "Log in again", href: loginHref() });
  } else if (reason === "forbidden") {
    connectionShow("forbidden", "No access: this room is private.", {
      text: "All rooms",
      href: root.dataset.roomsUrl || "/",
    });
  } else {
    connectionShow("missing", "This room does not exist.", { text: "All rooms", href: root.dataset.roomsUrl || "/" });
  }
}

// --- Socket lifecycle -----------------------------------------------------------

function socketUrl() {
  const proto = window.location.protocol === "https:" ? "wss:" : "ws:";
  const base = `${proto}//${window.location.host}/ws/rooms/${encodeURIComponent(config.slug)}/`;
  return state.lastId > 0 ? `${base}?after=${state.lastId}` : base;
}

function connect() {
  retryClear();
  if (state.stopped || state.ws) return;
  connectionShow(
    state.everLive ? "reconnecting" : "connecting",
    state.everLive ? "Reconnecting…" : "Connecting…",
  );
  let ws;
  try {
    ws = new WebSocket(socketUrl());
  } catch {
    reconnectSchedule();
    return;
  }
  state.ws = ws;
  state.inflight = [];
  state.historyKinds = [];
  state.holesAsked.clear();
  ws.addEventListener("message", (event) => {
    if (state.ws === ws) frameHandle(event.data);
  });
  ws.addEventListener("close", (event) => {
    if (state.ws === ws) socketGone(event.code);
  });
}

function socketGone(code) {
  state.ws = null;
  pingStop();
  typersClear();
  olderLoadingSet(false);
  if (TERMINAL_CLOSES[code]) {
    stopForGood(TERMINAL_CLOSES[code]);
    return;
  }
  if (code === 4413) {
    noticeShow("too_large", "That was too large for the server; the connection was reset.");
  }
  if (state.resumeNow) {
    state.resumeNow = false;
    connect();
    return;
  }
  reconnectSchedule();
}

// A socket that stopped answering: drop it without waiting for a close handshake.
function socketAbandon() {
  const ws = state.ws;
  if (!ws) return;
  state.ws = null;
  try {
    ws.close();
  } catch {
    // already closing
  }
  socketGone(1006);
}

function reconnectSchedule() {
  if (state.stopped) return;
  retryClear();
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
  // Full jitter on the upper half: spreads a crowd of reconnecting tabs.
  const delay = ceiling / 2 + Math.random() * (ceiling / 2);
  state.attempt += 1;
  state.retryAt = Date.now() + delay;
  state.retryTimer = window.setTimeout(connect, delay);
  countdownShow();
  state.countdownTimer = window.setInterval(countdownShow, 250);
}

function countdownShow() {
  const seconds = Math.ceil((state.retryAt - Date.now()) / 1000);
  const offline = navigator.onLine === false ? " (offline)" : "";
  connectionShow(
    "reconnecting",
    seconds > 0 ? `Reconnecting in ${seconds}s…${offline}` : `Reconnecting…${offline}`,
  );
}

function retryClear() {
  if (state.retryTimer !== null) window.clearTimeout(state.retryTimer);
  if (state.countdownTimer !== null) window.clearInterval(state.countdownTimer);
  state.retryTimer = null;
  state.countdownTimer = null;
}

function reconnectNow() {
  if (state.stopped) return;
  if (state.retryTimer !== null) {
    connect();
  } else if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    ping(); // back from sleep or a network change: make sure the socket still answers
  }
}

function frameSend(payload) {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(payload));
  return true;
}

function ping() {
  if (state.pongTimer !== null) return;
  if (frameSend({ type: "ping" })) {
    state.pongTimer = window.setTimeout(socketAbandon, PONG_TIMEOUT_MS);
  }
}

function pingStart() {
  pingStop();
  state.pingTimer = window.setInterval(ping, PING_EVERY_MS);
}

function pingStop() {
  if (state.pingTimer !== null) window.clearInterval(state.pingTimer);
  if (state.pongTimer !== null) window.clearTimeout(state.pongTimer);
  state.pingTimer = null;
  state.pongTimer = null;
}

// --- Frames ----------------------------------------------------------------------

function frameHandle(data) {
  let frame;
  try {
    frame = JSON.parse(data);
  } catch {
    return;
  }
  if (!frame || typeof frame !== "object") return;
  // Any frame proves the socket is alive.
  if (state.pongTimer !== null) {
    window.clearTimeout(state.pongTimer);
    state.pongTimer = null;
  }
  switch (frame.type) {
    case "hello":
      helloHandle(frame);
      break;
    case "message":
      if (frame.message) logChange(() => messageArrive(frame.message), isOwnSend(frame.message));
      break;
    case "history":
      historyHandle(frame);
      break;
    case "presence":
      presenceRender(frame.users || []);
      break;
    case "typing":
      typingHandle(frame);
      break;
    case "error":
      errorHandle(frame);
      break;
    case "assistant.start":
      if (frame.message) {
        queuedNoteClear(frame.in_reply_to);
        logChange(() => {
          const known = state.streams.get(frame.reply_id);
          if (!known) state.streams.set(frame.reply_id, { text: "", seq: 0, known: true });
          messageArrive(frame.message);
        });
      }
      break;
    case "assistant.delta":
      deltaHandle(frame);
      break;
    case "assistant.end":
      if (frame.message) {
        queuedNoteClear(frame.message.in_reply_to);
        logChange(() => {
          state.streams.delete(frame.reply_id);
          messageUpsert(frame.message);
        });
      }
      break;
    case "assistant.queued":
      queuedHandle(frame);
      break;
    case "pong":
      pongHandle(frame);
      break;
    default:
      break; // anything newer than this page
  }
}

function helloHandle(frame) {
  const reconnected = state.everLive;
  state.everLive = true;
  state.attempt = 0;
  connectionShow("live", "Live");
  composerEnable(true);
  if (frame.user && frame.user.username) state.me = frame.user.username;
  if (frame.room && "assistant" in frame.room) state.assistant = frame.room.assistant;
  presenceRender(frame.presence || []);
  logChange(
    () => {
      for (const message of frame.messages || []) messageUpsert(message);
      for (const stream of frame.streaming || []) streamResume(stream);
    },
    !reconnected,
  );
  if (frame.truncated) {
    // More is missing than one hello carries: resume again from the newest id.
    state.resumeNow = true;
    state.ws.close(1000);
    return;
  }
  holesFill();
  olderUpdate();
  pendingResendAll();
  pingStart();
}

// The transport may drop the last event of a quiet room, which no later seq
// would reveal. Each pong carries the room's last seq and the replies still
// streaming; a difference that survives a second look means a lost event, and
// a resume (?after) brings it back.
function pongHandle(frame) {
  const behind = Number.isInteger(frame.last_seq) && frame.last_seq > state.lastSeq;
  const live = new Set(Array.isArray(frame.streaming) ? frame.streaming : []);
  const stale = [...state.streams.keys()].some((id) => !live.has(id));
  if (!behind && !stale) {
    state.suspect = null;
    return;
  }
  const key = `${frame.last_seq}:${[...live].join(",")}`;
  if (state.suspect === key) {
    state.suspect = null;
    if (state.ws) {
      state.resumeNow = true;
      state.ws.close(1000);
    }
    return;
  }
  // Events may still be on their way: look again shortly before resyncing.
  state.suspect = key;
  window.setTimeout(ping, 2000);
}

function messageArrive(message) {
  const jump = Number.isInteger(message.seq) && message.seq > state.lastSeq + 1;
  messageUpsert(message);
  if (jump) holesFill();
}

function historyHandle(frame) {
  const kind = state.historyKinds.shift() || "gap";
  const messages = frame.messages || [];
  if (kind === "older") {
    // Keep the reader's place while rows appear above it.
    const fromBottom = els.log.scrollHeight - els.log.scrollTop;
    for (const message of messages) messageUpsert(message);
    els.log.scrollTop = els.log.scrollHeight - fromBottom;
    if (!frame.has_more) state.reachedStart = true;
    olderLoadingSet(false);
  } else {
    logChange(() => {
      for (const message of messages) messageUpsert(message);
    });
    holesFill();
  }
  olderUpdate();
}

function deltaHandle(frame) {
  const stream = state.streams.get(frame.reply_id);
  const entry = state.messages.get(frame.reply_id);
  if (!stream || !entry || !stream.known) return;
  if (!Number.isInteger(frame.seq) || frame.seq <= stream.seq) return;
  // A jump means a delta was lost: keep going; assistant.end brings the whole text.
  if (frame.seq > stream.seq + 1) stream.incomplete = true;
  stream.seq = frame.seq;
  stream.text += String(frame.text || "");
  logChange(() => {
    const body = entry.el.querySelector(".msg-body");
    if (body) body.textContent = stream.text;
  });
}

function queuedHandle(frame) {
  const ahead = Number(frame.position) || 1;
  const who = state.assistant ? `@${state.assistant}` : "The assistant";
  queuedNoteClear(frame.in_reply_to);
  const note = noticeShow(
    `queued-${frame.in_reply_to}`,
    `${who} will answer after ${plural(ahead, "earlier request")}.`,
    "info",
  );
  state.queuedNotes.set(frame.in_reply_to, note);
  window.setTimeout(() => queuedNoteClear(frame.in_reply_to), NOTE_MS);
}

function queuedNoteClear(inReplyTo) {
  const note = state.queuedNotes.get(inReplyTo);
  if (note) note.remove();
  state.queuedNotes.delete(inReplyTo);
}

const ERROR_TEXT = {
  rate_limited: "Slow down a little",
  too_long: "Message not sent",
  bad_request: "Not understood",
  bad_json: "Not understood",
  not_found: "Not found",
  unavailable: "Server busy",
};

const SEND_ERRORS = new Set(["rate_limited", "too_long", "bad_request"]);

function errorHandle(frame) {
  const code = String(frame.code || "error");
  if (SEND_ERRORS.has(code)) {
    // Every message.send gets exactly one answer, in order: this one belongs to the
    // oldest send in flight. (Other frames this page sends are well-formed.)
    const clientId = state.inflight.shift();
    if (clientId) pendingFail(clientId);
  }
  const title = ERROR_TEXT[code] || "Error";
  noticeShow(`error-${code}`, frame.detail ? `${title}: ${frame.detail}` : title, "error");
}

// --- Messages ----------------------------------------------------------------------

function isOwn(message) {
  return message.role !== "assistant" && message.author === state.me;
}

function isOwnSend(message) {
  return Boolean(message.client_id && state.pending.has(message.client_id));
}

function comesBefore(a, b) {
  if (Number.isInteger(a.seq) && Number.isInteger(b.seq) && a.seq !== b.seq) return a.seq < b.seq;
  return a.id < b.id;
}

function messageUpsert(message) {
  if (!message || !Number.isInteger(message.id)) return;
  if (message.client_id && state.pending.has(message.client_id)) pendingResolve(message.client_id);
  if (message.status === "streaming") {
    if (!state.streams.has(message.id)) {
      // Seen without its start (e.g. through history): show what is saved; the end replaces it.
      state.streams.set(message.id, { text: String(message.text || ""), seq: 0, known: false });
    }
  } else {
    state.streams.delete(message.id);
  }
  const existing = state.messages.get(message.id);
  const merged = existing ? { ...existing.msg, ...message } : message;
  if (!Number.isInteger(merged.seq) && existing) merged.seq = existing.msg.seq;
  const node = messageElement(merged);
  if (existing) {
    const moved = existing.msg.seq !== merged.seq;
    existing.msg = merged;
    existing.el.replaceWith(node);
    existing.el = node;
    if (moved) {
      node.remove();
      elementPlace(node, merged);
    }
  } else {
    state.messages.set(merged.id, { msg: merged, el: node });
    elementPlace(node, merged);
  }
  if (Number.isInteger(merged.seq)) state.lastSeq = Math.max(state.lastSeq, merged.seq);
  state.lastId = Math.max(state.lastId, merged.id);
  if (merged.role !== "assistant") typerClear(merged.author);
}

// Rows arrive mostly at the end, so walk back from the last one.
function elementPlace(node, message) {
  let cursor = els.list.lastElementChild;
  while (cursor) {
    const other = state.messages.get(Number(cursor.dataset.id));
    if (other && comesBefore(other.msg, message)) break;
    cursor = cursor.previousElementSibling;
  }
  if (cursor) cursor.after(node);
  else els.list.prepend(node);
}

function messageElement(message) {
  const status = STATUSES.has(message.status) ? message.status : "complete";
  const role = message.role === "assistant" ? "assistant" : "user";
  const li = el("li", `msg ${role} status-${status}`);
  if (isOwn(message)) li.classList.add("own");
  li.dataset.id = String(message.id);
  if (Number.isInteger(message.seq)) li.dataset.seq = String(message.seq);
  li.dataset.status = status;

  li.append(avatar(message.author, role));
  const main = el("div", "msg-main");
  const meta = el("div", "msg-meta");
  meta.append(el("span", "msg-author", message.author));
  if (role === "assistant") meta.append(el("span", "tag", "AI"));
  const label = message.created ? timeLabel(message.created) : null;
  if (label) {
    const time = el("time", "msg-time", label);
    time.dateTime = message.created;
    time.title = new Date(message.created).toLocaleString();
    meta.append(time);
  }
  main.append(meta);

  const body = el("div", "msg-body");
  if (status === "streaming") {
    const stream = state.streams.get(message.id);
    body.classList.add("streaming");
    body.setAttribute("aria-busy", "true");
    body.textContent = stream ? stream.text : String(message.text || "");
  } else if (typeof message.html === "string" && message.html !== "") {
    // Sanitized on the server (Markdown, then nh3): the only HTML this page inserts.
    body.innerHTML = message.html;
  } else if (message.text) {
    body.textContent = message.text;
  } else {
    body.classList.add("empty");
    body.textContent = role === "assistant" ? "(no text)" : "";
  }
  main.append(body);

  const foot = messageFooter(message, status);
  if (foot) main.append(foot);
  li.append(main);
  return li;
}

function messageFooter(message, status) {
  const foot = el("div", "msg-foot");
  if (status === "streaming") {
    foot.append(el("span", "badge badge-streaming", "writing…"));
    const stop = el("button", "stop", "Stop");
    stop.type = "button";
    stop.dataset.replyId = String(message.id);
    stop.setAttribute("aria-label", `Stop ${message.author}'s reply`);
    foot.append(stop);
  } else if (status === "cancelled") {
    foot.append(el("span", "badge badge-cancelled", message.cancelled_by ? `stopped by ${message.cancelled_by}` : "stopped"));
  } else if (status === "error") {
    foot.append(el("span", "badge badge-error", "error"));
    foot.append(el("span", "msg-error", message.error || "The assistant could not answer."));
  } else if (status === "interrupted") {
    foot.append(el("span", "badge badge-interrupted", "interrupted"));
  } else if (message.finish_reason === "length") {
    foot.append(el("span", "badge badge-interrupted", "cut short: length limit"));
  } else if (message.finish_reason === "content_filter") {
    foot.append(el("span", "badge badge-interrupted", "cut short: content filter"));
  } else {
    return null;
  }
  return foot;
}

function streamResume(stream) {
  const id = stream.reply_id;
  if (!Number.isInteger(id)) return;
  const local = state.streams.get(id);
  const seq = Number.isInteger(stream.seq) ? stream.seq : 0;
  // Keep what this tab already has if it is further along than the snapshot.
  if (!local || !local.known || local.seq < seq) {
    state.streams.set(id, { text: String(stream.text || ""), seq, known: true });
  }
  const existing = state.messages.get(id);
  const base = existing
    ? existing.msg
    : { id, seq: null, author: stream.author, role: "assistant", created: null, in_reply_to: stream.in_reply_to };
  messageUpsert({ ...base, status: "streaming" });
}

// Any hole between known seqs is fetched once per socket; a hole above 100 rows
// is filled page by page, since each answer leaves a smaller hole below it.
function holesFill() {
  const rows = [];
  for (const { msg } of state.messages.values()) {
    if (Number.isInteger(msg.seq)) rows.push(msg);
  }
  rows.sort((a, b) => a.seq - b.seq);
  for (let i = 1; i < rows.length; i += 1) {
    const gap = rows[i].seq - rows[i - 1].seq - 1;
    if (gap > 0 && !state.holesAsked.has(rows[i].id)) {
      state.holesAsked.add(rows[i].id);
      historyFetch(rows[i].id, Math.min(gap, HISTORY_MAX), "gap");
    }
  }
}

function historyFetch(before, limit, kind) {
  if (frameSend({ type: "history.fetch", before, limit })) {
    state.historyKinds.push(kind);
    return true;
  }
  return false;
}

function oldestMessage() {
  let oldest = null;
  for (const { msg } of state.messages.values()) {
    if (oldest === null || comesBefore(msg, oldest)) oldest = msg;
  }
  return oldest;
}

function olderUpdate() {
  const oldest = oldestMessage();
  els.older.hidden = state.reachedStart || !oldest || !(Number.isInteger(oldest.seq) && oldest.seq > 1);
}

function olderLoadingSet(loading) {
  state.olderLoading = loading;
  els.older.disabled = loading;
  els.older.textContent = loading ? "Loading…" : "Load older messages";
}

function olderLoad() {
  const oldest = oldestMessage();
  if (!oldest || state.olderLoading) return;
  if (historyFetch(oldest.id, HISTORY_PAGE, "older")) olderLoadingSet(true);
}

// --- Scrolling ---------------------------------------------------------------------

function nearBottom() {
  const log = els.log;
  return log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;
}

function scrollToBottom() {
  els.log.scrollTop = els.log.scrollHeight;
  els.pill.hidden = true;
}

// Follow new content only for a reader already at the bottom; tell the others.
function logChange(change, forceBottom = false) {
  const follow = forceBottom || nearBottom();
  const before = els.log.scrollHeight;
  change();
  if (follow) scrollToBottom();
  else if (els.log.scrollHeight > before) els.pill.hidden = false;
}

// --- Sending -------------------------------------------------------------------------

function pendingAdd(clientId, text) {
  const li = el("li", "msg user own pending");
  li.dataset.clientId = clientId;
  li.append(avatar(state.me, "user"));
  const main = el("div", "msg-main");
  const meta = el("div", "msg-meta");
  meta.append(el("span", "msg-author", state.me));
  meta.append(el("span", "msg-time", "sending…"));
  main.append(meta);
  main.append(el("div", "msg-body plain", text));
  li.append(main);
  els.pending.append(li);
  state.pending.set(clientId, { text, el: li });
}

function pendingSend(clientId) {
  const item = state.pending.get(clientId);
  if (!item) return;
  if (frameSend({ type: "message.send", text: item.text, client_id: clientId })) {
    state.inflight.push(clientId);
  }
}

// After a reconnect: the server deduplicates by client_id, so resending is safe.
function pendingResendAll() {
  for (const clientId of state.pending.keys()) pendingSend(clientId);
}

function pendingResolve(clientId) {
  const item = state.pending.get(clientId);
  if (item) item.el.remove();
  state.pending.delete(clientId);
  state.inflight = state.inflight.filter((id) => id !== clientId);
}

function pendingFail(clientId) {
  const item = state.pending.get(clientId);
  if (!item) return;
  pendingResolve(clientId);
  // Nothing typed is lost: the refused text goes back into the composer.
  const current = els.text.value;
  els.text.value = current ? `${item.text}\n${current}` : item.text;
  els.text.focus();
}

function composerSubmit() {
  if (state.stopped) return;
  const text = els.text.value;
  if (!text.trim()) return;
  if (config.maxChars && text.length > config.maxChars) {
    noticeShow("error-too_long", `Message not sent: at most ${config.maxChars} characters.`, "error");
    return;
  }
  const clientId = clientIdNew();
  els.text.value = "";
  typingStop();
  noticeClear("error-rate_limited");
  noticeClear("error-too_long");
  logChange(() => pendingAdd(clientId, text), true);
  pendingSend(clientId);
}

// --- Typing --------------------------------------------------------------------------

function typingInput() {
  if (!els.text.value.trim()) {
    typingStop();
    return;
  }
  const now = Date.now();
  if (!state.typingActive || now - state.typingSentAt > TYPING_RESEND_MS) {
    if (frameSend({ type: "typing", active: true })) {
      state.typingActive = true;
      state.typingSentAt = now;
    }
  }
  if (state.typingIdleTimer !== null) window.clearTimeout(state.typingIdleTimer);
  state.typingIdleTimer = window.setTimeout(typingStop, TYPING_IDLE_MS);
}

function typingStop() {
  if (state.typingIdleTimer !== null) window.clearTimeout(state.typingIdleTimer);
  state.typingIdleTimer = null;
  if (state.typingActive) frameSend({ type: "typing", active: false });
  state.typingActive = false;
}

function typingHandle(frame) {
  const name = String(frame.username || "");
  if (!name || name === state.me) return;
  if (frame.active) {
    typerClear(name, false);
    state.typers.set(
      name,
      window.setTimeout(() => typerClear(name), TYPING_EXPIRE_MS),
    );
    typersRender();
  } else {
    typerClear(name);
  }
}

function typerClear(name, render = true) {
  const timer = state.typers.get(name);
  if (timer === undefined) return;
  window.clearTimeout(timer);
  state.typers.delete(name);
  if (render) typersRender();
}

function typersClear() {
  for (const timer of state.typers.values()) window.clearTimeout(timer);
  state.typers.clear();
  typersRender();
}

function typersRender() {
  const names = [...state.typers.keys()].sort();
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = `${names[0]}, ${names[1]} and ${plural(names.length - 2, "other")} are typing…`;
  els.typing.textContent = text;
}

// --- Presence --------------------------------------------------------------------------

function presenceRender(users) {
  const names = [...new Set(users.map(String))].sort((a, b) => a.localeCompare(b));
  const items = names.map((name) => {
    const li = el("li", name === state.me ? "me" : "");
    li.dataset.username = name;
    li.append(avatar(name, "user"));
    li.append(el("span", "presence-name", name));
    if (name === state.me) li.append(el("span", "muted", " (you)"));
    return li;
  });
  els.presence.replaceChildren(...items);
  els.presenceCount.textContent = names.length ? String(names.length) : "";
}

// --- Notices ---------------------------------------------------------------------------

function noticeShow(key, text, kind = "error") {
  noticeClear(key);
  const box = el("div", `notice notice-${kind}`);
  box.dataset.key = key;
  box.setAttribute("role", kind === "error" ? "alert" : "status");
  box.append(el("span", "notice-text", text));
  const close = el("button", "notice-close", "×");
  close.type = "button";
  close.setAttribute("aria-label", "Dismiss");
  box.append(close);
  els.notices.append(box);
  return box;
}

function noticeClear(key) {
  for (const box of els.notices.querySelectorAll(".notice")) {
    if (box.dataset.key === key) box.remove();
  }
}

// --- Wiring -----------------------------------------------------------------------------

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  composerSubmit();
});

els.text.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    composerSubmit();
  }
});
els.text.addEventListener("input", typingInput);
els.text.addEventListener("blur", typingStop);

els.list.addEventListener("click", (event) => {
  const button = event.target.closest("button.stop");
  if (!button || button.disabled) return;
  if (frameSend({ type: "assistant.cancel", reply_id: Number(button.dataset.replyId) })) {
    button.disabled = true;
    button.textContent = "Stopping…";
  }
});

els.notices.addEventListener("click", (event) => {
  const button = event.target.closest("button.notice-close");
  if (button) button.closest(".notice").remove();
});

els.older.addEventListener("click", olderLoad);
els.pill.addEventListener("click", scrollToBottom);
els.log.addEventListener("scroll", () => {
  if (nearBottom()) els.pill.hidden = true;
});

window.addEventListener("online", reconnectNow);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") reconnectNow();
});
window.addEventListener("pagehide", () => {
  typingStop();
});

composerEnable(false);
connect();
