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
from collections.abc import Sequence

import nh3
import pygments
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

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
    allowed_classes={"span": set(_TOKEN_CLASSES), "pre": {CODE_CSS_CLASS}},
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


def message_render(text: str) -> str:
    """Return sanitized HTML for a chat message's Markdown ``text``."""
    if not text:
        return ""
    return html_sanitize(_MARKDOWN.render(text)).strip()
