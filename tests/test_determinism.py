"""Determinism: the same inputs and seed give the same bytes, whatever the process, worker count or resume.

A whole pipeline (embed -> cluster -> resample -> train) is run twice: once in-process, once stage by
stage in fresh processes with another PYTHONHASHSEED and other directory names, and every payload file
is compared byte for byte (train: weights, tokenizer, config, and the logged losses, on CPU). Embedding
is compared across --workers 1, --workers 2 and a run killed with one worker and resumed with two.
Another seed must change the bytes, so the comparisons are not vacuous.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from impsamp.manifest import MANIFEST, SHARD_RECORDS
from tests._helpers import (
    CLUSTER_ARGS,
    EMBED_ARGS,
    ENV,
    RESAMPLE_ARGS,
    TRAIN_ARGS,
    argv,
    assert_clean,
    build_pipeline,
    comparable,
    invoke,
    ok,
    payload,
    run_sub,
    stable_stats,
    write_corpus,
)

STAGES = ("emb", "clu", "sel", "lm")


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    p = build_pipeline(tmp_path_factory.mktemp("first"))
    p["lm"] = p["root"] / "lm"
    ok(invoke(*TRAIN_ARGS(p["sel"], p["lm"], "--keep-checkpoints")))
    return p


def test_each_stage_in_a_fresh_process_gives_identical_bytes(first, tmp_path):
    """Other process, other PYTHONHASHSEED, other paths (the inputs are the same files)."""
    env = {"PYTHONHASHSEED": "12345"}
    d = {k: tmp_path / f"again-{k}" for k in STAGES}
    for args in (EMBED_ARGS(first["generic"], d["emb"]), CLUSTER_ARGS(d["emb"], d["clu"]),
                 RESAMPLE_ARGS(d["emb"], d["clu"], first["target"], d["sel"]), TRAIN_ARGS(d["sel"], d["lm"], "--keep-checkpoints")):
        r = run_sub(*args, env=env)
        assert r.returncode == 0, r.stderr
    compared = 0
    for k in STAGES:
        a, b = comparable(first[k]), comparable(d[k])  # the data card too: it names what, not where
        assert a.keys() == b.keys(), k
        for name in a:
            assert a[name] == b[name], f"{k}/{name} differs between two runs with the same inputs and seed"
        compared += sum(len(v) for v in payload(d[k]).values())
        assert stable_stats(first[k]) == stable_stats(d[k]), k
        assert_clean(d[k])
    print(f"{compared:,} payload bytes compared")  # (shown with -s)
    assert compared > 100_000  # the comparison is not of empty files
    lm_a = json.loads((first["lm"] / MANIFEST).read_text())["outputs"]
    lm_b = json.loads((d["lm"] / MANIFEST).read_text())["outputs"]
    sha_a, sha_b = ({o["path"]: o["sha256"] for o in lm} for lm in (lm_a, lm_b))
    ckpt = [k for k in sha_a if k.startswith("checkpoints/") and k.endswith(".safetensors")]
    assert len(ckpt) == 2 and "model.safetensors" in sha_a  # the kept checkpoint: weights and optimizer
    assert all(sha_a[k] == sha_b[k] for k in [*ckpt, "model.safetensors"])


def test_another_seed_changes_the_bytes(first, tmp_path):
    """The comparisons above can fail: a different seed gives different clusters and selections."""
    ok(invoke(*CLUSTER_ARGS(first["emb"], tmp_path / "clu", "--seed", "1")))
    assert payload(tmp_path / "clu")["centroids.npy"] != payload(first["clu"])["centroids.npy"]
    ok(invoke(*RESAMPLE_ARGS(first["emb"], first["clu"], first["target"], tmp_path / "sel", "--seed", "1")))
    a, b = payload(first["sel"]), payload(tmp_path / "sel")
    assert [a[n] != b[n] for n in sorted(a) if n.startswith("data-")].count(True) >= 1


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory):
    """Two files in two formats, with long documents (windows) and blank ones."""
    root = tmp_path_factory.mktemp("mixed")
    write_corpus(root / "a.jsonl", 90, seed=3)
    docs = [(" ".join(["gene protein"] * (i % 17)) if i % 11 else "  ") for i in range(70)]
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(70)], "text": docs}), root / "b.parquet",
                   row_group_size=16)
    return root


def _embed(corpus, out, *extra):
    return EMBED_ARGS(corpus, out, "--windows", "--max-tokens", "8", "--rows-per-shard", "15", *extra)


def test_embed_workers_and_resume_give_identical_bytes(mixed_corpus, tmp_path):
    one, two, resumed = tmp_path / "w1", tmp_path / "w2", tmp_path / "resumed"
    ok(invoke(*_embed(mixed_corpus, one, "--workers", "1")))
    r = run_sub(*_embed(mixed_corpus, two, "--workers", "2"))
    assert r.returncode == 0, r.stderr
    # killed with one worker after three shards, resumed with two
    proc = subprocess.Popen(argv(*_embed(mixed_corpus, resumed, "--workers", "1")),
                            env={**ENV, "IMPSAMP_TEST_SLOW_SHARD": "0.3"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list((resumed / SHARD_RECORDS).glob("*.json"))) < 3 and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (resumed / MANIFEST).exists()
    r = run_sub(*_embed(mixed_corpus, resumed, "--workers", "2"))
    assert r.returncode == 0, r.stderr
    ref = payload(one)
    assert len(ref) == 2 * 11  # 160 rows / 15 per shard: 11 shards, vectors + table each
    assert payload(two) == ref and payload(resumed) == ref
    assert stable_stats(two) == stable_stats(one) == stable_stats(resumed)
    assert json.loads((resumed / MANIFEST).read_text())["stats"]["resumed_shards"] >= 3
    for out in (one, two, resumed):
        assert_clean(out)


def test_how_a_path_is_typed_changes_no_byte(first, tmp_path, monkeypatch):
    """`bio.jsonl`, `./bio.jsonl` and `/abs/bio.jsonl` are one input: the selection's card, manifest key and
    histogram, and the scores' keys, name it the same (they quoted it as typed)."""
    import impsamp

    monkeypatch.chdir(first["root"])
    ok(invoke(*RESAMPLE_ARGS("./emb", "emb/../clu", "bio.jsonl", tmp_path / "sel")))
    a, b = comparable(first["sel"]), comparable(tmp_path / "sel")
    assert a == b
    card = "\n".join(line.decode() for line in b["README.md"])
    assert "in-domain sample bio.jsonl" in card and str(first["root"]) not in card  # the file, not where it lies
    keys = [json.loads((d / MANIFEST).read_text())["fingerprint"] for d in (first["sel"], tmp_path / "sel")]
    assert keys[0] == keys[1]
    typed = impsamp.histogram("./bio.jsonl", "clu")
    assert typed.source == str(first["target"]) and typed == impsamp.histogram(first["target"], first["clu"])
    scores = [impsamp.evaluate("lm", [f])["per_file"] for f in ("bio.jsonl", first["target"])]
    assert list(scores[0]) == list(scores[1]) == [str(first["target"])] and scores[0] == scores[1]
    shown = ok(invoke("evaluate", "lm", "--eval", first["target"], "--no-progress")).output.splitlines()
    assert shown[1].startswith("bio.jsonl ")  # the table: under the working folder, relative to it


def test_document_weights_and_cluster_scores_do_not_depend_on_the_blas_thread_count():
    """The n-gram and embedding classifiers' log-odds, kNN similarities and the nearest centroids' ids and scores:
    the same bytes on 1 and 2 BLAS threads (OpenBLAS splits long sums by thread; before the fix each differed)."""
    import hashlib
    from importlib import resources

    import faiss  # noqa: F401  (loaded before the limits below, so they reach its BLAS too)
    import numpy as np
    from threadpoolctl import threadpool_limits

    from impsamp import selectors
    from impsamp.clustering.kmeans import nearest_centroid
    from impsamp.resampling.within import knn_similarity

    demo = resources.files("impsamp") / "data" / "demo"
    pool = pq.read_table(str(demo / "pool.parquet"), columns=["text"]).column("text").to_pylist()[:1000]
    sample = pq.read_table(str(demo / "sample" / "database_docs.parquet"), columns=["text"]).column("text")
    g, t = selectors.ngram_matrix(pool), selectors.ngram_matrix(sample.to_pylist()[:100])
    rng = np.random.default_rng(0)
    tvec = rng.normal(size=(300, 384)).astype(np.float32) + 0.1
    gvec = rng.normal(size=(20000, 384)).astype(np.float32)

    unit = gvec[:5000] / np.linalg.norm(gvec[:5000], axis=1, keepdims=True)
    bases = unit[-30:]  # near ties: each base with two copies a few ulps off (faiss's pick went with the threads)
    nudged = [np.nextafter(bases, np.float32(j)) for j in (np.inf, -np.inf)]
    triples = np.stack([bases, *nudged], axis=1).reshape(-1, 384)
    exact = np.stack([np.einsum("ij,j->i", unit.astype(np.float64), c.astype(np.float64)) for c in triples], axis=1)

    class Vectors:
        def shard_vectors(self, name):
            return gvec

    def weights() -> list[str]:
        odds = selectors.ngram_classifier_odds(g, t)[0]
        logit = selectors.classifier_log_weights(selectors.fit_classifier(tvec, gvec[:5000]), gvec)
        similarity = knn_similarity(tvec, Vectors(), ["s0"])[0]
        nearest = np.concatenate(nearest_centroid(gvec[:5000], gvec[-1024:], spherical=True)).tobytes()
        tied = nearest_centroid(unit, triples, spherical=True)[0]
        assert np.array_equal(tied, np.argmax(exact, axis=1))  # the float64 nearest, of equals the lowest id
        return [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
                for a in (odds, logit, similarity, nearest, tied)]

    with threadpool_limits(limits=1, user_api="blas"):
        one = weights()
    with threadpool_limits(limits=2, user_api="blas"):
        two = weights()
    names = ("n-gram", "embedding", "knn", "nearest centroid", "near ties")
    assert dict(zip(names, one)) == dict(zip(names, two))
