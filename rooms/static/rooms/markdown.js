// Markdown for a reply while it streams: the growing text rendered in the
// browser, with the same renderer settings and the same allow-list as the
// server's (rooms/rendering.py: markdown-it, then nh3). At assistant.end the
// server's html replaces it.
//
// Two layers, as on the server: markdown-it never passes raw HTML through
// (html: false) and DOMPurify then reduces its output to the server's
// allow-list. Nothing from a message is ever inserted without DOMPurify.

import DOMPurify from "./vendor/purify.es.js";
import markdownit from "./vendor/markdown-it.min.js";

const MAX_NESTING = 20;
const HEADING_DEMOTION = 2;
const CODE_CSS_CLASS = "hl";
const LINK_REL = "nofollow noopener noreferrer";

// The server's nh3 allow-list (rooms/rendering.py `_CLEANER`).
const TAGS = [
  "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "span", "a", "ul", "ol", "li",
  "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td",
];
const ATTRIBUTES = { a: new Set(["href", "title", "target", "rel"]), ol: new Set(["start"]), th: new Set(["align"]), td: new Set(["align"]) };
const ALIGNS = new Set(["left", "center", "right"]);
// Pygments' short token classes (pygments.token.STANDARD_TYPES), and mentions.
const SPAN_CLASSES = new Set(
  (
    "bp c c1 ch cm cp cpf cs dl err esc fm g gd ge ges gh gi go gp gr gs gt gu il k kc kd kn kp kr kt " +
    "l ld m mb mf mh mi mo n na nb nc nd ne nf ni nl nn no nt nv nx o ow p pm py s s1 s2 sa sb sc sd " +
    "se sh si sr ss sx vc vg vi vm w x mention"
  ).split(" "),
);
const PRE_CLASSES = new Set([CODE_CSS_CLASS]);
const SCHEMES = /^(?:https?|mailto):/i;

const PURIFY_CONFIG = {
  ALLOWED_TAGS: TAGS,
  ALLOWED_ATTR: ["href", "title", "start", "align", "class", "target", "rel"],
  ALLOWED_URI_REGEXP: SCHEMES,
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  ALLOW_UNKNOWN_PROTOCOLS: false,
  // script and style go with their content (nh3's clean_content_tags).
  KEEP_CONTENT: true,
  RETURN_DOM_FRAGMENT: true,
};

// Per-tag rules that DOMPurify's global lists cannot say.
DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
  const tag = node.nodeName.toLowerCase();
  const name = data.attrName;
  if (name === "class") {
    const allowed = tag === "span" ? SPAN_CLASSES : tag === "pre" ? PRE_CLASSES : null;
    const kept = allowed ? data.attrValue.split(/\s+/).filter((c) => allowed.has(c)) : [];
    if (kept.length) data.attrValue = kept.join(" ");
    else data.keepAttr = false;
    return;
  }
  if (!(ATTRIBUTES[tag] && ATTRIBUTES[tag].has(name))) {
    data.keepAttr = false;
    return;
  }
  if (name === "align" && !ALIGNS.has(data.attrValue)) data.keepAttr = false;
  if (name === "href") {
    // No relative or scheme-relative URL ("/logout", "//evil.example"): a scheme from the list or nothing.
    const url = data.attrValue.replace(/[\u0000-\u0020\u007f-\u009f]/g, "");
    if (!SCHEMES.test(url)) data.keepAttr = false;
  }
});
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.nodeName === "A") {
    // A chat page must not navigate away from its own socket when a link is clicked.
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", LINK_REL);
  }
});

function escapeHtml(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

// No highlighting in the browser (the final html has it): plain code, same markup.
function codeBlock(code) {
  return `<pre class="${CODE_CSS_CLASS}"><code>${escapeHtml(code)}</code></pre>\n`;
}

function insideLink(tokens, idx) {
  let depth = 0;
  for (let i = 0; i < idx; i += 1) {
    if (tokens[i].type === "link_open") depth += 1;
    else if (tokens[i].type === "link_close") depth -= 1;
  }
  return depth > 0;
}

function markdownBuild() {
  const md = markdownit("commonmark", {
    html: false,
    linkify: true,
    typographer: false,
    breaks: true,
    maxNesting: MAX_NESTING,
    highlight: (code) => codeBlock(code),
  });
  md.enable(["table", "strikethrough", "linkify"]);
  md.disable(["html_block", "html_inline"]);
  md.linkify.set({ fuzzyLink: false });
  md.linkify.add("ftp:", null).add("//", null);
  // An image becomes a link to it: nothing in a message may load a resource by itself.
  md.renderer.rules.image = (tokens, idx, options, env, self) => {
    const token = tokens[idx];
    const src = String(token.attrGet("src") || "");
    const alt = self.renderInlineAsText(token.children || [], options, env) || src;
    if (insideLink(tokens, idx)) return escapeHtml(alt);
    const title = token.attrGet("title");
    const titleAttr = title ? ` title="${escapeHtml(title)}"` : "";
    return `<a href="${escapeHtml(src)}"${titleAttr}>${escapeHtml(alt)}</a>`;
  };
  md.renderer.rules.code_block = (tokens, idx) => codeBlock(tokens[idx].content);
  const cell = (tokens, idx, options, env, self) => {
    const token = tokens[idx];
    const match = /^text-align:(left|center|right)$/.exec(String(token.attrGet("style") || ""));
    if (token.attrs) token.attrs = token.attrs.filter(([name]) => name !== "style");
    if (match) token.attrSet("align", match[1]);
    return self.renderToken(tokens, idx, options);
  };
  md.renderer.rules.th_open = cell;
  md.renderer.rules.td_open = cell;
  const heading = (tokens, idx, options, env, self) => {
    const token = tokens[idx];
    const level = Math.min(Number(token.tag.slice(1)) + HEADING_DEMOTION, 6);
    token.tag = `h${level}`;
    return self.renderToken(tokens, idx, options);
  };
  md.renderer.rules.heading_open = heading;
  md.renderer.rules.heading_close = heading;
  return md;
}

const md = markdownBuild();

// --- Closing what the cut point leaves open ---------------------------------------------

const FENCE_OPEN = /^ {0,3}(`{3,}|~{3,})(.*)$/;

function fenceCloses(line, fence) {
  const match = /^ {0,3}(`{3,}|~{3,})\s*$/.exec(line);
  return Boolean(match && match[1][0] === fence[0] && match[1].length >= fence.length);
}

function isSpace(ch) {
  return ch === undefined || /\s/.test(ch);
}

function isPunct(ch) {
  return ch !== undefined && /[\p{P}\p{S}]/u.test(ch);
}

// Inline code spans of `tail`: [start, end) ranges, and an unmatched opening run, if any.
function codeSpans(tail) {
  const spans = [];
  let open = null;
  let i = 0;
  while (i < tail.length) {
    if (tail[i] === "\\" && open === null) {
      i += 2;
      continue;
    }
    if (tail[i] !== "`") {
      i += 1;
      continue;
    }
    let j = i;
    while (tail[j] === "`") j += 1;
    const run = j - i;
    if (open === null) {
      open = { start: i, run };
    } else if (run === open.run) {
      spans.push([open.start, j]);
      open = null;
    }
    i = j;
  }
  return { spans, open };
}

// Emphasis delimiters (*, _, ~~) left open at the end of `masked` (code spans
// blanked out), innermost last: [{start, marker}].
function openDelimiters(masked) {
  const stack = [];
  let i = 0;
  while (i < masked.length) {
    const ch = masked[i];
    if (ch === "\\") {
      i += 2;
      continue;
    }
    if (ch !== "*" && ch !== "_" && ch !== "~") {
      i += 1;
      continue;
    }
    let j = i;
    while (masked[j] === ch) j += 1;
    const run = j - i;
    const before = masked[i - 1];
    const after = masked[j];
    const lineStart = i === 0 || before === "\n";
    i = j;
    if (ch === "~" && run !== 2) continue;
    if (ch === "*" && lineStart && run === 1 && after === " ") continue; // a list bullet
    const left = !isSpace(after) && (!isPunct(after) || isSpace(before) || isPunct(before));
    const right = !isSpace(before) && (!isPunct(before) || isSpace(after) || isPunct(after));
    let canOpen = left;
    let canClose = right;
    if (ch === "_") {
      // snake_case_names neither open nor close.
      canOpen = left && (!right || isPunct(before));
      canClose = right && (!left || isPunct(after));
    }
    const top = stack.length ? stack[stack.length - 1] : null;
    if (canClose && top && top.marker[0] === ch) {
      // Closes the innermost opener of its kind (a ** run may close two * openers, etc.).
      let remaining = run;
      while (remaining > 0 && stack.length && stack[stack.length - 1].marker[0] === ch) {
        const opener = stack.pop();
        remaining -= opener.marker.length;
        if (remaining < 0) {
          stack.push({ start: opener.start, marker: ch.repeat(-remaining) });
          remaining = 0;
        }
      }
      continue;
    }
    if (canOpen) stack.push({ start: j - run, marker: ch.repeat(Math.min(run, ch === "~" ? 2 : 3)) });
  }
  return stack;
}

// The text to render for a cut that may end inside a fence, a code span or an
// emphasis: what is open is closed, and a marker with nothing after it yet is
// left out, so no markup character shows while the reply grows.
export function markdownClose(text) {
  const lines = String(text).split("\n");
  let fence = null;
  let tailStart = 0;
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    if (fence) {
      if (fenceCloses(line, fence)) fence = null;
      continue;
    }
    const match = FENCE_OPEN.exec(line);
    if (match && !(match[1][0] === "`" && match[2].includes("`"))) {
      fence = match[1];
      continue;
    }
    if (line.trim() === "") tailStart = i + 1;
  }
  if (fence) {
    const body = lines.join("\n");
    return `${body}${body.endsWith("\n") ? "" : "\n"}${fence[0].repeat(fence.length)}`;
  }
  // A fence being typed ("`" or "``" alone on the last line), or a "-" that may
  // become a bullet, a rule or a heading's underline.
  if (/^ {0,3}(`{1,2}|~{1,2}|-{1,2}|={1,2})\s*$/.test(lines[lines.length - 1])) lines.pop();
  const head = lines.slice(0, tailStart).join("\n");
  let tail = lines.slice(tailStart).join("\n");
  // A link whose URL is still arriving: show its text for now.
  tail = tail.replace(/!?\[([^\]\n]*)\]\([^)\s]*$/, "$1");
  tail = tail.replace(/\s+$/, "");
  // A marker just typed, with nothing after it yet ("Hello **", "* ").
  tail = tail.replace(/(^|\s)[*_~]+$/, "$1").replace(/\s+$/, "");

  let suffix = "";
  const { spans, open } = codeSpans(tail);
  if (open) {
    if (tail.slice(open.start + open.run).trim() === "") {
      tail = tail.slice(0, open.start).replace(/\s+$/, "");
    } else {
      suffix = "`".repeat(open.run);
      spans.push([open.start, tail.length]);
    }
  }
  if (!suffix) {
    let masked = tail;
    for (const [start, end] of spans) masked = masked.slice(0, start) + " ".repeat(end - start) + masked.slice(end);
    const openers = openDelimiters(masked);
    for (let k = openers.length - 1; k >= 0; k -= 1) {
      const { start, marker } = openers[k];
      if (tail.slice(start + marker.length).replace(/[*_~\s]/g, "") === "") {
        // Nothing inside it yet: leave it (and any marker after it) out.
        tail = tail.slice(0, start).replace(/\s+$/, "");
      } else {
        suffix += marker;
      }
    }
  }
  const closed = tail + suffix;
  return head ? (closed ? `${head}\n${closed}` : head) : closed;
}

// Sanitized DOM for the Markdown `text` of a reply still being written.
export function markdownFragment(text) {
  return DOMPurify.sanitize(md.render(markdownClose(text)), PURIFY_CONFIG);
}
