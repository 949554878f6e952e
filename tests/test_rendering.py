"""Markdown rendering and sanitizing of chat messages (pure functions, no database)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from rooms.rendering import (
    HIGHLIGHT_MAX_CHARS,
    MAX_NESTING,
    highlight_css,
    html_sanitize,
    message_render,
)
from tests.xss_payloads import XSS_PAYLOADS, html_is_safe

HIGHLIGHT_CSS = Path(__file__).resolve().parent.parent / "rooms" / "static" / "rooms" / "highlight.css"
LINK_REL = 'rel="nofollow noopener noreferrer"'


class _HrefParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hrefs += [value or "" for name, value in attrs if name == "href"]


def hrefs(html: str) -> list[str]:
    """Every href value in ``html``, as the browser would read it (entities decoded)."""
    parser = _HrefParser()
    parser.feed(html)
    parser.close()
    return parser.hrefs


# --- XSS ----------------------------------------------------------------------


def test_corpus_is_large_and_distinct() -> None:
    assert len(XSS_PAYLOADS) >= 40
    assert len(set(XSS_PAYLOADS)) == len(XSS_PAYLOADS)


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_payload_renders_safe(payload: str) -> None:
    html = message_render(payload)
    assert html_is_safe(html) == []
    assert "<img" not in html.lower()
    for href in hrefs(html):
        assert href.startswith(("https://", "http://", "mailto:")), href


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_sanitizer_alone_makes_raw_payload_safe(payload: str) -> None:
    # Second layer on its own: even if Markdown let raw HTML through, nh3 must catch it.
    assert html_is_safe(html_sanitize(payload)) == []


@pytest.mark.parametrize(
    ("html", "problem"),
    [
        ("<script>alert(1)</script>", "forbidden tag <script>"),
        ("<img src=x>", "forbidden tag <img>"),
        ("<p onclick='alert(1)'>x</p>", "event handler onclick="),
        ("<a href=' JaVa\tScript:alert(1)'>x</a>", "javascript: URL in href="),
        ("<a href='vbscript:x'>x</a>", "vbscript: URL in href="),
        ("<a href='data:text/html,x'>x</a>", "data: URL in href="),
        ("<p style='color:red'>x</p>", "style attribute"),
        ("<svg><circle/></svg>", "forbidden tag <svg>"),
        ("<math></math>", "forbidden tag <math>"),
        ("<iframe srcdoc='x'></iframe>", "forbidden tag <iframe>"),
        ("<a id='x'>x</a>", "id= attribute"),
        ("<a href='https://a.example' target='_blank'>x</a>", "without rel=noopener"),
        ("<!-- x -->", "HTML comment"),
    ],
)
def test_html_is_safe_flags_problem(html: str, problem: str) -> None:
    assert any(problem in found for found in html_is_safe(html)), html_is_safe(html)


def test_html_is_safe_accepts_ordinary_markup() -> None:
    html = (
        '<p><strong>a</strong> <a href="https://a.example/x" target="_blank" '
        f'{LINK_REL}>x</a> <a href="mailto:a@b.example">m</a></p>'
        '<pre class="hl"><code><span class="k">def</span></code></pre>'
    )
    assert html_is_safe(html) == []


def test_raw_html_is_shown_as_text() -> None:
    assert message_render("a <b>bold</b> claim") == "<p>a &lt;b&gt;bold&lt;/b&gt; claim</p>"


# --- Markdown features ----------------------------------------------------------


def test_inline_formatting() -> None:
    html = message_render("**bold** *italic* ~~gone~~ `x < y`")
    assert html == ("<p><strong>bold</strong> <em>italic</em> <s>gone</s> <code>x &lt; y</code></p>")


def test_newline_is_a_line_break() -> None:
    assert message_render("one\ntwo") == "<p>one<br>\ntwo</p>"


def test_lists_and_blockquote() -> None:
    html = message_render("- a\n- b\n\n3. three\n4. four\n\n> quoted\n\n---")
    assert "<ul>\n<li>a</li>\n<li>b</li>\n</ul>" in html
    assert '<ol start="3">\n<li>three</li>\n<li>four</li>\n</ol>' in html
    assert "<blockquote>\n<p>quoted</p>\n</blockquote>" in html
    assert "<hr>" in html


def test_headings_are_demoted_below_page_headings() -> None:
    html = message_render("# one\n## two\n###### six")
    assert html == "<h3>one</h3>\n<h4>two</h4>\n<h6>six</h6>"


def test_fenced_python_is_highlighted_with_classes() -> None:
    html = message_render('```python\ndef f(x):\n    return "<b>"\n```')
    assert html.startswith('<pre class="hl"><code>')
    assert '<span class="k">def</span>' in html
    assert '<span class="nf">f</span>' in html
    assert '<span class="s2">"&lt;b&gt;"</span>' in html
    assert "style=" not in html
    assert html_is_safe(html) == []


def test_unknown_language_and_indented_code_are_escaped_plainly() -> None:
    fenced = message_render("```nosuchlanguage\n<i>x</i>\n```")
    indented = message_render("    <i>x</i>")
    expected = '<pre class="hl"><code>&lt;i&gt;x&lt;/i&gt;\n</code></pre>'
    assert fenced == expected
    assert indented == expected


def test_huge_code_block_is_not_highlighted() -> None:
    code = "x = 1\n" * (HIGHLIGHT_MAX_CHARS // 6 + 1)
    html = message_render(f"```python\n{code}```")
    assert "<span" not in html
    assert html.count("x = 1") == code.count("x = 1")


def test_links_keep_https_and_get_rel_and_target() -> None:
    html = message_render('[docs](https://example.com/a?b=1&c=2 "The docs")')
    assert html == (
        f'<p><a href="https://example.com/a?b=1&amp;c=2" title="The docs" target="_blank" {LINK_REL}>docs</a></p>'
    )


def test_bare_urls_and_emails_are_linked_but_file_names_are_not() -> None:
    html = message_render("see https://example.com/x, mail ann@example.com, edit main.py")
    assert hrefs(html) == ["https://example.com/x", "mailto:ann@example.com"]
    assert "main.py" in html


def test_relative_and_protocol_relative_links_lose_their_href() -> None:
    html = message_render("[a](/logout) [b](//evil.example/x) [c](#top)")
    assert hrefs(html) == []
    assert ">a</a>" in html and ">b</a>" in html and ">c</a>" in html


def test_table_with_alignment_uses_no_style() -> None:
    html = message_render("| a | b | c |\n|:--|:-:|--:|\n| 1 | 2 | 3 |")
    assert '<th align="left">a</th>' in html
    assert '<th align="center">b</th>' in html
    assert '<td align="right">3</td>' in html
    assert "style" not in html


@pytest.mark.parametrize(
    ("markdown", "href", "text"),
    [
        (
            "![a cat](https://example.com/cat.png)",
            "https://example.com/cat.png",
            "a cat",
        ),
        (
            "![](https://example.com/cat.png)",
            "https://example.com/cat.png",
            "https://example.com/cat.png",
        ),
        ("![x][r]\n\n[r]: https://example.com/r.gif", "https://example.com/r.gif", "x"),
    ],
)
def test_images_become_links(markdown: str, href: str, text: str) -> None:
    html = message_render(markdown)
    assert "<img" not in html
    assert hrefs(html) == [href]
    assert f">{text}</a>" in html


def test_image_inside_link_keeps_only_its_alt_text() -> None:
    html = message_render("[![build](https://ci.example/b.svg) ok](https://ci.example/)")
    assert hrefs(html) == ["https://ci.example/"]
    assert ">build ok</a>" in html


def test_data_image_becomes_an_inert_link() -> None:
    html = message_render("![x](data:image/png;base64,iVBORw0KGgo=)")
    assert "<img" not in html
    assert hrefs(html) == []


def test_empty_and_whitespace_text() -> None:
    assert message_render("") == ""
    assert message_render("   \n  ") == ""


def test_rendering_is_deterministic() -> None:
    text = "# t\n\n```python\nprint(1)\n```\n\n| a |\n|---|\n| b |\n\nhttps://example.com"
    assert len({message_render(text) for _ in range(5)}) == 1


# --- size and pathology -----------------------------------------------------------


def test_long_realistic_message_renders() -> None:
    paragraph = "Some **bold** and *italic* text with `code` and https://example.com/x. "
    text = (paragraph * 60)[:4000]
    html = message_render(text)
    assert html.count("<strong>") >= 50
    assert html_is_safe(html) == []


@pytest.mark.parametrize(
    "text",
    [
        ">" * 1000,
        "> " * 1000 + "deep",
        "[" * 1000,
        "]" * 1000,
        "![" * 1000,
        "[a](" * 1000,
        "*" * 4000,
        "*a" * 2000,
        "_*" * 2000,
        "`" * 4000,
        "<" * 4000,
        "&#" * 2000,
        "".join("  " * i + "- x\n" for i in range(200)),
        "|" * 4000,
        "x" * 4000,
        "https://example.com/" + "a" * 4000,
    ],
    ids=lambda text: repr(text[:8]) + f"x{len(text)}",
)
def test_pathological_input_renders_bounded(text: str) -> None:
    html = message_render(text)
    assert html_is_safe(html) == []
    assert html.count("<blockquote>") <= MAX_NESTING
    assert html.count("<ul>") <= MAX_NESTING


# --- stylesheet -------------------------------------------------------------------


def test_highlight_css_is_up_to_date() -> None:
    assert HIGHLIGHT_CSS.read_text() == highlight_css()


def test_highlight_css_has_no_unscoped_rules() -> None:
    rules = [line for line in highlight_css().splitlines() if "{" in line]
    assert rules and all(line.startswith(".hl") for line in rules)
