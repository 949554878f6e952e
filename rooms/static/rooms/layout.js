// The room page on small screens: the presence drawer, and the on-screen
// keyboard never covering the composer.
//
// The page is exactly as tall as what can be seen (site.css: 100dvh, and here
// the visual viewport's height, which shrinks when a phone's keyboard opens
// even where dvh does not); the log is the only thing that scrolls.

import { els, nearBottom, scrollToBottom } from "./render.js";

function drawerSet(open) {
  els.root.classList.toggle("presence-open", open);
  els.presenceToggle.setAttribute("aria-expanded", String(open));
  if (open) els.presenceClose.focus({ preventScroll: true });
}

function viewportFollow() {
  const vv = window.visualViewport;
  if (!vv) return;
  let frame = null;
  const apply = () => {
    frame = null;
    // Pinch-zoomed: the visual viewport is a magnified part of the page, not its size.
    if (Math.abs(vv.scale - 1) > 0.01) return;
    const follow = nearBottom();
    // CSSOM, not a style attribute: allowed under style-src 'self'.
    document.documentElement.style.setProperty("--app-height", `${Math.round(vv.height)}px`);
    document.documentElement.classList.add("vv-sized");
    // iOS scrolls the layout viewport up under the keyboard: keep the page at the top.
    if (vv.offsetTop > 0 || window.scrollY !== 0) window.scrollTo(0, 0);
    if (follow) scrollToBottom();
  };
  const schedule = () => {
    if (frame === null) frame = window.requestAnimationFrame(apply);
  };
  vv.addEventListener("resize", schedule);
  vv.addEventListener("scroll", schedule);
  apply();
}

export function layoutStart() {
  if (els.presenceToggle) {
    els.presenceToggle.addEventListener("click", () => drawerSet(!els.root.classList.contains("presence-open")));
    els.presenceClose.addEventListener("click", () => {
      drawerSet(false);
      els.presenceToggle.focus();
    });
    // A tap on the dimmed log closes the drawer.
    els.root.querySelector(".drawer-backdrop").addEventListener("click", () => drawerSet(false));
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && els.root.classList.contains("presence-open")) {
        drawerSet(false);
        els.presenceToggle.focus();
      }
    });
  }
  viewportFollow();
}
