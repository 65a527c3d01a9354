"""A tiny document model (headings, paragraphs, tables, figures) and its two renderings.

The report's content is built once as a list of blocks; ``to_html`` makes a single
self-contained page (CSS inline, figures as base64 PNG data URIs) and ``to_markdown`` a
Markdown file whose figures are PNG files beside it. Inline text may hold ``code`` spans
in backticks and ``**bold**``.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass
class Heading:
    text: str
    anchor: str = ""


@dataclass
class Paragraph:
    text: str


@dataclass
class Notice:
    """A highlighted box: level "ok" (green), "bad" (red: the reader must see it) or
    "info" (amber: something is left out)."""

    text: str
    level: str = "info"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool] = field(default_factory=list)  # right-align these columns
    bold_last_row: bool = False  # a totals row


@dataclass
class Figure:
    filename: str  # the PNG's name beside report.md
    png: bytes
    alt: str  # a few words
    caption: str


@dataclass
class Details:
    """A collapsible part (long per-matrix tables)."""

    summary: str
    blocks: list


Block = Heading | Paragraph | Notice | Table | Figure | Details

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       max-width: 1140px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 26px; margin-bottom: 4px; }
h2 { font-size: 20px; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
table { border-collapse: collapse; margin: 10px 0; font-size: 13px; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; text-align: left; }
th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 600; background: #fafafa; }
figure { margin: 12px 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: 13px; margin-top: 4px; }
.notice { padding: 10px 14px; border-radius: 6px; margin: 14px 0; font-weight: 600; }
.ok { background: #e8f5e9; border: 1px solid #66bb6a; }
.bad { background: #ffebee; border: 2px solid #e53935; }
.info { background: #fff8e1; border: 1px solid #ffb300; font-weight: 400; }
details { margin: 8px 0; }
summary { cursor: pointer; color: #0b57d0; }
"""


def _inline_html(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f'<h2 id="{block.anchor or _slug(block.text)}">{html.escape(block.text)}</h2>'
    if isinstance(block, Paragraph):
        return f"<p>{_inline_html(block.text)}</p>"
    if isinstance(block, Notice):
        return f'<div class="notice {block.level}">{_inline_html(block.text)}</div>'
    if isinstance(block, Table):
        numeric = block.numeric + [False] * (len(block.headers) - len(block.numeric))
        head = "".join(f"<th>{_inline_html(h)}</th>" for h in block.headers)
        body = []
        for i, row in enumerate(block.rows):
            cells = "".join(
                f'<td class="num">{_inline_html(c)}</td>' if num else f"<td>{_inline_html(c)}</td>"
                for c, num in zip(row, numeric, strict=True)
            )
            total = block.bold_last_row and i == len(block.rows) - 1
            body.append(f'<tr class="total">{cells}</tr>' if total else f"<tr>{cells}</tr>")
        thead = f"<thead><tr>{head}</tr></thead>" if any(block.headers) else ""
        return f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        caption = _inline_html(block.caption)
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    if isinstance(block, Details):
        inner = "\n".join(_html_block(b) for b in block.blocks)
        return f"<details><summary>{_inline_html(block.summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"unknown block {type(block).__name__}")


def to_html(title: str, blocks: list[Block]) -> str:
    body = "\n".join(_html_block(b) for b in blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"## {block.text}"
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Notice):
        return f"> **{block.text}**"
    if isinstance(block, Table):
        numeric = block.numeric + [False] * (len(block.headers) - len(block.numeric))
        lines = [
            "| " + " | ".join(_md_cell(h) for h in block.headers) + " |",
            "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
        ]
        for i, row in enumerate(block.rows):
            if block.bold_last_row and i == len(block.rows) - 1:
                row = [f"**{c}**" if c else c for c in row]
            lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
        return "\n".join(lines)
    if isinstance(block, Figure):
        return f"![{block.alt}]({block.filename})\n\n*{block.caption}*"
    if isinstance(block, Details):
        inner = "\n\n".join(_md_block(b) for b in block.blocks)
        return f"<details><summary>{block.summary}</summary>\n\n{inner}\n\n</details>"
    raise TypeError(f"unknown block {type(block).__name__}")


def to_markdown(title: str, blocks: list[Block]) -> str:
    return f"# {title}\n\n" + "\n\n".join(_md_block(b) for b in blocks) + "\n"
