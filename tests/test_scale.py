"""Scale-out: Ray tasks and Slurm-array slices write the same bytes as a plain local run.

One local Ray (2 CPUs) serves the whole module; the hashing embedder keeps it offline and fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import impsamp
from impsamp.clustering import ClusterConfig
from impsamp.embedding import EmbedConfig
from impsamp.errors import ConfigError, StageError
from impsamp.finalizing import finalize
from impsamp.resampling import ResampleConfig
from impsamp.scale import (LOCAL, TEST_CRASH_ENV, Execution, SliceResult, Upstream, gpu_task_cpus, run_ray,
                           run_tasks, task_cpus)

ray = pytest.importorskip("ray")

ROWS, ROWS_PER_SHARD = 480, 60            # 8 embedding shards
EMBED = EmbedConfig(model="hashing:64", rows_per_shard=ROWS_PER_SHARD)
CLUSTER = ClusterConfig(k=8, niter=10)
RESAMPLE = ResampleConfig(docs=200, rows_per_shard=60)   # 4 output shards
RAY = Execution(engine="ray")
CLI = [sys.executable, "-m", "impsamp"]


def payload(path: Path) -> dict[str, str]:
    """sha256 of every file of a stage directory but manifest.json (which holds times), plus the
    manifest's list of outputs (names, sizes, hashes, rows)."""
    files = {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(path.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    manifest = json.loads((path / "manifest.json").read_text())
    files["<outputs>"] = json.dumps(manifest["outputs"], sort_keys=True)
    files["<fingerprint>"] = manifest["fingerprint"]
    return files


def assert_same(a: Path, b: Path) -> None:
    pa_, pb = payload(a), payload(b)
    differ = sorted(k for k in pa_.keys() | pb.keys() if pa_.get(k) != pb.get(k))
    assert not differ, f"{a} and {b} differ in {differ}"


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    demo = impsamp.demo_corpus()
    pq.write_table(pq.read_table(demo.pool).slice(0, ROWS), root / "generic.parquet")
    target = pq.read_table(demo.root / "sample" / "shakespeare.parquet").slice(0, 40)
    pq.write_table(target, root / "target.parquet")
    return root


@pytest.fixture(scope="module")
def local(data):
    """The reference: every stage run locally, in this process."""
    emb = impsamp.embed(data / "generic.parquet", data / "emb", EMBED)
    clu = impsamp.cluster(emb, data / "clu", CLUSTER)
    impsamp.resample(emb, clu, data / "sel", targets=[data / "target.parquet"], config=RESAMPLE, command="x")
    assert len(emb.shard_names) == 8
    return {"emb": data / "emb", "clu": data / "clu", "sel": data / "sel"}


def test_ray_engine_writes_the_same_bytes_as_the_local_engine(ray_cluster, data, local, tmp_path):
    emb = impsamp.embed(data / "generic.parquet", tmp_path / "emb", EMBED, execution=RAY)
    assert_same(tmp_path / "emb", local["emb"])
    # cluster and resample from the same inputs as the reference, so that their inputs match too
    impsamp.cluster(local["emb"], tmp_path / "clu", CLUSTER, execution=RAY)
    assert_same(tmp_path / "clu", local["clu"])
    impsamp.resample(local["emb"], local["clu"], tmp_path / "sel", targets=[data / "target.parquet"],
                     config=RESAMPLE, command="x", execution=RAY)
    assert_same(tmp_path / "sel", local["sel"])
    assert len([p for p in (tmp_path / "sel").glob("data-*.arrow")]) == 4
    assert emb.n == ROWS
    assert ray_cluster.is_initialized()  # a Ray we did not start is left running


def test_the_first_ngram_target_hashes_the_shards_as_ray_tasks(ray_cluster, data, local, tmp_path, monkeypatch):
    import contextlib

    import impsamp.resampling.stage as stage
    import impsamp.scale

    monkeypatch.setenv("IMPSAMP_CACHE_DIR", str(tmp_path / "cache"))  # nothing kept yet
    calls, run_ray, session, opened = [], impsamp.scale.run_ray, stage.engine_session, []

    @contextlib.contextmanager
    def watched(ex):  # the stage's one session: open while every pass runs
        with session(ex):
            opened.append(True)
            yield
            opened.append(False)

    monkeypatch.setattr(stage, "engine_session", watched)
    monkeypatch.setattr(impsamp.scale, "run_ray", lambda ex, fn, tasks, *a, **k:
                        calls.append((fn.__name__, len(tasks))) or run_ray(ex, fn, tasks, *a, **k)
                        if opened[-1:] == [True] else pytest.fail(f"{fn.__name__} ran outside the stage's session"))
    sel = impsamp.resample(local["emb"], local["clu"], tmp_path / "sel", targets=[data / "target.parquet"],
                           config=RESAMPLE, command="x", execution=RAY)
    assert sel.manifest.config["within"] == "ngram-classifier"  # the default for a corpus target
    assert opened == [True, False]
    assert calls[0] == ("_hash_shard", 8)  # however small the pool: every shard the cache lacked, on Ray
    assert len(list((tmp_path / "cache" / "ngram").glob("*/*.npz"))) == 8
    assert_same(tmp_path / "sel", local["sel"])
    calls.clear()
    impsamp.resample(local["emb"], local["clu"], tmp_path / "again", targets=[data / "target.parquet"],
                     config=RESAMPLE, command="x", execution=RAY)
    assert [name for name, _ in calls] == ["_route_shard", "_gather_shard"]  # the next target reads the cache


def test_a_stage_session_starts_ray_once_for_all_its_passes(monkeypatch):
    import impsamp.scale

    class FakeRay:  # stands in for the ray module: counts the starts and stops
        def __init__(self):
            self.up, self.events = False, []

        def is_initialized(self):
            return self.up

        def init(self, **kwargs):
            self.up = True
            self.events.append("init")
            self.kwargs = kwargs

        def shutdown(self):
            self.up = False
            self.events.append("shutdown")

    fake = FakeRay()
    monkeypatch.setattr(impsamp.scale, "_ray", lambda: fake)
    with impsamp.scale.engine_session(RAY):
        for _ in range(3):  # the passes
            with impsamp.scale.ray_session(RAY):
                assert fake.up
    assert fake.events == ["init", "shutdown"]
    with impsamp.scale.engine_session(LOCAL):
        pass
    assert fake.events == ["init", "shutdown"]  # the local engine does not touch Ray
    # a Ray of its own even where `ray start` runs one on this machine (ray.init() alone would join that one,
    # and refuse the num_cpus given)
    assert fake.kwargs["address"] == "local" and fake.kwargs["num_cpus"] >= 1
    import socket  # under `ray job submit` (RAY_ADDRESS set), the job's cluster

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{s.getsockname()[1]}")
        with impsamp.scale.ray_session(RAY):
            assert fake.kwargs["address"] == f"127.0.0.1:{s.getsockname()[1]}" and "num_cpus" not in fake.kwargs


def test_a_ray_address_that_nothing_answers_at_is_one_line_at_once(tmp_path):
    import socket
    import time

    from impsamp.scale import check_reachable

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ConfigError, match="nothing answers there"):
            check_reachable(address)
    assert time.monotonic() - started < 15  # each tried again for up to 5 s (a head node starting)
    with socket.socket() as s:  # a listening one passes; `auto` is Ray's to resolve
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_reachable(f"127.0.0.1:{s.getsockname()[1]}")
        check_reachable("auto")
    r = subprocess.run([sys.executable, "-m", "impsamp", "cluster", tmp_path / "emb", "--out", tmp_path / "x",
                        "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"], capture_output=True, text=True)
    assert r.returncode != 0 and "nothing answers there" in r.stderr and not (tmp_path / "x").exists(), r.stderr


def test_a_ray_worker_killed_mid_stage_is_retried_and_the_output_is_the_same(ray_cluster, data, local,
                                                                              tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    monkeypatch.setenv(TEST_CRASH_ENV, str(marker))     # the first task os._exit()s its worker
    impsamp.embed(data / "generic.parquet", tmp_path / "emb", EMBED, execution=RAY)
    assert marker.exists(), "no task crashed: the test hook did not fire"
    assert_same(tmp_path / "emb", local["emb"])
    marker.unlink()
    impsamp.cluster(local["emb"], tmp_path / "clu", CLUSTER, execution=RAY)
    assert marker.exists()
    assert_same(tmp_path / "clu", local["clu"])
    residue = [p.name for p in tmp_path.rglob("*") if ".tmp-" in p.name or p.name in ("_shards", "_run.json")]
    assert residue == []


@pytest.mark.parametrize("cpus", [1, 2])
def test_a_ray_task_runs_on_the_cpus_it_was_given(ray_cluster, cpus):
    got = {}
    run_ray(RAY, task_cpus, [("a", (-1,))], got.__setitem__, num_cpus=cpus)
    assert got == {"a": cpus}  # inside the task: what Ray assigned, not the default
    assert task_cpus(7) == 7  # the driver is no task


def test_a_gpu_task_gets_its_gpus_share_of_the_cpus():
    # Ray accepts declared GPUs without CUDA; a fresh process, as this module's Ray has none
    code = ("import ray; ray.init(num_cpus=6, num_gpus=2, include_dashboard=False, log_to_driver=False, "
            "logging_level='ERROR'); from impsamp.scale import Execution, run_ray, task_cpus; got = {}; "
            "run_ray(Execution(engine='ray'), task_cpus, [('a', (-1,))], got.__setitem__, num_cpus=None, "
            "num_gpus=1); print(got['a'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == "3"


@pytest.mark.parametrize(("nodes", "gpus", "cpus"), [
    ([{"CPU": 16, "GPU": 1}], 1, 16),                          # one GPU: the whole node tokenizes for it
    ([{"CPU": 16, "GPU": 1}], 0.5, 8),                         # two replicas share the GPU and the cores
    ([{"CPU": 64, "GPU": 8}, {"CPU": 16, "GPU": 1}], 1, 8),    # the smallest share fits on every node
    ([{"CPU": 96}, {"CPU": 32, "GPU": 4}], 1, 8),              # CPU-only nodes do not count
    ([{"CPU": 2, "GPU": 1}, {"CPU": 64, "GPU": 4}], 2, 32),    # nor nodes with too few GPUs for the task
    ([{"CPU": 12, "GPU": 8}], 1, 1),                           # at least 1
    ([{"CPU": 8}], 1, 1),                                      # no GPU node up yet
])
def test_gpu_tasks_ask_for_their_gpus_share_of_the_node(nodes, gpus, cpus):
    assert gpu_task_cpus(nodes, gpus) == cpus


def _cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if check:
        assert r.returncode == 0, r.stderr
    return r


def _slices(*args) -> None:
    """Both slices of a 2-slice array, as two concurrent processes (like two Slurm array tasks)."""
    procs = [subprocess.Popen([*CLI, *map(str, args), "--num-shards", "2", "--shard-index", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "slice" in out and "finalize" in out


def test_two_slices_then_finalize_equal_a_single_run(data, local, tmp_path):
    emb = tmp_path / "emb"
    _slices("embed", data / "generic.parquet", "--out", emb, "--model", "hashing:64",
            "--rows-per-shard", ROWS_PER_SHARD, "--no-progress")
    assert not (emb / "manifest.json").exists()          # slices never write the manifest
    assert len(list(emb.glob("vectors-*.npy"))) == 8
    r = _cli("finalize", emb)
    assert "manifest.json written" in r.stdout
    assert_same(emb, local["emb"])

    clu = tmp_path / "clu"
    _slices("cluster", local["emb"], "--out", clu, "--k", 8, "--niter", 10, "--no-progress")
    assert not (clu / "manifest.json").exists() and not (clu / "counts.parquet").exists()
    _cli("finalize", clu)
    assert_same(clu, local["clu"])
    assert "already complete" in _cli("finalize", clu).stdout   # idempotent: a retried finalize job is fine


def test_finalize_refuses_missing_shards_and_a_plain_rerun_completes(data, local, tmp_path):
    out = tmp_path / "emb"
    res = impsamp.embed(data / "generic.parquet", out, EMBED,
                        execution=Execution(num_shards=4, shard_index=1))
    assert isinstance(res, SliceResult) and (res.committed, res.done, res.total) == (2, 2, 8)
    r = _cli("finalize", out, check=False)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "6 of 8 shard(s) are missing" in r.stderr
    with pytest.raises(StageError, match="6 of 8"):
        finalize(out)
    assert not (out / "manifest.json").exists()
    impsamp.embed(data / "generic.parquet", out, EMBED)    # resume: the 6 others, then the manifest
    assert_same(out, local["emb"])


def test_slices_of_a_corpus_given_as_a_glob_finalize(data, local, tmp_path):
    """`finalize` reopens the corpus from the slices' record: a glob recorded there (it guards the output) must
    come back with it, or the run's key differs and the complete slices read as "other settings"."""
    out = tmp_path / "emb"
    for i in (0, 1):
        impsamp.embed(str(data / "generic*.parquet"), out, EMBED, execution=Execution(num_shards=2, shard_index=i))
    finalize(out)
    assert json.loads((out / "manifest.json").read_text())["inputs"]["corpus"]["globs"] == [str(data / "generic*.parquet")]
    assert impsamp.Embeddings.load(out).vectors().tolist() == impsamp.Embeddings.load(local["emb"]).vectors().tolist()


def test_resample_refuses_slices_in_one_line(data, local, tmp_path):
    r = _cli("resample", local["emb"], local["clu"], "--target", data / "target.parquet", "--docs", 10,
             "--out", tmp_path / "sel", "--num-shards", 2, "--shard-index", 0, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "--num-shards" in r.stderr and "global shuffle" in r.stderr
    assert not (tmp_path / "sel").exists()


@pytest.mark.parametrize("kwargs, flag", [
    ({"engine": "spark"}, "--engine"),
    ({"num_shards": 2}, "--shard-index"),
    ({"num_shards": 2, "shard_index": 2}, "--shard-index"),
    ({"num_shards": 0, "shard_index": 0}, "--num-shards"),
    ({"ray_address": "auto"}, "--ray-address"),
    ({"engine": "ray", "gpus_per_worker": 0}, "--gpus-per-worker"),
])
def test_bad_execution_flags_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        Execution(**kwargs)


def test_a_finalize_killed_after_its_manifest_is_tidied_by_the_next_finalize(local, tmp_path):
    import shutil

    from impsamp.outdir import MARK, REPLACED, RUN_RECORD, SHARD_RECORDS

    out = tmp_path / "clu"
    shutil.copytree(local["clu"], out)
    payload = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / RUN_RECORD).write_text("{}")  # what a kill in its cleanup leaves: bookkeeping, the replaced output
    (out / SHARD_RECORDS).mkdir()
    (out / SHARD_RECORDS / "shard-00000.json").write_text("{}")
    (out / REPLACED).mkdir()
    (out / REPLACED / MARK).write_text("")
    (out / REPLACED / "centroids.npy").write_bytes(b"old")
    assert "already complete" in _cli("finalize", out).stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == payload


def test_finalize_refuses_what_is_not_a_sliced_stage(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(StageError, match="finalize"):
        finalize(tmp_path / "x")


@pytest.mark.parametrize("same_fit", [True, False])
def test_a_cluster_slice_whose_fit_lost_the_race_reuses_or_refuses(local, tmp_path, monkeypatch, same_fit):
    """Two slices fitting at once: the one that commits second checks that its centroids are the bytes
    already committed (reusing them) and refuses, one line, when they are not."""
    import numpy as np

    from impsamp.clustering import stage as clustering

    first = tmp_path / "first"
    impsamp.cluster(local["emb"], first, CLUSTER, execution=Execution(num_shards=2, shard_index=0))
    out = tmp_path / "second"
    real_fit = clustering.fit_tree

    def fit_while_another_slice_commits(x, cfg, gpu, progress):
        tree, info = real_fit(x, cfg, gpu, progress)
        # meanwhile, the other slice committed its fit into the same directory
        (out / "centroids.npy").write_bytes((first / "centroids.npy").read_bytes())
        (out / "_shards" / "fit.json").write_bytes((first / "_shards" / "fit.json").read_bytes())
        if not same_fit:
            tree.centroids[-1] = tree.centroids[-1] + np.float32(1e-3)
        return tree, info

    monkeypatch.setattr(clustering, "fit_tree", fit_while_another_slice_commits)
    ex = Execution(num_shards=2, shard_index=1)
    if same_fit:
        res = impsamp.cluster(local["emb"], out, CLUSTER, execution=ex)
        assert res.committed == 4
        assert [p for p in out.iterdir() if ".tmp-" in p.name] == []
        ref = local["clu"]
        for p in out.glob("assign-*.npy"):
            assert p.read_bytes() == (ref / p.name).read_bytes()
    else:
        with pytest.raises(StageError, match="other centroids") as e:
            impsamp.cluster(local["emb"], out, CLUSTER, execution=ex)
        assert "\n" not in str(e.value)
        assert (out / "_shards" / "fit.json").exists()   # a slice never deletes what others committed
        assert list(out.glob("assign-*.npy")) == []


def test_a_cluster_slice_waits_for_the_fit_another_slice_is_making_and_reuses_it(local, tmp_path, monkeypatch):
    """The slices of one run fit once: a slice that finds the fit claimed waits for it (it used to fit too, and
    on a GPU, whose fits differ, be refused) and counts only what it committed."""
    import threading

    from impsamp.clustering import stage as clustering
    from impsamp.clustering.config import FIT_RECORD
    from impsamp.guards import claim

    first, out = tmp_path / "first", tmp_path / "second"
    impsamp.cluster(local["emb"], first, CLUSTER, execution=Execution(num_shards=2, shard_index=0))
    out.mkdir()
    taken, fitted = threading.Event(), []

    def the_other_slice():  # fits (here: copies a fit) under the claim, after a while
        with claim(out, FIT_RECORD):
            taken.set()
            time.sleep(1.0)
            (out / "_shards").mkdir(exist_ok=True)
            for name in ("centroids.npy", "_shards/fit.json"):
                (out / name).write_bytes((first / name).read_bytes())

    holder = threading.Thread(target=the_other_slice)
    holder.start()
    taken.wait(10)
    monkeypatch.setattr(clustering, "fit_tree", lambda *a: fitted.append(1))
    res = impsamp.cluster(local["emb"], out, CLUSTER, execution=Execution(num_shards=2, shard_index=1))
    holder.join(10)
    assert fitted == [] and (res.committed, res.done, res.total) == (4, 5, 9)  # 4 of 8 shards; not the fit
    assert not list(out.glob(".claim-*"))


# ----------------------------------------------------------------------------- tokenizing tasks


def _with_own_cpus(upstream_cpus: int) -> tuple[int, int]:
    return upstream_cpus, task_cpus(-1)


def test_an_upstream_argument_runs_as_its_own_task_first(ray_cluster):
    got = {}
    tasks = [(i, (Upstream(task_cpus, (-1,), num_cpus=1),)) for i in range(12)]  # more than the window (8)
    run_ray(RAY, _with_own_cpus, tasks, got.__setitem__, num_cpus=2)
    assert got == {i: (1, 2) for i in range(12)}  # the upstream task had its CPU, the task its two
    here = {}
    run_tasks(LOCAL, _with_own_cpus, tasks[:1], here.__setitem__)  # outside Ray: computed in place
    assert here == {0: (-1, -1)}


def _dies() -> None:
    os._exit(1)


def test_an_upstream_task_that_keeps_dying_is_one_stage_error(ray_cluster):
    with pytest.raises(StageError, match=r"the Ray task of shard a failed after \d+ retries"):
        run_ray(RAY, _with_own_cpus, [("a", (Upstream(_dies, ()),))], lambda key, result: None)


@pytest.mark.slow
def test_tokenizing_tasks_feed_the_model_the_same_bytes(ray_cluster, data, tmp_path, monkeypatch):
    """--tokenize-tasks: each shard read and tokenized in a CPU-only task, its token ids handed to the
    task that runs the real model: the same files as a local run (windows: several units a document)."""
    src = tmp_path / "docs.parquet"
    pq.write_table(pq.read_table(data / "generic.parquet").slice(0, 90), src)
    cfg = EmbedConfig(max_tokens=32, windows=True, rows_per_shard=15, device="cpu", precision="float32")
    impsamp.embed(src, tmp_path / "local", cfg)
    from impsamp.embedding import stage

    fed_runs, run_fed = [], stage._run_fed
    monkeypatch.setattr(stage, "_run_fed", lambda *a: (fed_runs.append(a[0]), run_fed(*a))[1])
    fed = impsamp.embed(src, tmp_path / "fed", cfg, execution=Execution(engine="ray", tokenize_tasks=True))
    assert len(fed_runs) == 1  # the tokenizing-task path ran, not the plain Ray one (same bytes either way)
    assert_same(tmp_path / "fed", tmp_path / "local")
    assert len(fed.shard_names) == 6 and fed.n > 90


def test_tokenizing_tasks_need_ray_and_a_transformer_model(ray_cluster, data, tmp_path):
    with pytest.raises(ConfigError, match="--tokenize-tasks needs --engine ray"):
        Execution(tokenize_tasks=True)
    with pytest.raises(ConfigError, match="needs a transformer model; hashing"):
        impsamp.embed(data / "generic.parquet", tmp_path / "emb", EMBED,
                      execution=Execution(engine="ray", tokenize_tasks=True))
