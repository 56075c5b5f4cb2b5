"""The explorer page: its data as JSON (numbers rounded, text capped) and one self-contained HTML file.

The data goes in a `<script type="application/json">` block with every `<`, `>` and `&` written as a
JSON escape (`\\u003c`...), so no text of the corpus can close the block, open a comment or a tag;
the page's own script (assets/explorer.js, no library) reads it with `JSON.parse` and writes text
with `textContent` only. A Content-Security-Policy forbids every network request.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from .masses import Masses
from .sampling import SNIPPET_CHARS, SNIPPETS
from .view import ClusterView

ASSETS = Path(__file__).parent / "assets"
GENERATOR = "impsamp explorer"
"""The page's `<meta name="generator">`: `inspect` replaces a file only when it carries it."""
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"


def sig(values, digits: int = 4) -> list:
    """Floats rounded to `digits` significant digits (a smaller page, the same bytes on every run)."""
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=np.float64).tolist()]


def _ints(values) -> list[int]:
    return np.asarray(values, dtype=np.int64).tolist()


def _unit(x: np.ndarray) -> list[float]:
    span = float(x.max() - x.min()) if len(x) else 0.0
    return [round(v, 4) for v in ((x - x.min()) / span if span > 0 else np.full(len(x), 0.5)).tolist()]


def payload(view: ClusterView, masses: Masses, title: str) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready lists (one entry per node)."""
    from .. import __version__

    leaves = {"docs": _ints(view.documents[-1]), "tokens": _ints(view.tokens[-1]),
              "target": None if masses.target is None else sig(masses.target),
              "weight": None if masses.weights is None else sig(masses.weights),
              "rows": None if masses.rows is None else _ints(masses.rows),
              "repeats": None if masses.repeats is None else _ints(masses.repeats),
              "x": _unit(view.xy[:, 0]), "y": _unit(view.xy[:, 1]), "terms": view.terms[-1],
              "snippets": view.snippets, "parent": _ints(view.parents[-1]) if len(view.levels) > 1 else None}
    tree = []
    for j in range(len(view.levels) - 1):  # the inner levels of a hierarchy, summed from their leaves
        anc, n = view.ancestors[j], view.levels[j]
        tree.append({"docs": _ints(view.documents[j]), "tokens": _ints(view.tokens[j]),
                     "target": None if masses.target is None else sig(np.bincount(anc, masses.target, n)),
                     "rows": None if masses.rows is None else _ints(np.bincount(anc, masses.rows, n)),
                     "terms": view.terms[j], "parent": _ints(view.parents[j])})
    return {"format": "impsamp-explorer/1", "impsamp_version": __version__, "title": title,
            "clustering": {"name": view.name, "fingerprint": view.fingerprint[:19], "levels": view.levels,
                           "documents": int(view.documents[-1].sum()), "tokens": int(view.tokens[-1].sum())},
            "sample": {**view.sample, "snippets": SNIPPETS, "snippet_chars": SNIPPET_CHARS},
            "selection": masses.about.get("selection"), "target": masses.about.get("target"),
            "leaves": leaves, "tree": tree}


def script_json(data: Any) -> str:
    """JSON that is safe inside a `<script>` element: `<`, `>`, `&` only ever appear as escapes."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(data: dict[str, Any]) -> str:
    """The whole page: styles, data and script inline."""
    css = (ASSETS / "explorer.css").read_text(encoding="utf-8")
    js = (ASSETS / "explorer.js").read_text(encoding="utf-8")
    return "\n".join([
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta name="generator" content="{GENERATOR}">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="color-scheme" content="only light">',  # a browser's forced dark mode dimmed the canvases
        f"<title>{html.escape(data['title'])}</title>", '<link rel="icon" href="data:,">',
        f"<style>\n{css}</style>", "</head>", "<body>",
        '<main id="app"><noscript>This page draws its tables and map with JavaScript; allow scripts for '
        "this file.</noscript></main>",
        f'<script type="application/json" id="impsamp-data">{script_json(data)}</script>',
        f"<script>\n{js}</script>", "</body>", "</html>", ""])


def is_ours(path: Path) -> bool:
    """True when `path` is a page this module wrote (so replacing it loses nothing)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}">'.encode() in head
