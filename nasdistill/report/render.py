"""A tiny document model (sections of paragraphs, tables, images, notes) rendered two ways:

* :func:`to_markdown`: GitHub-flavoured Markdown, images linked by file name (they sit beside it);
* :func:`to_html`: one self-contained page: inline CSS, every image embedded as a
  ``data:image/png;base64`` URI, so the single file can be mailed or opened anywhere.

Text may hold ``code`` spans in backticks; everything else is escaped.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union


@dataclass
class Text:
    text: str


@dataclass
class Note:
    """Something left out or worth a caveat; shown in italics."""

    text: str


@dataclass
class Table:
    head: list[str]
    rows: list[list[str]]
    caption: str | None = None


@dataclass
class Image:
    path: Path
    alt: str
    caption: str | None = None


Block = Union[Text, Note, Table, Image]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    intro: list[Block] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)


# --- Markdown --------------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_block(b: Block) -> str:
    if isinstance(b, Text):
        return b.text
    if isinstance(b, Note):
        return f"*{b.text}*"
    if isinstance(b, Table):
        lines = ([f"**{b.caption}**", ""] if b.caption else []) + [
            "| " + " | ".join(_md_cell(h) for h in b.head) + " |",
            "|" + "|".join("---" for _ in b.head) + "|",
        ]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
        return "\n".join(lines)
    if isinstance(b, Image):
        return f"![{b.alt}]({b.path.name})" + (f"\n\n{b.caption}" if b.caption else "")
    raise TypeError(f"unknown block {type(b).__name__}")


def to_markdown(doc: Document) -> str:
    parts = [f"# {doc.title}"] + [_md_block(b) for b in doc.intro]
    for s in doc.sections:
        parts.append(f"## {s.title}")
        parts += [_md_block(b) for b in s.blocks]
    return "\n\n".join(parts) + "\n"


# --- HTML ------------------------------------------------------------------------------------------
CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 72em;
       padding: 0 1.5em; color: #1b1f23; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #2b5d8a; padding-bottom: .25em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0 1.2em; font-size: .88em; display: block; overflow-x: auto; }
caption { text-align: left; font-weight: 600; padding-bottom: .3em; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; text-align: left; white-space: nowrap;
         font-variant-numeric: tabular-nums; }
th { background: #f0f4f8; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 1em 0 1.5em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: .85em; color: #57606a; }
.note { color: #6e5a00; background: #fff8c5; border-left: 3px solid #d4a72c; padding: .3em .7em; font-style: italic; }
code { background: #f0f2f4; padding: .05em .3em; border-radius: 3px; font-size: .9em; }
"""


def _inline(text: str) -> str:
    """Escape ``text``; turn backtick spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _html_block(b: Block) -> str:
    if isinstance(b, Text):
        return f"<p>{_inline(b.text)}</p>"
    if isinstance(b, Note):
        return f'<p class="note">{_inline(b.text)}</p>'
    if isinstance(b, Table):
        cap = f"<caption>{_inline(b.caption)}</caption>" if b.caption else ""
        head = "".join(f"<th>{_inline(h)}</th>" for h in b.head)
        rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b.rows)
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    if isinstance(b, Image):
        cap = f"<figcaption>{_inline(b.caption)}</figcaption>" if b.caption else ""
        return f'<figure><img src="{data_uri(b.path)}" alt="{html.escape(b.alt)}">{cap}</figure>'
    raise TypeError(f"unknown block {type(b).__name__}")


def to_html(doc: Document) -> str:
    body = [f"<h1>{_inline(doc.title)}</h1>"] + [_html_block(b) for b in doc.intro]
    for s in doc.sections:
        body.append(f"<h2>{_inline(s.title)}</h2>")
        body += [_html_block(b) for b in s.blocks]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(doc.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


__all__ = ["Document", "Section", "Text", "Note", "Table", "Image", "to_markdown", "to_html", "data_uri"]
