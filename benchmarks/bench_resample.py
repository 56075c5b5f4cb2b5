"""Benchmark `impsamp resample`: throughput against plain pyarrow, peak memory, per-target cost vs DSIR.

    .venv/bin/python benchmarks/bench_resample.py                 # all parts; writes benchmarks/results/resample.md
    .venv/bin/python benchmarks/bench_resample.py --gb 0.25       # a smaller replicated corpus
    .venv/bin/python benchmarks/bench_resample.py --only pertarget
    .venv/bin/python benchmarks/bench_resample.py --keep          # keep the generated corpus and its embeddings

What is measured (every timed run in its own subprocess, page cache warm, peak RSS from ru_maxrss):

1. throughput: the bundled pool (4,800 documents, 5.9 MB of text) written N times as Parquet files with
   distinct ids until the text reaches --gb, embedded with the hashing embedder (`hashing:64`,
   rows_per_shard 20,000: its cost is not measured) and clustered with k=64. One
   `impsamp.resample(..., ResampleConfig(docs=25% of the rows, scheme="match"))` toward an in-domain
   sample, against a plain pyarrow pass over the same files (`ParquetFile.iter_batches` of the text
   column) that writes the same number of rows as an Arrow IPC stream. Both throughputs count the
   corpus rows (and text MB) read per second of wall time.
2. memory: impsamp's peak RSS at 1x (the --gb corpus) and 4x its size (skip with --no-4x).
3. per-target cost, once embeddings and clusters exist: one `impsamp.resample` toward a target given
   as text (so the target is embedded with the real model, all-MiniLM-L6-v2, model load included)
   over the bundled pool, against DSIR (`data_selection.HashedNgramDSIR`: fit, importance weights and
   resample) selecting the same number of documents from the same pool written as JSONL.
   Then once more on 10 and 100 copies of the pool (--pertarget-scales), the copies 'embedded' by
   replicating the pool's real-model vectors (`PrecomputedEmbedder`), to show how both costs grow.

The generated corpora live under benchmarks/.cache/resample/ and are deleted at the end (--keep keeps them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402  (one machine description for every benchmark)

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "resample"
RESULTS = HERE / "results" / "resample.md"
REAL_EMB_SOURCE = Path("/tmp/e2e/real-emb")   # reused when present (same model and settings)


# ----------------------------------------------------------------------------- shared helpers


def cache_dir() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    ignore = CACHE.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return CACHE


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def load_avg() -> str:
    m = re.search(r"load average: (.*)$", uptime())
    return m.group(1) if m else "?"


def versions() -> str:
    """Package versions from their metadata (no import: importing torch would grow this driver's RSS,
    which every child's ru_maxrss inherits)."""
    from importlib import metadata

    out = []
    for dist in ("numpy", "pyarrow", "faiss-cpu", "torch", "sentence-transformers", "data-selection"):
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    return ", ".join(out)


def update_section(name: str, body: str) -> None:
    """Replace (or append) the part of resample.md between this section's markers."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Resample benchmarks\n\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def real_embeddings() -> Path:
    """The bundled pool embedded with the real model (all-MiniLM-L6-v2, max_tokens 128) the way `compare`'s
    `--backend auto` does on this machine (ONNX int8 without AMX, torch with it), cached."""
    import impsamp
    from impsamp.embedding.loading import backend_label, embed_backend
    from impsamp.embedding import EmbedConfig

    backend, quantize = embed_backend("auto")
    out = cache_dir() / f"real-emb-{backend_label((backend, quantize))}"
    if (out / "manifest.json").exists():
        return out
    if (REAL_EMB_SOURCE / "manifest.json").exists():
        man = json.loads((REAL_EMB_SOURCE / "manifest.json").read_text())
        cfg = man.get("config", {})
        if cfg.get("max_tokens") == 128 and "MiniLM-L6" in cfg.get("model", "") and \
                (cfg.get("backend"), cfg.get("quantize")) == (backend, quantize):
            shutil.copytree(REAL_EMB_SOURCE, out)
            try:
                impsamp.Embeddings.load(out).corpus()
                print(f"real embeddings: copied from {REAL_EMB_SOURCE}")
                return out
            except Exception as e:  # noqa: BLE001
                print(f"real embeddings: the copy of {REAL_EMB_SOURCE} does not open ({e}); embedding again")
                shutil.rmtree(out)
    t0 = time.perf_counter()
    impsamp.embed(impsamp.demo_corpus().pool, out, EmbedConfig(max_tokens=128, backend=backend, quantize=quantize),
                  overwrite=True)
    print(f"real embeddings: embedded the pool in {time.perf_counter() - t0:.1f} s")
    return out


def real_clusters(k: int, seed: int = 0) -> Path:
    import impsamp
    from impsamp.clustering import ClusterConfig

    emb = real_embeddings()
    out = cache_dir() / f"real-clu{k}-s{seed}"
    if (out / "manifest.json").exists():
        try:
            clu = impsamp.Clusters.load(out)
            if clu.manifest.inputs.get("embeddings", {}).get("fingerprint") == \
                    impsamp.Embeddings.load(emb).manifest.fingerprint:
                return out
        except Exception:  # noqa: BLE001
            pass
    impsamp.cluster(emb, out, ClusterConfig(k=k, seed=seed), overwrite=True)
    return out


def run_child(args: list[str], timeout: float = 1800) -> dict:
    """Run this script in a worker mode in a fresh process; it prints one JSON line last."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def vmhwm_mib() -> float | None:
    """Peak RSS of this process's own address space (/proc/self/status VmHWM).

    Unlike ru_maxrss it does not inherit the parent's high-water mark through fork/vfork + exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------- the replicated corpus


class MemoEmbedder:
    """The hashing embedder, remembering each distinct text's unit (the corpus is N copies of one pool).

    Same identity, same vectors, token counts and spans as `load_embedder(EmbedConfig(model="hashing:64"))`:
    only the work on repeated texts is skipped, since embedding is not what is measured here.
    """

    def __init__(self, inner):
        self.inner = inner
        self.name, self.dim, self.identity = inner.name, inner.dim, inner.identity
        self.memo: dict[str, tuple] = {}

    def embed_texts(self, texts):
        from impsamp.embedding import EmbeddedBatch

        new = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if new:
            b = self.inner.embed_texts(new)
            assert len(b.text_index) == len(new), "one unit per text expected (no windows)"
            for j, t in enumerate(new):
                self.memo[t] = (b.vectors[j], b.tokens[j], b.char_start[j], b.char_end[j])
        rows = [self.memo[t] for t in texts]
        n = len(texts)
        return EmbeddedBatch(np.stack([r[0] for r in rows]).astype(np.float32), np.arange(n, dtype=np.int64),
                             np.zeros(n, np.int32), np.asarray([r[1] for r in rows], np.int32),
                             np.asarray([r[2] for r in rows], np.int64), np.asarray([r[3] for r in rows], np.int64))


class PrecomputedEmbedder:
    """The real model's units for the pool's texts, read back from its embed output (no model run).

    Same identity as the model that made `emb_dir`, so a corpus of pool copies "embedded" with it is
    what the model would give (the stored float16 vectors, token counts and spans); resample still
    embeds each target with the real model. Raises on a text the pool does not hold.
    """

    def __init__(self, emb_dir: Path):
        import impsamp

        emb = impsamp.Embeddings.load(emb_dir)
        self.identity = emb.model_info
        self.name, self.dim = self.identity["name"], emb.dim
        texts = {}
        for b in emb.corpus().read():
            texts.update(zip(b.column("doc_index").to_pylist(), b.column("text").to_pylist()))
        self.memo: dict[str, tuple] = {}
        for name in emb.shard_names:
            t, v = emb.shard_table(name), np.asarray(emb.shard_vectors(name), np.float32)
            if (t.column("window").to_numpy() != 0).any():
                raise ValueError("windowed embeddings are not supported here")
            for j, (d, tok, cs, ce) in enumerate(zip(t.column("doc_index").to_pylist(), t.column("tokens").to_pylist(),
                                                      t.column("char_start").to_pylist(),
                                                      t.column("char_end").to_pylist())):
                self.memo[texts[d]] = (v[j], tok, cs, ce)

    def embed_texts(self, texts):
        return MemoEmbedder.embed_texts(self, texts)


def make_corpus(folder: Path, copies: int, copies_per_file: int) -> tuple[list[Path], int, int]:
    """`copies` copies of the pool's (id, text), ids prefixed with the copy number; (files, rows, text bytes)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    import impsamp

    pool = pq.read_table(impsamp.demo_corpus().pool, columns=["id", "text"])
    text_bytes = int(pc.sum(pc.binary_length(pool.column("text"))).as_py())
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for f0 in range(0, copies, copies_per_file):
        path = folder / f"part-{f0 // copies_per_file:05d}.parquet"
        files.append(path)
        if path.exists():
            continue
        parts = []
        for c in range(f0, min(copies, f0 + copies_per_file)):
            ids = pc.binary_join_element_wise(pa.scalar(f"c{c:05d}"), pool.column("id"), "/")
            parts.append(pa.table({"id": ids, "text": pool.column("text")}))
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.concat_tables(parts), tmp, row_group_size=10_000)
        tmp.replace(path)
    return files, copies * pool.num_rows, copies * text_bytes


def prepare(folder: Path, copies: int, copies_per_file: int, k: int, real: bool = False) -> dict:
    """Corpus files + embeddings + k-means clusters of `copies` copies of the pool (cached).

    Hashing embedder (`hashing:64`, rows_per_shard 20,000), or with `real` the pool's real-model
    embedding replicated (`PrecomputedEmbedder`, max_tokens 128, rows_per_shard 20,000).
    """
    import impsamp
    from impsamp.clustering import ClusterConfig
    from impsamp.embedding import EmbedConfig, load_embedder

    t0 = time.perf_counter()
    files, rows, text_bytes = make_corpus(folder / "data", copies, copies_per_file)
    t_data = time.perf_counter() - t0
    emb_dir, clu_dir = folder / "emb", folder / f"clu{k}"
    t0 = time.perf_counter()
    if not (emb_dir / "manifest.json").exists():
        if real:
            cfg = EmbedConfig(max_tokens=128, rows_per_shard=20_000)
            embedder = PrecomputedEmbedder(real_embeddings())
        else:
            cfg = EmbedConfig(model="hashing:64", rows_per_shard=20_000)
            embedder = MemoEmbedder(load_embedder(cfg))
        impsamp.embed([str(f) for f in files], emb_dir, cfg, embedder=embedder, overwrite=True)
    t_emb = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not (clu_dir / "manifest.json").exists():
        impsamp.cluster(emb_dir, clu_dir, ClusterConfig(k=k, seed=0), overwrite=True)
    t_clu = time.perf_counter() - t0
    on_disk = sum(f.stat().st_size for f in files)
    print(f"  {copies} copies: {rows:,} rows, {text_bytes / 1e6:,.0f} MB text, {on_disk / 1e6:,.0f} MB Parquet in "
          f"{len(files)} files; data {t_data:.0f} s, embed {t_emb:.0f} s, cluster {t_clu:.0f} s", file=sys.stderr,
          flush=True)
    return {"files": [str(f) for f in files], "rows": rows, "text_bytes": text_bytes, "parquet_bytes": on_disk,
            "emb": str(emb_dir), "clu": str(clu_dir), "copies": copies, "prep_s": {"data": t_data, "embed": t_emb,
                                                                                    "cluster": t_clu}}


def warm(files: list[str]) -> None:
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


# ----------------------------------------------------------------------------- worker modes (subprocesses)


def worker_impsamp(a: argparse.Namespace) -> dict:
    import impsamp
    import impsamp.histograms as hist_mod
    import impsamp.resampling.stage as stage_mod
    from impsamp.embedding import embed_texts
    from impsamp.resampling import ResampleConfig
    from impsamp.scale import Execution

    # time the target's embedding inside the call (imports, model load, forward passes): a wrapper
    # around `embed_like` where the resampler and `histogram` look it up; the library is not changed
    spent = [0.0]
    inner = hist_mod.embed_like

    def timed_embed_like(*args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    hist_mod.embed_like = stage_mod.embed_like = timed_embed_like
    cfg = ResampleConfig(docs=a.docs, scheme=a.scheme, method=a.method, seed=0,
                         **({"within": a.within} if a.method == "importance" and a.scheme == "match" else {}))
    rss0 = maxrss_mib()
    t0 = time.perf_counter()
    sel = impsamp.resample(a.emb, a.clu, a.out, targets=[a.target], config=cfg, overwrite=True,
                           execution=Execution(engine=a.engine))  # ray: a local Ray, started in the call
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out_bytes = sum(f.stat().st_size for f in Path(a.out).rglob("*") if f.is_file())
    # the target's own documents: the same texts through the embedder once more, now loaded (after the
    # clock); the fixed per-target overhead is the rest of the target's embedding time
    embedder = impsamp.Embeddings.load(a.emb).embedder()
    texts = list(impsamp.open_corpus(a.target).iter_texts())
    t1 = time.perf_counter()
    embed_texts(texts, embedder)
    docs_s = time.perf_counter() - t1
    return {"wall_s": wall, "within": sel.stats.get("within"), "target_embed_s": spent[0], "target_docs_s": docs_s,
            "overhead_s": spent[0] - docs_s, "cpu_s": ru.ru_utime + ru.ru_stime,
            "maxrss_mib": ru.ru_maxrss / 1024,
            "vmhwm_mib": vmhwm_mib(), "rss_before_mib": rss0, "rows_out": sel.stats["rows"], "unique": sel.stats["unique_documents"],
            "out_bytes": out_bytes}


def worker_baseline(a: argparse.Namespace) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = json.loads(Path(a.files).read_text())
    rss0 = maxrss_mib()
    t0 = time.perf_counter()
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    chosen = np.sort(np.random.default_rng(0).choice(total, size=a.docs, replace=False))
    schema = pa.schema([("text", pa.string())])
    row = written = 0
    with pa.OSFile(a.out, "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
        for f in files:
            for b in pq.ParquetFile(f).iter_batches(columns=["text"], batch_size=10_000):
                lo, hi = np.searchsorted(chosen, [row, row + b.num_rows])
                if hi > lo:
                    w.write_batch(b.take(pa.array(chosen[lo:hi] - row)))
                    written += int(hi - lo)
                row += b.num_rows
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_mib": ru.ru_maxrss / 1024,
            "vmhwm_mib": vmhwm_mib(), "rss_before_mib": rss0, "rows_out": written, "out_bytes": Path(a.out).stat().st_size}


def worker_dsir(a: argparse.Namespace) -> dict:
    """Per-target DSIR: fit on target + raw, importance weights over the raw pool, resample."""
    t_imp = time.perf_counter()
    from data_selection import HashedNgramDSIR

    np.random.seed(0)
    t0 = time.perf_counter()
    d = HashedNgramDSIR([a.raw], [a.target], cache_dir=str(Path(a.out) / "cache"), num_proc=a.num_proc,
                        min_example_length=a.min_len)
    d.fit_importance_estimator(num_tokens_to_fit="all")
    t_fit = time.perf_counter()
    d.compute_importance_weights()
    t_w = time.perf_counter()
    d.resample(out_dir=str(Path(a.out) / "sel"), num_to_sample=a.docs, cache_dir=str(Path(a.out) / "rcache"))
    t1 = time.perf_counter()
    rows = sum(1 for f in (Path(a.out) / "sel").glob("*.jsonl") for _ in open(f))
    return {"wall_s": t1 - t0, "import_s": t0 - t_imp, "fit_s": t_fit - t0, "weights_s": t_w - t_fit,
            "resample_s": t1 - t_w, "maxrss_mib": maxrss_mib(), "vmhwm_mib": vmhwm_mib(), "rows_out": rows}


# ----------------------------------------------------------------------------- part 1+2: throughput and memory


def fmt_rate(rows: int, mb: float, s: float) -> str:
    return f"{rows / s:,.0f} rows/s, {mb / s:,.1f} MB/s"


def throughput(a: argparse.Namespace, log: list[str]) -> str:
    import impsamp

    root = cache_dir() / "big"
    pool_rows = 4800
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pool = pq.read_table(impsamp.demo_corpus().pool, columns=["text"])
    text_per_copy = int(pc.sum(pc.binary_length(pool.column("text"))).as_py())
    copies1 = math.ceil(a.gb * 1e9 / text_per_copy / a.copies_per_file) * a.copies_per_file
    copies4 = 4 * copies1
    target = str(impsamp.demo_corpus().sample(a.target))
    log.append(f"- throughput: load average at start {load_avg()}")
    print(f"preparing the replicated corpora ({copies1} and {copies4} copies) ...", flush=True)
    # in subprocesses, so that this driver stays small: a child's ru_maxrss starts from its parent's
    # high-water mark (fork + exec keeps it), which would hide the resample's own peak
    big = run_child(["--worker", "prepare", "--out", str(root / f"x{copies1}"), "--copies", str(copies1),
                     "--copies-per-file", str(a.copies_per_file), "--k", str(a.k)])
    quad = None
    if not a.no_4x:
        quad = run_child(["--worker", "prepare", "--out", str(root / f"x{copies4}"), "--copies", str(copies4),
                          "--copies-per-file", str(a.copies_per_file), "--k", str(a.k)])
    print(f"  driver peak RSS before the timed runs: {maxrss_mib():,.0f} MiB", flush=True)
    runs = []

    def one(kind: str, corpus: dict, rep: int) -> dict:
        docs = int(round(a.fraction * corpus["rows"]))
        out = root / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        if kind == "impsamp":
            args = ["--worker", "impsamp", "--emb", corpus["emb"], "--clu", corpus["clu"], "--out", str(out / "sel"),
                    "--docs", str(docs), "--target", target, "--scheme", "match",
                    "--within", a.throughput_within]
        else:
            files_json = out / "files.json"
            files_json.write_text(json.dumps(corpus["files"]))
            args = ["--worker", "baseline", "--files", str(files_json), "--out", str(out / "sel.arrow"),
                    "--docs", str(docs)]
        la0 = load_avg()
        r = run_child(args)
        r.update(kind=kind, copies=corpus["copies"], rows=corpus["rows"], text_bytes=corpus["text_bytes"], rep=rep,
                 load_start=la0, load_end=load_avg())
        shutil.rmtree(out, ignore_errors=True)
        print(f"  {kind:8s} {corpus['copies']:4d} copies rep {rep}: {r['wall_s']:7.1f} s wall, "
              f"{r['cpu_s']:7.1f} s cpu, peak RSS {r['maxrss_mib']:,.0f} MiB (VmHWM {r['vmhwm_mib']:,.0f}), "
              f"{r['rows_out']:,} rows out "
              f"(load {la0} -> {r['load_end']})", flush=True)
        runs.append(r)
        return r

    warm(big["files"])
    for rep in range(a.repeats):   # interleaved, so both sides see the same background load
        one("baseline", big, rep)
        one("impsamp", big, rep)
    if quad is not None:
        warm(quad["files"])
        for rep in range(a.repeats):
            one("baseline", quad, rep)
            one("impsamp", quad, rep)
    log.append(f"- throughput: load average at end {load_avg()}")

    def best(kind: str, copies: int) -> dict:
        return min((r for r in runs if r["kind"] == kind and r["copies"] == copies), key=lambda r: r["wall_s"])

    b, i = best("baseline", copies1), best("impsamp", copies1)
    def peak(kind: str, copies: int, key: str) -> float:
        return max(r[key] for r in runs if r["kind"] == kind and r["copies"] == copies)

    def cpu_ratio(copies: int) -> float:
        return (min(r["cpu_s"] for r in runs if r["kind"] == "baseline" and r["copies"] == copies)
                / min(r["cpu_s"] for r in runs if r["kind"] == "impsamp" and r["copies"] == copies))

    mb = big["text_bytes"] / 1e6
    ratio = b["wall_s"] / i["wall_s"]
    n_shards = len(json.loads((Path(big["emb"]) / "manifest.json").read_text())["stats"]["shards"])
    lines = [
        "### 1. Throughput: resample vs a plain pyarrow pass", "",
        f"Corpus: the bundled pool written {copies1} times ({big['rows']:,} rows, {mb:,.0f} MB of text, "
        f"{big['parquet_bytes'] / 1e6:,.0f} MB of Parquet (snappy) in {len(big['files'])} files of "
        f"{a.copies_per_file * pool_rows:,} rows, row groups of 10,000, ids `cNNNNN/<pool id>`), embedded with "
        f"`hashing:64` (rows_per_shard 20,000: {n_shards} embedding shards) and clustered with k={a.k} (seed 0). "
        f"Selection: {a.fraction:.0%} of the rows ({int(round(a.fraction * big['rows'])):,} documents), `--scheme match "
        f"--within {a.throughput_within}`, "
        f"target `{a.target}` (its in-domain sample, embedded with the same hashing model inside the run), "
        "output format arrow (the default, 100,000 rows per output shard). Baseline: "
        "`ParquetFile.iter_batches(columns=['text'], batch_size=10_000)` over the same files, `take` of the same "
        "number of rows (uniformly chosen, without replacement), written as one Arrow IPC stream. "
        f"{a.repeats} interleaved runs of each (best reported); every run in a fresh process; page cache warm. "
        "Throughput = corpus rows (text MB) read per second of wall time of the call (imports before the clock).", "",
        "| run | corpus | wall s | CPU s | rows/s | MB/s | rows written | bytes written | peak RSS MiB (ru_maxrss / VmHWM) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: (r["copies"], r["kind"], r["rep"])):
        lines.append(f"| {r['kind']} (rep {r['rep']}) | {'1x' if r['copies'] == copies1 else '4x'} | {r['wall_s']:.1f} | "
                     f"{r['cpu_s']:.1f} | {r['rows'] / r['wall_s']:,.0f} | {r['text_bytes'] / 1e6 / r['wall_s']:,.1f} | "
                     f"{r['rows_out']:,} | {r['out_bytes'] / 1e6:,.0f} MB | {r['maxrss_mib']:,.0f} / {r['vmhwm_mib']:,.0f} |")
    verdict = "met" if ratio >= 0.7 else "**missed**"
    lines += [
        "",
        f"- plain pyarrow: {fmt_rate(big['rows'], mb, b['wall_s'])} (best run {b['wall_s']:.1f} s)",
        f"- impsamp resample: {fmt_rate(big['rows'], mb, i['wall_s'])} (best run {i['wall_s']:.1f} s)",
        f"- ratio impsamp / plain: **{ratio:.3f}x** (target >= 0.7x: {verdict})",
        f"- CPU-time ratio (least CPU s of the plain runs / least of the impsamp runs, steadier than wall time on "
        f"a shared machine): {cpu_ratio(copies1):.3f}x at 1x"
        + (f", {cpu_ratio(copies4):.3f}x at 4x" if quad is not None else ""),
    ]
    if quad is not None:
        b4, i4 = best("baseline", copies4), best("impsamp", copies4)
        rss1, rss4 = peak("impsamp", copies1, "maxrss_mib"), peak("impsamp", copies4, "maxrss_mib")
        hwm1, hwm4 = peak("impsamp", copies1, "vmhwm_mib"), peak("impsamp", copies4, "vmhwm_mib")
        brss1, brss4 = peak("baseline", copies1, "maxrss_mib"), peak("baseline", copies4, "maxrss_mib")
        rss_ratio = rss4 / rss1
        lines += [
            f"- at 4x ({quad['text_bytes'] / 1e6:,.0f} MB of text): plain {fmt_rate(quad['rows'], quad['text_bytes'] / 1e6, b4['wall_s'])}, "
            f"impsamp {fmt_rate(quad['rows'], quad['text_bytes'] / 1e6, i4['wall_s'])}, ratio {b4['wall_s'] / i4['wall_s']:.3f}x",
            "",
            "### 2. Peak memory of resample at 1x and 4x", "",
            f"1x = the throughput corpus ({copies1} copies, {big['rows']:,} rows, {mb:,.0f} MB of text); 4x = {copies4} "
            f"copies ({quad['rows']:,} rows, {quad['text_bytes'] / 1e6:,.0f} MB of text, {len(quad['files'])} files), "
            "embedded and clustered the same way; same k, fraction (25%), target and scheme. Peak RSS is `ru_maxrss` of "
            "the run's subprocess (Python, numpy, pyarrow and matplotlib imports included), cross-checked with "
            "`VmHWM` of /proc/self/status (the child's own address space: ru_maxrss also carries the parent's "
            f"high-water mark through fork + exec, here the driver's {maxrss_mib():,.0f} MiB, below every child's).", "",
            "| corpus | rows | impsamp wall s (best) | impsamp peak RSS MiB (max of runs) | VmHWM MiB | plain pyarrow peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|",
            f"| 1x | {big['rows']:,} | {i['wall_s']:.1f} | {rss1:,.0f} | {hwm1:,.0f} | {brss1:,.0f} |",
            f"| 4x | {quad['rows']:,} | {i4['wall_s']:.1f} | {rss4:,.0f} | {hwm4:,.0f} | {brss4:,.0f} |",
            "",
            f"- 4x / 1x peak RSS: **{rss_ratio:.2f}x** (VmHWM: {hwm4 / hwm1:.2f}x; target <= 1.3x: "
            f"{'met' if rss_ratio <= 1.3 else '**missed**'}); growth {(rss4 - rss1) / (quad['rows'] - big['rows']) * 2**20:,.0f} "
            "bytes per extra corpus row",
        ]
    lines += ["", "Preparation (not measured): " + "; ".join(
        f"{c['copies']} copies: data {c['prep_s']['data']:.0f} s, embed {c['prep_s']['embed']:.0f} s (hashing embedder, "
        f"each distinct text hashed once), cluster {c['prep_s']['cluster']:.0f} s" for c in (big, quad) if c), "",
        "Load average (1, 5, 15 min) at the start and end of each run:", ""]
    for r in runs:
        lines.append(f"- {r['kind']} {'1x' if r['copies'] == copies1 else '4x'} rep {r['rep']}: {r['load_start']} -> {r['load_end']}")
    (cache_dir() / "throughput.json").write_text(json.dumps(runs, indent=1))
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
        print(f"deleted {root} (pass --keep to keep it)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- part 3: per-target cost vs DSIR


def pool_jsonl(copies: int = 1, folder: Path | None = None) -> Path:
    """The pool as JSONL (DSIR's input); with copies > 1, that many copies with ids `cNNNNN/<id>`."""
    import pyarrow.parquet as pq

    import impsamp

    out = (folder or cache_dir()) / ("pool.jsonl" if copies == 1 else f"pool-x{copies}.jsonl")
    if not out.exists():
        recs = pq.read_table(impsamp.demo_corpus().pool).to_pylist()
        with open(out.with_suffix(".tmp"), "w", encoding="utf-8") as f:
            for c in range(copies):
                for r in recs:
                    r2 = dict(r, id=r["id"] if copies == 1 else f"c{c:05d}/{r['id']}")
                    f.write(json.dumps(r2, ensure_ascii=False) + "\n")
        out.with_suffix(".tmp").replace(out)
    return out


def target_jsonl(domain: str) -> Path:
    import pyarrow.parquet as pq

    import impsamp

    out = cache_dir() / "targets" / f"{domain}.jsonl"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        t = pq.read_table(impsamp.demo_corpus().sample(domain))
        with open(out.with_suffix(".tmp"), "w", encoding="utf-8") as f:
            for r in t.to_pylist():
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        out.with_suffix(".tmp").replace(out)
    return out


def have_dsir() -> bool:
    try:
        import data_selection  # noqa: F401
        return True
    except ImportError:
        return False


def drop_ngram_cache(emb: str | Path, within: str) -> bool:
    """Empty the user cache's n-gram features of one embedding, so that the next run is its first target;
    True when `within` (on a corpus target) reads them: `auto` (ngram-classifier), knn+ngram, ngram-classifier."""
    import impsamp
    from impsamp.resampling.ngram_features import features_folder

    shutil.rmtree(features_folder(impsamp.Embeddings.load(emb).manifest), ignore_errors=True)
    return within in ("auto", "knn+ngram", "ngram-classifier")


def pertarget(a: argparse.Namespace, log: list[str]) -> str:
    import impsamp

    emb, clu = real_embeddings(), real_clusters(64)
    raw = pool_jsonl()
    demo = impsamp.demo_corpus()
    domains = a.pertarget_domains.split(",")
    log.append(f"- per-target: load average at start {load_avg()}")
    rows = []
    dsir = have_dsir()
    first = None  # the embedding's first target, when the weights need the pool's n-grams (hashed once, kept)
    if drop_ngram_cache(emb, a.within):
        out = cache_dir() / "pt-out"
        shutil.rmtree(out, ignore_errors=True)
        first = run_child(["--worker", "impsamp", "--emb", str(emb), "--clu", str(clu), "--out", str(out / "imp"),
                           "--docs", str(a.docs), "--target", str(demo.sample(domains[0])), "--scheme", "match",
                           "--within", a.within])
        print(f"  first target on the embedding ({domains[0]}, n-grams hashed): {first['wall_s']:.2f} s", flush=True)
    for dom in domains:
        for rep in range(a.repeats):
            out = cache_dir() / "pt-out"
            shutil.rmtree(out, ignore_errors=True)
            la0 = load_avg()
            r_i = run_child(["--worker", "impsamp", "--emb", str(emb), "--clu", str(clu), "--out", str(out / "imp"),
                             "--docs", str(a.docs), "--target", str(demo.sample(dom)), "--scheme", "match",
                             "--within", a.within])
            if dsir:
                r_d = run_child(["--worker", "dsir", "--raw", str(raw), "--target", str(target_jsonl(dom)),
                                 "--out", str(out / "dsir"), "--docs", str(a.docs), "--num-proc", str(os.cpu_count()),
                                 "--min-len", "100"])
            else:   # stand-in: impsamp's own hashed n-gram selector
                r_d = run_child(["--worker", "impsamp", "--emb", str(emb), "--clu", str(clu), "--out",
                                 str(out / "ngram"), "--docs", str(a.docs), "--target", str(demo.sample(dom)),
                                 "--scheme", "match", "--method", "ngram"])
            rows.append((dom, rep, r_i, r_d, la0, load_avg()))
            print(f"  {dom} rep {rep}: impsamp {r_i['wall_s']:.2f} s (process {r_i['process_s']:.2f} s), "
                  f"{'DSIR' if dsir else 'ngram'} {r_d['wall_s']:.2f} s (process {r_d['process_s']:.2f} s)", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    scaled = []
    scales = [int(x) for x in a.pertarget_scales.split(",") if x.strip()] if dsir else []
    for copies in scales:
        dom = domains[0]
        root = cache_dir() / "pt-scale"
        print(f"  preparing {copies} copies of the pool (real-model vectors replicated) ...", flush=True)
        corpus = run_child(["--worker", "prepare", "--out", str(root / f"x{copies}"), "--copies", str(copies),
                            "--copies-per-file", str(a.copies_per_file), "--k", "64", "--real"])
        raw_n = pool_jsonl(copies, root)
        warm(corpus["files"] + [str(raw_n)])
        out = root / "out"
        shutil.rmtree(out, ignore_errors=True)
        la0 = load_avg()
        imp_args = ["--worker", "impsamp", "--emb", corpus["emb"], "--clu", corpus["clu"], "--out", str(out / "imp"),
                    "--docs", str(a.docs * copies), "--target", str(demo.sample(dom)), "--scheme", "match",
                    "--within", a.within]
        cold = drop_ngram_cache(corpus["emb"], a.within)  # the embedding's first target hashes the n-grams
        r_first = run_child(imp_args) if cold else None
        r_i = run_child(imp_args)  # a later target: the n-grams read from the cache
        r_d = run_child(["--worker", "dsir", "--raw", str(raw_n), "--target", str(target_jsonl(dom)),
                         "--out", str(out / "dsir"), "--docs", str(a.docs * copies), "--num-proc",
                         str(os.cpu_count()), "--min-len", "100"], timeout=3600)
        scaled.append((copies, corpus["rows"], dom, r_i, r_d, la0, load_avg(), r_first))
        drop_ngram_cache(corpus["emb"], a.within)
        print(f"  x{copies} {dom}: impsamp {r_i['wall_s']:.2f} s, DSIR {r_d['wall_s']:.2f} s", flush=True)
        shutil.rmtree(root, ignore_errors=True)
    log.append(f"- per-target: load average at end {load_avg()}")
    other = "DSIR (data-selection HashedNgramDSIR)" if dsir else "impsamp --method ngram (DSIR stand-in)"
    lines = [
        "### 3. Per-target cost: impsamp resample vs DSIR", "",
        f"Generic corpus: the bundled pool (4,800 documents), embedded once with all-MiniLM-L6-v2 (max_tokens 128, "
        f"`{emb.name.removeprefix('real-emb-')}`: what `compare --backend auto` picks here) and clustered once with "
        "k=64 (both cached, not timed). Per target, both sides select "
        f"{a.docs:,} documents. impsamp: one `impsamp.resample(emb, clusters, out, targets=[sample.parquet], "
        f"ResampleConfig(docs={a.docs}, scheme='match', within='{a.within}'))` (documents weighted inside the "
        f"clusters by `{(rows or [(0, 0, {})])[0][2].get('within') or a.within}`) — the target's text is embedded with "
        "the real model inside the call (model load included). "
        + ("Its n-gram weights read the pool's hashed n-grams from the user cache, written by the embedding's first "
           "target (timed apart, below the table); DSIR hashes the pool for every target. " if first else "")
        + ("DSIR: `HashedNgramDSIR([pool.jsonl], [sample.jsonl], num_proc=2, defaults otherwise)`, "
           "`fit_importance_estimator(num_tokens_to_fit='all')`, `compute_importance_weights()`, "
           f"`resample(num_to_sample={a.docs})`. " if dsir else "")
        + "Times are around the call in a fresh process: impsamp imports its embedding backend lazily inside the "
        "call, so that import, the model load and the target's embedding are all in its time; DSIR's "
        "import (nltk) is before its clock. 'process' = the whole subprocess. 'documents' = the same target "
        "texts embedded again after the call by the loaded model; 'fixed' = target embedding - documents: "
        "the per-target overhead (imports, model and tokenizer load).", "",
        f"| target | rep | impsamp s | of which target embedding s (documents + fixed) | impsamp process s | {other} s | "
        "fit / weights / resample s | process s | ratio |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    ratios = []
    for dom, rep, r_i, r_d, la0, la1 in rows:
        ratio = r_d["wall_s"] / r_i["wall_s"]
        ratios.append(ratio)
        parts = (f"{r_d['fit_s']:.2f} / {r_d['weights_s']:.2f} / {r_d['resample_s']:.2f}" if "fit_s" in r_d else "-")
        lines.append(f"| {dom} | {rep} | {r_i['wall_s']:.2f} | {r_i['target_embed_s']:.2f} ({r_i['target_docs_s']:.2f} + "
                     f"{r_i['overhead_s']:.2f}) | {r_i['process_s']:.2f} | "
                     f"{r_d['wall_s']:.2f} | {parts} | "
                     f"{r_d['process_s']:.2f} | {ratio:.1f}x |")
    imp_med = float(np.median([r[2]["wall_s"] for r in rows]))
    d_med = float(np.median([r[3]["wall_s"] for r in rows]))
    ratio = d_med / imp_med
    lines += ["",
              f"- median impsamp: {imp_med:.2f} s; median {other}: {d_med:.2f} s; ratio **{ratio:.1f}x** "
              f"(target >= 20x: {'met' if ratio >= 20 else '**missed**'})",
              f"- median fixed per-target overhead: {np.median([r[2]['overhead_s'] for r in rows]):.2f} s "
              "(goal <= 1.5 s)"]
    if first:
        lines.append(f"- the embedding's first target ({domains[0]}; hashes the pool's n-grams once and keeps them): "
                     f"{first['wall_s']:.2f} s, {d_med / first['wall_s']:.1f}x the median of {other}")
    if scaled:
        lines += [
            "", "#### Per-target cost against the size of the generic corpus", "",
            "The same measurement on N copies of the pool (ids made distinct; Parquet for impsamp, JSONL for DSIR). "
            "The generic 'embedding' of the copies is the pool's real-model embedding replicated (the stored "
            "all-MiniLM-L6-v2 vectors, token counts and spans: what the model gives for those texts, without "
            "running it 4,800 x N times), clustered with k=64; inside the timed call impsamp still embeds the "
            f"target with the real model. Both select {a.docs:,} x N documents. One run each.", "",
            f"| copies | generic docs | target | impsamp s | of which target embedding s | rest s | {other} s | "
            "fit / weights / resample s | ratio | the embedding's first target s (n-grams hashed) | its ratio |",
            "|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|"]
        for copies, n, dom, r_i, r_d, la0, la1, r_f in scaled:
            lines.append(f"| {copies} | {n:,} | {dom} | {r_i['wall_s']:.2f} | {r_i['target_embed_s']:.2f} | "
                         f"{r_i['wall_s'] - r_i['target_embed_s']:.2f} | {r_d['wall_s']:.2f} | "
                         f"{r_d['fit_s']:.2f} / {r_d['weights_s']:.2f} / {r_d['resample_s']:.2f} | "
                         f"{r_d['wall_s'] / r_i['wall_s']:.1f}x | "
                         + (f"{r_f['wall_s']:.2f} | {r_d['wall_s'] / r_f['wall_s']:.1f}x |" if r_f else "- | - |"))
        # a model: impsamp = E (target embedding, independent of the corpus) + F + r N; DSIR = d0 + d N,
        # with r, F and d, d0 from straight lines through the scaled runs (the pool's runs add the 1x point)
        e = float(np.median([r[2]["target_embed_s"] for r in rows] + [c[3]["target_embed_s"] for c in scaled]))
        pts = [(4800, float(np.median([r[2]["wall_s"] - r[2]["target_embed_s"] for r in rows])), d_med)]
        pts += [(c[1], c[3]["wall_s"] - c[3]["target_embed_s"], c[4]["wall_s"]) for c in scaled]
        n_ = np.array([p_[0] for p_ in pts], float)
        r_row, f0 = np.polyfit(n_, [p_[1] for p_ in pts], 1)
        d_row, d0 = np.polyfit(n_, [p_[2] for p_ in pts], 1)
        # d0 + d N = 20 (E + F + r N)
        n20 = (20 * (e + f0) - d0) / (d_row - 20 * r_row) if d_row > 20 * r_row else float("nan")
        lines += ["",
                  "- model (an extrapolation from these runs, not a measurement): impsamp = E + F + r N, where E = "
                  f"{e:.1f} s is the median target-embedding time of all runs above (imports, model load, "
                  "200 documents through the model: independent of N), and F + r N a least-squares line through "
                  f"the rest of each run (1x: median; F = {f0:.2f} s, r = {r_row * 1e6:.0f} us per generic "
                  f"document); DSIR = d0 + d N by least squares (d0 = {d0:.2f} s, d = {d_row * 1e6:,.0f} us per "
                  "document). The ratio passes 20x near "
                  + (f"N = {n20:,.0f} generic documents" if n20 == n20 else "no N (d < 20 r)")
                  + f" and tends to d / r = {d_row / r_row:.0f}x. Section 1 gives another estimate of r: the "
                  "resample wall time per corpus row of the 1 GB run (hashing vectors, `--within` as its section says)."]
    lines += ["", "Load average at the start and end of each pair:", ""]
    for dom, rep, *_, la0, la1 in rows:
        lines.append(f"- {dom} rep {rep}: {la0} -> {la1}")
    for copies, n, dom, r_i, r_d, la0, la1, _ in scaled:
        lines.append(f"- x{copies} {dom}: {la0} -> {la1}")
    (cache_dir() / "pertarget.json").write_text(json.dumps({
        "pool": [{"domain": r[0], "rep": r[1], "impsamp": r[2], "other": r[3]} for r in rows], "first": first,
        "scaled": [{"copies": c[0], "rows": c[1], "domain": c[2], "impsamp": c[3], "dsir": c[4], "first": c[7]}
                   for c in scaled]},
        indent=1))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["throughput", "pertarget"], help="run one part only")
    p.add_argument("--gb", type=float, default=1.0,
                   help="text size of the replicated corpus (the 1x corpus; the memory check adds 4x that)")
    p.add_argument("--copies-per-file", type=int, default=25,
                   help="pool copies per Parquet file (25 x 4,800 = 120,000 rows = 6 embedding shards)")
    p.add_argument("--no-4x", action="store_true", help="skip the 4x corpus (memory scaling)")
    p.add_argument("--fraction", type=float, default=0.25, help="share of the rows to select")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--target", default="sotu_speeches", help="demo domain used as the throughput target")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--pertarget-domains", default="sotu_speeches,fortunes,python_docs")
    p.add_argument("--pertarget-scales", default="10,100",
                   help="also time the first per-target domain on this many copies of the pool (once each)")
    p.add_argument("--keep", action="store_true", help="keep the generated corpora")
    p.add_argument("--no-write", action="store_true", help="do not update benchmarks/results/resample.md")
    # worker modes
    p.add_argument("--worker", choices=["impsamp", "baseline", "dsir", "prepare"], help=argparse.SUPPRESS)
    p.add_argument("--copies", type=int, help=argparse.SUPPRESS)
    p.add_argument("--real", action="store_true", help=argparse.SUPPRESS)
    for name in ("--emb", "--clu", "--out", "--files", "--raw"):
        p.add_argument(name, help=argparse.SUPPRESS)
    p.add_argument("--docs", type=int, default=1230, help="documents per target (per-target part)")
    p.add_argument("--scheme", default="match", help=argparse.SUPPRESS)
    p.add_argument("--method", default="importance", help=argparse.SUPPRESS)
    p.add_argument("--within", default="auto",
                   help="resample --within for impsamp's per-target runs [default: auto, the library's default]")
    p.add_argument("--throughput-within", default="uniform",
                   help="resample --within for the throughput runs [default: uniform: the draw itself, what the "
                        "recorded figures measured; auto would hash the whole corpus's n-grams on a cold cache]")
    p.add_argument("--num-proc", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--engine", choices=["local", "ray"], default="local", help=argparse.SUPPRESS)
    p.add_argument("--min-len", type=int, default=100, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        if a.worker == "prepare":
            res = prepare(Path(a.out), a.copies, a.copies_per_file, a.k, real=a.real)
        else:
            res = {"impsamp": worker_impsamp, "baseline": worker_baseline, "dsir": worker_dsir}[a.worker](a)
        print(json.dumps(res))
        return

    started = dt.datetime.now().astimezone()
    log = [f"- machine: {machine()}", f"- versions: {versions()}",
           f"- started {started:%Y-%m-%d %H:%M %Z}; `uptime` at start: {uptime()}"]
    print(log[0], log[2], sep="\n", flush=True)
    sections = []
    t0 = time.perf_counter()
    if a.only in (None, "throughput"):
        sections.append(throughput(a, log))
    if a.only in (None, "pertarget"):
        sections.append(pertarget(a, log))
    log.append(f"- finished {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} after {time.perf_counter() - t0:.0f} s; "
               f"`uptime` at end: {uptime()}")
    cmd = "python benchmarks/bench_resample.py " + " ".join(sys.argv[1:])
    body = "\n\n".join([f"## bench_resample.py\n\nCommand: `{cmd.strip()}`\n\n" + "\n".join(log), *sections])
    print("\n" + body)
    if not a.no_write:
        update_section("bench_resample" + (f"-{a.only}" if a.only else ""), body)


if __name__ == "__main__":
    main()
