// The room's state and its completeness: every message by id, in seq order,
// nothing missing for long, nothing twice (docs/protocol.md, "Staying complete").
//
// - Every message carries its room `seq`. A frame that skips ahead is held
//   for up to HOLD_MS: publishes of two server processes cross on the way, and
//   the missing one usually arrives within milliseconds. Only a gap that
//   persists is fetched (history.fetch).
// - Every reconnect resumes with ?after=<newest id>; a `truncated` hello is
//   paged forward with history.fetch {after} until it is complete.
// - A reply's deltas are numbered: a missing one is repaired from the server's
//   snapshot (assistant.fetch), not waited out.
// - Presence frames carry a version; an older one than what is shown is stale.
// - Unacknowledged sends are resent with the same client_id after a reconnect
//   or an `unavailable` answer; the server deduplicates.
// - A private reply (a catch-up: `private: true`, `seq` null) is not part of
//   the room's log: it is never held, never makes or fills a hole, and never
//   moves the resume cursor (lastId) or lastSeq.
// - Regenerated replies list each other in `versions`: one entry per group,
//   one version shown (the newest unless the person flipped).

import {
  catchupShow,
  comesBefore,
  dividerPlace,
  editorFocus,
  els,
  elementPlace,
  emptyUpdate,
  keepPlace,
  logChange,
  messageElement,
  messageFlash,
  noticeClear,
  noticeShow,
  olderShow,
  pendingElement,
  pendingMark,
  plural,
  presenceRender,
  regenerateReset,
  replyChipShow,
  streamTextShow,
  typersRender,
  versionsArrange,
} from "./render.js";

const HOLD_MS = 300;
const HISTORY_PAGE = 50;
const HISTORY_MAX = 100;
const NOTE_MS = 10_000;
const TYPING_EXPIRE_MS = 6_000;
const RESEND_MS = 2_000;
const SNAPSHOT_RETRY_MS = 1_000;
const SNAPSHOT_TRIES = 5;
const EXCERPT_CHARS = 140;
const JUMP_PAGES_MAX = 40;
const CATCHUP_WAIT_MS = 30_000;

const ERROR_TEXT = {
  rate_limited: "Slow down a little",
  too_long: "Message not sent",
  bad_request: "Not understood",
  bad_json: "Not understood",
  not_found: "Not found",
  forbidden: "Not allowed",
  budget_exceeded: "Assistant budget used up",
  unavailable: "Server busy",
  internal: "Something went wrong",
};
// Answers to a message.send that mean "not saved, and sending it again as it is won't help".
const SEND_REFUSALS = new Set(["rate_limited", "too_long", "bad_request", "internal", "forbidden", "budget_exceeded"]);

export class RoomState {
  constructor({ me, assistant, socket, attention }) {
    this.me = me;
    this.assistant = assistant;
    this.assistants = assistant ? [{ name: assistant }] : []; // hello's room.assistants: [{name, model}]
    this.socket = socket;
    this.attention = attention; // unread title, read marks, notifications (attention.js)
    this.moderator = false; // hello's user.moderator: may edit and delete others' messages
    this.editing = null; // {id, draft, saving}
    this.replyTo = null; // {id, author, excerpt} quoted by the next send
    this.unreadFrom = null; // the divider goes above the first message after this seq (first hello only)
    this.helloSeen = false;
    this.jumpTarget = null; // a quoted message being paged in from older history
    this.jumpPages = 0;
    this.messages = new Map(); // id -> {msg, el}
    this.streams = new Map(); // reply id -> {text, seq, known, waiting: Map(seq -> text), fetching, tries}
    this.pending = new Map(); // client_id -> {text, replyTo, el}
    this.inflight = []; // client_ids sent on the current socket, awaiting their answer
    this.historyKinds = []; // "older" | "gap" | "forward", one per history.fetch on the current socket
    this.holesAsked = new Set(); // message ids a hole below was already fetched for (per socket)
    this.held = null; // frames held while a seq gap may still close: {frames, timer}
    this.lastSeq = 0;
    this.lastId = 0;
    this.reachedStart = false;
    this.olderLoading = false;
    this.paging = false; // paging forward through a truncated hello
    this.presenceVersion = -1;
    this.suspect = null;
    this.typers = new Map(); // username -> expiry timer
    this.queuedNotes = new Map(); // "in_reply_to:assistant" -> notice element
    this.versionGroups = new Map(); // oldest version's id -> Set of the loaded versions' ids
    this.versionShown = new Map(); // oldest version's id -> the version the person flipped to
    this.catchupTimer = null; // set while a catch-up was asked for and has not started
    this.catchupFrom = null; // hello's last_read_seq when this page opened
    this.resendTimer = null;
    this.fetchTimers = new Set();
  }

  // --- The socket's life ----------------------------------------------------------

  socketOpened() {
    this.inflight = [];
    this.historyKinds = [];
    this.holesAsked.clear();
    this.paging = false;
    this.heldRelease(false);
    for (const stream of this.streams.values()) stream.fetching = false;
  }

  socketClosed() {
    this.catchupDone();
    this.heldRelease(false);
    this.typersClear();
    this.olderLoadingSet(false);
  }

  stopForGood() {
    this.typersClear();
    for (const item of this.pending.values()) pendingMark(item.el, "not sent", true);
  }

  // Presence comes as deltas (a join costs a few bytes, not the room's list).
  cursorUrl(base) {
    return this.lastId > 0 ? `${base}?presence=delta&after=${this.lastId}` : `${base}?presence=delta`;
  }

  // --- Frames, in arrival order ---------------------------------------------------------

  frame(frame) {
    if (frame.type === "hello") {
      this.hello(frame);
      return;
    }
    if (frame.private === true) {
      // Not in the room's log (no seq): nothing to hold it for, nothing it can fill.
      this.apply(frame);
      return;
    }
    if (this.held) {
      this.held.frames.push(frame);
      if (this.fillsGap(frame)) this.heldDrain();
      return;
    }
    if (this.skipsAhead(frame)) {
      this.held = { frames: [frame], timer: window.setTimeout(() => this.heldRelease(true), HOLD_MS) };
      return;
    }
    this.apply(frame);
  }

  seqOf(frame) {
    const message = frame.type === "message" || frame.type === "assistant.start" ? frame.message : null;
    if (!message || message.private === true) return null;
    return Number.isInteger(message.seq) && !this.messages.has(message.id) ? message.seq : null;
  }

  // After a hello, lastSeq 0 means the room was empty: seq 1 comes next.
  skipsAhead(frame) {
    const seq = this.seqOf(frame);
    return seq !== null && seq > this.lastSeq + 1;
  }

  fillsGap(frame) {
    const seq = this.seqOf(frame);
    return seq !== null && seq <= this.lastSeq + 1;
  }

  // The missing frame came: apply it, then everything held behind it in
  // arrival order (a frame that still skips ahead waits again).
  heldDrain() {
    const held = this.held;
    this.held = null;
    window.clearTimeout(held.timer);
    const fillers = held.frames.filter((f) => this.fillsGap(f));
    for (const f of fillers) this.apply(f);
    for (const f of held.frames) {
      if (!fillers.includes(f)) this.frame(f);
    }
  }

  // The gap did not close in time (or the socket changed): apply what was held
  // and fetch what is still missing.
  heldRelease(fetch) {
    const held = this.held;
    if (!held) return;
    this.held = null;
    window.clearTimeout(held.timer);
    for (const f of held.frames) this.apply(f);
    if (fetch) this.holesFill();
  }

  apply(frame) {
    switch (frame.type) {
      case "message":
        if (frame.message) {
          const fresh = !this.messages.has(frame.message.id);
          logChange(() => this.messageUpsert(frame.message), this.isOwnSend(frame.message));
          if (fresh) this.arrived(frame.message);
        }
        break;
      case "message.update":
        if (frame.message) this.messageUpdate(frame.message);
        break;
      case "notify":
        this.attention.notify(frame);
        break;
      case "history":
        this.history(frame);
        break;
      case "presence":
        this.presence(frame);
        break;
      case "presence.delta":
        this.presenceDelta(frame);
        break;
      case "typing":
        this.typing(frame);
        break;
      case "error":
        this.error(frame);
        break;
      case "assistant.start":
        if (frame.message) {
          this.queuedNoteClear(frame.in_reply_to, frame.message.author);
          if (frame.private === true || frame.message.private === true) this.catchupDone();
          const fresh = !this.messages.has(frame.message.id);
          logChange(() => {
            if (!this.streams.has(frame.reply_id)) this.streams.set(frame.reply_id, this.streamNew("", 0, true));
            this.messageUpsert(frame.message);
          });
          if (fresh) this.arrived(frame.message);
        }
        break;
      case "assistant.delta":
        this.delta(frame);
        break;
      case "assistant.snapshot":
        this.snapshot(frame);
        break;
      case "assistant.end":
        if (frame.message) {
          this.queuedNoteClear(frame.message.in_reply_to, frame.message.author);
          logChange(() => {
            this.streams.delete(frame.reply_id);
            this.messageUpsert(frame.message);
          });
        }
        break;
      case "assistant.queued":
        this.queued(frame);
        break;
      case "pong":
        this.pong(frame);
        break;
      default:
        break; // anything newer than this page
    }
  }

  hello(frame) {
    const reconnected = this.lastId > 0 || this.messages.size > 0;
    if (frame.user && frame.user.username) this.me = frame.user.username;
    if (frame.user && typeof frame.user.moderator === "boolean") this.moderator = frame.user.moderator;
    if (frame.room && "assistant" in frame.room) this.assistant = frame.room.assistant;
    if (frame.room && Array.isArray(frame.room.assistants)) {
      this.assistants = frame.room.assistants.filter((a) => a && typeof a.name === "string" && a.name);
    } else if (frame.room && "assistant" in frame.room) {
      this.assistants = frame.room.assistant ? [{ name: String(frame.room.assistant) }] : [];
    }
    catchupShow(this.assistants.length > 0, this.catchupTimer !== null);
    if (!this.helloSeen) {
      // Where "new messages" begin is decided once per page load, before this tab reads anything.
      this.helloSeen = true;
      const lastRead = Number.isInteger(frame.last_read_seq) ? frame.last_read_seq : null;
      this.catchupFrom = lastRead;
      const newest = Math.max(0, ...(frame.messages || []).map((m) => (Number.isInteger(m.seq) ? m.seq : 0)));
      if (lastRead !== null && newest > lastRead) this.unreadFrom = lastRead;
    }
    // A new socket: its presence versions start afresh.
    this.presenceVersion = -1;
    this.presence({ users: frame.presence || [], version: frame.presence_version });
    const known = new Set(this.messages.keys());
    logChange(() => {
      for (const message of frame.messages || []) {
        // An edit of a message older than any shown here: it comes with older history.
        if (reconnected && this.belowLoaded(message)) continue;
        this.messageUpsert(message);
      }
      for (const stream of frame.streaming || []) this.streamResume(stream);
      // This person's own catch-ups: theirs only, shown again after a reload.
      for (const message of frame.private || []) {
        if (message && Number.isInteger(message.id)) this.messageUpsert({ ...message, private: true });
      }
    }, !reconnected);
    if (reconnected) {
      for (const message of frame.messages || []) {
        if (!known.has(message.id) && this.messages.has(message.id)) this.arrived(message);
      }
    }
    if (frame.truncated) {
      // More is missing than one hello carries: page forward from the newest id.
      this.paging = true;
      this.forwardFetch();
    } else {
      this.holesFill();
    }
    this.olderUpdate();
    this.pendingResendAll();
    this.attention.check();
  }

  // --- Completeness -------------------------------------------------------------------------

  // Any hole between known seqs is fetched once per socket; a hole above 100 rows
  // is filled page by page, since each answer leaves a smaller hole below it.
  holesFill() {
    if (this.paging) return;
    const rows = [];
    for (const { msg } of this.messages.values()) {
      if (Number.isInteger(msg.seq)) rows.push(msg);
    }
    rows.sort((a, b) => a.seq - b.seq);
    for (let i = 1; i < rows.length; i += 1) {
      const gap = rows[i].seq - rows[i - 1].seq - 1;
      if (gap > 0 && !this.holesAsked.has(rows[i].id)) {
        this.holesAsked.add(rows[i].id);
        this.historyFetch({ before: rows[i].id, limit: Math.min(gap, HISTORY_MAX) }, "gap");
      }
    }
  }

  forwardFetch() {
    if (!this.historyFetch({ after: this.lastId, limit: HISTORY_MAX }, "forward")) this.paging = false;
  }

  historyFetch(fields, kind) {
    if (this.socket.send({ type: "history.fetch", ...fields })) {
      this.historyKinds.push(kind);
      return true;
    }
    return false;
  }

  history(frame) {
    const kind = this.historyKinds.shift() || "gap";
    const messages = frame.messages || [];
    if (kind === "older") {
      keepPlace(() => {
        for (const message of messages) this.messageUpsert(message);
      });
      if (!frame.has_more) this.reachedStart = true;
      this.olderLoadingSet(false);
      this.jumpContinue();
    } else {
      logChange(() => {
        for (const message of messages) this.messageUpsert(message);
      });
      if (kind === "forward") {
        if (frame.has_more && messages.length) {
          this.forwardFetch();
          return;
        }
        this.paging = false;
      }
      this.holesFill();
    }
    this.olderUpdate();
  }

  // The transport may drop the last event of a quiet room, which no later seq
  // would reveal. Each pong carries the room's last seq and the replies still
  // streaming; a difference that survives a second look means a lost event, and
  // a resume (?after) brings it back.
  pong(frame) {
    const behind = Number.isInteger(frame.last_seq) && frame.last_seq > this.lastSeq;
    const live = new Set(Array.isArray(frame.streaming) ? frame.streaming : []);
    // Private replies are not listed: ask for each one's state instead (a lost end).
    const shared = [...this.streams.keys()].filter((id) => !this.isPrivate(id));
    for (const id of this.streams.keys()) {
      if (this.isPrivate(id)) this.snapshotFetch(id);
    }
    const stale = shared.some((id) => !live.has(id));
    if (!behind && !stale) {
      this.suspect = null;
      return;
    }
    const key = `${frame.last_seq}:${[...live].join(",")}`;
    if (this.suspect === key) {
      this.suspect = null;
      this.socket.resume();
      return;
    }
    // Events may still be on their way: look again shortly before resyncing.
    this.suspect = key;
    window.setTimeout(() => this.socket.ping(), 2000);
  }

  // --- Messages ------------------------------------------------------------------------------

  isOwnSend(message) {
    return Boolean(message.client_id && this.pending.has(message.client_id));
  }

  messageUpsert(message) {
    if (!message || !Number.isInteger(message.id)) return;
    if (message.client_id && this.pending.has(message.client_id)) this.pendingResolve(message.client_id);
    const existing = this.messages.get(message.id);
    // A streaming copy (from history or a start frame) never replaces a final one.
    if (existing && existing.msg.status !== "streaming" && message.status === "streaming") return;
    if (message.status === "streaming") {
      if (!this.streams.has(message.id)) {
        // Seen without its start (e.g. through history): show what is saved; the end replaces it.
        this.streams.set(message.id, this.streamNew(String(message.text || ""), 0, false));
      }
    } else {
      this.streams.delete(message.id);
    }
    const merged = existing ? { ...existing.msg, ...message } : message;
    if (!Number.isInteger(merged.seq) && existing) merged.seq = existing.msg.seq;
    if (existing && existing.msg.private === true) merged.private = true;
    // Versions first: the row's flipper counts the group it now belongs to.
    const group = this.versionTrack(merged, !existing);
    const node = messageElement(merged, this);
    const lookup = (id) => (this.messages.get(id) || {}).msg;
    if (existing) {
      const moved = existing.msg.seq !== merged.seq;
      existing.msg = merged;
      node.hidden = existing.el.hidden;
      if (existing.el.dataset.versionOf) node.dataset.versionOf = existing.el.dataset.versionOf;
      existing.el.replaceWith(node);
      existing.el = node;
      if (moved) {
        node.remove();
        elementPlace(node, merged, lookup);
      }
    } else {
      this.messages.set(merged.id, { msg: merged, el: node });
      elementPlace(node, merged, lookup);
    }
    if (group !== null) this.versionsApply(group);
    if (merged.private !== true) {
      // A private reply has no seq and is not in the room's log: the resume cursor ignores it.
      if (Number.isInteger(merged.seq)) this.lastSeq = Math.max(this.lastSeq, merged.seq);
      this.lastId = Math.max(this.lastId, merged.id);
    }
    if (merged.role !== "assistant") this.typerClear(merged.author);
    if (this.editing && this.editing.id === merged.id && !this.editing.saving) editorFocus(merged.id);
    if (this.unreadFrom !== null) dividerPlace(this.unreadFrom, this.me);
    emptyUpdate(true);
  }

  isPrivate(id) {
    const row = this.messages.get(Number(id));
    return Boolean(row && row.msg.private === true);
  }

  // --- Versions of a reply (regenerated) ----------------------------------------------------

  // Every version lists the others (oldest first): the oldest id names the group.
  versionKey(msg) {
    const others = Array.isArray(msg.versions) ? msg.versions.filter(Number.isInteger) : [];
    return others.length ? Math.min(msg.id, ...others) : msg.id;
  }

  // Files the message under its group; returns the group's key if it has other
  // versions loaded here (or known), else null. A newer version than any
  // before shows itself (the newest is shown while it streams).
  versionTrack(msg, fresh) {
    if (msg.role !== "assistant") return null;
    const key = this.versionKey(msg);
    for (const [other, ids] of this.versionGroups) {
      if (other !== key && ids.delete(msg.id)) {
        if (ids.size) this.versionsApply(other);
        else this.versionGroups.delete(other);
      }
    }
    let ids = this.versionGroups.get(key);
    const known = Array.isArray(msg.versions) && msg.versions.length > 0;
    if (!ids && !known) return null;
    if (!ids) {
      ids = new Set();
      this.versionGroups.set(key, ids);
      if (this.messages.has(key)) ids.add(key); // the oldest, whose update may not have come yet
    }
    if (fresh && [...ids].every((id) => id < msg.id)) this.versionShown.delete(key);
    ids.add(msg.id);
    return key;
  }

  // Every version id of the group, oldest first: the loaded ones and those they list.
  versionIds(key) {
    const ids = this.versionGroups.get(key);
    if (!ids) return [];
    const all = new Set(ids);
    for (const id of ids) {
      const row = this.messages.get(id);
      for (const other of (row && row.msg.versions) || []) if (Number.isInteger(other)) all.add(other);
    }
    return [...all].sort((a, b) => a - b);
  }

  versionShownId(key) {
    const loaded = [...(this.versionGroups.get(key) || [])].filter((id) => this.messages.has(id));
    if (!loaded.length) return null;
    const chosen = this.versionShown.get(key);
    return loaded.includes(chosen) ? chosen : Math.max(...loaded);
  }

  // For render.js: where this version stands among its group, or null for a lone reply.
  versionInfo(msg) {
    const key = this.versionKey(msg);
    const all = this.versionIds(key);
    const index = all.indexOf(msg.id);
    if (all.length < 2 || index < 0) return null;
    return {
      index: index + 1,
      count: all.length,
      prev: index > 0 ? all[index - 1] : null,
      next: index < all.length - 1 ? all[index + 1] : null,
    };
  }

  // Redraws the group's rows (their flippers), keeps them together after the
  // oldest loaded one, and shows one.
  versionsApply(key) {
    const ids = this.versionGroups.get(key);
    if (!ids) return;
    const rows = [...ids]
      .filter((id) => this.messages.has(id))
      .sort((a, b) => a - b)
      .map((id) => ({ id, row: this.messages.get(id) }));
    if (!rows.length) return;
    for (const { row } of rows) {
      const node = messageElement(row.msg, this);
      node.hidden = row.el.hidden;
      row.el.replaceWith(node);
      row.el = node;
    }
    versionsArrange(
      rows.map(({ id, row }) => ({ id, el: row.el })),
      this.versionShownId(key),
    );
    if (this.unreadFrom !== null) dividerPlace(this.unreadFrom, this.me);
  }

  // The flipper: show another version (paging older history in if it is not loaded yet).
  versionShow(id) {
    const target = Number(id);
    const row = this.messages.get(target);
    const key = row ? this.versionKey(row.msg) : this.versionKeyOf(target);
    if (key === null) return;
    this.versionShown.set(key, target);
    if (row) {
      const focused = document.activeElement;
      let which = null;
      if (focused && focused.classList.contains("version-flip")) {
        which = focused.classList.contains("version-prev") ? "prev" : "next";
      }
      // The entry stays where it is on screen; what is below it moves if the versions differ in length.
      this.versionsApply(key);
      if (which) {
        // Keep the keyboard on the flipper, now in the row shown.
        const same = row.el.querySelector(`button.version-${which}:not(:disabled)`);
        const any = row.el.querySelector("button.version-flip:not(:disabled)");
        if (same || any) (same || any).focus({ preventScroll: true });
      }
    } else if (target < this.lastId) {
      // An older version not loaded yet: page history in until it is.
      this.quoteJump(target);
    }
    // A newer one is on its way (its start or the resume brings it), and shows itself.
  }

  // The group a version not loaded here belongs to, from the loaded ones that list it.
  versionKeyOf(id) {
    for (const [key] of this.versionGroups) {
      if (this.versionIds(key).includes(id)) return key;
    }
    return null;
  }

  // Regenerate: the asker of the question, or a moderator, on a finished shared reply
  // whose group has nothing being written.
  mayRegenerate(msg) {
    if (msg.role !== "assistant" || msg.private === true || msg.deleted) return false;
    if (msg.status === "streaming" || !Number.isInteger(msg.in_reply_to)) return false;
    if (this.assistants.length && !this.assistants.some((a) => sameName(a.name, msg.author))) return false;
    const group = this.versionGroups.get(this.versionKey(msg));
    if (group && [...group].some((id) => this.streams.has(id))) return false;
    if (this.moderator) return true;
    const question = this.messageRow(msg.in_reply_to);
    return Boolean(question && question.role !== "assistant" && sameName(question.author, this.me));
  }

  regenerate(id) {
    const msg = this.messageRow(id);
    if (!msg || !this.mayRegenerate(msg)) return false;
    return this.socket.send({ type: "assistant.regenerate", reply_id: msg.id });
  }

  // --- Catch-up (a private summary of what this person has not read) ---------------------------

  catchup() {
    if (this.catchupTimer !== null || !this.assistants.length) return;
    const frame = { type: "assistant.catchup" };
    // What was unread when this page opened: by the time the button is pressed,
    // the read mark has usually moved past it (the log was seen).
    if (this.catchupFrom !== null) frame.since_seq = this.catchupFrom;
    if (!this.socket.send(frame)) {
      this.notice("offline", "Not connected: try again when the room is live.");
      return;
    }
    this.catchupTimer = window.setTimeout(() => this.catchupDone(), CATCHUP_WAIT_MS);
    catchupShow(true, true);
  }

  catchupDone() {
    if (this.catchupTimer === null) return;
    window.clearTimeout(this.catchupTimer);
    this.catchupTimer = null;
    catchupShow(this.assistants.length > 0, false);
  }

  // --- @-completion ---------------------------------------------------------------------------

  // Names the composer offers after "@": the room's assistants, then people
  // (here now, or seen writing in the log), never oneself.
  mentionCandidates() {
    const assistants = this.assistants.map((a) => String(a.name));
    const taken = new Set(assistants.map((n) => n.toLowerCase()));
    const people = new Set(this.presentUsers || []);
    for (const { msg } of this.messages.values()) {
      if (msg.role !== "assistant" && msg.author) people.add(String(msg.author));
    }
    const others = [...people].filter((n) => !sameName(n, this.me) && !taken.has(n.toLowerCase()));
    return { assistants, people: others.sort((a, b) => a.localeCompare(b)) };
  }

  // A message not loaded here whose seq lies below everything shown.
  belowLoaded(message) {
    if (!message || this.messages.has(message.id) || !Number.isInteger(message.seq)) return false;
    const oldest = this.oldestMessage();
    return Boolean(oldest && Number.isInteger(oldest.seq) && message.seq < oldest.seq);
  }

  // An edit or a delete, from any tab or the admin: replace the row, keep its place.
  messageUpdate(message) {
    if (!Number.isInteger(message.id) || this.belowLoaded(message)) return;
    const existing = this.messages.get(message.id);
    if (!existing && Number.isInteger(message.seq) && message.seq > this.lastSeq) {
      // Not here yet at all: it is news, and goes through the seq ordering like a message.
      this.frame({ type: "message", message });
      return;
    }
    if (this.editing && this.editing.id === message.id && (this.editing.saving || message.deleted)) {
      this.editing = null;
    }
    if (this.replyTo && this.replyTo.id === message.id && message.deleted) this.replyCancel();
    logChange(() => this.messageUpsert(message));
    // Quotes of it elsewhere in the log follow.
    for (const { msg } of this.messages.values()) {
      if (msg.reply_to && msg.reply_to.id === message.id && message.deleted && msg.reply_to.excerpt) {
        logChange(() => this.messageUpsert({ ...msg, reply_to: { ...msg.reply_to, excerpt: "" } }));
      }
    }
  }

  // A new row from someone else: the tab title counts it unless it is being looked at.
  arrived(message) {
    if (message.author !== this.me || message.role === "assistant") this.attention.arrived();
  }

  messageRow(id) {
    const row = this.messages.get(Number(id));
    return row ? row.msg : null;
  }

  oldestMessage() {
    let oldest = null;
    for (const { msg } of this.messages.values()) {
      if (msg.private === true) continue; // not in the room's log: older history is paged from the log's rows
      if (oldest === null || comesBefore(msg, oldest)) oldest = msg;
    }
    return oldest;
  }

  olderUpdate() {
    const oldest = this.oldestMessage();
    const visible = !this.reachedStart && oldest && Number.isInteger(oldest.seq) && oldest.seq > 1;
    olderShow(Boolean(visible), this.olderLoading);
    emptyUpdate(this.messages.size > 0 || this.pending.size > 0);
  }

  olderLoadingSet(loading) {
    this.olderLoading = loading;
    this.olderUpdate();
  }

  olderLoad() {
    const oldest = this.oldestMessage();
    if (!oldest || this.olderLoading) return;
    if (this.historyFetch({ before: oldest.id, limit: HISTORY_PAGE }, "older")) this.olderLoadingSet(true);
  }

  // --- Replies being written -------------------------------------------------------------------

  streamNew(text, seq, known) {
    return { text, seq, known, waiting: new Map(), fetching: false, tries: 0 };
  }

  streamText(replyId) {
    const stream = this.streams.get(replyId);
    return stream ? stream.text : null;
  }

  streamResume(entry, isPrivate = false) {
    const id = entry.reply_id;
    if (!Number.isInteger(id)) return;
    const local = this.streams.get(id);
    const seq = Number.isInteger(entry.seq) ? entry.seq : 0;
    // Keep what this tab already has if it is further along than the snapshot.
    if (!local || !local.known || local.seq < seq) {
      const stream = this.streamNew(String(entry.text || ""), seq, true);
      if (local) stream.waiting = local.waiting;
      this.streams.set(id, stream);
    }
    const existing = this.messages.get(id);
    const base = existing
      ? existing.msg
      : {
          id,
          seq: Number.isInteger(entry.message_seq) ? entry.message_seq : null,
          author: entry.author,
          role: "assistant",
          created: null,
          in_reply_to: entry.in_reply_to,
          ...(isPrivate ? { private: true } : {}),
        };
    this.messageUpsert({ ...base, status: "streaming" });
    this.streamAdvance(id);
  }

  delta(frame) {
    if (!Number.isInteger(frame.reply_id) || !Number.isInteger(frame.seq)) return;
    let stream = this.streams.get(frame.reply_id);
    if (!stream) {
      const row = this.messages.get(frame.reply_id);
      if (row && row.msg.status !== "streaming") return; // already final here
      // Its start never came (or came only as a saved copy): the snapshot brings it.
      stream = this.streamNew("", 0, false);
      this.streams.set(frame.reply_id, stream);
    }
    if (frame.seq <= stream.seq) return;
    stream.waiting.set(frame.seq, String(frame.text || ""));
    if (!stream.known || frame.seq > stream.seq + 1) {
      // A delta is missing (or the text it continues is unknown): ask for the
      // reply as the server has it, and keep what comes meanwhile.
      this.snapshotFetch(frame.reply_id);
      return;
    }
    this.streamAdvance(frame.reply_id);
  }

  streamAdvance(replyId) {
    const stream = this.streams.get(replyId);
    if (!stream || !stream.known) return;
    let changed = false;
    for (const seq of [...stream.waiting.keys()].sort((a, b) => a - b)) {
      if (seq <= stream.seq) {
        stream.waiting.delete(seq);
      } else if (seq === stream.seq + 1) {
        stream.text += stream.waiting.get(seq);
        stream.seq = seq;
        stream.waiting.delete(seq);
        changed = true;
      } else {
        break;
      }
    }
    if (changed) logChange(() => streamTextShow(replyId, stream.text));
    if (stream.waiting.size) this.snapshotFetch(replyId);
  }

  snapshotFetch(replyId) {
    const stream = this.streams.get(replyId);
    if (!stream || stream.fetching) return;
    if (this.socket.send({ type: "assistant.fetch", reply_id: replyId })) stream.fetching = true;
  }

  snapshot(frame) {
    const id = frame.reply_id;
    if (frame.message) {
      // It ended meanwhile: the final message is the whole of it.
      logChange(() => {
        this.streams.delete(id);
        this.messageUpsert(frame.message);
      });
      return;
    }
    const stream = this.streams.get(id);
    const entry = frame.streaming;
    if (!stream || !entry) return;
    stream.fetching = false;
    if (Number.isInteger(entry.seq) && (!stream.known || entry.seq >= stream.seq)) {
      stream.text = String(entry.text || "");
      stream.seq = entry.seq;
      stream.known = true;
      stream.tries = 0;
      if (this.messages.has(id)) {
        logChange(() => streamTextShow(id, stream.text));
      } else {
        this.streamResume(entry, frame.private === true);
      }
    }
    const next = stream.waiting.size ? Math.min(...stream.waiting.keys()) : null;
    this.streamAdvance(id);
    if (next !== null && next > stream.seq + 1 && stream.tries < SNAPSHOT_TRIES) {
      // The server's saved text is behind what was broadcast (its database was
      // away for a moment): ask again shortly.
      stream.tries += 1;
      const timer = window.setTimeout(() => {
        this.fetchTimers.delete(timer);
        this.snapshotFetch(id);
      }, SNAPSHOT_RETRY_MS);
      this.fetchTimers.add(timer);
    }
  }

  queued(frame) {
    const ahead = Number(frame.position) || 1;
    const inReplyTo = Number.isInteger(frame.in_reply_to) ? frame.in_reply_to : null;
    // A request that answers no message is someone's catch-up: only the asker's is news.
    if (inReplyTo === null && this.catchupTimer === null) return;
    const name = typeof frame.assistant === "string" && frame.assistant ? frame.assistant : this.assistant;
    const who = name ? `@${name}` : "The assistant";
    const key = this.queuedKey(inReplyTo, name);
    this.queuedNoteClear(inReplyTo, name);
    const text =
      inReplyTo === null
        ? `Your catch-up: ${who} will start after ${plural(ahead, "earlier request")}.`
        : `${who} will answer after ${plural(ahead, "earlier request")}.`;
    const note = noticeShow(`queued-${key}`, text, "info");
    this.queuedNotes.set(key, note);
    window.setTimeout(() => {
      if (this.queuedNotes.get(key) === note) this.queuedNoteClear(inReplyTo, name);
    }, NOTE_MS);
  }

  queuedKey(inReplyTo, name) {
    return `${Number.isInteger(inReplyTo) ? inReplyTo : "-"}:${String(name || "").toLowerCase()}`;
  }

  // One notice per request: a message that asks two assistants waits twice.
  queuedNoteClear(inReplyTo, name) {
    const key = this.queuedKey(inReplyTo, name || this.assistant);
    const note = this.queuedNotes.get(key);
    if (note) note.remove();
    this.queuedNotes.delete(key);
  }

  // --- Presence and typing -----------------------------------------------------------------------

  presence(frame) {
    const version = Number.isInteger(frame.version) ? frame.version : null;
    if (version !== null) {
      if (version <= this.presenceVersion) return; // an older list overtook by a newer one
      this.presenceVersion = version;
    }
    this.presentUsers = new Set((frame.users || []).map(String));
    if (this.me) this.presentUsers.add(this.me); // the hello's joiner is announced next
    this.presenceWaiting = new Map([...(this.presenceWaiting || new Map())].filter(([v]) => v > this.presenceVersion));
    this.presenceApplyWaiting();
    presenceRender([...this.presentUsers], this.me);
  }

  // Deltas continue the version shown; one that skips ahead waits for the
  // missing one a moment (publishes of two processes can cross), then the
  // whole set is asked for.
  presenceDelta(frame) {
    if (!Number.isInteger(frame.version) || !Number.isInteger(frame.since)) return;
    if (frame.version <= this.presenceVersion) return;
    if (!this.presenceWaiting) this.presenceWaiting = new Map();
    this.presenceWaiting.set(frame.since, frame);
    this.presenceApplyWaiting();
    presenceRender([...(this.presentUsers || [])], this.me);
    if (this.presenceWaiting.size && this.presenceTimer === undefined) {
      this.presenceTimer = window.setTimeout(() => {
        this.presenceTimer = undefined;
        if (this.presenceWaiting && this.presenceWaiting.size) this.socket.send({ type: "presence.fetch" });
      }, 1000);
    }
  }

  presenceApplyWaiting() {
    if (!this.presentUsers) this.presentUsers = new Set();
    let next = this.presenceWaiting && this.presenceWaiting.get(this.presenceVersion);
    while (next) {
      this.presenceWaiting.delete(this.presenceVersion);
      for (const name of next.joined || []) this.presentUsers.add(String(name));
      for (const name of next.left || []) this.presentUsers.delete(String(name));
      this.presenceVersion = next.version;
      next = this.presenceWaiting.get(this.presenceVersion);
    }
    for (const since of [...(this.presenceWaiting || new Map()).keys()]) {
      if (since < this.presenceVersion) this.presenceWaiting.delete(since);
    }
  }

  typing(frame) {
    const name = String(frame.username || "");
    if (!name || name === this.me) return;
    if (frame.active) {
      this.typerClear(name, false);
      this.typers.set(
        name,
        window.setTimeout(() => this.typerClear(name), TYPING_EXPIRE_MS),
      );
      typersRender(this.typers.keys());
    } else {
      this.typerClear(name);
    }
  }

  typerClear(name, render = true) {
    const timer = this.typers.get(name);
    if (timer === undefined) return;
    window.clearTimeout(timer);
    this.typers.delete(name);
    if (render) typersRender(this.typers.keys());
  }

  typersClear() {
    for (const timer of this.typers.values()) window.clearTimeout(timer);
    this.typers.clear();
    typersRender([]);
  }

  // --- Sending ---------------------------------------------------------------------------------

  pendingAdd(clientId, text, replyTo) {
    const li = pendingElement(clientId, this.me, text, replyTo);
    this.pending.set(clientId, { text, replyTo, el: li });
    emptyUpdate(true);
  }

  pendingSend(clientId) {
    const item = this.pending.get(clientId);
    if (!item) return;
    const frame = { type: "message.send", text: item.text, client_id: clientId };
    if (item.replyTo) frame.reply_to = item.replyTo.id;
    if (this.socket.send(frame)) {
      this.inflight.push(clientId);
      pendingMark(item.el, "sending…", false);
    }
  }

  // After a reconnect: the server deduplicates by client_id, so resending is safe.
  pendingResendAll() {
    for (const clientId of this.pending.keys()) {
      if (!this.inflight.includes(clientId)) this.pendingSend(clientId);
    }
  }

  pendingResolve(clientId) {
    const item = this.pending.get(clientId);
    if (item) item.el.remove();
    this.pending.delete(clientId);
    this.inflight = this.inflight.filter((id) => id !== clientId);
    emptyUpdate(this.messages.size > 0 || this.pending.size > 0);
  }

  // Refused: nothing typed is lost, the text goes back into the composer.
  pendingFail(clientId) {
    const item = this.pending.get(clientId);
    if (!item) return;
    this.pendingResolve(clientId);
    const current = els.text.value;
    els.text.value = current ? `${item.text}\n${current}` : item.text;
    if (item.replyTo && !this.replyTo) this.replySet(item.replyTo);
    els.text.focus();
  }

  error(frame) {
    const code = String(frame.code || "error");
    // Every message.send gets exactly one answer; an error answering one names
    // its client_id (this page always sends one).
    const clientId = typeof frame.client_id === "string" && this.pending.has(frame.client_id) ? frame.client_id : null;
    if (clientId && code === "unavailable") {
      // Not saved, through no fault of the message: keep it and send it again soon.
      this.inflight = this.inflight.filter((x) => x !== clientId);
      pendingMark(this.pending.get(clientId).el, "retrying…", false);
      this.resendSoon();
    } else if (clientId && SEND_REFUSALS.has(code)) {
      this.pendingFail(clientId);
    }
    if (this.editing && this.editing.saving && !clientId) {
      // Not saved: the editor comes back with the text, and the notice says why.
      this.editing.saving = false;
      this.editRender();
    }
    if (!clientId) {
      // A refused catch-up or regenerate answers with no client_id: their buttons come back.
      this.catchupDone();
      regenerateReset();
    }
    const title = ERROR_TEXT[code] || "Error";
    if (code === "budget_exceeded") {
      const when = resetLabel(frame.resets);
      const note = noticeShow(`error-${code}`, when ? `${title} — resets at ${when}` : title, "error");
      if (frame.detail) note.title = String(frame.detail);
      return;
    }
    noticeShow(`error-${code}`, frame.detail ? `${title}: ${frame.detail}` : title, "error");
  }

  resendSoon() {
    if (this.resendTimer !== null) return;
    this.resendTimer = window.setTimeout(() => {
      this.resendTimer = null;
      this.pendingResendAll();
    }, RESEND_MS);
  }

  notice(key, text) {
    noticeShow(key, text, "error");
  }

  submit(text) {
    const clientId = newClientId();
    const replyTo = this.replyTo;
    this.replyCancel();
    noticeClear("error-rate_limited");
    noticeClear("error-too_long");
    logChange(() => this.pendingAdd(clientId, text, replyTo), true);
    this.pendingSend(clientId);
  }

  // --- Replying, editing, deleting ------------------------------------------------------------------

  replySet(quote) {
    this.replyTo = quote;
    replyChipShow(quote);
  }

  reply(id) {
    const msg = this.messageRow(id);
    if (!msg || msg.deleted) return;
    this.replySet({ id: msg.id, author: msg.author, excerpt: excerptOf(msg.text) });
    els.text.focus();
  }

  replyCancel() {
    this.replyTo = null;
    replyChipShow(null);
  }

  editStart(id) {
    const msg = this.messageRow(id);
    if (!msg || msg.deleted || msg.role === "assistant") return;
    if (this.editing && this.editing.id !== msg.id) this.editCancel();
    this.editing = { id: msg.id, draft: String(msg.text || ""), saving: false };
    this.editRender();
  }

  editRender() {
    if (!this.editing) return;
    const msg = this.messageRow(this.editing.id);
    if (msg) logChange(() => this.messageUpsert(msg));
  }

  editCancel() {
    if (!this.editing) return;
    const { id } = this.editing;
    this.editing = null;
    const msg = this.messageRow(id);
    if (msg) logChange(() => this.messageUpsert(msg));
  }

  editSave(text) {
    if (!this.editing || this.editing.saving) return;
    const msg = this.messageRow(this.editing.id);
    if (!msg) {
      this.editing = null;
      return;
    }
    this.editing.draft = text;
    if (!text.trim()) return;
    if (text === msg.text) {
      this.editCancel();
      return;
    }
    if (this.socket.send({ type: "message.edit", id: msg.id, text, client_id: newClientId() })) {
      this.editing.saving = true;
      this.editRender();
    } else {
      this.notice("offline", "Not connected: the edit was not sent. Try again when the room is live.");
    }
  }

  remove(id) {
    const msg = this.messageRow(id);
    if (!msg || msg.deleted) return false;
    return this.socket.send({ type: "message.delete", id: msg.id });
  }

  // Scroll to a quoted message and flash it, paging in older history if it is not loaded.
  quoteJump(id) {
    this.jumpTarget = null;
    const row = this.messages.get(Number(id));
    if (row && row.el.hidden && row.msg.role === "assistant") {
      // Another version of a reply is shown: show this one.
      const key = this.versionKey(row.msg);
      this.versionShown.set(key, row.msg.id);
      this.versionsApply(key);
    }
    if (messageFlash(id)) return;
    if (this.reachedStart) {
      this.notice("quote_gone", "That message is no longer in this room's history.");
      return;
    }
    this.jumpTarget = Number(id);
    this.jumpPages = 0;
    this.olderLoad();
  }

  jumpContinue() {
    if (this.jumpTarget === null) return;
    if (messageFlash(this.jumpTarget)) {
      this.jumpTarget = null;
      return;
    }
    this.jumpPages += 1;
    if (this.reachedStart || this.jumpPages >= JUMP_PAGES_MAX) {
      this.jumpTarget = null;
      return;
    }
    this.olderLoad();
  }
}

function sameName(a, b) {
  return String(a).toLowerCase() === String(b || "").toLowerCase();
}

// When a budget resets, in the reader's time: "23:00", or "Tue 2 Dec, 00:00" on another day.
function resetLabel(iso) {
  const date = new Date(String(iso || ""));
  if (!iso || Number.isNaN(date.getTime())) return null;
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === new Date().toDateString()) return time;
  const day = date.toLocaleDateString([], { weekday: "short", day: "numeric", month: "short" });
  return `${day}, ${time}`;
}

export function excerptOf(text) {
  const flat = String(text || "").split(/\s+/).filter(Boolean).join(" ");
  return flat.length <= EXCERPT_CHARS ? flat : `${flat.slice(0, EXCERPT_CHARS - 1)}…`;
}

export function newClientId() {
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
