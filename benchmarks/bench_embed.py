"""Embedding throughput: `impsamp embed` (torch, ONNX fp32 and int8) against `SentenceTransformer.encode`.

    python benchmarks/bench_embed.py                                   # CPU: 2,000 demo documents, 128 tokens
    python benchmarks/bench_embed.py --write benchmarks/results/embed.md
    python benchmarks/bench_embed.py --device cuda                     # GPU: fp16, 128 and 256 tokens

On a GPU the documents are 50,000 (the demo pool cycled; the plain encode takes ~25 s on an H200),
and impsamp runs with tokenizing threads (the default) and with one tokenizing process per core but
one (`--tokenize-processes`); the whole GPU run took ~4 minutes there with `--rounds 1 --ceilings`, ~6 with
`--scale-docs 250000` (impsamp alone on 250,000 documents: the sustained rate, process start-up spread).

The documents are the first N of the bundled demo corpus (`impsamp.datasets.demo_corpus().pool`).
The baseline is `SentenceTransformer(model).encode(texts, batch_size=32, normalize_embeddings=True)`
with the same model and maximum length (fp16 weights on GPU). Every configuration runs in its own
subprocess, so its peak RSS (ru_maxrss) is its own; configurations are interleaved over `--rounds`
rounds and the best round of each is kept, so a neighbour's load hits all of them alike. Timed:
the baseline's `encode` call (texts already in memory) and impsamp's `embed()` call (reading the
Parquet file, tokenizing, the model, writing shards and manifest); both after loading the model and a
32-document warm-up. Cosines compare each impsamp vector with the baseline vector of the same
document. Memory: impsamp on 4x the documents (the pool cycled) against 1x, same backend.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402  (one machine description for every benchmark)

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CPU_CONFIGS = [("baseline", {}), ("impsamp torch", {"backend": "torch"}),
               ("impsamp torch fp32", {"backend": "torch", "precision": "float32"}),
               ("impsamp onnx fp32", {"backend": "onnx"}),
               ("impsamp onnx int8", {"backend": "onnx", "quantize": "int8"})]
GPU_CONFIGS = [("baseline fp16", {}), ("impsamp torch", {"backend": "torch"}),
               ("impsamp torch, tokenizing processes", {"backend": "torch", "tokenize_processes": "cores - 1"})]
GPU_DOCS = 50_000


# ----------------------------------------------------------------------------- children (one config each)


def _texts(path: Path, limit: int | None) -> list[str]:
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["text"]).column("text")
    return (column if limit is None else column.slice(0, limit)).to_pylist()


def _child(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device == "cpu":  # 2 cores: the model has them. On a GPU machine the plain encode's tokenizer
        # uses its own threads; impsamp's tokenizing threads each tokenize serially (`tokenize_serially`)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = json.loads(args.child)
    texts = _texts(Path(args.corpus), None if spec["kind"] == "baseline" else 32)
    vectors = None
    if spec["kind"] == "baseline":
        import torch
        from sentence_transformers import SentenceTransformer

        from impsamp.embedding import resolve_model

        model = SentenceTransformer(str(resolve_model(args.model).folder), device=args.device)
        if args.device == "cuda":
            model.half()
        model.max_seq_length = args.max_tokens
        model.encode(texts[:32], batch_size=32, normalize_embeddings=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        precision = "float16" if args.device == "cuda" else "float32"
    else:
        from impsamp.embedding import EmbedConfig, embed, embed_texts, load_embedder

        cfg = EmbedConfig(model=args.model, max_tokens=args.max_tokens, device=args.device, **spec["config"])
        embedder = load_embedder(cfg)
        precision = embedder.identity["precision"]
        embed_texts(texts[:32], embedder)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            emb = embed(args.corpus, Path(tmp) / "emb", cfg, embedder=embedder)
            seconds = time.perf_counter() - t0
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before loading results
            n_docs = emb.manifest.stats["documents"]
            if args.vectors:
                table = emb.table()
                assert table.num_rows == n_docs, "every benchmark document is one unit"
                vectors = np.empty((n_docs, emb.dim), np.float32)
                vectors[table.column("doc_index").to_numpy()] = emb.vectors()
    if spec["kind"] == "baseline":
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        n_docs = len(texts)
    if args.vectors:
        np.save(args.vectors, np.asarray(vectors, np.float32))
    result = {"docs": n_docs, "seconds": seconds, "docs_per_s": n_docs / seconds, "maxrss_mb": rss_mb,
              "precision": precision}
    if args.device == "cuda":
        import torch

        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def _ceilings(args: argparse.Namespace, corpus: Path, max_tokens: int) -> str:
    """What bounds impsamp's speed: tokenizing alone (its threads, no model) and the model alone (on
    already-tokenized batches), in docs/s, on the same documents."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from impsamp.embedding import SORT_BUFFER, EmbedConfig, load_embedder, tokenize_serially
    from impsamp.embedding.engine import _tokenize_in_process, _tokenizing_init

    texts = _texts(corpus, None)
    emb = load_embedder(EmbedConfig(model=args.model, max_tokens=max_tokens, device=args.device))
    chunks = [texts[i:i + SORT_BUFFER] for i in range(0, len(texts), SORT_BUFFER)]
    n = args.tokenize_workers or emb.prepare_threads
    if n > 1:  # as `embed` does with several tokenizing threads
        tokenize_serially()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        prepared = list(pool.map(emb.prepare, chunks))
    tokenize = len(texts) / (time.perf_counter() - t0)
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_tokenizing_init,
                             initargs=(emb.tokenizing_only(),)) as pool:
        list(pool.map(_tokenize_in_process, [c[:64] for c in chunks[:n]]))  # processes started
        t0 = time.perf_counter()
        in_processes = list(pool.map(_tokenize_in_process, chunks))
        tokenize_p = len(texts) / (time.perf_counter() - t0)
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(prepared, in_processes, strict=True))
    emb.run(prepared[0])
    if args.device == "cuda":
        import torch

        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for p in prepared:
        emb.run(p)
    model = len(texts) / (time.perf_counter() - t0)
    return (f"Ceilings at {max_tokens} tokens ({len(texts):,} documents): tokenizing alone "
            f"{tokenize:,.0f} docs/s with {n} thread(s), {tokenize_p:,.0f} docs/s with {n} process(es) "
            f"(started before timing); the model alone (batches already tokenized, vectors copied back) "
            f"{model:,.0f} docs/s.")


# ----------------------------------------------------------------------------- the parent


def _write_corpus(path: Path, n: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from impsamp.datasets import demo_corpus

    pool = pq.read_table(demo_corpus().pool, columns=["id", "text"])
    reps = -(-n // pool.num_rows)
    ids = [f"{i}#{r}" for r in range(reps) for i in pool.column("id").to_pylist()][:n]
    texts = (pool.column("text").to_pylist() * reps)[:n]
    pq.write_table(pa.table({"id": ids, "text": texts}), path)
    return path


def _run_child(spec: dict, corpus: Path, args: argparse.Namespace, max_tokens: int,
               vectors: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec), "--corpus", str(corpus),
           "--max-tokens", str(max_tokens), "--device", args.device, "--model", args.model]
    if vectors is not None:
        cmd += ["--vectors", str(vectors)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"{spec} ran past --child-timeout {args.child_timeout} s")
    if out.returncode != 0:
        sys.exit(f"{spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cosines(a: Path, b: Path) -> tuple[float, float]:
    x, y = np.load(a), np.load(b)
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return float(cos.min()), float(cos.mean())


def _same_cluster(a: Path, b: Path, k: int = 64) -> float:
    """Share of documents whose vector in `a` and in `b` fall in the same cluster of a k-means
    (faiss, spherical, seed 0) fitted on `a` (the baseline's vectors)."""
    try:
        import faiss
    except ImportError:  # e.g. a GPU machine without faiss: the cosines still compare the vectors
        return float("nan")

    x = np.ascontiguousarray(np.load(a), dtype=np.float32)
    y = np.ascontiguousarray(np.load(b), dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=20, spherical=True, seed=0, verbose=False)
    km.train(x)
    _, ax = km.index.search(x, 1)
    _, ay = km.index.search(y, 1)
    return float((ax[:, 0] == ay[:, 0]).mean())


def _versions() -> str:
    import importlib.metadata as md

    return ", ".join(f"{p} {md.version(p)}" for p in ("torch", "sentence-transformers", "transformers",
                                                       "onnxruntime", "tokenizers"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=None, help=f"documents (default 2,000 on CPU, {GPU_DOCS:,} on GPU)")
    p.add_argument("--model", default=MODEL, help="model name or folder (default all-MiniLM-L6-v2)")
    p.add_argument("--child-timeout", type=int, default=900, help="seconds one configuration may run")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--rounds", type=int, default=2,
                   help="interleaved rounds; the best of each config is kept (0: memory only)")
    p.add_argument("--memory-backend", default="onnx-int8", choices=["torch", "onnx", "onnx-int8", "none"])
    p.add_argument("--write", type=Path, default=None, help="write the results as Markdown here")
    p.add_argument("--ceilings", action="store_true",
                   help="also time impsamp's tokenizing alone and its model alone (what bounds its speed)")
    p.add_argument("--tokenize-workers", type=int, default=None,
                   help="threads and processes for the tokenizing ceilings (default: impsamp's threads)")
    p.add_argument("--scale-docs", type=int, default=0,
                   help="also run impsamp's configurations alone on this many documents (the pool cycled; "
                        "no baseline): the rate once fixed costs such as starting processes are spread")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--max-tokens", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--vectors", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child(args)
    if args.docs is None:
        args.docs = GPU_DOCS if args.device == "cuda" else 2000
    if args.device == "cuda" and args.memory_backend.startswith("onnx"):
        args.memory_backend = "none"  # the 4x run would take most of a GPU lease; memory is a CPU target

    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        _bench(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(args: argparse.Namespace, tmp: Path) -> None:
    corpus = _write_corpus(tmp / f"docs-{args.docs}.parquet", args.docs)
    configs = GPU_CONFIGS if args.device == "cuda" else CPU_CONFIGS
    configs = [(name, {k: max(1, (os.cpu_count() or 2) - 1) if v == "cores - 1" else v for k, v in c.items()})
               for name, c in configs]
    lengths = [128, 256] if args.device == "cuda" else [128]
    load_before = os.getloadavg()
    started = time.time()
    best: dict[tuple[str, int], dict] = {}
    for r in range(args.rounds):
        for tokens in lengths:
            for name, config in configs:
                kind = "baseline" if name.startswith("baseline") else "impsamp"
                vec = tmp / f"{name.replace(' ', '_')}-{tokens}.npy"
                res = _run_child({"kind": kind, "config": config}, corpus, args, tokens, vec)
                print(f"round {r + 1} {tokens} tokens {name:>20} {res['precision']:>8}: "
                      f"{res['docs_per_s']:7.1f} docs/s, "
                      f"{res['maxrss_mb']:6.0f} MB", file=sys.stderr, flush=True)
                key = (name, tokens)
                if key not in best or res["docs_per_s"] > best[key]["docs_per_s"]:
                    best[key] = {**res, "vectors": vec}
    rows = []
    for tokens in lengths if args.rounds else []:
        base_name = configs[0][0]
        base = best[(base_name, tokens)]
        for name, _ in configs:
            res = best[(name, tokens)]
            cmin, cmean = _cosines(res["vectors"], base["vectors"]) if name != base_name else (1.0, 1.0)
            same = _same_cluster(base["vectors"], res["vectors"]) if name != base_name else 1.0
            ratio = res["docs_per_s"] / base["docs_per_s"]
            gpu = f" (GPU {res['gpu_peak_mb']:.0f})" if "gpu_peak_mb" in res else ""
            same_txt = "n/a" if same != same else f"{same:.1%}"  # nan: no faiss to cluster with
            rows.append(f"| {name} | {res['precision']} | {tokens} | {res['docs_per_s']:.1f} | {ratio:.2f}x "
                        f"| {cmin:.5f} | {cmean:.5f} | {same_txt} | {res['maxrss_mb']:.0f}{gpu} |")
    memory = ""
    if args.memory_backend != "none":
        backend, _, q = args.memory_backend.partition("-")
        config = {"backend": backend, **({"quantize": q} if q else {})}
        big = _write_corpus(tmp / f"docs-{4 * args.docs}.parquet", 4 * args.docs)
        one = _run_child({"kind": "impsamp", "config": config}, corpus, args, lengths[0], None)
        four = _run_child({"kind": "impsamp", "config": config}, big, args, lengths[0], None)
        memory = (f"Peak RSS, impsamp {args.memory_backend} at {lengths[0]} tokens: "
                  f"{one['maxrss_mb']:.0f} MB "
                  f"for {args.docs:,} documents, {four['maxrss_mb']:.0f} MB for {4 * args.docs:,} "
                  f"({four['maxrss_mb'] / one['maxrss_mb']:.2f}x; target <= 1.2x).")
    scale = []
    if args.scale_docs:
        big = _write_corpus(tmp / f"docs-{args.scale_docs}.parquet", args.scale_docs)
        for name, config in configs[1:]:
            res = _run_child({"kind": "impsamp", "config": config}, big, args, lengths[0], None)
            print(f"scale {args.scale_docs} {name}: {res['docs_per_s']:.1f} docs/s", file=sys.stderr, flush=True)
            scale.append(f"At scale ({args.scale_docs:,} documents, {lengths[0]} tokens, no baseline): {name} "
                         f"{res['docs_per_s']:,.0f} docs/s, peak RSS {res['maxrss_mb']:.0f} MB.")
    ceilings = [_ceilings(args, corpus, t) for t in lengths] if args.ceilings else []
    load_after = os.getloadavg()
    header = ("| config | precision | max tokens | docs/s | vs baseline | min cosine | mean cosine "
              "| same cluster (k=64) | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|")
    report = "\n".join([
        f"Machine: {machine()}; {_versions()}.",
        f"Date: {dt.date.today().isoformat()}; {args.docs:,} documents of the bundled demo corpus; "
        f"best of {args.rounds} interleaved rounds; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after; {time.time() - started:.0f} s in all.",
        "", header, *rows, "", memory, *scale, *ceilings])
    print(report)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(report + "\n")


if __name__ == "__main__":
    main()
