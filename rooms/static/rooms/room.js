// The room page: one WebSocket (protocol.js), the room's state kept complete
// (sync.js), its DOM (render.js, markdown.js for replies being written), the
// composer (composer.js), what the person has seen (attention.js) and the
// page's layout on small screens (layout.js).
//
// Protocol: docs/protocol.md. No build step: plain ES modules.

import { Attention } from "./attention.js";
import { Composer } from "./composer.js";
import { layoutStart } from "./layout.js";
import { Socket } from "./protocol.js";
import { composerEnable, connectionShow, els, scrollToBottom } from "./render.js";
import { RoomState } from "./sync.js";

const config = JSON.parse(document.getElementById("room-config").textContent);
const base = () => {
  const proto = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${window.location.host}/ws/rooms/${encodeURIComponent(config.slug)}/`;
};

let countdown = null;

function countdownClear() {
  if (countdown !== null) window.clearInterval(countdown);
  countdown = null;
}

function loginHref() {
  const url = new URL(els.root.dataset.loginUrl || "/accounts/login/", window.location.href);
  url.searchParams.set("next", window.location.pathname);
  return url.pathname + url.search;
}

const socket = new Socket({
  url: () => room.cursorUrl(base()),
  onFrame: (frame) => {
    if (frame.type === "hello") {
      // "Live" only once the room is really there.
      countdownClear();
      connectionShow("live", "Live");
      composerEnable(true);
      socket.live();
    }
    room.frame(frame);
  },
  onState: (kind, detail) => {
    if (kind === "connecting" || kind === "reconnecting") {
      countdownClear();
      if (!detail.retryAt) {
        room.socketOpened();
        connectionShow(kind, kind === "connecting" ? "Connecting…" : "Reconnecting…");
        return;
      }
      const show = () => {
        const seconds = Math.ceil((detail.retryAt - Date.now()) / 1000);
        connectionShow(
          "reconnecting",
          seconds > 0 ? `Reconnecting in ${seconds}s…` : "Reconnecting…",
          null,
          seconds > 0 ? `Retry in ${seconds}s` : "Reconnecting…",
        );
      };
      show();
      countdown = window.setInterval(show, 250);
    } else if (kind === "offline") {
      countdownClear();
      connectionShow("offline", "Offline: waiting for the network…", null, "Offline");
    } else if (kind === "closed") {
      room.socketClosed();
      if (detail.code === 4413) {
        room.notice("too_large", "That was too large for the server; the connection was reset.");
      } else if (detail.code === 4429) {
        room.notice("too_many", "Too many open tabs: close some, this one keeps trying.");
      }
    }
  },
  onStop: (reason) => {
    countdownClear();
    composer.stopped = true;
    composerEnable(false);
    room.stopForGood();
    const rooms = els.root.dataset.roomsUrl || "/";
    if (reason === "signed-out") {
      connectionShow("signed-out", "Signed out.", { text: "Log in again", href: loginHref() });
    } else if (reason === "forbidden") {
      connectionShow("forbidden", "You no longer have access to this room.", { text: "All rooms", href: rooms });
    } else {
      connectionShow("missing", "This room does not exist.", { text: "All rooms", href: rooms });
    }
  },
});

const attention = new Attention({
  send: (frame) => socket.send(frame),
  lastSeq: () => room.lastSeq,
  slug: config.slug,
});
const room = new RoomState({ me: config.username, assistant: config.assistant, socket, attention });
const composer = new Composer({
  send: (frame) => socket.send(frame),
  submit: (text) => room.submit(text),
  maxChars: config.maxChars,
  cancelReply: () => room.replyCancel(),
  candidates: () => room.mentionCandidates(),
});

const DELETE_CONFIRM_MS = 4_000;

function rowId(node) {
  const row = node.closest("li.msg[data-id]");
  return row ? Number(row.dataset.id) : null;
}

els.list.addEventListener("click", (event) => {
  const stop = event.target.closest("button.stop");
  if (stop) {
    if (stop.disabled) return;
    if (socket.send({ type: "assistant.cancel", reply_id: Number(stop.dataset.replyId) })) {
      stop.disabled = true;
      stop.textContent = "Stopping…";
    }
    return;
  }
  const flip = event.target.closest("button.version-flip");
  if (flip) {
    if (!flip.disabled) room.versionShow(Number(flip.dataset.versionTarget));
    return;
  }
  const quote = event.target.closest("button.msg-quote");
  if (quote) {
    room.quoteJump(Number(quote.dataset.quoteId));
    return;
  }
  const action = event.target.closest("button.msg-action");
  if (action) {
    const id = rowId(action);
    if (action.dataset.action === "reply") room.reply(id);
    else if (action.dataset.action === "edit") room.editStart(id);
    else if (action.dataset.action === "delete") deleteClick(action, id);
    else if (action.dataset.action === "regenerate") regenerateClick(action, id);
    return;
  }
  if (event.target.closest("button.editor-cancel")) {
    room.editCancel();
    return;
  }
  // A tap on a message shows its actions (touch screens have no hover).
  const row = event.target.closest("li.msg[data-id]");
  if (row && !event.target.closest("a, button, textarea, .msg-editor")) {
    const was = row.classList.contains("selected");
    for (const other of els.list.querySelectorAll("li.msg.selected")) other.classList.remove("selected");
    if (!was) row.classList.add("selected");
  }
});

// Deleting takes a second press: the first turns the button into a confirmation.
function deleteClick(button, id) {
  if (button.classList.contains("confirm")) {
    if (!room.remove(id)) room.notice("offline", "Not connected: nothing was deleted.");
    return;
  }
  button.classList.add("confirm");
  button.textContent = "Delete?";
  button.setAttribute("aria-label", "Press again to delete this message");
  window.setTimeout(() => {
    if (!button.isConnected) return;
    button.classList.remove("confirm");
    button.textContent = "Delete";
    button.setAttribute("aria-label", "Delete message");
  }, DELETE_CONFIRM_MS);
}

// The new version streams into the same entry; until it starts, the button says it was asked.
function regenerateClick(button, id) {
  if (button.disabled) return;
  if (!room.regenerate(id)) {
    room.notice("offline", "Not connected: nothing was asked. Try again when the room is live.");
    return;
  }
  button.disabled = true;
  button.textContent = "Regenerating…";
}

if (els.catchup) els.catchup.addEventListener("click", () => room.catchup());

els.list.addEventListener("submit", (event) => {
  const form = event.target.closest("form.msg-editor");
  if (!form) return;
  event.preventDefault();
  room.editSave(form.querySelector("textarea").value);
});
els.list.addEventListener("keydown", (event) => {
  const box = event.target.closest(".msg-editor-text");
  if (!box) return;
  if (event.key === "Escape") {
    event.preventDefault();
    room.editCancel();
    els.text.focus();
  } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    room.editSave(box.value);
  }
});
els.list.addEventListener("input", (event) => {
  const box = event.target.closest(".msg-editor-text");
  if (box && room.editing) room.editing.draft = box.value;
});
els.replyChip.querySelector("button.reply-chip-close").addEventListener("click", () => {
  room.replyCancel();
  els.text.focus();
});
els.notices.addEventListener("click", (event) => {
  const button = event.target.closest("button.notice-close");
  if (button) button.closest(".notice").remove();
});
els.older.addEventListener("click", () => room.olderLoad());
els.pill.addEventListener("click", scrollToBottom);
els.log.addEventListener("scroll", () => {
  if (els.log.scrollHeight - els.log.scrollTop - els.log.clientHeight < 80) els.pill.hidden = true;
});

composerEnable(false);
layoutStart();
attention.start();
composer.start();
socket.start();
