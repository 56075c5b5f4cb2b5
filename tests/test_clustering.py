"""`impsamp cluster`: flat and hierarchical k-means over an `embed` directory, resume, bad input."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

pytest.importorskip("faiss")

from impsamp_cli.main import cli  # noqa: E402

from impsamp.clustering import SLOW_SHARDS_ENV, ClusterConfig, Clusters, cluster  # noqa: E402
from impsamp.embedding import EmbedConfig, embed  # noqa: E402
from impsamp.errors import ConfigError, StageError  # noqa: E402
from impsamp.manifest import StageRun, iter_stage_files  # noqa: E402

D = 32
GROUPS = 4


# ----------------------------------------------------------------------------- fixtures


def mixture(n: int, *, d: int = D, groups: int = GROUPS, seed: int = 0, noise: float = 0.15
            ) -> tuple[np.ndarray, np.ndarray]:
    """n L2-normalised float16 vectors around `groups` near-orthogonal directions, and their labels."""
    rng = np.random.default_rng(seed)
    centers = np.linalg.qr(rng.normal(size=(d, d)))[0][:groups]            # (groups, d) orthonormal
    label = rng.integers(0, groups, size=n)
    x = centers[label] + noise * rng.normal(size=(n, d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16), label


def write_embeddings(out: Path, x: np.ndarray, *, n_shards: int = 4, model: str = "synthetic:32",
                     dims: list[int] | None = None, finish: bool = True, overwrite: bool = False) -> Path:
    """An `embed` stage directory holding `x` (float16) split into shards, as `impsamp embed` writes it."""
    identity = {"name": model, "weights_sha256": "0" * 64, "dim": x.shape[1]}
    run = StageRun(out, "embed", config={"model": model, "max_tokens": 128, "windows": False,
                                         "model_identity": identity},
                   inputs={"corpus": {"path": "synthetic"}}, overwrite=overwrite).begin()
    bounds = np.linspace(0, len(x), n_shards + 1).astype(int)
    shards = []
    for i in range(n_shards):
        name, v = f"{i:05d}", x[bounds[i]:bounds[i + 1]]
        if dims is not None:
            v = np.resize(v, (len(v), dims[i]))
        idx = np.arange(bounds[i], bounds[i + 1])
        vt, dt = run.tmp_path(f"vectors-{name}.npy"), run.tmp_path(f"docs-{name}.parquet")
        with open(vt, "wb") as f:
            np.save(f, v.astype(np.float16))
        m = len(v)
        pq.write_table(pa.table({
            "doc_index": idx.astype(np.int64), "id": [f"d{j}" for j in idx], "file": np.zeros(m, np.int32),
            "row": idx.astype(np.int64), "chars": np.full(m, 100, np.int32),
            "tokens": (10 + idx % 7).astype(np.int32), "window": np.zeros(m, np.int32),
            "char_start": np.zeros(m, np.int64), "char_end": np.full(m, 100, np.int64)}), dt)
        run.commit_shard(name, {f"vectors-{name}.npy": vt, f"docs-{name}.parquet": dt})
        shards.append({"name": name, "rows": m})
    if finish:
        run.finish({"dim": x.shape[1], "shards": shards})
    return out


@pytest.fixture(scope="module")
def emb_data(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    x, label = mixture(2000)
    return write_embeddings(tmp_path_factory.mktemp("emb") / "emb", x), x, label


def purity(assign: np.ndarray, label: np.ndarray) -> float:
    """Share of rows whose cluster's majority label is their own."""
    return sum(np.bincount(label[assign == c]).max() for c in np.unique(assign)) / len(label)


def payload(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes()
            for p in iter_stage_files(path) if p.name != "manifest.json"}


# ----------------------------------------------------------------------------- behaviour


def test_flat_recovers_separated_clusters_and_records_stats(tmp_path, emb_data):
    emb, x, label = emb_data
    c = cluster(emb, tmp_path / "c", ClusterConfig(k=32))
    leaves = c.leaf_assign()
    assert c.n_levels == 1 and c.n_leaves == 32 and c.centroids.shape == (32, D)
    assert c.centroids.dtype == np.float32 and leaves.dtype == np.int32
    assert purity(leaves, label) == 1.0
    assert set(np.unique(leaves)) <= set(range(32))
    s = c.manifest.stats
    assert s["train_points"] == 2000 and s["n_leaves"] == 32 and s["levels"] == [32]
    assert 0.9 < s["objective"] <= 1.0 and s["imbalance"] >= 1.0 and s["empty_clusters"] == 0
    assert {"seconds_fit", "seconds_assign"} <= set(s)
    counts = c.counts()
    assert np.array_equal(counts["documents"], np.bincount(leaves, minlength=32))
    assert counts["tokens"].sum() == int((10 + np.arange(2000) % 7).sum())
    rec = c.manifest.inputs["embeddings"]
    assert rec["stage"] == "embed" and rec["model"] == "synthetic:32" and Path(rec["path"]).is_absolute()
    assert c.manifest.config["k"] == 32 and c.embeddings().n == 2000


def test_flat_default_sample_is_k_times_max_points_per_centroid(tmp_path, emb_data):
    emb, _, _ = emb_data
    c = cluster(emb, tmp_path / "c", ClusterConfig(k=4, max_points_per_centroid=100))
    assert c.manifest.stats["train_points"] == 400


def test_a_sample_too_small_for_its_k_is_fitted_with_a_warning(tmp_path, emb_data, caplog):
    """faiss advises 39 points per centroid; a --sample below it fits the noise, and says so (not silently)."""
    emb, _, _ = emb_data
    cluster(emb, tmp_path / "small", ClusterConfig(k=8, sample=10))
    assert "--sample 10 fits 8 clusters on 1.2 points each" in caplog.text
    caplog.clear()
    cluster(emb, tmp_path / "enough", ClusterConfig(k=8, sample=400))
    assert "points each" not in caplog.text
    # the whole corpus too small for its k (the default 1024 on a small corpus was fitted without a word)
    cluster(emb, tmp_path / "many", ClusterConfig(k=200))
    assert "200 clusters over 2,000 vectors: 10.0 each" in caplog.text and "--k 51 or fewer" in caplog.text
    caplog.clear()
    cluster(emb, tmp_path / "fits", ClusterConfig(k=50))
    assert "vectors:" not in caplog.text


def test_hierarchy_leaves_are_dense_and_parents_consistent(tmp_path, emb_data):
    emb, x, label = emb_data
    c = cluster(emb, tmp_path / "h", ClusterConfig(levels=(16, 3)))
    ids = np.concatenate([c.shard_assign(s) for s in c.shard_names])
    assert ids.shape == (2000, 2) and ids.dtype == np.int32
    assert c.levels == [16, 48] and c.n_leaves == 48 and c.centroids.shape == (48, D)
    assert np.array_equal(c.parents[1][ids[:, 1]], ids[:, 0])  # parent of the leaf = level-0 id
    assert np.array_equal(np.unique(c.parents[1]), np.arange(16))  # every node has children
    assert np.all(np.diff(c.parents[1]) >= 0)                   # children contiguous, in parent order
    assert purity(ids[:, 0], label) == 1.0 and purity(ids[:, 1], label) == 1.0
    for j in (0, 1):
        assert np.array_equal(c.counts(j)["documents"], np.bincount(ids[:, j], minlength=c.levels[j]))
    files = {p.name for p in c.path.iterdir()}
    assert {"centroids.npy", "centroids-level0.npy", "centroids-level1.npy", "parents-level1.npy",
            "counts.parquet", "manifest.json"} <= files
    assert np.array_equal(np.load(c.path / "centroids.npy"), np.load(c.path / "centroids-level1.npy"))


def test_small_node_gets_fewer_children(tmp_path):
    # 3 tight groups of 40, 40 and 2 points: a level-0 node holding 2 points gets 2 children, not 5
    rng = np.random.default_rng(1)
    centers = np.eye(D)[:3]
    x = np.repeat(centers, [40, 40, 2], axis=0)
    x = x + 0.05 * rng.normal(size=x.shape) / np.sqrt(D)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb = write_embeddings(tmp_path / "e", x.astype(np.float16), n_shards=2)
    c = cluster(emb, tmp_path / "c", ClusterConfig(levels=(3, 5)))
    children = np.bincount(c.parents[1], minlength=3)
    assert sorted(children.tolist()) == [2, 5, 5] and c.n_leaves == 12
    ids = np.concatenate([c.shard_assign(s) for s in c.shard_names])
    assert np.array_equal(c.parents[1][ids[:, 1]], ids[:, 0])


def test_a_node_of_one_point_gets_one_child_and_every_row_descends_to_it(tmp_path):
    """A single child needs no search (0.7.21's re-scoring once crashed on it: IndexError)."""
    rng = np.random.default_rng(1)
    x = np.repeat(np.eye(D)[:3], [40, 40, 1], axis=0)
    x = x + 0.05 * rng.normal(size=x.shape) / np.sqrt(D)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = cluster(write_embeddings(tmp_path / "e", x.astype(np.float16)), tmp_path / "c", ClusterConfig(levels=(3, 5)))
    assert sorted(np.bincount(c.parents[1], minlength=3).tolist()) == [1, 5, 5]
    ids = np.concatenate([c.shard_assign(s) for s in c.shard_names])
    lone = ids[-1]
    assert np.array_equal(c.parents[1][ids[:, 1]], ids[:, 0]) and (c.parents[1] == lone[0]).sum() == 1
    assert np.array_equal(c.assign(x.astype(np.float32)), ids)


def test_assign_new_vectors_matches_stored_assignments(tmp_path, emb_data):
    emb, x, _ = emb_data
    for cfg in (ClusterConfig(k=8), ClusterConfig(levels=(4, 4))):
        c = cluster(emb, tmp_path / str(cfg.levels), cfg)
        stored = np.concatenate([c.shard_assign(s) for s in c.shard_names])
        assert np.array_equal(c.assign(x), stored)
        assert np.array_equal(c.assign(x[:7].astype(np.float32), batch_size=3), stored[:7])
        assert np.array_equal(c.leaf_assign(), stored[:, -1])


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, emb_data):
    emb, _, _ = emb_data
    cfg = ClusterConfig(levels=(4, 4), seed=3)
    a, b = cluster(emb, tmp_path / "a", cfg), cluster(emb, tmp_path / "b", cfg)
    assert payload(a.path) == payload(b.path)
    assert len(payload(a.path)) == 4 + 4 + 1  # centroids (3) + parents, 4 assign, counts
    other = cluster(emb, tmp_path / "o", ClusterConfig(levels=(4, 4), seed=4))
    assert payload(other.path)["centroids.npy"] != payload(a.path)["centroids.npy"]


def test_resume_after_sigkill_during_assignment_gives_identical_files(tmp_path):
    x, _ = mixture(3000, seed=5)
    emb = write_embeddings(tmp_path / "emb", x, n_shards=6)
    args = [sys.executable, "-m", "impsamp", "cluster", str(emb), "--k", "8", "--no-progress"]
    ref = tmp_path / "ref"
    subprocess.run([*args, "--out", str(ref)], check=True, capture_output=True)
    out = tmp_path / "out"
    proc = subprocess.Popen([*args, "--out", str(out)], env={**os.environ, SLOW_SHARDS_ENV: "0.5"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = out / "_shards"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(records.glob("0*.json"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists() and (records / "fit.json").exists()
    done = len(list(records.glob("0*.json")))
    assert 2 <= done < 6
    fit_inode = (out / "centroids.npy").stat().st_ino
    r = CliRunner().invoke(cli, ["cluster", str(emb), "--out", str(out), "--k", "8"])
    assert r.exit_code == 0, r.output
    assert (out / "centroids.npy").stat().st_ino == fit_inode       # the fit was not redone
    assert payload(out) == payload(ref)
    assert not records.exists() and not list(out.glob(".*tmp*"))


# ----------------------------------------------------------------------------- bad input


def _fails(args: list[str], out: Path, *needles: str) -> str:
    r = CliRunner().invoke(cli, args)
    assert r.exit_code != 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.output, r.output
    for needle in needles:
        assert needle in r.output, r.output
    assert not (out / "manifest.json").exists()
    return r.output


def test_k_larger_than_the_number_of_vectors(tmp_path, emb_data):
    emb, _, _ = emb_data
    out = tmp_path / "c"
    _fails(["cluster", str(emb), "--out", str(out), "--k", "5000"], out, "5,000", "2,000")
    assert not (tmp_path / "c").exists()


def test_levels_product_larger_than_the_number_of_vectors(tmp_path, emb_data):
    emb, _, _ = emb_data
    _fails(["cluster", str(emb), "--out", str(tmp_path / "c"), "--levels", "64,64"], tmp_path / "c",
           "4,096", "2,000")


def test_incomplete_embeddings_dir(tmp_path):
    x, _ = mixture(100)
    emb = write_embeddings(tmp_path / "emb", x, finish=False)
    _fails(["cluster", str(emb), "--out", str(tmp_path / "c"), "--k", "4"], tmp_path / "c", "incomplete")
    done = write_embeddings(tmp_path / "emb2", x)
    (done / "vectors-00002.npy").unlink()
    _fails(["cluster", str(done), "--out", str(tmp_path / "c"), "--k", "4"], tmp_path / "c",
           "vectors-00002.npy")
    _fails(["cluster", str(tmp_path / "nothing"), "--out", str(tmp_path / "c"), "--k", "4"], tmp_path / "c")


def test_embeddings_that_mix_dimensions(tmp_path):
    x, _ = mixture(100)
    emb = write_embeddings(tmp_path / "emb", x, dims=[D, D, 16, D])
    _fails(["cluster", str(emb), "--out", str(tmp_path / "c"), "--k", "4"], tmp_path / "c",
           "00002", "mixes models")


@pytest.mark.parametrize("damage, needle", [("nan", "NaN"), ("scale", "norm 3")])
@pytest.mark.parametrize("sample", ["40", "400"])   # found by the streaming pass / already in the sample
def test_nan_or_unnormalised_vectors(tmp_path, damage, needle, sample):
    x, _ = mixture(400)
    x = x.astype(np.float32)
    if damage == "nan":
        x[350, 3] = np.nan
    else:
        x[350] *= 3.0
    emb = write_embeddings(tmp_path / "emb", x)
    out = _fails(["cluster", str(emb), "--out", str(tmp_path / "c"), "--k", "4", "--sample", sample],
                 tmp_path / "c", needle, "shard 00003, row 50 ")
    assert ("rerun `impsamp embed`" in out) == (damage == "nan")
    assert not (tmp_path / "c").exists()          # a failed fresh run leaves nothing behind


def test_existing_output_needs_overwrite(tmp_path, emb_data):
    emb, _, _ = emb_data
    args = ["cluster", str(emb), "--out", str(tmp_path / "c"), "--k", "4"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = (tmp_path / "c" / "manifest.json").read_bytes()
    _fails(args, tmp_path / "nothing", "--overwrite")
    assert (tmp_path / "c" / "manifest.json").read_bytes() == before
    r = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert r.exit_code == 0 and "4 clusters (flat)" in r.output, r.output


def test_config_errors_name_the_flag(tmp_path, emb_data):
    for kwargs, flag in [({"k": 1}, "--k"), ({"levels": (32, 1)}, "--levels"), ({"sample": 0}, "--sample"),
                         ({"niter": 0}, "--niter"), ({"device": "tpu"}, "--device")]:
        with pytest.raises(ConfigError, match=flag):
            ClusterConfig(**kwargs)
    assert ClusterConfig(levels=[8, 8]).levels == (8, 8)           # TOML lists become tuples
    emb, _, _ = emb_data
    with pytest.raises(ConfigError, match="--sample 3"):
        cluster(emb, tmp_path / "c", ClusterConfig(k=8, sample=3))
    r = CliRunner().invoke(cli, ["cluster", str(emb), "--out", str(tmp_path / "c"), "--k", "8",
                                 "--levels", "2,2"])
    assert r.exit_code == 2 and "cannot be combined" in r.output


def test_assignments_damaged_in_place_are_a_stage_error_naming_the_file(tmp_path, emb_data):
    """An edit that keeps the file's size passes the manifest's size check: ids out of range or a wrong shape
    are still told in one line, not met as an IndexError in a later stage."""
    emb, _, _ = emb_data
    c = cluster(emb, tmp_path / "h", ClusterConfig(levels=(4, 2)))
    name = c.shard_names[0]
    path = c.path / f"assign-{name}.npy"
    good = np.load(path)
    for level, bad in ((1, 8), (0, -1)):  # 8 leaves: ids 0..7 at level 1
        a = good.copy()
        a[3, level] = bad
        np.save(path, a)
        with pytest.raises(StageError, match=rf"assign-{name}.npy holds cluster id {bad} at level {level}, "
                                             rf"outside 0\.\.{c.levels[level] - 1}.*--verify"):
            Clusters.load(c.path).shard_assign(name)
    np.save(path, good[:, :1].repeat(2, axis=0))  # the same size, one column
    with pytest.raises(StageError, match=r"not \(rows, 2\) cluster ids"):
        Clusters.load(c.path).shard_assign(name)
    np.save(path, good)
    assert np.array_equal(Clusters.load(c.path).shard_assign(name), good)


def test_clusters_refuse_rebuilt_embeddings_and_other_stages(tmp_path, emb_data):
    emb, x, _ = emb_data
    with pytest.raises(StageError, match="expected a 'cluster' output"):
        Clusters.load(emb)
    own = write_embeddings(tmp_path / "emb", x)
    c = cluster(own, tmp_path / "c", ClusterConfig(k=4))
    write_embeddings(tmp_path / "emb", x, model="another:32", overwrite=True)  # rebuilt: another fingerprint
    with pytest.raises(StageError, match=re.escape(str(tmp_path / "c"))):
        c.embeddings()
    with pytest.raises(StageError, match="dimension 32"):
        c.assign(np.ones((2, 16), dtype=np.float32) / 4)


def test_clusters_real_embed_output(tmp_path):
    topics = {"bio": "protein gene cell membrane enzyme yeast kinase folding receptor",
              "code": "python rust compiler borrow checker list loop function syntax",
              "law": "court statute contract appellate damages plaintiff ruling breach"}
    rng = random.Random(0)
    rows = [(t, " ".join(rng.choices(topics[t].split(), k=12))) for t in rng.choices(sorted(topics), k=180)]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": text, "topic": t}) + "\n" for t, text in rows))
    emb = embed(corpus, tmp_path / "emb", EmbedConfig(model="hashing:64", rows_per_shard=50))
    c = cluster(emb, tmp_path / "c", ClusterConfig(k=9))
    topic_of_doc = np.unique([t for t, _ in rows], return_inverse=True)[1]
    label = topic_of_doc[emb.table().column("doc_index").to_numpy()]
    assert c.shard_names == emb.shard_names and len(c.leaf_assign()) == emb.n == 180
    assert purity(c.leaf_assign(), label) > 0.95
    assert c.manifest.inputs["embeddings"]["model"] == "hashing:64"
    assert c.embeddings().manifest.fingerprint == emb.manifest.fingerprint
    assert np.array_equal(c.assign(emb.vectors()), np.concatenate([c.shard_assign(s) for s in c.shard_names]))
    assert c.counts()["tokens"].sum() == sum(int(t) for t in emb.table().column("tokens").to_pylist())
