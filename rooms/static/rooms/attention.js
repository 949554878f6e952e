// What the person has and has not seen: the read mark sent to the server, the
// count in the tab title, mentions from other rooms, browser notifications.
//
// - `read {seq}` goes out when the log is at the bottom and the tab is
//   visible, at most every READ_EVERY_MS (and at once on becoming visible).
// - The title reads "(N) Room · Chatsite": N new rows from others that arrived
//   while the tab was hidden or scrolled up, plus mentions in other rooms.
// - A `notify` frame (a mention, any room) counts, shows a notice and, only if
//   the person allowed it and the tab is hidden, a browser notification, tagged
//   with the message id so several tabs show it once.

import { el, els, nearBottom, noticeShow } from "./render.js";

const READ_EVERY_MS = 2_000;

export class Attention {
  // send(frame) -> bool; lastSeq() -> the room's newest seq shown; slug: this room.
  constructor({ send, lastSeq, slug }) {
    this.send = send;
    this.lastSeq = lastSeq;
    this.slug = slug;
    this.baseTitle = document.title;
    this.unseen = 0;
    this.elsewhere = 0;
    this.readSent = 0;
    this.readSentAt = 0;
    this.readTimer = null;
  }

  start() {
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") {
        this.elsewhere = 0;
        this.readSentAt = 0; // coming back is worth an immediate mark
      }
      this.check();
    });
    els.log.addEventListener("scroll", () => this.check(), { passive: true });
    window.addEventListener("focus", () => this.check());
    this.notifyButtonSetUp();
  }

  seeing() {
    return document.visibilityState === "visible" && nearBottom();
  }

  // A new row from someone else.
  arrived() {
    if (!this.seeing()) this.unseen += 1;
    this.titleShow();
    this.check();
  }

  // Something changed (scroll, visibility, new rows, a new socket): if the
  // person is looking at the end of the log, it is all seen and read.
  check() {
    if (this.seeing()) {
      this.unseen = 0;
      this.readMaybe();
    }
    this.titleShow();
  }

  readMaybe() {
    const seq = this.lastSeq();
    if (!(seq > this.readSent)) return;
    const wait = this.readSentAt + READ_EVERY_MS - Date.now();
    if (wait > 0) {
      if (this.readTimer === null) {
        this.readTimer = window.setTimeout(() => {
          this.readTimer = null;
          if (this.seeing()) this.readMaybe();
        }, wait);
      }
      return;
    }
    if (this.send({ type: "read", seq })) {
      this.readSent = seq;
      this.readSentAt = Date.now();
    }
  }

  titleShow() {
    const count = this.unseen + this.elsewhere;
    const title = count > 0 ? `(${count}) ${this.baseTitle}` : this.baseTitle;
    if (document.title !== title) document.title = title;
  }

  notify(frame) {
    if (frame.kind !== "mention" || !frame.message || !frame.room) return;
    const room = frame.room;
    const message = frame.message;
    const here = room.slug === this.slug;
    if (!here) {
      // Here, the message itself arrives and counts; elsewhere only this tells.
      this.elsewhere += 1;
      this.titleShow();
      const note = noticeShow(`mention-${message.id}`, `${message.author} mentioned you in ${room.name}: `, "info");
      const link = el("a", "notice-link", "Open");
      link.href = `/rooms/${encodeURIComponent(room.slug)}/`;
      note.querySelector(".notice-text").append(el("q", "notice-excerpt", message.excerpt || ""), " ", link);
    }
    this.notificationShow(room, message, here);
  }

  notificationShow(room, message, here) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    if (document.visibilityState !== "hidden") return;
    try {
      const notification = new Notification(`${message.author} mentioned you in ${room.name}`, {
        body: String(message.excerpt || ""),
        tag: `mention-${message.id}`,
      });
      notification.addEventListener("click", () => {
        window.focus();
        if (!here) window.location.assign(`/rooms/${encodeURIComponent(room.slug)}/`);
        notification.close();
      });
    } catch {
      // Some browsers only allow notifications from a service worker.
    }
  }

  // Asked once, and only when the person presses the button (never on load).
  notifyButtonSetUp() {
    const button = els.notify;
    if (!button) return;
    const supported = "Notification" in window && typeof Notification.requestPermission === "function";
    button.hidden = !supported || Notification.permission !== "default";
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await Notification.requestPermission();
      } catch {
        // Answered or not, the button has done its job.
      }
      button.hidden = true;
    });
  }
}
