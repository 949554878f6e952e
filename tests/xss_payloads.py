"""XSS corpus for chat messages, and a checker for rendered HTML.

Convention: a payload that ever executed would call ``alert(1)`` or set
``document.title = 'XSSED'``, so a browser test can fail on any dialog or on
that title. Payloads come from users and from the model alike (a prompt-injected
model writes the same strings), so the same list serves both.

``html_is_safe(html)`` lists what is wrong with a piece of rendered HTML; the unit
tests call it on ``message_render`` output and the browser test on a message
element's ``innerHTML``.
"""

from __future__ import annotations

from html.parser import HTMLParser

XSS_PAYLOADS: list[str] = [
    # Raw HTML: must be shown as text, never parsed.
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    "<img src=x onerror=\"document.title='XSSED'\">",
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    '<iframe src="javascript:alert(1)"></iframe>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<a href="javascript:alert(1)">click</a>',
    "<body onload=alert(1)>",
    "<details open ontoggle=alert(1)>",
    '<object data="javascript:alert(1)"></object>',
    '<embed src="javascript:alert(1)">',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<style>@import 'https://evil.example/x.css';</style>",
    "<style>*{background:url(javascript:alert(1))}</style>",
    '<div style="background:url(javascript:alert(1))">x</div>',
    "<form action=javascript:alert(1)><button>go</button></form>",
    "<input autofocus onfocus=alert(1)>",
    '<meta http-equiv=refresh content="0;url=javascript:alert(1)">',
    '<base href="javascript:alert(1)//">',
    "<!--><img src=x onerror=alert(1)>-->",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
    "<a id=__xss name=__xss href=#>clobber</a>",
    # Markdown links with dangerous schemes, in many spellings.
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](&#106;avascript:alert(1))",
    "[x](&#x6A;&#x61;&#x76;&#x61;&#x73;&#x63;&#x72;&#x69;&#x70;&#x74;:alert(1))",
    "[x](java\tscript:alert(1))",
    "[x](%6Aavascript:alert(1))",
    "[x](  javascript:alert(1)  )",
    "[x](<javascript:alert(1)>)",
    "[x](vbscript:msgbox(1))",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[x](data:text/html,<script>alert(1)</script>)",
    "[x]: javascript:alert(1)\n\nsee [x]",
    "<javascript:alert(1)>",
    "<JAVASCRIPT:document.title='XSSED'>",
    "javascript:alert(1)",
    '[click](https://example.com "title" onmouseover="alert(1))',
    '[click](https://example.com "a\\" onmouseover=\\"alert(1)")',
    '["><img src=x onerror=alert(1)>](https://example.com)',
    '[x](https://example.com/"><img src=x onerror=alert(1)>)',
    "[x](https://example.com/'onmouseover='alert(1))",
    "[x](//evil.example/steal)",
    # Images: none may load, whatever the URL.
    "![x](https://evil.example/x.png)",
    '![x](https://evil.example/x.png "t" onerror=alert(1))',
    "![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
    "![x](javascript:alert(1))",
    "![<img src=x onerror=alert(1)>](https://evil.example/x.png)",
    "[![x](https://evil.example/x.png)](javascript:alert(1))",
    "![x][r]\n\n[r]: https://evil.example/track.gif",
    # Entities and unicode tricks.
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&#60;img src=x onerror=alert(1)&#62;",
    "\uff1cscript\uff1ealert(1)\uff1c/script\uff1e",
    "[x](\u0000javascript:alert(1))",
    "[x](\u200bjavascript:alert(1))",
    "[safe\u202egnp.exe](https://example.com)",
    # Code: highlighted code must stay text, including fence breakouts.
    "`<img src=x onerror=alert(1)>`",
    "```html\n<script>alert(1)</script>\n```",
    "```\n</code></pre><img src=x onerror=alert(1)>\n```",
    '```"><img src=x onerror=alert(1)>\nx\n```',
    "```javascript onload=alert(1)\ndocument.title='XSSED'\n```",
    "~~~ <script>alert(1)</script>\n~~~",
    # Tables and nesting around raw HTML.
    "| a | b |\n|---|---|\n| <img src=x onerror=alert(1)> | [x](javascript:alert(1)) |",
    "> <script>alert(1)</script>\n> > [x](javascript:alert(1))",
    "- <svg onload=alert(1)>\n  - <iframe src=javascript:alert(1)>",
    "**<img src=x onerror=alert(1)>**",
]

_FORBIDDEN_TAGS = frozenset(
    [
        "script",
        "img",
        "iframe",
        "frame",
        "frameset",
        "object",
        "embed",
        "applet",
        "svg",
        "math",
        "style",
        "link",
        "meta",
        "base",
        "form",
        "input",
        "button",
        "textarea",
        "select",
        "video",
        "audio",
        "source",
        "track",
        "picture",
        "template",
        "noscript",
        "portal",
    ]
)

# Attributes that name a URL which the browser follows or loads.
_URL_ATTRS = frozenset(
    [
        "href",
        "src",
        "srcset",
        "srcdoc",
        "action",
        "formaction",
        "data",
        "poster",
        "background",
        "xlink:href",
    ]
)
# Attributes that can shadow globals or document properties (DOM clobbering).
_CLOBBER_ATTRS = frozenset({"id", "name"})
_LOADING_ATTRS = frozenset({"src", "srcset", "srcdoc", "data", "poster", "background"})
_SAFE_SCHEMES = ("http:", "https:", "mailto:")
_C0_AND_SPACE = "".join(map(chr, range(0x21)))


def _url_scheme(value: str) -> str | None:
    """The scheme a browser would see in ``value``, lower-cased, or None if relative."""
    # Browsers drop ASCII tab/newline anywhere and C0/space at either end of a URL.
    url = "".join(ch for ch in value if ch not in "\t\n\r").strip(_C0_AND_SPACE)
    head, sep, _ = url.partition(":")
    if not sep or any(ch in head for ch in "/?#"):
        return None
    return head.lower() + ":"


class _SafetyParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _FORBIDDEN_TAGS:
            self.problems.append(f"forbidden tag <{tag}>")
        for name, value in attrs:
            value = value or ""
            if name.startswith("on"):
                self.problems.append(f"event handler {name}= on <{tag}>")
            elif name == "style":
                self.problems.append(f"style attribute on <{tag}>")
            elif name in _CLOBBER_ATTRS:
                self.problems.append(f"{name}= attribute on <{tag}>")
            elif name in _URL_ATTRS:
                scheme = _url_scheme(value)
                if name in _LOADING_ATTRS:
                    self.problems.append(f"resource-loading {name}={value!r} on <{tag}>")
                elif scheme is not None and scheme not in _SAFE_SCHEMES:
                    self.problems.append(f"{scheme} URL in {name}= on <{tag}>")
        attr_map = dict(attrs)
        rel = (attr_map.get("rel") or "").split()
        if tag == "a" and attr_map.get("target") == "_blank" and "noopener" not in rel:
            self.problems.append("<a target=_blank> without rel=noopener")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_comment(self, data: str) -> None:
        # Comments are where parser-differential tricks hide (<!--><img ...>).
        self.problems.append("HTML comment")


def html_is_safe(html: str) -> list[str]:
    """Return the problems found in ``html``; an empty list means it looks safe."""
    parser = _SafetyParser()
    parser.feed(html)
    parser.close()
    return parser.problems
