"""Markdown to safe HTML for chat messages (user and assistant alike).

Two layers, on purpose: markdown-it never passes raw HTML through (``html=False``)
and refuses ``javascript:``-style links, and nh3 then sanitizes the output against
an explicit allow-list. Either layer alone should be enough; the second exists so a
bug or a future option in the first cannot turn into script execution.

No Django import here: this is a pure function, cheap to test and to call from a
worker thread at save time.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

import nh3
import pygments
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

# Class of the <span> around an @mention of an existing user.
MENTION_CSS_CLASS = "mention"
# How an @mention is written: a username (Django's characters) after a non-word character.
MENTION_RE = re.compile(r"(?<![\w@])@([\w.@+-]+)")

# Class on every <pre> holding code; rooms/static/rooms/highlight.css is generated for it
# by highlight_css() in the Pygments style below (a light one that reads well on white).
CODE_CSS_CLASS = "hl"
HIGHLIGHT_STYLE = "friendly"

# Deep blockquote/list/emphasis nesting is only ever an attack or an accident.
MAX_NESTING = 20

# Past this a code block is shown unhighlighted: bounds the time any one lexer can take.
HIGHLIGHT_MAX_CHARS = 20_000

# Message headings sit under the page's own h1/h2, so "# Title" becomes an h3.
HEADING_DEMOTION = 2

_FORMATTER = HtmlFormatter(nowrap=True, style=HIGHLIGHT_STYLE)

# Pygments' short token classes ("k", "nf", "s2", ...): the only classes a <span> may carry.
_TOKEN_CLASSES = frozenset(cls for cls in STANDARD_TYPES.values() if cls)

_TEXT_ALIGN = re.compile(r"^text-align:(left|center|right)$")

_CLEANER = nh3.Cleaner(
    tags={
        "p",
        "br",
        "hr",
        "strong",
        "em",
        "del",
        "s",
        "code",
        "pre",
        "span",
        "a",
        "ul",
        "ol",
        "li",
        "blockquote",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
    },
    clean_content_tags={"script", "style"},
    attributes={"a": {"href", "title"}, "ol": {"start"}},
    # `align` rather than style="text-align:..": inline styles are forbidden by our CSP.
    tag_attribute_values={
        "th": {"align": {"left", "center", "right"}},
        "td": {"align": {"left", "center", "right"}},
    },
    # A chat page must not navigate away from its own socket when a link is clicked.
    set_tag_attribute_values={"a": {"target": "_blank"}},
    allowed_classes={"span": {*_TOKEN_CLASSES, MENTION_CSS_CLASS}, "pre": {CODE_CSS_CLASS}},
    link_rel="nofollow noopener noreferrer",
    url_schemes={"http", "https", "mailto"},
    # Relative and scheme-relative links ("/logout", "//evil.example") have no place in a message.
    url_relative="deny",
    strip_comments=True,
)


@functools.lru_cache(maxsize=256)
def _lexer_for(lang: str) -> Lexer | None:
    # No guess_lexer: guessing is slow and the same text could flip languages between versions.
    try:
        return get_lexer_by_name(lang, stripnl=False, ensurenl=True)
    except (ClassNotFound, ValueError):
        return None


def code_highlight(code: str, lang: str, _attrs: str = "") -> str:
    """Render a code block as ``<pre class="hl"><code>`` with Pygments token spans."""
    lexer = _lexer_for(lang.strip().lower()) if lang.strip() else None
    if len(code) > HIGHLIGHT_MAX_CHARS:
        lexer = None
    body = pygments_highlight(code, lexer, _FORMATTER) if lexer else escapeHtml(code)
    return f'<pre class="{CODE_CSS_CLASS}"><code>{body}</code></pre>\n'


def _inside_link(tokens: Sequence[Token], idx: int) -> bool:
    depth = 0
    for token in tokens[:idx]:
        if token.type == "link_open":
            depth += 1
        elif token.type == "link_close":
            depth -= 1
    return depth > 0


def _image_render(
    self: RendererHTML,
    tokens: Sequence[Token],
    idx: int,
    options: OptionsDict,
    env: EnvType,
) -> str:
    # An image becomes a link to it: nothing a message contains may load a resource by itself.
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = self.renderInlineAsText(token.children or [], options, env) or src
    if _inside_link(tokens, idx):
        # Links can't nest: a badge like [![build](badge.svg)](ci) keeps only its alt text.
        return escapeHtml(alt)
    title = token.attrGet("title")
    title_attr = f' title="{escapeHtml(str(title))}"' if title else ""
    return f'<a href="{escapeHtml(src)}"{title_attr}>{escapeHtml(alt)}</a>'


def _code_block_render(
    self: RendererHTML,
    tokens: Sequence[Token],
    idx: int,
    options: OptionsDict,
    env: EnvType,
) -> str:
    # Indented code looks the same as an unlabelled fence.
    return code_highlight(tokens[idx].content, "")


def _cell_open_render(
    self: RendererHTML,
    tokens: Sequence[Token],
    idx: int,
    options: OptionsDict,
    env: EnvType,
) -> str:
    token = tokens[idx]
    match = _TEXT_ALIGN.match(str(token.attrGet("style") or ""))
    token.attrs.pop("style", None)
    if match:
        token.attrSet("align", match.group(1))
    return self.renderToken(tokens, idx, options, env)


def _heading_render(
    self: RendererHTML,
    tokens: Sequence[Token],
    idx: int,
    options: OptionsDict,
    env: EnvType,
) -> str:
    token = tokens[idx]
    level = min(int(token.tag[1]) + HEADING_DEMOTION, 6)
    token.tag = f"h{level}"
    return self.renderToken(tokens, idx, options, env)


def _mentions_mark(state: StateCore) -> None:
    """Turn ``@name`` in plain text into a mention token, for the names in
    ``env["mentions"]`` (lower-cased): not inside links or code."""
    wanted = state.env.get("mentions") if isinstance(state.env, dict) else None
    if not wanted:
        return
    for block in state.tokens:
        if block.type != "inline" or not block.children:
            continue
        children: list[Token] = []
        depth = 0
        for token in block.children:
            if token.type == "link_open":
                depth += 1
            elif token.type == "link_close":
                depth -= 1
            if token.type != "text" or depth > 0 or "@" not in token.content:
                children.append(token)
                continue
            children.extend(_mention_split(token, wanted, state.env.setdefault("found", {})))
        block.children = children


def _mention_split(token: Token, wanted: set[str], found: dict[str, str]) -> list[Token]:
    out: list[Token] = []
    text = token.content
    last = 0
    for match in MENTION_RE.finditer(text):
        name = match.group(1).rstrip(".")
        if name.lower() not in wanted:
            continue
        if match.start() > last:
            out.append(_text_token(text[last : match.start()]))
        mention = Token("mention", "span", 0)
        mention.content = name
        out.append(mention)
        found.setdefault(name.lower(), name)
        last = match.start() + 1 + len(name)
    if not out:
        return [token]
    if last < len(text):
        out.append(_text_token(text[last:]))
    return out


def _text_token(content: str) -> Token:
    token = Token("text", "", 0)
    token.content = content
    return token


def _mention_render(
    self: RendererHTML,
    tokens: Sequence[Token],
    idx: int,
    options: OptionsDict,
    env: EnvType,
) -> str:
    return f'<span class="{MENTION_CSS_CLASS}">@{escapeHtml(tokens[idx].content)}</span>'


def mention_pattern(name: str) -> re.Pattern[str]:
    """``@name`` as a word, case-insensitive (an assistant's mention)."""
    return re.compile(rf"(?<![\w@])@{re.escape(name)}(?![\w-])", re.IGNORECASE)


def mentions_in(text: str) -> list[str]:
    """The candidate usernames ``text`` mentions (``@name``), in order, once each."""
    seen: dict[str, None] = {}
    for match in MENTION_RE.finditer(text):
        seen.setdefault(match.group(1).rstrip("."), None)
    return list(seen)


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_INLINE_MARKERS = ("**", "__", "~~", "*", "_")


def markdown_close(text: str) -> str:
    """``text`` cut at an arbitrary point (a stopped reply), with what the cut
    left open closed, so no markup characters show: an unterminated code fence
    is closed, and on the last line a dangling emphasis or code marker is
    closed (or dropped when nothing follows it)."""
    fence: str | None = None
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if not match:
            continue
        marker = match.group(1)
        if fence is None:
            fence = marker
        elif marker[0] == fence[0] and len(marker) >= len(fence) and not match.group(2).strip():
            fence = None
    if fence is not None:
        return text.rstrip("`~ ") + "\n" + fence if text.rstrip().endswith(fence[0]) else text + "\n" + fence
    head, _, last = text.rpartition("\n")
    if last.count("`") % 2:
        last = last[:-1] if last.endswith("`") else last + "`"
    else:
        body = last.lstrip()
        bullet = body[:2] in ("* ", "- ", "+ ")
        check = body[2:] if bullet else last
        for marker in _INLINE_MARKERS:
            stripped = check.replace("**", "") if marker in ("*",) else check
            stripped = stripped.replace("__", "") if marker == "_" else stripped
            if stripped.count(marker) % 2:
                if last.rstrip().endswith(marker):
                    last = last.rstrip()[: -len(marker)].rstrip()
                else:
                    last = last.rstrip() + marker
                check = body[2:] if bullet else last
    return f"{head}\n{last}" if head or text.startswith("\n") else last


def _markdown_build() -> MarkdownIt:
    md = MarkdownIt(
        "commonmark",
        {
            "html": False,
            "linkify": True,
            "typographer": False,
            # Chat convention: a newline in the box is a line break on screen.
            "breaks": True,
            "maxNesting": MAX_NESTING,
            "highlight": code_highlight,
        },
    )
    md.enable(["table", "strikethrough", "linkify"])
    # With html=False these rules only cost time.
    md.disable(["html_block", "html_inline"])
    # "main.py" or "setup.sh" are file names in a chat about code, not links to Paraguay.
    md.linkify.set({"fuzzy_link": False})
    # Only link what the sanitizer would keep: an ftp: or //host link would end up href-less.
    md.linkify.add("ftp:", None).add("//", None)
    md.add_render_rule("image", _image_render)
    md.add_render_rule("code_block", _code_block_render)
    md.add_render_rule("th_open", _cell_open_render)
    md.add_render_rule("td_open", _cell_open_render)
    md.add_render_rule("heading_open", _heading_render)
    md.add_render_rule("heading_close", _heading_render)
    md.core.ruler.push("mentions", _mentions_mark)
    md.add_render_rule("mention", _mention_render)
    return md


_MARKDOWN = _markdown_build()


def highlight_css() -> str:
    """The stylesheet for highlighted code: the exact content of rooms/static/rooms/highlight.css."""
    selector = f".{CODE_CSS_CLASS}"
    header = [
        f"/* Pygments {pygments.__version__} {HIGHLIGHT_STYLE!r} style for code blocks in messages.",
        "   Generated; regenerate with:",
        "   python -c 'from rooms.rendering import highlight_css;"
        + ' print(highlight_css(), end="")\' > rooms/static/rooms/highlight.css */',
    ]
    rules = _FORMATTER.get_background_style_defs(selector)
    rules += _FORMATTER.get_token_style_defs(selector)
    return "\n".join(header + rules) + "\n"


def html_sanitize(html: str) -> str:
    """Reduce ``html`` to the message allow-list (tags, attributes, classes, URL schemes)."""
    return _CLEANER.clean(html)


def message_render(text: str, mentions: Iterable[str] = (), *, cut: bool = False) -> str:
    """Return sanitized HTML for a chat message's Markdown ``text``.

    ``mentions``: usernames whose ``@name`` is shown as a mention. ``cut``: the
    text stopped mid-way (a cancelled or failed reply): close what it left open
    first (``markdown_close``).
    """
    return message_render_mentions(text, mentions, cut=cut)[0]


def message_render_mentions(text: str, mentions: Iterable[str] = (), *, cut: bool = False) -> tuple[str, list[str]]:
    """``message_render``, and which of ``mentions`` the text really mentions
    (in plain text: not in code, not inside a link), in order."""
    if not text:
        return "", []
    if cut:
        text = markdown_close(text)
    names = {name.lower(): name for name in mentions}
    if not names:
        return html_sanitize(_MARKDOWN.render(text)).strip(), []
    env: dict[str, object] = {"mentions": set(names)}
    html = html_sanitize(_MARKDOWN.render(text, env)).strip()
    found = env.get("found") or {}
    return html, [names[key] for key in found if key in names]  # type: ignore[union-attr]
