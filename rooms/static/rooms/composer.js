// The composer: typing a message, sending it, telling the room you are typing.

import { els, noticeClear, noticeShow } from "./render.js";

const TYPING_RESEND_MS = 3_000;
const TYPING_IDLE_MS = 4_000;

export class Composer {
  // send(frame) -> bool; submit(text); maxChars: the server's limit;
  // cancelReply(): drop the message being replied to (Esc).
  constructor({ send, submit, maxChars, cancelReply }) {
    this.cancelReply = cancelReply;
    this.sendFrame = send;
    this.submitText = submit;
    this.maxChars = maxChars;
    this.typingActive = false;
    this.typingSentAt = 0;
    this.typingIdleTimer = null;
    this.stopped = false;
  }

  start() {
    els.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    els.text.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      } else if (event.key === "Escape" && this.cancelReply) {
        this.cancelReply();
      }
    });
    els.text.addEventListener("input", () => {
      this.lengthCheck();
      this.typingInput();
    });
    els.text.addEventListener("blur", () => this.typingStop());
    window.addEventListener("pagehide", () => this.typingStop());
  }

  // Over the limit is said at once, not cut silently.
  lengthCheck() {
    const over = this.maxChars && els.text.value.length > this.maxChars;
    els.form.classList.toggle("over-limit", Boolean(over));
    if (over) {
      noticeShow(
        "error-too_long",
        `Too long to send: ${els.text.value.length} of at most ${this.maxChars} characters.`,
        "error",
      );
    } else {
      noticeClear("error-too_long");
    }
    return !over;
  }

  submit() {
    if (this.stopped) return;
    const text = els.text.value;
    if (!text.trim()) return;
    if (!this.lengthCheck()) return;
    els.text.value = "";
    this.typingStop();
    this.submitText(text);
  }

  typingInput() {
    if (!els.text.value.trim()) {
      this.typingStop();
      return;
    }
    const now = Date.now();
    if (!this.typingActive || now - this.typingSentAt > TYPING_RESEND_MS) {
      if (this.sendFrame({ type: "typing", active: true })) {
        this.typingActive = true;
        this.typingSentAt = now;
      }
    }
    if (this.typingIdleTimer !== null) window.clearTimeout(this.typingIdleTimer);
    this.typingIdleTimer = window.setTimeout(() => this.typingStop(), TYPING_IDLE_MS);
  }

  typingStop() {
    if (this.typingIdleTimer !== null) window.clearTimeout(this.typingIdleTimer);
    this.typingIdleTimer = null;
    if (this.typingActive) this.sendFrame({ type: "typing", active: false });
    this.typingActive = false;
  }
}
