"""Safety: no pickle on disk, safe loaders only, plugins imported only when named, writes stay inside the
output directory, and no network connection when offline."""

from __future__ import annotations

import ast
import json
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from impsamp.manifest import MANIFEST
from tests._helpers import (CLUSTER_ARGS, EMBED_ARGS, RESAMPLE_ARGS, TRAIN_ARGS, build_pipeline, invoke, ok,
                            one_line_error, write_corpus)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "impsamp").rglob("*.py"), *(ROOT / "cli").rglob("*.py")])

# ----------------------------------------------------------------------------- the code


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cloudpickle.load", "cloudpickle.loads",
              "dill.load", "dill.loads", "joblib.load", "marshal.load", "marshal.loads", "shelve.open",
              "pd.read_pickle", "pandas.read_pickle", "torch.save", "pickle.dump"}
# In memory only: an embedder object the parent process pickled for its own spawned workers (never a file).
ALLOWED = {("impsamp/embedding/stage.py", "_worker_embedder", "pickle.loads")}


def unsafe_calls(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).as_posix() if ROOT in path.parents else path.name
    found = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call):
                called = _dotted(child.func)
                bad = None
                if called in UNPICKLERS or called.endswith((".read_pickle", ".to_pickle")):
                    bad = called
                elif called.endswith("torch.load") and _kw(child, "weights_only") is not True:
                    bad = "torch.load without weights_only=True"
                elif called in ("np.load", "numpy.load") and _kw(child, "allow_pickle") not in (None, False):
                    bad = "np.load(allow_pickle=True)"
                if bad and (rel, func, called) not in ALLOWED:
                    found.append(f"{rel}:{child.lineno} in {func}: {bad}")
            visit(child, name)

    visit(ast.parse(path.read_text(), str(path)), "<module>")
    return found


def test_the_code_never_unpickles_and_loads_torch_files_safely():
    assert len(SOURCES) > 20
    problems = [p for f in SOURCES for p in unsafe_calls(f)]
    assert problems == []
    # torch files are safetensors: no torch.load at all (or only with weights_only=True, checked above)
    text = "\n".join(f.read_text() for f in SOURCES)
    assert "allow_pickle=True" not in text and "weights_only=False" not in text


def test_the_scan_finds_an_unsafe_load(tmp_path):
    """The scanner bites: each unsafe form is reported."""
    bad = tmp_path / "probe.py"
    bad.write_text("import pickle, numpy as np, torch\n"
                   "def f(p):\n    pickle.load(open(p, 'rb'))\n    np.load(p, allow_pickle=True)\n"
                   "    torch.load(p)\n    torch.load(p, weights_only=True)\n")
    found = unsafe_calls(bad)
    assert [x.split(": ", 1)[1] for x in found] == ["pickle.load", "np.load(allow_pickle=True)",
                                                    "torch.load without weights_only=True"]


# ----------------------------------------------------------------------------- the files and their paths

HOSTILE_IDS = ["../../escaped", "/etc/passwd", "a/../../../b", "..", "C:\\Windows\\x", "~/x", "$HOME/x",
               "\x00nul", "ok"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A pipeline over documents with path-like ids, every stage run; the tree before and after."""
    root = tmp_path_factory.mktemp("hostile")
    work = root / "work"
    corpus = write_corpus(work / "generic.jsonl", 240)
    lines = corpus.read_text().splitlines()
    for i, hid in enumerate(HOSTILE_IDS * 3):
        rec = json.loads(lines[i * 7])
        rec["id"] = hid
        lines[i * 7] = json.dumps(rec)
    corpus.write_text("\n".join(lines) + "\n")
    target = write_corpus(work / "bio.jsonl", 30, seed=1, topics=("bio",), ids=False)
    before = {p for p in root.rglob("*")}
    outs = {k: work / k for k in ("emb", "clu", "sel", "sel_jsonl", "lm")}
    ok(invoke(*EMBED_ARGS(corpus, outs["emb"])))
    ok(invoke(*CLUSTER_ARGS(outs["emb"], outs["clu"])))
    ok(invoke(*RESAMPLE_ARGS(outs["emb"], outs["clu"], target, outs["sel"])))
    ok(invoke(*RESAMPLE_ARGS(outs["emb"], outs["clu"], target, outs["sel_jsonl"], "--format", "jsonl")))
    ok(invoke(*TRAIN_ARGS(outs["sel"], outs["lm"], "--keep-checkpoints")))
    return root, before, outs


def test_ids_that_look_like_paths_write_nothing_outside_the_outputs(hostile):
    root, before, outs = hostile
    new = {p for p in root.rglob("*")} - before
    stray = [p for p in new if not any(p == o or o in p.parents for o in outs.values())]
    assert stray == []
    ids = set(pq.read_table(outs["emb"] / "docs-00000.parquet").column("id").to_pylist())
    assert {"../../escaped", "/etc/passwd", ".."} <= ids  # kept as data, never used as a path
    assert all(p.resolve().is_relative_to(o.resolve()) for o in outs.values() for p in o.rglob("*"))


SAFE_SUFFIXES = {".npy", ".parquet", ".arrow", ".json", ".jsonl", ".md", ".png", ".safetensors"}


def test_no_written_file_is_a_pickle(hostile):
    _, _, outs = hostile
    files = [p for o in outs.values() for p in o.rglob("*") if p.is_file()]
    assert any(p.name == "optimizer.safetensors" for p in files)  # the kept checkpoint is scanned too
    kinds = set()
    for p in files:
        assert p.suffix in SAFE_SUFFIXES, p
        head = p.read_bytes()[:4]
        assert not (head[:1] == b"\x80" and 2 <= head[1] <= 5), f"{p} starts like a pickle"
        assert head != b"PK\x03\x04", f"{p} is a zip (torch.save's format)"
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            assert not arr.dtype.hasobject, p
        elif p.suffix == ".safetensors":
            from safetensors.numpy import load_file

            assert load_file(str(p))
        elif p.suffix == ".parquet":
            assert b"pickle" not in json.dumps(str(pq.read_schema(p).metadata)).encode()
        elif p.suffix == ".arrow":
            with pa.memory_map(str(p)) as src:
                pa.ipc.open_stream(src).read_all()
        elif p.suffix in (".json", ".jsonl"):
            for line in ([p.read_text()] if p.suffix == ".json" else p.read_text().splitlines()):
                json.loads(line)
        kinds.add(p.suffix)
    assert {".npy", ".parquet", ".arrow", ".json", ".safetensors"} <= kinds


def test_names_from_an_input_manifest_cannot_lead_writes_outside(hostile, tmp_path):
    """A tampered `embed` manifest whose shard name climbs out: cluster must refuse, not write there."""
    _, _, outs = hostile
    a = tmp_path / "a"
    emb = shutil.copytree(outs["emb"], a / "emb")
    evil = "x/../../escaped"  # cluster would write out/assign-x/../../escaped.npy, outside out
    m = json.loads((emb / MANIFEST).read_text())
    m["stats"]["shards"][0]["name"] = evil
    (emb / MANIFEST).write_text(json.dumps(m))
    for kind, suffix in (("vectors", "npy"), ("docs", "parquet")):  # the files the names point to
        (emb / f"{kind}-x").mkdir()
        shutil.copy(emb / f"{kind}-00000.{suffix}", a / f"escaped.{suffix}")
    out = tmp_path / "b" / "clu"
    line = one_line_error(invoke(*CLUSTER_ARGS(emb, out)))
    assert "escaped" in line, line
    assert not (tmp_path / "b" / "escaped.npy").exists()
    assert [p for p in tmp_path.rglob("*escaped*") if p.parent != a] == []


def test_a_run_record_pointing_outside_is_not_followed_on_resume(tmp_path):
    """finish() deletes intermediate files named in the shard records: never one outside the directory."""
    from impsamp.errors import StageError
    from impsamp.manifest import SHARD_RECORDS, StageRun

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    run = StageRun(tmp_path / "out", "resample", config={}, inputs={}).begin()
    tmp = run.tmp_path("_spill/a.arrow")
    tmp.write_bytes(b"spill")
    run.commit_shard("spill-00000", {"_spill/a.arrow": tmp}, intermediate=True)
    rec_file = tmp_path / "out" / SHARD_RECORDS / "spill-00000.json"
    rec = json.loads(rec_file.read_text())
    rec["files"][0]["path"] = "../victim.txt"
    rec_file.write_text(json.dumps(rec))
    with pytest.raises(StageError, match="would lead outside"):
        StageRun(tmp_path / "out", "resample", config={}, inputs={}).begin().finish(stats={})
    assert victim.read_text() == "keep me" and not (tmp_path / "out" / MANIFEST).exists()
    for name in ("../x.bin", "/abs/x.bin", "a/../../x.bin"):
        with pytest.raises(StageError, match="would lead outside"):
            run.tmp_path(name)


def test_a_manifest_listing_files_outside_its_directory_is_refused(hostile, tmp_path):
    _, _, outs = hostile
    clu = shutil.copytree(outs["clu"], tmp_path / "clu")
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"x" * 10)
    m = json.loads((clu / MANIFEST).read_text())
    m["outputs"].append({"path": "../secret.bin", "bytes": 10, "sha256": "0" * 64, "rows": None})
    (clu / MANIFEST).write_text(json.dumps(m))
    line = one_line_error(invoke(*RESAMPLE_ARGS(outs["emb"], clu, outs["emb"], tmp_path / "sel")))
    assert "../secret.bin" in line and "--overwrite" in line, line
    assert outside.read_bytes() == b"x" * 10


# ----------------------------------------------------------------------------- plugins


PLUGIN = '''
import os, pathlib
pathlib.Path(os.environ["PLUGIN_MARKER"]).write_text("imported")
import numpy as np
def flat(target, generic):
    return np.ones(generic.k)
'''


def test_a_custom_weighting_is_imported_only_when_named(hostile, tmp_path, monkeypatch):
    _, _, outs = hostile
    marker = tmp_path / "imported"
    (tmp_path / "plugin_side_effect.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PLUGIN_MARKER", str(marker))
    target = outs["emb"].parent / "bio.jsonl"
    (tmp_path / "cfg.toml").write_text('[cluster]\nk = 4\n[train]\nsteps = 1\n')
    ok(invoke("--help"))
    ok(invoke("resample", "--help"))
    ok(invoke(*RESAMPLE_ARGS(outs["emb"], outs["clu"], target, tmp_path / "s1", "--config",
                             tmp_path / "cfg.toml")))
    ok(invoke(*RESAMPLE_ARGS(outs["emb"], outs["clu"], target, tmp_path / "s2", "--weighting", "uniform")))
    assert not marker.exists() and "plugin_side_effect" not in sys.modules
    ok(invoke(*RESAMPLE_ARGS(outs["emb"], outs["clu"], target, tmp_path / "s3", "--weighting",
                             "plugin_side_effect:flat")))
    assert marker.read_text() == "imported"
    sys.modules.pop("plugin_side_effect", None)


# ----------------------------------------------------------------------------- the network


@pytest.fixture
def no_network(monkeypatch):
    """Every way out to the network raises, and is recorded."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return attempts


def test_offline_no_stage_opens_a_connection(no_network, tmp_path):
    p = build_pipeline(tmp_path, n=120)  # embed, cluster, resample in-process
    ok(invoke(*TRAIN_ARGS(p["sel"], tmp_path / "lm", "--steps", "2")))
    ok(invoke("evaluate", tmp_path / "lm", "--eval", p["target"], "--device", "cpu"))
    ok(invoke("info", p["sel"]))
    line = one_line_error(invoke("embed", p["generic"], "--out", tmp_path / "e2", "--model",
                                 "no-such-org/no-such-model"))
    assert "no-such-org/no-such-model" in line and "HF_HUB_OFFLINE" in line, line
    assert no_network == []


@pytest.mark.slow
def test_offline_the_default_model_loads_from_its_package(no_network):
    from impsamp.embedding import DEFAULT_MODEL, EmbedConfig, load_embedder

    emb = load_embedder(EmbedConfig(device="cpu"))
    assert emb.name == DEFAULT_MODEL and emb.dim == 384
    v = emb.embed_texts(["protein folding", "contract law"]).vectors
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-3)
    assert no_network == []


def test_a_corpus_file_written_while_a_stage_reads_it_is_refused_at_the_end(tmp_path, monkeypatch):
    """A review: the corpus edited in place (same size and inode) while a resample read it went into a selection
    marked complete, its manifest recording the first version; and so for an embedding."""
    import impsamp
    import impsamp.resampling.stage as stage
    from impsamp.errors import CorpusError
    from impsamp.resampling import ResampleConfig

    p = build_pipeline(tmp_path, n=120)
    route = stage._route_pass

    def route_then_edit(*args, **kwargs):
        route(*args, **kwargs)
        raw = p["generic"].read_bytes()
        p["generic"].write_bytes(raw.replace(b"e", b"E", 1))  # the same size, in place

    monkeypatch.setattr(stage, "_route_pass", route_then_edit)
    with pytest.raises(CorpusError, match="generic.jsonl was written while this run read it"):
        impsamp.resample(p["emb"], p["clu"], tmp_path / "sel2", targets=[p["target"]], config=ResampleConfig(docs=30))
    assert not (tmp_path / "sel2" / MANIFEST).exists()
    import impsamp.embedding.stage as embedding

    tasks = embedding.run_tasks

    def embed_then_edit(*args, **kwargs):
        tasks(*args, **kwargs)
        p["target"].write_bytes(p["target"].read_bytes().replace(b"e", b"E", 1))

    monkeypatch.setattr(embedding, "run_tasks", embed_then_edit)
    r = invoke(*EMBED_ARGS(p["target"], tmp_path / "temb"))
    assert r.exit_code != 0 and "bio.jsonl was written while this run read it" in r.output, r.output
    assert not (tmp_path / "temb" / MANIFEST).exists()
