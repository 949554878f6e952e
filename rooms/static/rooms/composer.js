// The composer: typing a message, sending it, telling the room you are typing,
// and completing @names (the room's assistants and people).

import { avatar, el, els, noticeClear, noticeShow } from "./render.js";

const TYPING_RESEND_MS = 3_000;
const TYPING_IDLE_MS = 4_000;
const MENTION_MAX = 8;
// "@" at the start or after a space or punctuation (not inside an e-mail
// address), then what has been typed of a name, right before the caret.
const MENTION_BEFORE_CARET = /(?:^|[^\p{L}\p{N}_@.+-])@([\p{L}\p{N}_.+-]{0,40})$/u;

export class Composer {
  // send(frame) -> bool; submit(text); maxChars: the server's limit;
  // cancelReply(): drop the message being replied to (Esc);
  // candidates() -> {assistants: [name], people: [name]}: who "@" offers.
  constructor({ send, submit, maxChars, cancelReply, candidates }) {
    this.cancelReply = cancelReply;
    this.sendFrame = send;
    this.submitText = submit;
    this.maxChars = maxChars;
    this.candidates = candidates || (() => ({ assistants: [], people: [] }));
    this.typingActive = false;
    this.typingSentAt = 0;
    this.typingIdleTimer = null;
    this.stopped = false;
    this.mention = null; // {start, end, options: [{name, ai}], active} while the list is open
  }

  start() {
    els.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    els.text.addEventListener("keydown", (event) => {
      if (this.mention && this.mentionKey(event)) return;
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
      this.mentionUpdate();
    });
    // The caret moved without typing (a click, Home/End): the list follows it.
    els.text.addEventListener("click", () => this.mentionUpdate());
    els.text.addEventListener("keyup", (event) => {
      if (["ArrowLeft", "ArrowRight", "Home", "End"].includes(event.key)) this.mentionUpdate();
    });
    els.text.addEventListener("blur", () => {
      this.typingStop();
      this.mentionClose();
    });
    window.addEventListener("pagehide", () => this.typingStop());
    if (els.mentionList) {
      // Pressing an option must not take the focus (and a phone's keyboard) from the textarea.
      els.mentionList.addEventListener("pointerdown", (event) => event.preventDefault());
      els.mentionList.addEventListener("mousedown", (event) => event.preventDefault());
      els.mentionList.addEventListener("click", (event) => {
        const option = event.target.closest("li[data-index]");
        if (option && this.mention) this.mentionInsert(Number(option.dataset.index));
      });
    }
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
    this.mentionClose();
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

  // --- @-completion ----------------------------------------------------------------

  // What the list offers for `query`: names starting with it first, then names
  // containing it; assistants before people.
  mentionOptions(query) {
    const q = query.toLowerCase();
    const { assistants, people } = this.candidates();
    const rank = (name) => {
      const n = name.toLowerCase();
      if (n.startsWith(q)) return 0;
      return q && n.includes(q) ? 1 : -1;
    };
    const options = [];
    for (const [names, ai] of [
      [assistants, true],
      [people, false],
    ]) {
      for (const name of names) {
        const r = rank(String(name));
        if (r >= 0) options.push({ name: String(name), ai, r });
      }
    }
    options.sort((a, b) => a.r - b.r || Number(b.ai) - Number(a.ai));
    return options.slice(0, MENTION_MAX);
  }

  mentionUpdate() {
    if (!els.mentionList) return;
    const box = els.text;
    if (box.selectionStart !== box.selectionEnd || document.activeElement !== box) {
      this.mentionClose();
      return;
    }
    const caret = box.selectionEnd;
    const match = MENTION_BEFORE_CARET.exec(box.value.slice(0, caret));
    const options = match ? this.mentionOptions(match[1]) : [];
    // Already a whole name, exactly: nothing left to complete.
    if (!match || !options.length || (options.length === 1 && options[0].name === match[1])) {
      this.mentionClose();
      return;
    }
    const previous = this.mention && this.mention.options[this.mention.active];
    const kept = previous ? options.findIndex((o) => o.name === previous.name) : -1;
    this.mention = { start: caret - match[1].length - 1, end: caret, options, active: Math.max(0, kept) };
    this.mentionRender();
  }

  mentionRender() {
    const list = els.mentionList;
    const { options, active } = this.mention;
    const items = options.map((option, index) => {
      const li = el("li", index === active ? "mention-option active" : "mention-option");
      li.id = `mention-option-${index}`;
      li.dataset.index = String(index);
      li.dataset.name = option.name;
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", index === active ? "true" : "false");
      li.append(avatar(option.name, option.ai ? "assistant" : "user"));
      li.append(el("span", "mention-name", `@${option.name}`));
      if (option.ai) li.append(el("span", "tag", "AI"));
      return li;
    });
    list.replaceChildren(...items);
    list.hidden = false;
    els.text.setAttribute("aria-activedescendant", `mention-option-${active}`);
    const current = items[active];
    if (current) current.scrollIntoView({ block: "nearest" });
  }

  mentionClose() {
    if (!els.mentionList) return;
    this.mention = null;
    els.mentionList.hidden = true;
    els.mentionList.replaceChildren();
    els.text.removeAttribute("aria-activedescendant");
  }

  // Keys while the list is open: arrows move, Enter or Tab take, Esc closes.
  // Returns true when the key was the list's.
  mentionKey(event) {
    if (event.isComposing) return false;
    const count = this.mention.options.length;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const step = event.key === "ArrowDown" ? 1 : -1;
      this.mention.active = (this.mention.active + step + count) % count;
      this.mentionRender();
      return true;
    }
    if ((event.key === "Enter" && !event.shiftKey) || (event.key === "Tab" && !event.shiftKey)) {
      event.preventDefault();
      this.mentionInsert(this.mention.active);
      return true;
    }
    if (event.key === "Escape") {
      event.preventDefault();
      this.mentionClose();
      return true;
    }
    return false;
  }

  mentionInsert(index) {
    const option = this.mention && this.mention.options[index];
    if (!option) return;
    const box = els.text;
    const { start, end } = this.mention;
    const after = box.value.slice(end);
    const insert = `@${option.name}${after.startsWith(" ") ? "" : " "}`;
    box.value = box.value.slice(0, start) + insert + after;
    const caret = start + insert.length + (after.startsWith(" ") ? 1 : 0);
    box.focus();
    box.setSelectionRange(caret, caret);
    this.mentionClose();
    this.lengthCheck();
    this.typingInput();
  }
}
