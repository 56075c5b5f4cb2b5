"""`report.html` of `impsamp compare`: its `report.md` as HTML, the plots inline, each selection's explorer
linked.

The Markdown is the small subset `compare` writes (headings, paragraphs, `- ` lists, pipe tables,
`code` and **bold**); every piece of text is HTML-escaped before any tag is added.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from .inspection import EXPLORER, selection_pages
from .page import ASSETS, CSP

FIGURES = {"perplexity.png": "In-domain perplexity of each strategy, before and after fine-tuning",
           "plan.png": "C(N): the cost of serving N targets",
           "decision.png": "The strategy to pick per budget"}


def write_report_html(out: Path, clusters, methods: list[str], *, seed: int = 0) -> dict[str, Path]:
    """Each selection's explorer and `report.html` beside `report.md` in a compare folder.

    Returns:
        path relative to `out` -> file, for the compare manifest.
    """
    from ..manifest import atomic_write_bytes

    out = Path(out).absolute()  # the selections' handles hold absolute paths (a relative --out is common)
    dirs = {m: out / "selections" / m for m in methods}
    dirs = {m: d for m, d in dirs.items() if (d / "manifest.json").is_file()}
    pages = selection_pages(clusters, dirs, seed=seed)
    links = {m: p.relative_to(out).as_posix() for m, p in pages.items()}
    figures = {name: (out / name).read_bytes() for name in FIGURES if (out / name).is_file()}
    page = render_report((out / "report.md").read_text(encoding="utf-8"), figures, links)
    atomic_write_bytes(out / "report.html", page.encode("utf-8"))
    files = {rel: out / rel for rel in links.values()}
    files["report.html"] = out / "report.html"
    return files


def render_report(markdown: str, figures: dict[str, bytes], explorers: dict[str, str]) -> str:
    """The report page: the Markdown's blocks, the perplexity plot and the explorer links after the
    first table, the planning plots at the end."""
    blocks = [b for b in re.split(r"\n\s*\n", markdown.strip()) if b.strip()]
    after_table = [_figure(n, figures[n]) for n in ("perplexity.png",) if n in figures]
    after_table.append(_explorers(explorers))
    body, placed = [], False
    for block in blocks:
        body.append(_block(block))
        if not placed and block.lstrip().startswith("|"):
            body += after_table
            placed = True
    if not placed:
        body += after_table
    body += [_figure(n, figures[n]) for n in ("plan.png", "decision.png") if n in figures]
    css = (ASSETS / "report.css").read_text(encoding="utf-8")
    return "\n".join(["<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      '<meta name="color-scheme" content="only light">',  # no forced dark mode over the figures
                      "<title>impsamp compare report</title>", '<link rel="icon" href="data:,">',
                      f"<style>\n{css}</style>", "</head>", "<body>", "<main>", *body, "</main>", "</body>",
                      "</html>", ""])


def _explorers(explorers: dict[str, str]) -> str:
    if not explorers:
        return ""
    items = "".join(f'<li><a href="{html.escape(href)}">{html.escape(m)}</a>: what the {html.escape(m)} '
                    "selection took from each cluster</li>" for m, href in explorers.items())
    return ("<h2>Look inside the selections</h2><p>Each link opens the cluster explorer of one selection "
            "(a map of the clusters, their top terms and example documents, generic vs target mass, "
            f"weights, rows selected and repeats):</p><ul>{items}</ul>")


def _figure(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = html.escape(FIGURES[name])
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
            f"<figcaption>{caption} (<code>{name}</code>)</figcaption></figure>")


def _block(block: str) -> str:
    lines = block.strip().splitlines()
    first = lines[0]
    if m := re.match(r"(#{1,4})\s+(.*)", first):
        level = len(m.group(1))
        rest = _block("\n".join(lines[1:])) if len(lines) > 1 else ""
        return f"<h{level}>{_inline(m.group(2))}</h{level}>" + rest
    if first.lstrip().startswith("|"):
        return _table(lines)
    if all(li.lstrip().startswith("- ") for li in lines):
        return "<ul>" + "".join(f"<li>{_inline(li.lstrip()[2:])}</li>" for li in lines) + "</ul>"
    return f"<p>{_inline(' '.join(li.strip() for li in lines))}</p>"


def _cells(line: str) -> list[str]:
    # an older report's KL(t||sel) header is one cell (compare's tables have no empty cell); 0.7.17 writes KL(t‖sel)
    inner = line.strip().strip("|").replace("||", "\u2016")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def _table(lines: list[str]) -> str:
    head = _cells(lines[0])
    rows = [_cells(li) for li in lines[1:] if not re.fullmatch(r"\|?[\s:|-]+\|?", li.strip())]
    # a number with its unit, a mean ± its error, active of total parameters, or a dash for none
    qty = r"[-+]?[\d.,]+(?:e[-+]?\d+)?\s*[%kMGTPE]?[A-Za-z/]*"
    num = re.compile(rf"^(?:{qty}(?:\s*(?:±|of)\s*{qty})?|[-–—])$")
    numeric = [any(j < len(r) and r[j] not in "-–—" for r in rows)
               and all(num.match(r[j]) for r in rows if j < len(r)) for j in range(len(head))]

    def cell(tag: str, text: str, j: int) -> str:
        column = j < len(numeric) and numeric[j]
        cls = ' class="num"' if column or (tag == "td" and text not in "-–—" and num.match(text)) else ""
        return f"<{tag}{cls}>{_inline(text)}</{tag}>"

    thead = "<tr>" + "".join(cell("th", h, j) for j, h in enumerate(head)) + "</tr>"
    tbody = "".join("<tr>" + "".join(cell("td", c, j) for j, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="table-wrap"><table><thead>{thead}</thead><tbody>{tbody}</tbody></table></div>'


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


__all__ = ["EXPLORER", "render_report", "write_report_html"]
