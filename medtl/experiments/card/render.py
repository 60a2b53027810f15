"""A model card as sections of blocks, written as Markdown and as one self-contained HTML page.

Everything from user data (paths, class names, the intended-use file) is escaped; the HTML loads nothing from
anywhere (no scripts, fonts, styles or images from outside the page)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from urllib.parse import quote

Block = tuple  # ("p", text) | ("ul", [text]) | ("table", head, rows) | ("code", text) | ("links", [(text, href)])


@dataclass
class Section:
    """One card section: `anchor` is what the checklists point to; `filled` is False while it holds only
    placeholders for the authors."""

    anchor: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    filled: bool = True

    def p(self, text: str) -> "Section":
        self.blocks.append(("p", text))
        return self

    def ul(self, items: list[str]) -> "Section":
        if items:
            self.blocks.append(("ul", list(items)))
        return self

    def table(self, head: list[str], rows: list[list]) -> "Section":
        if rows:
            self.blocks.append(("table", [str(h) for h in head], [[str(c) for c in r] for r in rows]))
        return self

    def code(self, text: str) -> "Section":
        self.blocks.append(("code", text))
        return self

    def links(self, items: list[tuple[str, str]]) -> "Section":
        """A list of links to files written beside the card (`href` relative to it)."""
        if items:
            self.blocks.append(("links", [(str(text), str(href)) for text, href in items]))
        return self


def _md_text(text: str) -> str:
    """Plain text for Markdown: no raw HTML gets through (a class named `<script>` stays text)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _href(href: str) -> str:
    """A relative link target (Markdown and HTML): spaces, quotes and brackets percent-encoded."""
    return quote(href, safe="/#.-_~")


def markdown(title: str, intro: str, sections: list[Section]) -> str:
    parts = [f"# {_md_cell(title)}", _md_text(intro)]
    for s in sections:
        parts.append(f'<a id="{s.anchor}"></a>\n\n## {_md_cell(s.title)}')
        for block in s.blocks:
            parts.append(_md_block(block))
    return "\n\n".join(parts) + "\n"


def _md_block(block: Block) -> str:
    kind = block[0]
    if kind == "p":
        return _md_text(block[1])
    if kind == "ul":
        return "\n".join(f"- {_md_cell(item)}" for item in block[1])
    if kind == "links":
        return "\n".join(f"- [{_md_cell(text)}]({_href(href)})" for text, href in block[1])
    if kind == "table":
        head, rows = block[1], block[2]
        lines = ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows])
    fence = "````" if "```" in block[1] else "```"
    return f"{fence}\n{block[1]}\n{fence}"


STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;line-height:1.45}"
         "table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}td,th{border:1px solid #ccc;"
         "padding:.2rem .5rem;text-align:left}pre{background:#f5f5f5;padding:.5rem;overflow:auto}"
         ".authors{color:#8a4b00}")


def html_page(title: str, intro: str, sections: list[Section]) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", f"<p>{e(intro)}</p>"]
    for s in sections:
        body.append(f"<section id='{e(s.anchor)}'><h2>{e(s.title)}</h2>")
        body += [_html_block(b) for b in s.blocks]
        body.append("</section>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>{e(title)}</title><style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>\n")


def _html_block(block: Block) -> str:
    e = html.escape
    kind = block[0]
    if kind == "p":
        cls = " class='authors'" if str(block[1]).startswith("for the authors") else ""
        return f"<p{cls}>{e(str(block[1]))}</p>"
    if kind == "links":
        return "<ul>" + "".join(f"<li><a href='{e(_href(href))}'>{e(text)}</a></li>"
                                for text, href in block[1]) + "</ul>"
    if kind == "ul":
        return "<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in block[1]) + "</ul>"
    if kind == "table":
        head = "".join(f"<th>{e(h)}</th>" for h in block[1])
        rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in block[2])
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    return f"<pre><code>{e(block[1])}</code></pre>"
