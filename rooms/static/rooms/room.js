// The room page: one WebSocket (protocol.js), the room's state kept complete
// (sync.js), its DOM (render.js) and the composer (composer.js).
//
// Protocol: docs/protocol.md. No build step: plain ES modules.

import { Composer } from "./composer.js";
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
        connectionShow("reconnecting", seconds > 0 ? `Reconnecting in ${seconds}s…` : "Reconnecting…");
      };
      show();
      countdown = window.setInterval(show, 250);
    } else if (kind === "offline") {
      countdownClear();
      connectionShow("offline", "Offline: waiting for the network…");
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

const room = new RoomState({ me: config.username, assistant: config.assistant, socket });
const composer = new Composer({
  send: (frame) => socket.send(frame),
  submit: (text) => room.submit(text),
  maxChars: config.maxChars,
});

els.list.addEventListener("click", (event) => {
  const button = event.target.closest("button.stop");
  if (!button || button.disabled) return;
  if (socket.send({ type: "assistant.cancel", reply_id: Number(button.dataset.replyId) })) {
    button.disabled = true;
    button.textContent = "Stopping…";
  }
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
composer.start();
socket.start();
