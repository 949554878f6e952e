// Rendering: the room's DOM, and nothing about the protocol.
//
// Trust rule: the server-sanitized `html` field of a message is the only HTML
// ever inserted; every other string goes in as text (textContent).

const AVATAR_COLOURS = 8;
const NEAR_BOTTOM_PX = 80;
const STATUSES = new Set(["complete", "streaming", "cancelled", "error", "interrupted"]);

export const els = {
  root: document.getElementById("room"),
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
  empty: document.getElementById("empty"),
};

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function avatarClass(name) {
  let hash = 0;
  for (const ch of String(name)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `av-${hash % AVATAR_COLOURS}`;
}

export function avatar(name, role) {
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

// --- Connection badge ------------------------------------------------------------

export function connectionShow(kind, text, link) {
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

export function composerEnable(enabled) {
  els.text.disabled = !enabled;
  els.send.disabled = !enabled;
}

// --- Messages ----------------------------------------------------------------------

export function comesBefore(a, b) {
  if (Number.isInteger(a.seq) && Number.isInteger(b.seq) && a.seq !== b.seq) return a.seq < b.seq;
  return a.id < b.id;
}

// `view` gives rendering what it needs to know of the room: who "I" am, the
// text of replies being streamed, and where a row belongs.
export function messageElement(message, view) {
  const status = STATUSES.has(message.status) ? message.status : "complete";
  const role = message.role === "assistant" ? "assistant" : "user";
  const li = el("li", `msg ${role} status-${status}`);
  if (role !== "assistant" && message.author === view.me) li.classList.add("own");
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
    const stream = view.streamText(message.id);
    body.classList.add("streaming");
    body.setAttribute("aria-busy", "true");
    body.textContent = stream !== null ? stream : String(message.text || "");
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

// Rows arrive mostly at the end, so walk back from the last one.
export function elementPlace(node, message, lookup) {
  let cursor = els.list.lastElementChild;
  while (cursor) {
    const other = lookup(Number(cursor.dataset.id));
    if (other && comesBefore(other, message)) break;
    cursor = cursor.previousElementSibling;
  }
  if (cursor) cursor.after(node);
  else els.list.prepend(node);
}

export function streamTextShow(replyId, text) {
  const row = els.list.querySelector(`li.msg[data-id="${Number(replyId)}"] .msg-body.streaming`);
  if (row) row.textContent = text;
}

export function emptyUpdate(hasMessages) {
  if (els.empty) els.empty.hidden = hasMessages;
}

// --- Pending (own, not yet confirmed) ------------------------------------------------

export function pendingElement(clientId, me, text) {
  const li = el("li", "msg user own pending");
  li.dataset.clientId = clientId;
  li.append(avatar(me, "user"));
  const main = el("div", "msg-main");
  const meta = el("div", "msg-meta");
  meta.append(el("span", "msg-author", me));
  meta.append(el("span", "msg-time", "sending…"));
  main.append(meta);
  main.append(el("div", "msg-body plain", text));
  li.append(main);
  els.pending.append(li);
  return li;
}

export function pendingMark(li, label, failed) {
  li.classList.toggle("failed", Boolean(failed));
  li.querySelector(".msg-time").textContent = label;
}

// --- Scrolling -----------------------------------------------------------------------

export function nearBottom() {
  const log = els.log;
  return log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;
}

export function scrollToBottom() {
  els.log.scrollTop = els.log.scrollHeight;
  els.pill.hidden = true;
}

// Follow new content only for a reader already at the bottom; tell the others.
export function logChange(change, forceBottom = false) {
  const follow = forceBottom || nearBottom();
  const before = els.log.scrollHeight;
  change();
  if (follow) scrollToBottom();
  else if (els.log.scrollHeight > before) els.pill.hidden = false;
}

// Keep the reader's place while rows appear above it.
export function keepPlace(change) {
  const fromBottom = els.log.scrollHeight - els.log.scrollTop;
  change();
  els.log.scrollTop = els.log.scrollHeight - fromBottom;
}

export function olderShow(visible, loading) {
  els.older.hidden = !visible;
  els.older.disabled = loading;
  els.older.textContent = loading ? "Loading…" : "Load older messages";
}

// --- Presence and typing ----------------------------------------------------------------

export function presenceRender(users, me) {
  const names = [...new Set(users.map(String))].sort((a, b) => a.localeCompare(b));
  const items = names.map((name) => {
    const li = el("li", name === me ? "me" : "");
    li.dataset.username = name;
    li.append(avatar(name, "user"));
    li.append(el("span", "presence-name", name));
    if (name === me) li.append(el("span", "muted", " (you)"));
    return li;
  });
  els.presence.replaceChildren(...items);
  els.presenceCount.textContent = names.length ? String(names.length) : "";
}

export function typersRender(names) {
  const sorted = [...names].sort();
  let text = "";
  if (sorted.length === 1) text = `${sorted[0]} is typing…`;
  else if (sorted.length === 2) text = `${sorted[0]} and ${sorted[1]} are typing…`;
  else if (sorted.length > 2) text = `${sorted[0]}, ${sorted[1]} and ${plural(sorted.length - 2, "other")} are typing…`;
  els.typing.textContent = text;
}

// --- Notices ------------------------------------------------------------------------------

// One notice per key; at most MAX_NOTICES at once (the oldest goes), so notices
// never squeeze the log.
const MAX_NOTICES = 2;

export function noticeShow(key, text, kind = "error") {
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
  while (els.notices.children.length > MAX_NOTICES) els.notices.firstElementChild.remove();
  return box;
}

export function noticeClear(key) {
  for (const box of els.notices.querySelectorAll(".notice")) {
    if (box.dataset.key === key) box.remove();
  }
}
