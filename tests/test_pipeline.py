"""The whole pipeline embed -> cluster -> resample, through the CLI and the Python API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from impsamp_cli.main import cli

import impsamp
from impsamp.clustering import ClusterConfig
from impsamp.embedding import EmbedConfig
from impsamp.resampling import SELECTION_SCHEMA, ResampleConfig, Selection

TOPICS = {
    "bio": "protein folding kinetics gene expression yeast cell membrane transport enzyme",
    "code": "python list comprehension rust borrow checker sql join index compiler",
    "law": "contract breach damages appellate court ruling statute limitations plaintiff",
}


def _doc(rng, topic):
    words = TOPICS[topic].split()
    return " ".join(rng.choice(words) for _ in range(int(rng.integers(8, 30))))


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """A generic corpus of three topics, a 'bio' target, embedded (hashing) and clustered."""
    root = tmp_path_factory.mktemp("pipeline")
    rng = np.random.default_rng(0)
    topics = rng.choice(list(TOPICS), size=900)
    generic = root / "generic.jsonl"
    generic.write_text("".join(json.dumps({"id": f"g{i}", "text": _doc(rng, t), "topic": str(t)}) + "\n"
                               for i, t in enumerate(topics)))
    target = root / "bio.jsonl"
    target.write_text("".join(json.dumps({"text": _doc(rng, "bio")}) + "\n" for _ in range(60)))
    emb = impsamp.embed(generic, root / "emb", EmbedConfig(model="hashing:64", rows_per_shard=200))
    clu = impsamp.cluster(emb, root / "clu", ClusterConfig(k=6, seed=0))
    return root, generic, target, topics, emb, clu


def _invoke(args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    return r


def _topics_of(sel: Selection, topics):
    return topics[sel.to_table().column("doc_index").to_numpy()]


def test_cli_pipeline_selects_the_target_topic_and_datasets_opens_it(stages, tmp_path):
    root, generic, target, topics, _, _ = stages
    out = tmp_path / "sel"
    r = _invoke(["resample", root / "emb", root / "clu", "--target", target, "--out", out, "--docs", 300,
                 "--rows-per-shard", 120])
    assert r.exit_code == 0, r.output
    assert "300 rows" in r.output and "KL(target||generic)" in r.output
    sel = Selection.load(out)
    share = np.mean(_topics_of(sel, topics) == "bio")
    assert share > 0.8, share
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_from_disk(str(out))
    assert ds.num_rows == 300 and {"text", "id", "source_file", "source_row", "cluster", "weight", "repeat"} <= set(
        ds.column_names)
    assert len(sel.data_files) == 3
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "KL(target, selected)" in card and "{" not in card.split("---")[1]
    assert (out / "histograms.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "_spill").exists() and not (out / "_shards").exists()


def test_python_api_and_the_match_histogram(stages, tmp_path):
    root, generic, target, topics, emb, clu = stages
    hist = impsamp.histogram(target, clu)
    sel = impsamp.resample(emb, clu, tmp_path / "s", targets=[target],
                           config=ResampleConfig(docs=600, smoothing=0.0, scheme="match"))
    got = np.bincount(sel.to_table().column("cluster").to_numpy(), minlength=clu.n_leaves)
    p = hist.probs()
    # match reproduces the target histogram up to rounding
    assert np.abs(got / got.sum() - p).max() <= 1 / 600 + 1e-9
    assert sel.stats["kl_target_selected"] < 0.01 < sel.stats["kl_target_generic"]


def test_embedding_costs_are_charged_to_the_methods_that_read_the_vectors(stages, tmp_path, monkeypatch):
    """`importance` and `classifier` read the generic corpus's embeddings (paid once: `generic_flops`) and the
    target's (per target: `selection_flops`); `uniform` and `ngram` need neither. A run pretrained on the
    selection charges them as such. (The hashing embedder is given 1,000 parameters here: an unknown encoder
    costs nothing.)"""
    pytest.importorskip("torch")
    from impsamp import costs
    from impsamp.training import TrainConfig, train

    root, generic, target, topics, emb, clu = stages
    monkeypatch.setitem(costs.ENCODERS, "hashing", 1000)
    assert emb.flops == 2 * 1000 * emb.manifest.stats["tokens"] > 0
    sels = {m: impsamp.resample(emb, clu, tmp_path / m, targets=[target], config=ResampleConfig(docs=100, method=m))
            for m in ("importance", "classifier", "uniform", "ngram")}
    for m, sel in sels.items():
        reads = m in ("importance", "classifier")
        assert sel.stats["generic_flops"] == (emb.flops if reads else 0.0), m
        assert (sel.stats["selection_flops"] > 0) is reads, m
    shape = TrainConfig(n_layer=1, n_embd=32, n_head=2, mlp_hidden=64, block_size=32, vocab_size=300, batch_size=2,
                        steps=2, device="cpu", dtype="float32")
    run = train([sels["importance"].path, sels["importance"].path], tmp_path / "lm", shape)  # one selection, once
    c = run.metrics["costs"]
    assert c["generic"] == emb.flops and c["selection"] == sels["importance"].stats["selection_flops"]
    assert c["pretraining"] > 0
    # pretraining on from that run on the same selection: the embeddings and the selection were made once
    more = train([sels["importance"].path], tmp_path / "lm2", replace(shape, init=str(run.path), steps=1,
                 n_layer=None, n_embd=None, n_head=None, mlp_hidden=None, block_size=None, vocab_size=None))
    c2 = more.metrics["costs"]
    assert (c2["generic"], c2["selection"]) == (c["generic"], c["selection"]) and c2["pretraining"] > c["pretraining"]


def test_saved_histogram_and_mixture_targets(stages, tmp_path):
    root, generic, target, topics, emb, clu = stages
    saved = impsamp.histogram(target, clu).save(tmp_path / "new" / "bio.hist.json")  # a new folder is made
    law = tmp_path / "law.jsonl"
    rng = np.random.default_rng(1)
    law.write_text("".join(json.dumps({"text": _doc(rng, "law")}) + "\n" for _ in range(40)))
    sel = impsamp.resample(emb, clu, tmp_path / "mix", targets=[f"{saved}:0.5", (law, 0.5)],
                           config=ResampleConfig(docs=400, smoothing=0.0))
    t = _topics_of(sel, topics)
    assert 0.35 < np.mean(t == "bio") < 0.65 and 0.35 < np.mean(t == "law") < 0.65
    # the card says how each part's histogram was had (it said every target was embedded)
    card = (tmp_path / "mix" / "README.md").read_text()
    assert "saved by `impsamp histogram`, read as it is" in card and "embedded with the same encoder" in card
    alone = impsamp.resample(emb, clu, tmp_path / "saved", targets=[saved], config=ResampleConfig(docs=50))
    card = (alone.path / "README.md").read_text()
    assert "saved by `impsamp histogram`" in card and "embedded with the same encoder" not in card
    # the histogram object itself has no path to record: one line saying to save it (was numpy's TypeError)
    for given in (impsamp.histogram(target, clu), [impsamp.histogram(target, clu)]):
        with pytest.raises(impsamp.ConfigError, match="got a Histogram .save it with .save.path."):
            impsamp.resample(emb, clu, tmp_path / "obj", targets=given, config=ResampleConfig(docs=50))
    assert not (tmp_path / "obj").exists()
    again = impsamp.resample(emb, clu, tmp_path / "gen", targets=(t for t in [saved]), config=ResampleConfig(docs=50))
    assert again.stats["rows"] == alone.stats["rows"] == 50  # a generator is read once, whole
    uniform = ResampleConfig(docs=20, method="uniform")
    assert impsamp.resample(emb, clu, tmp_path / "u", targets=None, config=uniform).stats["rows"] == 20
    t_emb = impsamp.embed(target, tmp_path / "t-emb", EmbedConfig(model="hashing:64"))  # a stage's handle as target
    assert impsamp.histogram(t_emb, clu) == impsamp.histogram(t_emb.path, clu)
    with pytest.raises(impsamp.ConfigError, match="unknown weighting 'nope'"):  # before the target is embedded
        impsamp.resample(emb, clu, tmp_path / "w", targets=[target], config=ResampleConfig(docs=20), weighting="nope")
    assert not (tmp_path / "w").exists()


def test_the_card_says_which_bytes_were_replaced(tmp_path):
    """`embed --encoding-errors replace` put U+FFFD in the text; the card said every document was copied
    unchanged."""
    rng = np.random.default_rng(0)
    lines = [json.dumps({"text": _doc(rng, "bio")}).encode() for _ in range(30)]
    g = tmp_path / "g.jsonl"
    g.write_bytes(b"\n".join([*lines, b'{"text": "caf\xe9 au lait and more words"}']) + b"\n")
    emb = impsamp.embed(g, tmp_path / "emb", EmbedConfig(model="hashing:16", encoding_errors="replace"))
    clu = impsamp.cluster(emb, tmp_path / "clu", ClusterConfig(k=2))
    sel = impsamp.resample(emb, clu, tmp_path / "s", config=ResampleConfig(docs=31, method="uniform"))
    card = (sel.path / "README.md").read_text()
    assert "1 of its documents held bytes that are not UTF-8, each replaced with U+FFFD" in card
    assert "No in-domain sample was given" in card
    assert any("\ufffd" in t for t in sel.to_table().column("text").to_pylist())


def test_the_data_cards_examples_are_documents_the_selection_holds(stages, tmp_path):
    """The card's examples per top cluster were its first documents in corpus order, selected or not (6 of the
    demo card's 15 were never selected)."""
    root, generic, target, topics, emb, clu = stages
    sel = impsamp.resample(emb, clu, tmp_path / "few", targets=[target], config=ResampleConfig(docs=20))
    held = {" ".join(t.split()) for t in sel.to_table().column("text").to_pylist()}
    card = (sel.path / "README.md").read_text()
    table = card.split("## Top clusters")[1].split("## ")[0]
    examples = [e for li in table.splitlines() if li.startswith("| ") and li[2].isdigit()
                for e in li.rstrip(" |").split(" | ")[-1].split(" / ")]
    assert len(examples) >= 3
    assert all(any(t.startswith(e) for t in held) for e in examples), examples
    # `impsamp info` on the selection's histograms.json (read as a corpus, it failed: "no 'text' field")
    r = _invoke(["info", sel.path / "histograms.json"])
    assert r.exit_code == 0 and "selected 20 units" in r.output and f"impsamp info {sel.path}" in r.output, r.output


@pytest.mark.parametrize("method", ["ngram", "classifier"])
def test_document_level_methods_weigh_a_mixed_target_as_the_histogram_does(stages, tmp_path, method):
    """A mixed target's parts count by their weights in the n-gram counts and the classifier's fit, as in the
    histogram (each part normalised, then weighted): these methods pooled every part's documents alike, so a
    part given weight 0 (or a small weight and many documents) still drew the selection its way."""
    from impsamp.resampling.methods import mixture_row_weights

    root, generic, target, topics, emb, clu = stages
    law = tmp_path / "law.jsonl"
    rng = np.random.default_rng(2)
    law.write_text("".join(json.dumps({"text": _doc(rng, "law")}) + "\n" for _ in range(120)))
    cfg = ResampleConfig(docs=150, method=method)
    shares = {}
    for w in (0.0, 0.5):
        sel = impsamp.resample(emb, clu, tmp_path / f"w{w}", targets=[(target, 1 - w), (law, w)], config=cfg)
        shares[w] = np.mean(_topics_of(sel, topics) == "law")
    assert shares[0.0] < 0.05 < 0.3 < shares[0.5]
    # per document: a part's weight over its size, summing to the documents; one part: all alike
    np.testing.assert_allclose(mixture_row_weights([1, 4], [0.5, 0.5]), [2.5, 0.625, 0.625, 0.625, 0.625])
    np.testing.assert_allclose(mixture_row_weights([2, 1], [3, 0]), [1.5, 1.5, 0.0])
    assert mixture_row_weights([7], [0.3]) is None


@pytest.mark.parametrize("method", ["topk", "uniform", "ngram", "classifier"])
def test_without_replacement_methods_have_no_duplicates(stages, tmp_path, method):
    root, generic, target, topics, emb, clu = stages
    cfg = ResampleConfig(docs=200, scheme="topk") if method == "topk" else ResampleConfig(docs=200, method=method)
    sel = impsamp.resample(emb, clu, tmp_path / method, targets=[target], config=cfg)
    idx = sel.to_table().column("doc_index").to_numpy()
    assert len(idx) == 200 and len(np.unique(idx)) == 200
    share = np.mean(topics[idx] == "bio")
    assert (share < 0.6) if method == "uniform" else (share > 0.8), (method, share)


def test_same_seed_same_bytes_other_seed_other_bytes(stages, tmp_path):
    root, generic, target, topics, emb, clu = stages
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        sel = impsamp.resample(emb, clu, tmp_path / name, targets=[target],
                               config=ResampleConfig(docs=250, seed=seed, rows_per_shard=100))
        outs.append({o.path: o.sha256 for o in sel.manifest.outputs if o.path.startswith("data-")})
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_within_knn_same_bytes_cap_honoured_and_spill_recorded(stages, tmp_path):
    root, generic, target, topics, emb, clu = stages
    # smoothing > 0: every cluster has a weight, so the surplus may spill out of the target's clusters
    cfg = ResampleConfig(docs=400, within="knn", max_repeat=1, smoothing=0.01, rows_per_shard=150)
    a, b = (impsamp.resample(emb, clu, tmp_path / n, targets=[target], config=cfg) for n in ("a", "b"))
    hashes = [{o.path: o.sha256 for o in s.manifest.outputs if o.path.startswith("data-")} for s in (a, b)]
    assert hashes[0] == hashes[1] and len(hashes[0]) == 3
    idx = a.to_table().column("doc_index").to_numpy()
    assert len(idx) == 400 and len(np.unique(idx)) == 400  # --max-repeat 1: no document twice
    # ~290 'bio' documents cannot hold the target's ~400 draws once each: the rest spilled, and said so
    hist = json.loads((tmp_path / "a" / "histograms.json").read_text())
    assert a.stats["within"] == "knn" and a.stats["spilled_units"] > 50
    assert abs(sum(hist["spilled"]) - a.stats["spilled_units"]) < 1e-6
    assert np.mean(topics[idx] == "bio") > 0.6


def test_within_auto_picks_by_what_the_target_gives(stages, tmp_path):
    root, generic, target, topics, emb, clu = stages
    t_emb = impsamp.embed(target, tmp_path / "t-emb", EmbedConfig(model="hashing:64"))
    saved = impsamp.histogram(target, clu).save(tmp_path / "bio-hist.json")
    cfg = ResampleConfig(docs=100, rows_per_shard=150)  # within auto
    picked = {name: impsamp.resample(emb, clu, tmp_path / name, targets=targets, config=cfg).stats["within"]
              for name, targets in (("corpus", [target]), ("embedded", [t_emb.path]),
                                    ("mixed", [target, f"{t_emb.path}:0.5"]), ("saved", [saved]))}
    # text and vectors: the n-gram classifier; vectors only: knn; a histogram: the seed paper's uniform draw
    assert picked == {"corpus": "ngram-classifier", "embedded": "knn", "mixed": "knn", "saved": "uniform"}
    explicit = impsamp.resample(emb, clu, tmp_path / "explicit", targets=[target],
                                config=replace(cfg, within="ngram-classifier"))
    data = [{o.path: o.sha256 for o in s.manifest.outputs if o.path.startswith("data-")}
            for s in (Selection.load(tmp_path / "corpus"), explicit)]
    assert data[0] == data[1] and data[0]  # auto is that choice, byte for byte
    cards = {n: (tmp_path / n / "README.md").read_text() for n in ("corpus", "saved")}  # the card says how
    assert "(`--within ngram-classifier`)" in cards["corpus"] and "equally likely" not in cards["corpus"]
    assert "equally likely to be drawn" in cards["saved"]
    r = _invoke(["resample", root / "emb", root / "clu", "--target", target, "--docs", 50, "--out", tmp_path / "cli"])
    assert r.exit_code == 0 and "documents inside the clusters: --within ngram-classifier" in r.output, r.output


def test_within_auto_without_scikit_learn_weighs_by_knn_and_says_so(stages, tmp_path, monkeypatch, caplog):
    import importlib.util

    root, generic, target, topics, emb, clu = stages
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else find(name, *a))
    sel = impsamp.resample(emb, clu, tmp_path / "s", targets=[target], config=ResampleConfig(docs=100))
    assert sel.stats["within"] == "knn" and "scikit-learn is not installed" in caplog.text
    # what `compare` predicts a finished selection's manifest records (to reuse it on a resume) is what it holds
    assert ResampleConfig(docs=100).resolved(True, target_has_text=True).within == sel.manifest.config["within"]


def test_within_knn_reads_a_target_embed_output_and_refuses_a_saved_histogram_in_one_line(stages, tmp_path):
    root, generic, target, topics, emb, clu = stages
    t_emb = impsamp.embed(target, tmp_path / "t-emb", EmbedConfig(model="hashing:64"))
    cfg = ResampleConfig(docs=300, seed=1, rows_per_shard=150, within="knn")
    a = impsamp.resample(emb, clu, tmp_path / "corpus", targets=[target], config=cfg)
    b = impsamp.resample(emb, clu, tmp_path / "embedded", targets=[t_emb.path], config=cfg)
    assert a.stats["within"] == b.stats["within"] == "knn"
    # the stored vectors are the corpus target's, rounded to float16: the same histogram, (nearly) the same draw
    hists = [json.loads((tmp_path / n / "histograms.json").read_text())["target"] for n in ("corpus", "embedded")]
    assert hists[0] == hists[1]
    picked = [np.sort(s.to_table().column("doc_index").to_numpy()) for s in (a, b)]
    assert len(np.intersect1d(*picked)) >= 0.9 * len(np.unique(picked[0]))
    clf = ResampleConfig(docs=300, method="classifier", rows_per_shard=150)
    assert impsamp.resample(emb, clu, tmp_path / "clf", targets=[t_emb.path], config=clf).stats["rows"] == 300
    saved = impsamp.histogram(target, clu).save(tmp_path / "bio-hist.json")
    with pytest.raises(impsamp.ConfigError, match=r"--within knn needs the target's documents .*bio-hist.json is a "
                                                  r"saved histogram"):
        impsamp.resample(emb, clu, tmp_path / "c", targets=[saved], config=cfg)
    r = _invoke(["resample", root / "emb", root / "clu", "--target", saved, "--docs", 50, "--within", "knn",
                 "--out", tmp_path / "cli"])
    assert r.exit_code != 0 and "saved histogram" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "cli").exists()
    with pytest.raises(impsamp.ConfigError, match="--method classifier needs the target's documents"):
        impsamp.resample(emb, clu, tmp_path / "clf-hist", targets=[t_emb.path, f"{saved}:0.5"], config=clf)
    assert not (tmp_path / "clf-hist").exists()  # refused before anything is written


def test_within_knn_ngram_reads_the_text_same_bytes_and_needs_a_corpus_target(stages, tmp_path):
    root, generic, target, topics, emb, clu = stages
    cfg = ResampleConfig(docs=200, within="knn+ngram", rows_per_shard=150)
    a, b = (impsamp.resample(emb, clu, tmp_path / n, targets=[target], config=cfg) for n in ("a", "b"))
    hashes = [{o.path: o.sha256 for o in s.manifest.outputs if o.path.startswith("data-")} for s in (a, b)]
    assert hashes[0] == hashes[1] and a.stats["within"] == "knn+ngram"
    assert a.manifest.inputs["within_fingerprint"].startswith("sha256:")
    knn = impsamp.resample(emb, clu, tmp_path / "knn", targets=[target], config=ResampleConfig(docs=200, within="knn"))
    assert np.mean(_topics_of(a, topics) == "bio") >= np.mean(_topics_of(knn, topics) == "bio") - 0.05 > 0.6
    with pytest.raises(impsamp.ConfigError, match="needs the target's text"):
        impsamp.resample(emb, clu, tmp_path / "c", targets=[root / "emb"], config=cfg)
    r = _invoke(["resample", root / "emb", root / "clu", "--target", target, "--docs", 50, "--within", "knn+ngram",
                 "--out", tmp_path / "cli"])
    assert r.exit_code == 0, r.output
    assert Selection.load(tmp_path / "cli").stats["within"] == "knn+ngram"


def test_within_ngram_classifier_same_bytes_purer_than_knn_and_a_large_pool_sampled(stages, tmp_path, monkeypatch):
    import impsamp.resampling.methods as methods

    root, generic, target, topics, emb, clu = stages
    cfg = ResampleConfig(docs=300, within="ngram-classifier", rows_per_shard=150)
    a, b = (impsamp.resample(emb, clu, tmp_path / n, targets=[target], config=cfg) for n in ("a", "b"))
    hashes = [{o.path: o.sha256 for o in s.manifest.outputs if o.path.startswith("data-")} for s in (a, b)]
    assert hashes[0] == hashes[1] and a.stats["within"] == "ngram-classifier"
    knn = impsamp.resample(emb, clu, tmp_path / "knn", targets=[target], config=replace(cfg, within="knn"))
    assert np.mean(_topics_of(a, topics) == "bio") >= np.mean(_topics_of(knn, topics) == "bio") - 0.05 > 0.6
    # a pool past CLASSIFIER_ROWS: fitted on a seeded sample, the rest scored by the fold models' mean
    monkeypatch.setattr(methods, "CLASSIFIER_ROWS", 400)
    c, d = (impsamp.resample(emb, clu, tmp_path / n, targets=[target], config=cfg) for n in ("c", "d"))
    assert c.manifest.inputs["within_fingerprint"] == d.manifest.inputs["within_fingerprint"]
    unkept = impsamp.resample(emb, clu, tmp_path / "unkept", targets=[target], config=cfg, ngram_cache=False)
    assert unkept.manifest.inputs["within_fingerprint"] == c.manifest.inputs["within_fingerprint"]  # fit rows hashed alone
    assert c.manifest.inputs["within_fingerprint"] != a.manifest.inputs["within_fingerprint"]
    assert np.mean(_topics_of(c, topics) == "bio") > 0.6
    with pytest.raises(impsamp.ConfigError, match="--within ngram-classifier needs the target's text"):
        impsamp.resample(emb, clu, tmp_path / "e", targets=[root / "emb"], config=cfg)
    assert not (tmp_path / "e").exists()
    r = _invoke(["resample", root / "emb", root / "clu", "--target", target, "--docs", 50, "--within",
                 "ngram-classifier", "--out", tmp_path / "cli"])
    assert r.exit_code == 0, r.output
    assert Selection.load(tmp_path / "cli").stats["within"] == "ngram-classifier"


def test_within_top_same_bytes_each_unit_once_and_said_on_the_card(stages, tmp_path):
    root, generic, target, topics, emb, clu = stages
    cfg = ResampleConfig(docs=200, within="ngram-classifier", within_top=1.5, rows_per_shard=150)
    a, b = (impsamp.resample(emb, clu, tmp_path / n, targets=[target], config=cfg) for n in ("a", "b"))
    hashes = [{o.path: o.sha256 for o in s.manifest.outputs if o.path.startswith("data-")} for s in (a, b)]
    assert hashes[0] == hashes[1]
    idx = a.to_table().column("doc_index").to_numpy()
    # the top 300 units of the clusters the target weighs, or all of them where those hold fewer
    hist = json.loads((tmp_path / "a" / "histograms.json").read_text())
    weighed = int(np.asarray(hist["generic"])[np.asarray(hist["weights"]) > 0].sum())
    assert len(idx) == 200 == len(np.unique(idx)) and a.stats["eligible_units"] == min(300, weighed)
    card = (tmp_path / "a" / "README.md").read_text()
    assert a.stats["max_repeat"] == 1 and "could be drawn (`--within-top 1.5`), each once" in card
    assert ("went to the nearest clusters" in card) == (a.stats["spilled_units"] > 0)
    plain = impsamp.resample(emb, clu, tmp_path / "plain", targets=[target], config=replace(cfg, within_top=None))
    assert "eligible_units" not in plain.stats
    assert np.mean(_topics_of(a, topics) == "bio") >= np.mean(_topics_of(plain, topics) == "bio") - 0.02
    r = _invoke(["resample", root / "emb", root / "clu", "--target", target, "--docs", 50, "--within-top", "1.5",
                 "--out", tmp_path / "cli"])
    assert r.exit_code == 0, r.output
    assert Selection.load(tmp_path / "cli").stats["eligible_units"] == 75
    r = _invoke(["resample", root / "emb", root / "clu", "--target", target, "--docs", 50, "--within-top", "0.5",
                 "--out", tmp_path / "bad"])
    assert r.exit_code != 0 and "--within-top must be >= 1" in r.output and "Traceback" not in r.output
    r = _invoke(["resample", root / "emb", root / "clu", "--target", root / "emb", "--docs", 50, "--within",
                 "uniform", "--within-top", "2", "--out", tmp_path / "bad"])
    assert r.exit_code != 0 and "--within-top ranks units" in r.output and not (tmp_path / "bad").exists()


def test_ngram_classifier_odds_are_cross_fitted_and_rank_the_target_like_rows_first():
    from impsamp.selectors import ngram_classifier_features, ngram_classifier_odds, ngram_matrix

    rng = np.random.default_rng(3)
    kinds = rng.choice(list(TOPICS), size=300)
    generic = [_doc(rng, t) for t in kinds]
    target = ngram_matrix([_doc(rng, "bio") for _ in range(40)])
    odds, models = ngram_classifier_odds(ngram_matrix(generic), target)
    assert odds.shape == (300,) and np.isfinite(odds).all() and len(models) == 5
    again, _ = ngram_classifier_odds(ngram_matrix(generic), target)
    assert np.array_equal(odds, again)
    assert odds[kinds == "bio"].min() > odds[kinds != "bio"].max()  # the target's topic ranked first
    # cross-fitted: each row scored by the one model that did not see it, not by all of them
    fold = np.random.default_rng(0).permutation(300) % 5
    x = ngram_classifier_features(ngram_matrix(generic))
    assert np.allclose(odds[fold == 2], models[2].decision_function(x[fold == 2]))
    assert not np.allclose(odds[fold == 2], models[0].decision_function(x[fold == 2]))
    # the folds are the run's seed's draw (they were seed 0's whatever --seed said)
    other, other_models = ngram_classifier_odds(ngram_matrix(generic), target, seed=7)
    fold = np.random.default_rng(7).permutation(300) % 5
    assert np.allclose(other[fold == 2], other_models[2].decision_function(x[fold == 2]))
    assert not np.array_equal(other, odds)


def test_ngram_classifier_scores_the_units_not_fitted_on_by_the_fold_models_mean(stages, tmp_path, monkeypatch):
    import impsamp.resampling.methods as methods
    import impsamp.resampling.stage as stage
    import impsamp.selectors as selectors

    root, generic, target, topics, emb, clu = stages
    monkeypatch.setattr(methods, "CLASSIFIER_ROWS", 400)
    seen = {}
    fit_odds, weights = selectors.ngram_classifier_odds, stage.classifier_log_weights
    monkeypatch.setattr(selectors, "ngram_classifier_odds", lambda g, t, **kw: seen.setdefault("fit", fit_odds(g, t, **kw)))
    monkeypatch.setattr(stage, "classifier_log_weights", lambda o, tau: seen.setdefault("odds", o) and weights(o, tau))
    impsamp.resample(emb, clu, tmp_path / "s", targets=[target],
                     config=ResampleConfig(docs=100, within="ngram-classifier", seed=2))
    odds, models = np.concatenate(seen["odds"]), seen["fit"][1]
    texts = [json.loads(line)["text"] for line in generic.read_text().splitlines()]  # units: the documents, in order
    x = selectors.ngram_classifier_features(selectors.ngram_matrix(texts))
    fitted = np.random.default_rng([2, 23]).choice(len(texts), 400, replace=False)
    rest = np.setdiff1d(np.arange(len(texts)), fitted)
    assert odds.shape == (900,) and len(rest) == 500
    assert np.allclose(odds[rest], np.mean([m.decision_function(x[rest]) for m in models], axis=0))
    assert np.array_equal(np.sort(odds[fitted]), np.sort(seen["fit"][0]))  # the fitted units: their cross-fitted odds


def test_the_first_target_hashes_a_large_pool_in_processes_with_the_same_bytes(stages, tmp_path, monkeypatch):
    import impsamp.hardware
    import impsamp.resampling.methods as methods
    import impsamp.scale

    root, generic, target, topics, emb, clu = stages
    monkeypatch.setattr(impsamp.hardware, "cpu_count", lambda: 2)
    calls, run_tasks = [], impsamp.scale.run_tasks
    monkeypatch.setattr(methods, "run_tasks", lambda *a, **k: calls.append(k.get("processes")) or run_tasks(*a, **k))
    cfg = ResampleConfig(docs=200, within="ngram-classifier", rows_per_shard=150)
    monkeypatch.setenv("IMPSAMP_CACHE_DIR", str(tmp_path / "small"))
    impsamp.resample(emb, clu, tmp_path / "small-pool", targets=[target], config=cfg)
    assert calls == []  # 900 units: hashed here, no processes started
    monkeypatch.setenv("IMPSAMP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(methods, "PARALLEL_HASH_UNITS", 500)  # the fixture's 900 units in 5 shards
    first = impsamp.resample(emb, clu, tmp_path / "first", targets=[target], config=cfg)
    assert calls == [2] and len(list((tmp_path / "cache" / "ngram").glob("*/*.npz"))) == len(emb.shard_names)
    plain = impsamp.resample(emb, clu, tmp_path / "plain", targets=[target], config=cfg, ngram_cache=False)
    later = impsamp.resample(emb, clu, tmp_path / "later", targets=[target], config=cfg)
    hashes = [{o.path: o.sha256 for o in s.manifest.outputs if o.path.startswith("data-")} for s in (first, plain, later)]
    assert hashes[0] == hashes[1] == hashes[2] and calls == [2]  # the later target found every shard kept


def test_ngram_classifier_odds_on_a_pool_smaller_than_the_folds():
    from impsamp.selectors import ngram_classifier_odds, ngram_matrix

    target = ngram_matrix(["cells and proteins", "genes in cells"])
    odds, models = ngram_classifier_odds(ngram_matrix(["cells of the body", "stock prices fell", "a football match"]),
                                         target)
    assert odds.shape == (3,) and np.isfinite(odds).all() and len(models) == 3  # one unit held out per fit
    assert ngram_classifier_odds(ngram_matrix(["one unit"]), target)[0].tolist() == [0.0]


@pytest.mark.parametrize("cfg", [ResampleConfig(docs=200, method="ngram", rows_per_shard=150),
                                 ResampleConfig(docs=200, within="knn+ngram", rows_per_shard=150),
                                 ResampleConfig(docs=200, within="ngram-classifier", rows_per_shard=150)],
                         ids=["ngram", "knn+ngram", "ngram-classifier"])
def test_ngram_features_are_kept_for_later_targets_and_give_the_same_bytes(stages, tmp_path, monkeypatch, caplog,
                                                                           cfg):
    import impsamp.selectors

    root, generic, target, topics, emb, clu = stages
    monkeypatch.setenv("IMPSAMP_CACHE_DIR", str(tmp_path / "cache"))

    def data_hashes(name, **kw):
        sel = impsamp.resample(emb, clu, tmp_path / name, targets=[target], config=cfg, **kw)
        return {o.path: o.sha256 for o in sel.manifest.outputs if o.path.startswith("data-")}

    plain = data_hashes("plain", ngram_cache=False)
    assert not (tmp_path / "cache" / "ngram").exists()  # --no-ngram-cache keeps no features outside the run
    assert data_hashes("cold") == plain
    kept = sorted((tmp_path / "cache" / "ngram").glob("*/*.npz"))
    assert [f.stem for f in kept] == list(emb.shard_names)  # one file per embedding shard, nothing else
    real = impsamp.selectors.ngram_matrix
    target_texts = {json.loads(line)["text"] for line in target.read_text().splitlines()}

    def target_only(texts, *a, **k):  # the target's own text may be hashed (the classifier), the pool's not
        if not set(texts) <= target_texts:
            pytest.fail("generic text hashed again")
        return real(texts, *a, **k)

    monkeypatch.setattr(impsamp.selectors, "ngram_matrix", target_only)
    assert data_hashes("warm") == plain  # a later target reads the kept features, not the text
    kept[1].write_bytes(b"PK\x03\x04 not a whole file")  # damaged (or foreign): hashed again
    monkeypatch.setattr(impsamp.selectors, "ngram_matrix", real)
    assert data_hashes("damaged") == plain
    assert np.load(kept[1])["indptr"][0] == 0
    (tmp_path / "not-a-folder").write_text("")  # a cache that cannot be written: a warning, the same selection
    monkeypatch.setenv("IMPSAMP_CACHE_DIR", str(tmp_path / "not-a-folder" / "cache"))
    with caplog.at_level("WARNING", logger="impsamp.resampling.ngram_features"):
        assert data_hashes("unwritable") == plain
    assert "could not keep the n-gram features" in caplog.text


def test_kept_ngram_features_are_the_same_numbers_and_never_another_embeddings(stages, tmp_path, monkeypatch):
    from impsamp.resampling.inputs import open_inputs
    from impsamp.resampling.methods import ngram_unit_log_weights
    from impsamp.resampling.ngram_features import _read, features_folder

    root, generic, target, topics, emb, clu = stages
    monkeypatch.setenv("IMPSAMP_CACHE_DIR", str(tmp_path / "cache"))
    cfg = ResampleConfig(docs=200, method="ngram")
    inputs = open_inputs(emb, clu, cfg)
    plain = ngram_unit_log_weights(None, cfg, [target], inputs, False, cache=False)
    for _ in ("cold", "warm"):  # to the bit, writing the features and reading them back
        kept = ngram_unit_log_weights(None, cfg, [target], inputs, False, cache=True)
        assert all(np.array_equal(a, b) for a, b in zip(plain, kept))
    # the same corpus embedded with other units (windows), or other shards, is kept apart
    other = impsamp.embed(generic, tmp_path / "emb-w", EmbedConfig(model="hashing:64", rows_per_shard=200,
                                                                    windows=True, max_tokens=8))
    assert features_folder(other.manifest) != features_folder(emb.manifest)
    name = emb.shard_names[0]
    path = features_folder(emb.manifest) / f"{name}.npz"
    n = len(inputs.tables.column(name, "row"))
    assert _read(path, n) is not None and _read(path, n + 1) is None  # a file for other units is not read
    monkeypatch.setenv("IMPSAMP_CACHE_DIR", str(tmp_path / "cache2"))
    r = _invoke(["resample", root / "emb", root / "clu", "--target", target, "--docs", 50, "--method", "ngram",
                 "--no-ngram-cache", "--out", tmp_path / "cli"])
    assert r.exit_code == 0 and not (tmp_path / "cache2" / "ngram").exists(), r.output


def test_within_hook_runs_the_users_document_weights_and_refuses_bad_ones(stages, tmp_path):
    root, generic, target, topics, emb, clu = stages
    cfg = ResampleConfig(docs=300, within="tests.weighting_plugins:closeness", max_repeat=1, smoothing=0.01)
    sel = impsamp.resample(emb, clu, tmp_path / "ok", targets=[target], config=cfg)
    assert sel.stats["within"] == "tests.weighting_plugins:closeness" and np.mean(_topics_of(sel, topics) == "bio") > 0.6
    for fn, message in (("negative_document_weights", r"returned 200 weight\(s\) that are not positive"),
                        ("wrong_length_document_weights", r"returned shape \(201,\), expected \(200,\)"),
                        ("complex_document_weights", r"returned ndarray, not numbers \(complex numbers\)"),
                        ("missing", "cannot load it")):
        bad = ResampleConfig(docs=300, within=f"tests.weighting_plugins:{fn}")
        with pytest.raises((impsamp.WeightingError, impsamp.ConfigError), match=message):
            impsamp.resample(emb, clu, tmp_path / fn, targets=[target], config=bad)
        assert not (tmp_path / fn / "manifest.json").exists()
    # a hook that writes into the target's vectors it was given (which the next shard's call would see): refused
    with pytest.raises(impsamp.WeightingError, match="writes_the_target_vectors raised ValueError.*read-only"):
        impsamp.resample(emb, clu, tmp_path / "writes", targets=[target],
                         config=replace(cfg, within="tests.weighting_plugins:writes_the_target_vectors"))
    r = _invoke(["resample", root / "emb", root / "clu", "--target", target, "--docs", 50, "--within",
                 "tests.weighting_plugins:negative_document_weights", "--out", tmp_path / "cli"])
    assert r.exit_code != 0 and "not positive finite" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_other_formats_read_back(stages, tmp_path, fmt):
    root, generic, target, topics, emb, clu = stages
    sel = impsamp.resample(emb, clu, tmp_path / fmt, targets=[target], config=ResampleConfig(docs=50, format=fmt))
    assert sel.to_table().num_rows == 50
    assert sel.to_table().schema.names == SELECTION_SCHEMA.names
    assert all(f.suffix == f".{fmt}" for f in sel.data_files)


def test_a_selection_is_read_from_its_own_text_column_whatever_the_users_field(stages, tmp_path):
    from impsamp.errors import CorpusError
    from impsamp.training.data import data_text_field

    root, generic, target, topics, emb, clu = stages
    sel = impsamp.resample(emb, clu, tmp_path / "sel", targets=[target], config=ResampleConfig(docs=50))
    body = tmp_path / "body.jsonl"
    body.write_text('{"body": "a document of mine"}\n')
    for spec in ([sel.path], [f"{sel.path}/data-*.arrow"], [str(f) for f in sel.data_files]):
        assert data_text_field(spec, "body") == "text", spec  # the folder, a glob into it, its files
    assert data_text_field([body], "body") == "body" and data_text_field([generic], "text") == "text"
    assert data_text_field([sel.path, generic], "text") == "text"  # a 'text' corpus beside it: one field
    with pytest.raises(CorpusError, match=r"--data mixes a selection .* --text-field body"):
        data_text_field([sel.path, body], "body")
    # a selection as one part of a target beside a sample of another field: each part read with its own
    rng = np.random.default_rng(5)
    law = tmp_path / "law.jsonl"
    law.write_text("".join(json.dumps({"body": _doc(rng, "law")}) + "\n" for _ in range(30)))
    cfg = ResampleConfig(docs=60, text_field="body")  # the default --within reads both parts' text
    mixed = impsamp.resample(emb, clu, tmp_path / "mixed", targets=[f"{sel.path}:0.5", f"{law}:0.5"], config=cfg)
    assert [t["documents"] for t in mixed.stats["targets"]] == [50, 30] and mixed.stats["within"] == "ngram-classifier"
    assert impsamp.histogram(sel.path, clu, text_field="body").total == 50
    # and a selection to fine-tune on, beside a --text-field of the user's own (it was read with it, and failed)
    from ._helpers import TRAIN_FLAGS

    r = _invoke(["train", "--data", sel.path, "--finetune", sel.path, "--text-field", "body", "--out", tmp_path / "lm",
                 "--steps", 2, "--finetune-steps", 1, *TRAIN_FLAGS])
    assert r.exit_code == 0, r.output


def test_sigkill_then_resume_gives_identical_files(stages, tmp_path):
    root, generic, target, topics, emb, clu = stages
    args = ["resample", root / "emb", root / "clu", "--target", target, "--docs", 400, "--rows-per-shard", 60,
            "--no-progress"]
    ref = tmp_path / "ref"
    assert _invoke([*args, "--out", ref]).exit_code == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "impsamp", *map(str, args), "--out", str(out)]
    env = {**os.environ, "IMPSAMP_TEST_SLOW_SHARD": "0.3"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "_shards").glob("*.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    with pytest.raises(impsamp.StageError, match="incomplete"):
        Selection.load(out)
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a = {o.path: o.sha256 for o in Selection.load(ref).manifest.outputs if o.path.startswith("data-")}
    b = {o.path: o.sha256 for o in Selection.load(out).manifest.outputs if o.path.startswith("data-")}
    assert a == b and len(a) == 7


def test_a_damaged_spill_file_is_recomputed_on_resume(stages, tmp_path, monkeypatch):
    # Spill files are intermediate and not fsynced; after a machine crash one may be cut short or
    # zeroed while its shard record survived. The resumed run must notice and redo that shard.
    from impsamp.resampling import stage as rs

    root, generic, target, topics, emb, clu = stages
    cfg = ResampleConfig(docs=400, rows_per_shard=60)
    ref = impsamp.resample(emb, clu, tmp_path / "ref", targets=[target], config=cfg)

    def crash(*a, **k):
        raise RuntimeError("machine crash")

    monkeypatch.setattr(rs, "_gather_shard", crash)
    with pytest.raises(RuntimeError, match="machine crash"):
        impsamp.resample(emb, clu, tmp_path / "out", targets=[target], config=cfg)
    monkeypatch.undo()
    spills = sorted((tmp_path / "out" / "_spill").glob("*.arrow"))
    assert len(spills) == 5
    spills[1].write_bytes(spills[1].read_bytes()[:100])              # cut short
    data = spills[3].read_bytes()
    spills[3].write_bytes(bytes(len(data) // 2) + data[len(data) // 2:])  # first half zeroed
    sel = impsamp.resample(emb, clu, tmp_path / "out", targets=[target], config=cfg)
    got = {o.path: o.sha256 for o in sel.manifest.outputs if o.path.startswith("data-")}
    assert got == {o.path: o.sha256 for o in ref.manifest.outputs if o.path.startswith("data-")}


def test_a_resume_whose_weights_changed_is_refused(stages, tmp_path, monkeypatch):
    """The spill files of an interrupted run were routed by its plan: a rerun whose cluster weights (a weighting
    function edited under the same name) or document weights (made inside the run) differ must not use them."""
    from impsamp.resampling import stage as rs

    root, generic, target, topics, emb, clu = stages

    def crash(*a, **k):
        raise RuntimeError("killed")

    def interrupted(out, cfg, **kw):
        with monkeypatch.context() as m:
            m.setattr(rs, "_gather_shard", crash)
            with pytest.raises(RuntimeError, match="killed"):
                impsamp.resample(emb, clu, out, targets=[target], config=cfg, **kw)

    def one_cluster(t, g):
        return (np.arange(len(t.counts)) == int(np.argmax(t.counts))).astype(float)

    def ratio(t, g):
        return t.probs() / np.maximum(g.probs(), 1e-12)

    ratio.__qualname__, ratio.__name__ = one_cluster.__qualname__, one_cluster.__name__  # the same name, other weights
    cfg = ResampleConfig(docs=120, rows_per_shard=60, within="uniform")
    interrupted(tmp_path / "w", cfg, weighting=one_cluster)
    with pytest.raises(impsamp.StageError, match="interrupted 'resample' run with other settings or inputs"):
        impsamp.resample(emb, clu, tmp_path / "w", targets=[target], config=cfg, weighting=ratio)
    sel = impsamp.resample(emb, clu, tmp_path / "w", targets=[target], config=cfg, weighting=one_cluster)
    assert len(set(sel.to_table().column("cluster").to_pylist())) == 1  # its own weights, resumed
    ngram = ResampleConfig(docs=120, rows_per_shard=60, method="ngram")
    interrupted(tmp_path / "n", ngram)
    scorer = rs.DOCUMENT_SCORERS["ngram"]
    monkeypatch.setitem(rs.DOCUMENT_SCORERS, "ngram", lambda *a: [w[::-1] for w in scorer(*a)])
    with pytest.raises(impsamp.StageError, match="planned from other document weights"):
        impsamp.resample(emb, clu, tmp_path / "n", targets=[target], config=ngram)
    monkeypatch.undo()
    resumed = impsamp.resample(emb, clu, tmp_path / "n", targets=[target], config=ngram)
    fresh = impsamp.resample(emb, clu, tmp_path / "n2", targets=[target], config=ngram)
    assert ({o.path: o.sha256 for o in resumed.manifest.outputs if o.path.startswith("data-")}
            == {o.path: o.sha256 for o in fresh.manifest.outputs if o.path.startswith("data-")})


@pytest.mark.parametrize("extra, message", [
    (["--docs", 100000, "--scheme", "topk"], "budget impossible without replacement"),
    (["--docs", 5000, "--max-repeat", 1], "budget impossible with --max-repeat 1"),
    (["--docs", 10, "--scheme", "topk", "--max-repeat", 2], "--scheme topk draws each unit at most once"),
    (["--docs", 0], "--docs must be >= 1"),
    (["--docs", 10, "--tokens", 10], "exactly one budget"),
    (["--docs", 10, "--weighting", "tests.weighting_plugins:negative"], "tests.weighting_plugins:negative"),
    (["--docs", 10, "--weighting", "tests.weighting_plugins:raises"], "raised RuntimeError"),
    (["--docs", 10, "--weighting", "tests.weighting_plugins:all_zero"], "all-zero"),
    (["--docs", 10, "--weighting", "no.such.module:fn"], "cannot load it"),
])
def test_bad_resample_input_is_one_line(stages, tmp_path, extra, message):
    root, generic, target, topics, _, _ = stages
    out = tmp_path / "bad"
    r = _invoke(["resample", root / "emb", root / "clu", "--target", target, "--out", out, *extra])
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], r.output
    assert not (out / "manifest.json").exists()


def test_empty_target_and_missing_target(stages, tmp_path):
    root, generic, target, topics, _, _ = stages
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "  "}\n')
    r = _invoke(["resample", root / "emb", root / "clu", "--target", empty, "--out", tmp_path / "o", "--docs", 5])
    assert r.exit_code == 1 and "no documents" in r.output
    r = _invoke(["resample", root / "emb", root / "clu", "--out", tmp_path / "o", "--docs", 5])
    assert r.exit_code == 1 and "no target given" in r.output


def test_existing_output_needs_overwrite(stages, tmp_path):
    root, generic, target, topics, _, _ = stages
    args = ["resample", root / "emb", root / "clu", "--target", target, "--out", tmp_path / "o", "--docs", 20]
    assert _invoke(args).exit_code == 0
    r = _invoke(args)
    assert r.exit_code == 1 and "--overwrite" in r.output
    assert _invoke([*args, "--overwrite"]).exit_code == 0


def test_target_embedded_with_another_model_is_refused(stages, tmp_path):
    root, generic, target, topics, _, _ = stages
    other = impsamp.embed(target, tmp_path / "t-emb", EmbedConfig(model="hashing:32"))
    r = _invoke(["resample", root / "emb", root / "clu", "--target", other.path, "--out", tmp_path / "o",
                 "--docs", 5])
    assert r.exit_code == 1 and "embedded with" in r.output


def test_changed_corpus_is_refused(stages, tmp_path):
    root, generic, target, topics, _, _ = stages
    g2 = tmp_path / "g.jsonl"
    g2.write_text(generic.read_text())
    emb = impsamp.embed(g2, tmp_path / "emb", EmbedConfig(model="hashing:64"))
    impsamp.cluster(emb, tmp_path / "clu", ClusterConfig(k=3))
    with open(g2, "a") as f:
        f.write(json.dumps({"text": "one more document"}) + "\n")
    r = _invoke(["resample", tmp_path / "emb", tmp_path / "clu", "--target", target, "--out", tmp_path / "o",
                 "--docs", 5])
    assert r.exit_code == 1 and "changed since it was embedded" in r.output


def test_embeddings_of_0_7_10_still_resample(stages, tmp_path):
    """0.7.10 recorded a JSONL file's digest over its size and first and last MiB, and keyed the corpus's
    fingerprint by it: such embeddings still give their corpus, and resample, while the file is unchanged."""
    from impsamp.io import open_corpus
    from impsamp.io.discovery import file_digest

    root, generic, target, topics, _, _ = stages
    g2 = tmp_path / "g.jsonl"
    g2.write_text(generic.read_text())
    impsamp.embed(g2, tmp_path / "emb", EmbedConfig(model="hashing:64"))
    impsamp.cluster(tmp_path / "emb", tmp_path / "clu", ClusterConfig(k=3))
    manifest = tmp_path / "emb" / "manifest.json"
    record = json.loads(manifest.read_text())
    corpus = open_corpus(g2)
    legacy = replace(corpus, files=[replace(corpus.files[0], digest=file_digest(g2, g2.stat().st_size))])
    record["inputs"]["corpus"]["files"][0]["digest"] = legacy.files[0].digest
    record["inputs"]["corpus"]["fingerprint"] = legacy.fingerprint()
    manifest.write_text(json.dumps(record))
    assert impsamp.Embeddings.load(tmp_path / "emb").corpus().fingerprint() == legacy.fingerprint()
    r = _invoke(["resample", tmp_path / "emb", tmp_path / "clu", "--target", target, "--out", tmp_path / "o",
                 "--docs", 5])
    assert r.exit_code == 0, r.output
    g2.write_text(generic.read_text().replace("e", "E", 1))  # same size and rows, first bytes edited
    r = _invoke(["resample", tmp_path / "emb", tmp_path / "clu", "--target", target, "--out", tmp_path / "o2",
                 "--docs", 5])
    assert r.exit_code == 1 and "same size and rows, other content" in r.output


def test_clusters_of_other_embeddings_are_refused(stages, tmp_path):
    root, generic, target, topics, _, _ = stages
    emb = impsamp.embed(target, tmp_path / "emb", EmbedConfig(model="hashing:64"))
    r = _invoke(["resample", tmp_path / "emb", root / "clu", "--target", target, "--out", tmp_path / "o",
                 "--docs", 5])
    assert r.exit_code == 1 and "was not clustered from" in r.output
    assert emb.n == 60
    # the same folder embedded again after the clustering: said so (it read "not clustered from X ... records X")
    clu = impsamp.cluster(emb, tmp_path / "clu", ClusterConfig(k=2, seed=0))
    impsamp.embed(target, tmp_path / "emb", EmbedConfig(model="hashing:32"), overwrite=True)
    r = _invoke(["resample", tmp_path / "emb", clu.path, "--target", target, "--out", tmp_path / "o3", "--docs", 5])
    assert r.exit_code == 1 and "which has been embedded again since" in r.output, r.output


def test_windows_select_text_spans(tmp_path):
    rng = np.random.default_rng(2)
    g = tmp_path / "g.jsonl"
    g.write_text("".join(json.dumps({"text": " ".join([_doc(rng, "bio")] * 6)}) + "\n" for _ in range(30)))
    emb = impsamp.embed(g, tmp_path / "emb", EmbedConfig(model="hashing:32", max_tokens=16, windows=True))
    clu = impsamp.cluster(emb, tmp_path / "clu", ClusterConfig(k=2))
    sel = impsamp.resample(emb, clu, tmp_path / "s", targets=[g], config=ResampleConfig(docs=20, scheme="topk"))
    tab = sel.to_table()
    docs = [json.loads(x)["text"] for x in g.read_text().splitlines()]
    for text, i in zip(tab.column("text").to_pylist(), tab.column("doc_index").to_pylist()):
        assert text in docs[i] and len(text.split()) <= 16
    assert tab.num_rows == 20 and len(set(zip(tab.column("doc_index").to_pylist(),
                                              tab.column("text").to_pylist()))) == 20  # topk: no span twice
    # the card and stats count the documents the windows come from (they counted windows as documents)
    docs_drawn = len(set(tab.column("doc_index").to_pylist()))
    assert docs_drawn < 20 and sel.stats["unique_documents"] == docs_drawn and sel.stats["unique_units"] == 20
    assert f"({docs_drawn:,} distinct documents;" in (tmp_path / "s" / "README.md").read_text()


def test_within_knn_resume_refuses_other_document_weights(stages, tmp_path, monkeypatch):
    """The plan's document weights are part of the run's inputs: an interrupted run is resumed only with the
    same ones (another embedder thread count could change their last bits), never mixed."""
    import impsamp.resampling.stage as stage_mod

    root, generic, target, topics, emb, clu = stages
    cfg = ResampleConfig(docs=200, within="knn")
    ref = impsamp.resample(emb, clu, tmp_path / "ref", targets=[target], config=cfg)

    def crash(*a, **k):
        raise KeyboardInterrupt  # killed after the routing pass

    with monkeypatch.context() as m:
        m.setattr(stage_mod, "_gather_pass", crash)
        with pytest.raises(KeyboardInterrupt):
            impsamp.resample(emb, clu, tmp_path / "a", targets=[target], config=cfg)
    real = stage_mod.within_log_weights
    with monkeypatch.context() as m:
        m.setattr(stage_mod, "within_log_weights", lambda *a: [w + 1e-6 for w in real(*a)])
        with pytest.raises(impsamp.StageError, match="interrupted 'resample' run with other settings"):
            impsamp.resample(emb, clu, tmp_path / "a", targets=[target], config=cfg)
    again = impsamp.resample(emb, clu, tmp_path / "a", targets=[target], config=cfg)
    data = [{o.path: o.sha256 for o in x.manifest.outputs if o.path.startswith("data-")} for x in (ref, again)]
    assert data[0] == data[1] and again.manifest.inputs["within_fingerprint"].startswith("sha256:")
