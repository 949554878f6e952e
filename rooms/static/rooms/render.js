// Rendering: the room's DOM, and nothing about the protocol.
//
// Trust rule: the server-sanitized `html` field of a message is the only HTML
// inserted from a message; every other string goes in as text (textContent).
// The one other source is a reply still being written, whose Markdown is
// rendered here and reduced by DOMPurify to the server's allow-list
// (markdown.js) until assistant.end brings the server's html.

import { markdownFragment } from "./markdown.js";

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
  presenceToggle: document.getElementById("presence-toggle"),
  presenceClose: document.getElementById("presence-close"),
  sidebar: document.getElementById("sidebar"),
  replyChip: document.getElementById("reply-chip"),
  notify: document.getElementById("notify-enable"),
  catchup: document.getElementById("catchup"),
  mentionList: document.getElementById("mention-list"),
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

// `short`: what a phone shows (site.css swaps it in); the full text stays the badge's title.
export function connectionShow(kind, text, link, short) {
  els.connection.dataset.state = kind;
  els.connection.dataset.short = short || text;
  els.connection.title = text;
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
  if (els.catchup) els.catchup.disabled = !enabled || els.catchup.dataset.busy === "1";
}

// "Catch me up": shown in rooms with an assistant; busy while a catch-up is being asked for.
export function catchupShow(visible, busy) {
  const button = els.catchup;
  if (!button) return;
  button.hidden = !visible;
  button.dataset.busy = busy ? "1" : "";
  button.disabled = busy || els.text.disabled;
  button.querySelector(".catchup-label").textContent = busy ? "Catching up…" : "Catch me up";
  button.setAttribute("aria-busy", busy ? "true" : "false");
}

// --- Messages ----------------------------------------------------------------------

export function comesBefore(a, b) {
  if (Number.isInteger(a.seq) && Number.isInteger(b.seq) && a.seq !== b.seq) return a.seq < b.seq;
  return a.id < b.id;
}

// `view` gives rendering what it needs to know of the room: who "I" am, the
// text of replies being streamed, where a row belongs, what I may change.
export function messageElement(message, view) {
  const status = STATUSES.has(message.status) ? message.status : "complete";
  const role = message.role === "assistant" ? "assistant" : "user";
  const deleted = message.deleted === true;
  const li = el("li", `msg ${role} status-${status}`);
  const isPrivate = message.private === true;
  if (role !== "assistant" && message.author === view.me) li.classList.add("own");
  if (deleted) li.classList.add("deleted");
  if (isPrivate) li.classList.add("private");
  if (Array.isArray(message.mentions) && message.mentions.some((name) => sameName(name, view.me))) {
    li.classList.add("mentions-me");
  }
  li.dataset.id = String(message.id);
  if (Number.isInteger(message.seq)) li.dataset.seq = String(message.seq);
  li.dataset.status = status;

  li.append(avatar(message.author, role));
  const main = el("div", "msg-main");
  const meta = el("div", "msg-meta");
  meta.append(el("span", "msg-author", message.author));
  if (message.bot) meta.append(el("span", "tag tag-bot", "BOT"));
  else if (role === "assistant") meta.append(el("span", "tag", "AI"));
  const label = message.created ? timeLabel(message.created) : null;
  if (label) {
    const time = el("time", "msg-time", label);
    time.dateTime = message.created;
    time.title = new Date(message.created).toLocaleString();
    meta.append(time);
  }
  if (message.edited && !deleted) {
    const edited = el("span", "msg-edited", "(edited)");
    const when = new Date(message.edited);
    edited.title = Number.isNaN(when.getTime()) ? "edited" : `edited ${when.toLocaleString()}`;
    meta.append(edited);
  }
  main.append(meta);
  if (isPrivate) main.append(privateLabel());

  if (message.reply_to && Number.isInteger(message.reply_to.id) && !deleted) {
    main.append(quoteElement(message.reply_to));
  }

  const body = el("div", "msg-body");
  if (!deleted && view.editing && view.editing.id === message.id) {
    main.append(editorElement(view.editing));
    body.hidden = true;
  }
  if (deleted) {
    body.classList.add("deleted");
    body.textContent = "message deleted";
  } else if (status === "streaming") {
    const stream = view.streamText(message.id);
    body.classList.add("streaming");
    body.setAttribute("aria-busy", "true");
    body.replaceChildren(markdownFragment(stream !== null ? stream : String(message.text || "")));
  } else if (typeof message.html === "string" && message.html !== "") {
    // Sanitized on the server (Markdown, then nh3): the only HTML this page inserts.
    body.innerHTML = message.html;
    mentionsMark(body, view.me);
  } else if (message.text) {
    body.textContent = message.text;
  } else {
    body.classList.add("empty");
    body.textContent = role === "assistant" ? "(no text)" : "";
  }
  main.append(body);

  const foot = messageFooter(message, status);
  const versions = role === "assistant" ? view.versionInfo(message) : null;
  if (versions) {
    // Replies regenerated from one question are one entry: ‹ 2 / 3 › picks the version shown.
    const bar = foot && !deleted ? foot : el("div", "msg-foot");
    bar.append(flipperElement(versions));
    main.append(bar);
  } else if (foot && !deleted) {
    main.append(foot);
  }
  // A private reply (a catch-up) is nobody else's business: nothing to quote or change.
  if (!deleted && status !== "streaming" && !isPrivate) main.append(actionsElement(message, view));
  li.append(main);
  return li;
}

const SVG = "http://www.w3.org/2000/svg";
const LOCK_PATH =
  "M7 10V7a5 5 0 0 1 10 0v3h1a1 1 0 0 1 1 1v9a1 1 0 0 1-1 1H6a1 1 0 0 1-1-1v-9a1 1 0 0 1 1-1zm2 0h6V7a3 3 0 0 0-6 0z";

function privateLabel() {
  const label = el("div", "private-label");
  const icon = document.createElementNS(SVG, "svg");
  icon.setAttribute("class", "icon");
  icon.setAttribute("viewBox", "0 0 24 24");
  icon.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", LOCK_PATH);
  icon.append(path);
  label.append(icon, el("span", "", "Only you can see this"));
  return label;
}

function sameName(a, b) {
  return String(a).toLowerCase() === String(b || "").toLowerCase();
}

// Mentions of the viewer stand out more than others'.
function mentionsMark(body, me) {
  for (const span of body.querySelectorAll("span.mention")) {
    if (sameName(span.textContent.replace(/^@/, ""), me)) span.classList.add("me");
  }
}

export function quoteElement(quote) {
  const button = el("button", "msg-quote");
  button.type = "button";
  button.dataset.quoteId = String(quote.id);
  button.append(el("span", "quote-author", quote.author));
  const excerpt = String(quote.excerpt || "");
  button.append(el("span", excerpt ? "quote-text" : "quote-text deleted", excerpt || "message deleted"));
  button.setAttribute("aria-label", `Reply to ${quote.author}: ${excerpt || "message deleted"}. Show it`);
  return button;
}

function actionsElement(message, view) {
  const bar = el("div", "msg-actions");
  const action = (name, text, label) => {
    const button = el("button", `msg-action action-${name}`, text);
    button.type = "button";
    button.dataset.action = name;
    button.setAttribute("aria-label", label);
    bar.append(button);
  };
  action("reply", "Reply", `Reply to ${message.author}`);
  if (view.mayRegenerate(message)) {
    action("regenerate", "Regenerate", `Ask ${message.author} again: a new version of this reply`);
  }
  const own = message.role !== "assistant" && message.author === view.me;
  if (message.role !== "assistant" && (own || view.moderator)) action("edit", "Edit", "Edit message");
  if (own || view.moderator) action("delete", "Delete", "Delete message");
  return bar;
}

// versions: {index (1-based), count, prev, next} (ids of the neighbouring versions, or null).
// A regenerate that was refused: its button is usable again.
export function regenerateReset() {
  for (const button of els.list.querySelectorAll("button.action-regenerate:disabled")) {
    button.disabled = false;
    button.textContent = "Regenerate";
  }
}

function flipperElement(versions) {
  const nav = el("span", "versions");
  nav.setAttribute("role", "group");
  nav.setAttribute("aria-label", "Versions of this reply");
  const button = (className, text, target, label) => {
    const b = el("button", `version-flip ${className}`, text);
    b.type = "button";
    b.setAttribute("aria-label", label);
    if (target === null) b.disabled = true;
    else b.dataset.versionTarget = String(target);
    return b;
  };
  nav.append(button("version-prev", "‹", versions.prev, "Previous version"));
  const label = el("span", "version-label", `${versions.index} / ${versions.count}`);
  label.setAttribute("aria-live", "polite");
  nav.append(label);
  nav.append(button("version-next", "›", versions.next, "Next version"));
  return nav;
}

function editorElement(editing) {
  const form = el("form", "msg-editor");
  form.autocomplete = "off";
  const box = el("textarea", "msg-editor-text");
  box.value = editing.draft;
  box.rows = Math.min(8, Math.max(1, editing.draft.split("\n").length));
  box.setAttribute("aria-label", "Edit message");
  box.disabled = Boolean(editing.saving);
  form.append(box);
  const row = el("div", "msg-editor-row");
  row.append(el("span", "hint", editing.saving ? "Saving…" : "Enter to save · Esc to cancel"));
  const cancel = el("button", "secondary small editor-cancel", "Cancel");
  cancel.type = "button";
  const save = el("button", "small editor-save", "Save");
  save.type = "submit";
  save.disabled = Boolean(editing.saving);
  row.append(cancel, save);
  form.append(row);
  return form;
}

export function editorFocus(id) {
  const box = els.list.querySelector(`li.msg[data-id="${Number(id)}"] .msg-editor-text`);
  if (box && !box.disabled) {
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
  }
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
  // The other versions of a reply sit right after its first one: never between them.
  while (cursor && cursor.nextElementSibling && cursor.nextElementSibling.dataset.versionOf) {
    cursor = cursor.nextElementSibling;
  }
  if (cursor) cursor.after(node);
  else els.list.prepend(node);
}

// One entry per group of versions: the rows after its first (oldest loaded)
// one, in id order, and only the version `shown` visible. `rows`: [{id, el}]
// sorted by id.
export function versionsArrange(rows, shown) {
  let previous = rows[0].el;
  delete previous.dataset.versionOf;
  previous.hidden = rows[0].id !== shown;
  for (const row of rows.slice(1)) {
    row.el.dataset.versionOf = String(rows[0].id);
    row.el.hidden = row.id !== shown;
    if (previous.nextElementSibling !== row.el) previous.after(row.el);
    previous = row.el;
  }
}

// Streamed text is rendered at most once per animation frame per reply (a
// hidden tab, which gets no frames, still renders every ~250 ms).
const streamFrames = new Map(); // reply id -> latest text awaiting its frame
const STREAM_FALLBACK_MS = 250;

export function streamTextShow(replyId, text) {
  const id = Number(replyId);
  const scheduled = streamFrames.has(id);
  streamFrames.set(id, text);
  if (scheduled) return;
  let done = false;
  const render = () => {
    if (done) return;
    done = true;
    const latest = streamFrames.get(id);
    streamFrames.delete(id);
    const body = els.list.querySelector(`li.msg[data-id="${id}"] .msg-body.streaming`);
    if (body) logChange(() => body.replaceChildren(markdownFragment(latest)));
  };
  window.requestAnimationFrame(render);
  window.setTimeout(render, STREAM_FALLBACK_MS);
}

export function emptyUpdate(hasMessages) {
  if (els.empty) els.empty.hidden = hasMessages;
}

// --- Pending (own, not yet confirmed) ------------------------------------------------

export function pendingElement(clientId, me, text, quote) {
  const li = el("li", "msg user own pending");
  li.dataset.clientId = clientId;
  li.append(avatar(me, "user"));
  const main = el("div", "msg-main");
  const meta = el("div", "msg-meta");
  meta.append(el("span", "msg-author", me));
  meta.append(el("span", "msg-time", "sending…"));
  main.append(meta);
  if (quote) main.append(quoteElement(quote));
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
  if (els.presenceToggle) {
    els.presenceToggle.querySelector(".presence-toggle-count").textContent = String(names.length);
    els.presenceToggle.setAttribute("aria-label", `${plural(names.length, "person")} here: show who`);
  }
}

// --- The "New messages" divider ------------------------------------------------------

export function dividerPlace(afterSeq, me) {
  let divider = document.getElementById("unread-divider");
  if (afterSeq === null) {
    if (divider) divider.remove();
    return;
  }
  // The lowest unread seq shown (other versions of a reply sit out of seq order, hidden or not).
  let first = null;
  for (const li of els.list.querySelectorAll("li.msg[data-seq]")) {
    const seq = Number(li.dataset.seq);
    if (li.hidden || li.classList.contains("own") || !(seq > afterSeq)) continue;
    if (first === null || seq < Number(first.dataset.seq)) first = li;
  }
  if (!first) {
    if (divider) divider.remove();
    return;
  }
  if (!divider) {
    divider = el("li", "unread-divider");
    divider.id = "unread-divider";
    divider.setAttribute("role", "separator");
    divider.append(el("span", "unread-divider-label", "New messages"));
  }
  // Above a whole entry of versions, not inside it.
  while (first.dataset.versionOf) {
    const previous = first.previousElementSibling;
    if (!previous || previous === divider) break;
    first = previous;
  }
  if (first.previousElementSibling !== divider) first.before(divider);
}

// --- Jumping to a quoted message --------------------------------------------------------

export function messageFlash(id) {
  const row = els.list.querySelector(`li.msg[data-id="${Number(id)}"]`);
  if (!row || row.hidden) return false;
  row.scrollIntoView({ block: "center" });
  row.classList.remove("flash");
  // Restart the animation even when the same row is flashed twice.
  void row.offsetWidth;
  row.classList.add("flash");
  window.setTimeout(() => row.classList.remove("flash"), 2000);
  return true;
}

// --- The reply chip above the composer -----------------------------------------------------

export function replyChipShow(quote) {
  const chip = els.replyChip;
  if (!quote) {
    chip.hidden = true;
    chip.querySelector(".reply-chip-author").textContent = "";
    chip.querySelector(".reply-chip-text").textContent = "";
    return;
  }
  chip.querySelector(".reply-chip-author").textContent = quote.author;
  chip.querySelector(".reply-chip-text").textContent = quote.excerpt || "message deleted";
  chip.hidden = false;
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
