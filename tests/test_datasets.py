"""Tests of the bundled demo corpus, its loader, and the front matter of the data cards."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from impsamp.datasets import DEMO_DOMAINS, DemoCorpus, demo_corpus
from impsamp.errors import ConfigError

DATA_CARDS = Path(__file__).resolve().parent.parent / "data_cards"
REQUIRED_CARD_KEYS = {"name", "description", "license"}
COLUMNS = ["id", "text", "domain"]


def _group(doc_id: str) -> str:
    return doc_id.rsplit("#", 1)[0]


def _front_matter(text: str) -> dict[str, str]:
    """Top-level `key: value` pairs between the first two `---` lines (no YAML library needed)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise ValueError("no front matter: the first line is not ---")
    try:
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
    except StopIteration:
        raise ValueError("front matter is not closed by a second --- line") from None
    keys = {}
    for line in lines[1:end]:
        if not line.strip() or line.startswith((" ", "\t", "#", "-")):
            continue  # blank, nested, comment or list item
        key, sep, value = line.partition(":")
        if sep:
            keys[key.strip()] = value.strip()
    return keys


@pytest.fixture(scope="module")
def demo() -> DemoCorpus:
    return demo_corpus()


@pytest.fixture(scope="module")
def pool(demo):
    return pq.read_table(demo.pool)


def test_domains_are_sorted_and_complete(demo):
    assert DEMO_DOMAINS == tuple(sorted(DEMO_DOMAINS))
    assert len(DEMO_DOMAINS) == 8
    assert demo.domains == DEMO_DOMAINS


def test_loader_finds_every_file(demo):
    assert demo.pool.is_file()
    assert demo.pool.parent == demo.root
    for domain in demo.domains:
        assert demo.sample(domain).is_file(), domain
        assert demo.eval(domain).is_file(), domain


def test_pool_has_600_documents_per_domain(pool):
    assert pool.column_names == COLUMNS
    domains = pool.column("domain").to_pylist()
    assert {d: domains.count(d) for d in DEMO_DOMAINS} == {d: 600 for d in DEMO_DOMAINS}
    assert len(domains) == 600 * len(DEMO_DOMAINS)
    ids = pool.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    assert all(text for text in pool.column("text").to_pylist())


def test_pool_is_shuffled_across_domains(pool):
    first = pool.column("domain").to_pylist()[:100]
    assert len(set(first)) > 1


@pytest.mark.parametrize("domain", DEMO_DOMAINS)
def test_sample_and_eval_are_disjoint_by_group(demo, pool, domain):
    sample = pq.read_table(demo.sample(domain))
    evaluation = pq.read_table(demo.eval(domain))
    for table in (sample, evaluation):
        assert table.column_names == COLUMNS
        assert 0 < table.num_rows <= 200
        assert set(table.column("domain").to_pylist()) == {domain}
    sample_groups = {_group(i) for i in sample.column("id").to_pylist()}
    eval_groups = {_group(i) for i in evaluation.column("id").to_pylist()}
    assert not sample_groups & eval_groups
    pool_ids = set(pool.column("id").to_pylist())
    pool_groups = {_group(i) for i in pool_ids}
    for table in (sample, evaluation):
        ids = set(table.column("id").to_pylist())
        assert not ids & pool_ids
        assert not {_group(i) for i in ids} & pool_groups


@pytest.mark.parametrize("method", ["sample", "eval"])
def test_unknown_domain_raises_config_error_listing_domains(demo, method):
    with pytest.raises(ConfigError, match="unknown demo domain 'klingon'") as excinfo:
        getattr(demo, method)("klingon")
    assert all(d in str(excinfo.value) for d in DEMO_DOMAINS)


def test_data_cards_have_required_front_matter():
    cards = sorted(DATA_CARDS.glob("*.md"))
    assert {"TEMPLATE.md", "impsamp-demo.md"} <= {c.name for c in cards}
    for card in cards:
        keys = _front_matter(card.read_text(encoding="utf-8"))
        missing = REQUIRED_CARD_KEYS - keys.keys()
        assert not missing, f"{card.name}: front matter lacks {sorted(missing)}"
        assert all(keys[k] for k in REQUIRED_CARD_KEYS), card.name


def test_template_renders_with_str_format():
    import string

    text = (DATA_CARDS / "TEMPLATE.md").read_text(encoding="utf-8")
    parsed = [(f, spec) for _, f, spec, _ in string.Formatter().parse(text) if f is not None]
    fields = {f for f, _ in parsed}
    assert "" not in fields, "positional {} placeholder in TEMPLATE.md"
    numbers = {f for f, spec in parsed if spec}  # `{num_rows:,}`: a count, grouped in the prose
    rendered = text.format(**{f: 1234 if f in numbers else f"<{f}>" for f in fields})
    assert "{" not in rendered and "}" not in rendered
    assert _front_matter(rendered)["name"] == "<name_y>"


def test_each_selection_has_its_own_datasets_fingerprint(tmp_path):
    """state.json's `_fingerprint` (what `datasets` keys its caches by) follows the selection's content:
    another seed or method gives another one, the same command in another folder the same one."""
    from ._helpers import RESAMPLE_ARGS, build_pipeline, invoke, ok

    p = build_pipeline(tmp_path)

    def fp(name: str, *extra: str) -> str:
        ok(invoke(*RESAMPLE_ARGS(p["emb"], p["clu"], p["target"], tmp_path / name, *extra)))
        return json.loads((tmp_path / name / "state.json").read_text())["_fingerprint"]

    first = json.loads((p["sel"] / "state.json").read_text())["_fingerprint"]
    assert fp("again") == first
    assert len({first, fp("seed1", "--seed", "1"), fp("uniform", "--method", "uniform")}) == 3


@pytest.mark.parametrize("fmt,method", [("parquet", "uniform"), ("jsonl", "ngram"), ("arrow", "importance")])
def test_a_selection_in_any_format_has_a_valid_card_loads_as_a_folder_and_trains(tmp_path, fmt, method):
    """Its card's front matter is YAML (`datasets` parses it) naming the data files, so `load_dataset(DIR)`
    reads those and not manifest.json; `train --data DIR` reads them too."""
    import datasets
    import yaml

    from ._helpers import RESAMPLE_ARGS, TRAIN_ARGS, build_pipeline, invoke, ok

    p = build_pipeline(tmp_path)
    out = tmp_path / "sel2"
    ok(invoke(*RESAMPLE_ARGS(p["emb"], p["clu"], p["target"], out, "--format", fmt, "--method", method)))
    card = yaml.safe_load((out / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    rows = json.loads((out / "manifest.json").read_text())["stats"]["rows"]
    assert card["num_rows"] == rows and card["source_datasets"] == ["generic.jsonl"]
    assert ("uniformly at random" in card["description"]) == (method == "uniform")
    # the prose says what the method did and what its `weight` column holds: cluster weights for importance only
    text = (out / "README.md").read_text(encoding="utf-8")
    assert ("importance weight of that cluster" in text) == ("Each cluster received" in text) == (method == "importance")
    assert ("| weight |" in text) == (method == "importance")
    assert {"uniform": "every document was equally likely", "ngram": "hashed n-gram likelihoods",
            "importance": "importance weight"}[method] in text
    assert f"{rows:,} rows" in text and "\\u20" not in text
    if fmt == "arrow":
        assert datasets.load_from_disk(str(out)).num_rows == rows
    else:
        assert card["configs"][0]["data_files"] == f"data-*.{fmt}"
        loaded = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))
        assert loaded.num_rows == rows and "text" in loaded.column_names
    ok(invoke(*TRAIN_ARGS(out, tmp_path / "lm")))


def test_card_strings_outside_the_basic_plane_survive_yaml():
    import yaml

    from impsamp.resampling.report import _yaml

    name = "sample 😀: \"quoted\" # not a comment"
    assert yaml.safe_load(f"target: {_yaml(name)}\n")["target"].encode("utf-8").decode("utf-8") == name
