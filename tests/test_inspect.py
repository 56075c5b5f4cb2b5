"""`impsamp inspect`: the cluster explorer's data (escaped, capped, deterministic), its errors, the compare
report page, and the page itself in headless Chromium (network off)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from impsamp.explorer.page import script_json
from impsamp.explorer.sampling import SNIPPET_CHARS, Sample, sample_units, snippet, snippets_by_leaf
from impsamp.explorer.terms import top_terms

from ._browser import Browser, find_chromium
from ._helpers import (CLUSTER_ARGS, EMBED_ARGS, RESAMPLE_ARGS, invoke, ok, one_line_error,
                       with_and_without_text_field, write_corpus)

pytest.importorskip("sklearn")

EVIL = "<script>window.__pwned=1</script> <b>bold</b> </script><!--<script> "


def _data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="impsamp-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small run (k=4, and a 2x2 tree) whose law documents all start with a script and a tag."""
    root = tmp_path_factory.mktemp("inspect")
    generic = write_corpus(root / "generic.jsonl", 120)
    rows = [json.loads(line) for line in generic.read_text().splitlines()]
    for i, r in enumerate(rows):
        if i % 3 == 2:  # the law topic
            r["text"] = EVIL + r["text"]
    generic.write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = write_corpus(root / "bio.jsonl", 30, seed=1, topics=("bio",), ids=False)
    p = {"root": root, "target": target, "emb": root / "emb", "clu": root / "clu", "sel": root / "sel",
         "tree": root / "tree", "page": root / "explorer.html", "tree_page": root / "tree.html"}
    ok(invoke(*EMBED_ARGS(generic, p["emb"])))
    ok(invoke(*CLUSTER_ARGS(p["emb"], p["clu"])))
    ok(invoke("cluster", p["emb"], "--out", p["tree"], "--levels", "2,2", "--seed", "0", "--no-progress"))
    ok(invoke(*RESAMPLE_ARGS(p["emb"], p["clu"], target, p["sel"])))
    out = ok(invoke("inspect", p["clu"], "--selection", p["sel"], "--out", p["page"])).output
    assert "cluster explorer" in out and "kB" in out
    ok(invoke("inspect", p["tree"], "--target", target, "--out", p["tree_page"]))
    return p


# ---- the data, without a browser -----------------------------------------------------------------

def test_script_json_cannot_close_its_script_block():
    text = script_json({"s": "</script><!--<script>a & b"})
    assert not set("<>&") & set(text)
    assert json.loads(text) == {"s": "</script><!--<script>a & b"}


def test_snippets_are_capped_in_length_and_count():
    long = "word " * 200
    s = snippet(long)
    assert len(s) <= SNIPPET_CHARS and s.endswith("\u2026") and not s[:-1].endswith(" ")
    assert snippet("short text") == "short text"
    sample = Sample(np.array([0, 0, 0, 0, 0, 1]), ["a", "a", "b", "c", "d", long])
    got = snippets_by_leaf(sample, 3)
    assert got == [["a", "b", "c"], [s], []]  # 3 at most, distinct, none for an unsampled leaf


def test_the_report_tables_right_align_every_kind_of_number():
    from impsamp.explorer.report import _table

    page = _table(["| method | ppl | params | note |", "|---|---|---|---|",
                   "| dense | 2375.19 ± 33.77 | 2.23M of 8.90M | x |", "| experts | - | 2.23M | - |"])
    assert page.count('<td class="num">') == 4 and '<th class="num">ppl</th><th class="num">params</th>' in page
    assert "<td>dense</td>" in page and "<th>note</th>" in page and "<td>x</td>" in page  # words stay words


def test_top_terms_are_distinctive_per_cluster_and_level():
    farm = ["tractor harvest wheat the and", "tractor barley wheat of the", "harvest tractor soil and"]
    code = ["compiler loop function the and", "compiler function variable of", "loop compiler debug the"]
    spam = ["zzyzx " * 50 + "function"]  # one document repeating a word cannot make it the topic
    texts = farm + code + spam
    leaf = np.array([0, 0, 0, 1, 1, 1, 1])
    root = np.zeros(7, dtype=np.int64)
    leaves, top = top_terms(texts, [leaf, root], [2, 1], n_terms=3)
    assert set(leaves[0]) <= {"tractor", "harvest", "wheat"} and leaves[0][0] == "tractor"
    assert leaves[1][0] in ("compiler", "function") and "zzyzx" not in leaves[1]
    assert not {"the", "and", "of"} & {t for node in leaves + top for t in node}  # stop words
    assert len(top) == 1 and len(top[0]) == 3
    assert top_terms([], [np.array([], dtype=np.int64)], [2]) == [[[], []]]
    long = ["tractor " + "a" * 41 + " harvest", "tractor " + "b" * 40 + " wheat"]  # a run of letters names no topic
    terms, _ = top_terms(long, [np.zeros(2, np.int64), np.zeros(2, np.int64)], [1, 1], n_terms=6)
    assert "a" * 41 not in terms[0] and "b" * 40 in terms[0]


def test_sample_units_is_a_seeded_bottom_k_per_cluster():
    rng = np.random.default_rng(0)
    shards = [rng.integers(0, 5, size=n) for n in (40, 3, 25)]
    leaf, where = sample_units(shards, 4, seed=1)
    counts = np.bincount(np.concatenate(shards), minlength=5)
    assert np.array_equal(np.bincount(leaf, minlength=5), np.minimum(counts, 4))
    assert all(shards[s][r] == c for c, (s, r) in zip(leaf, where, strict=True))
    again = sample_units(shards, 4, seed=1)
    assert np.array_equal(again[1], where)
    assert not np.array_equal(sample_units(shards, 4, seed=2)[1], where)


def test_the_page_embeds_escaped_capped_deterministic_data(run):
    raw = run["page"].read_bytes()
    page = raw.decode("utf-8")
    assert page.count("</script>") == 2 and "<!--" not in page  # the corpus's tags are only JSON escapes
    assert "<script>window" not in page and "<b>" not in page and "\\u003cscript\\u003ewindow.__pwned" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing to fetch
    assert '<meta name="color-scheme" content="only light">' in page  # a forced dark mode dimmed its canvases
    d = _data(page)
    leaves = d["leaves"]
    assert len(leaves["docs"]) == 4 == len(leaves["snippets"]) == len(leaves["terms"])
    assert sum(leaves["docs"]) == 120 and sum(leaves["rows"]) == 200 and leaves["parent"] is None
    assert all(len(s) <= 3 and all(len(x) <= SNIPPET_CHARS for x in s) for s in leaves["snippets"])
    snippets = [x for s in leaves["snippets"] for x in s]
    assert any(x.startswith("<script>window.__pwned=1</script> <b>bold</b>") for x in snippets)
    bio = int(np.argmax(leaves["target"]))
    assert leaves["weight"][bio] == max(leaves["weight"]) and {"protein", "gene"} & set(leaves["terms"][bio])
    assert d["selection"]["name"] == "sel" and d["target"]["source"] == "bio.jsonl"
    ok(invoke("inspect", run["clu"], "--selection", run["sel"], "--out", run["root"] / "again.html"))
    assert (run["root"] / "again.html").read_bytes() == raw  # same inputs, same bytes


def test_a_target_under_another_field_needs_text_field(run, tmp_path):
    pages = with_and_without_text_field(lambda t, out: ["inspect", run["clu"], "--target", t, "--out", out],
                                        run["target"], tmp_path, ".html")
    yes, ref = (_data(page.read_text())["leaves"] for page in pages)
    assert yes["target"] == ref["target"] and yes["weight"] == ref["weight"]


def test_a_selection_measured_against_another_target_says_so(run, tmp_path):
    """--target beside --selection: the KLs are the given target's (against the generic corpus and the
    selection), not the selection's own target's, and the header says whose weights are shown."""
    from impsamp.histograms import kl

    law = write_corpus(tmp_path / "law.jsonl", 30, seed=2, topics=("law",), ids=False)
    own = _data(run["page"].read_text())
    for target, other in ((run["target"], False), (law, True)):
        ok(invoke("inspect", run["clu"], "--selection", run["sel"], "--target", target, "--out", tmp_path / "p.html"))
        d = _data((tmp_path / "p.html").read_text())
        t, g, r = (np.asarray(d["leaves"][key], dtype=float) for key in ("target", "docs", "rows"))
        assert d["selection"]["kl_target_selected"] == pytest.approx(kl(t, r / r.sum()), rel=1e-9)
        assert d["selection"]["kl_target_generic"] == pytest.approx(kl(t, g / g.sum()), rel=1e-9)
        assert d["leaves"]["weight"] == own["leaves"]["weight"]  # the weights it was drawn with
        assert d["target"].get("selection_drawn_for") == ("bio.jsonl" if other else None)
    assert d["selection"]["kl_target_selected"] > own["selection"]["kl_target_selected"] + 1


def test_a_tree_page_has_every_level(run, tmp_path):
    import impsamp

    page = impsamp.inspect(run["tree"], tmp_path / "lib.html", target=str(run["target"]))  # the library call
    assert page.read_bytes() == run["tree_page"].read_bytes()
    d = _data(run["tree_page"].read_text())
    (level0,) = d["tree"]
    assert len(level0["docs"]) == 2 and sum(level0["docs"]) == 120 and level0["parent"] == [-1, -1]
    assert len(d["leaves"]["parent"]) == len(d["leaves"]["docs"]) and set(d["leaves"]["parent"]) == {0, 1}
    assert abs(sum(level0["target"]) - 1) < 1e-3 and d["leaves"]["weight"] and d["leaves"]["rows"] is None
    assert all(level0["terms"])
    tree, flat = (ok(invoke("info", run[name])).output for name in ("tree", "clu"))
    assert "  levels: [2, 2]" in tree and "\n  k: " not in tree  # a tree's unused flat k is not shown
    assert "\n  k: 4\n" in flat


def test_bad_inputs_are_one_line_errors(run):
    one_line_error(invoke("inspect", run["clu"], "--out", run["root"] / "x.txt"), ".html")
    (run["root"] / "notes.html").write_text("<p>my notes</p>")
    one_line_error(invoke("inspect", run["clu"], "--out", run["root"] / "notes.html"), "not an explorer page")
    one_line_error(invoke("inspect", run["tree"], "--selection", run["sel"], "--out", run["root"] / "y.html"),
                   "was not drawn from the clustering")
    one_line_error(invoke("inspect", run["emb"], "--out", run["root"] / "z.html"), "cluster")


def test_the_compare_report_page_links_each_explorer(run, tmp_path):
    from impsamp.clustering import Clusters
    from impsamp.explorer import write_report_html

    out = tmp_path / "cmp"
    for method in ("uniform", "importance"):
        ok(invoke(*RESAMPLE_ARGS(run["emb"], run["clu"], run["target"], out / "selections" / method,
                                 "--method", method, "--docs", "60")))
    (out / "report.md").write_text("# impsamp compare\n\nSome `code` & <b>text</b>.\n\n| method | ppl |\n"
                                   "|---|---|\n| uniform | 12.5 |\n| importance | 9.1 |\n\n- a **list**\n")
    png = io.BytesIO()
    pytest.importorskip("PIL.Image").new("RGB", (4, 4), "red").save(png, format="PNG")
    (out / "perplexity.png").write_bytes(png.getvalue())
    files = write_report_html(out, Clusters.load(run["clu"]), ["uniform", "importance", "ngram"])
    assert set(files) == {"report.html", "selections/uniform/explorer.html",
                          "selections/importance/explorer.html"}
    page = (out / "report.html").read_text()
    assert "<td class=\"num\">9.1</td>" in page and "<code>code</code> &amp; &lt;b&gt;text&lt;/b&gt;" in page
    assert "data:image/png;base64," in page and '<a href="selections/importance/explorer.html">' in page
    uniform = _data((out / "selections" / "uniform" / "explorer.html").read_text())
    # a uniform selection weighs no cluster: its page shows none (it once showed 1x beside a target 12x its generic)
    assert uniform["target"]["source"] == "bio.jsonl" and uniform["leaves"]["weight"] is None
    importance = _data((out / "selections" / "importance" / "explorer.html").read_text())
    assert len(importance["leaves"]["weight"]) == Clusters.load(run["clu"]).n_leaves


# ---- the page in a real browser ------------------------------------------------------------------

@pytest.fixture
def browser():
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium): the explorer's browser test needs one")
    with Browser(exe) as b:
        yield b


def _order(page) -> list[int]:
    return page.evaluate("[...document.querySelectorAll('#clusters tbody tr[data-cluster]')]"
                         ".map(r => +r.dataset.cluster)")


def _click(page, selector: str) -> None:
    box = page.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                        " e.scrollIntoView(); const r = e.getBoundingClientRect();"
                        " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    page.click(*box)


def test_the_explorer_works_in_a_browser_from_disk(run, browser, tmp_path):
    Image = pytest.importorskip("PIL.Image")  # noqa: N806

    page = browser.open(run["page"].resolve().as_uri())
    weights = _data(run["page"].read_text())["leaves"]["weight"]
    by_weight = sorted(range(4), key=lambda i: (-weights[i], i))
    assert by_weight != [0, 1, 2, 3] and _order(page) == by_weight  # one row per cluster, by weight
    _click(page, 'th[data-key="id"]')
    assert _order(page) == [0, 1, 2, 3]
    _click(page, 'th[data-key="w"]')
    assert _order(page) == by_weight
    _click(page, 'th[data-key="w"]')
    assert _order(page) == sorted(range(4), key=lambda i: (weights[i], i))
    # the map is drawn: a screenshot of its canvas is not blank, and hovering a dot shows its terms
    r = page.evaluate("(() => { const m = document.getElementById('map'); m.scrollIntoView();"
                      " const r = m.getBoundingClientRect();"
                      " return {x: r.x, y: r.y, width: r.width, height: r.height,"
                      " sx: window.scrollX, sy: window.scrollY}; })()")
    clip = {"x": r["x"] + r["sx"], "y": r["y"] + r["sy"], "width": r["width"], "height": r["height"]}
    shot = Image.open(page.screenshot(tmp_path / "map.png", clip=clip))
    rgb = np.asarray(shot.convert("RGB"), dtype=np.int64)
    coloured = (rgb.max(axis=2) - rgb.min(axis=2) > 40).mean()  # the dots' fills (the page itself is grey)
    assert rgb.std() > 5 and coloured > 0.002, (rgb.std(), coloured)
    dot = page.evaluate("window.impsampExplorer.mapPoints()")[0]
    page.mouse("mouseMoved", r["x"] + dot["x"], r["y"] + dot["y"])
    tip = page.evaluate("(() => { const t = document.querySelector('.tip');"
                        " return [t.style.display, t.textContent]; })()")
    assert tip[0] == "block" and f"Cluster {dot['id']}" in tip[1]
    def search(text: str) -> list[int]:
        page.evaluate(f"(() => {{ const s = document.querySelector('input[type=search]'); s.value = {text!r};"
                      " s.dispatchEvent(new Event('input')); })()")
        page.evaluate("new Promise(r => setTimeout(r, 300))")
        return _order(page)

    # the documents holding a script show it as text and run nothing
    rows = search("pwned")
    assert rows, "no cluster matches the filter 'pwned'"
    # #3 is that cluster; a bare number is that cluster first, then the clusters whose text holds it (a
    # year, a version: here the "1" of the script the pwned snippets hold)
    ones = search("1")
    assert search("#3") == [3] and ones[0] == 1 and set(ones) == {1, *rows}, (ones, rows)
    _click(page, f'tr[data-cluster="{rows[0]}"]')
    texts = page.evaluate("[...document.querySelectorAll('.snippet')].map(e => e.textContent)")
    assert any(t.startswith("<script>window.__pwned=1</script> <b>bold</b>") for t in texts), texts
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('#app b, #app script').length") == 0
    # each cluster's details, the first shown's and any other's: no stray "null" where the first's caption was
    for row in page.evaluate("[...document.querySelectorAll('tr[data-cluster]')].map(r => r.dataset.cluster)"):
        _click(page, f'tr[data-cluster="{row}"]')
        detail = page.evaluate("document.getElementById('detail').innerText")
        assert detail.startswith(f"Cluster {row}\n") and "null" not in detail.split("\n")[:2], detail
    requests = page.requests()
    assert page.errors() == [] and all(u.startswith("file:") for u in requests), (page.errors(), requests)
    _the_tree_expands(run, browser)


def _the_tree_expands(run, browser):
    page = browser.open(run["tree_page"].resolve().as_uri())
    assert page.evaluate("document.querySelectorAll('.tree > .tree-node').length") == 2
    _click(page, ".tree > .tree-node .toggle")
    kids = page.evaluate("document.querySelectorAll('.tree-kids .tree-row').length")
    parents = _data(run["tree_page"].read_text())["leaves"]["parent"]
    assert kids in (parents.count(0), parents.count(1)) and kids > 0
    assert page.errors() == []
