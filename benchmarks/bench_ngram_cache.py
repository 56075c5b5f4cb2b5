"""Benchmark the per-target cost of the n-gram selectors with and without the kept n-gram features.

    .venv/bin/python benchmarks/bench_ngram_cache.py               # the pool and 10 copies; writes results/ngram_cache.md
    .venv/bin/python benchmarks/bench_ngram_cache.py --copies 1 --repeats 1 --no-write

`--method ngram` and `--within knn+ngram` need the generic corpus's hashed n-grams per target. With
`--ngram-cache` (the default) the first target on an embedding hashes the text and keeps the features in
the user cache; later targets read them. Measured here, each in a fresh process with an empty or a filled
cache of its own (IMPSAMP_CACHE_DIR), one target (the bundled python_docs sample, given as text, so it
is embedded with the real model inside the call), `ResampleConfig(tokens=200,000 x copies)`:

- `knn` (the default before 0.7.0; reads no text of the generic corpus) for reference,
- `knn+ngram` and `ngram` without the cache (the text hashed twice per target, 0.6.2's only path),
  with an empty cache (the first target: hashes once, writes) and with a filled one (every later target).

The generic corpus is the bundled pool (4,800 documents, the real all-MiniLM-L6-v2 embedding, k=64), and
N copies of it with the pool's vectors replicated (bench_resample.py's `prepare(..., real=True)`). Each
cached run's selection is checked to be the same bytes as the uncached run's. Wall time is around the
`resample` call; medians of --repeats runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402  (one machine description for every benchmark)
from bench_resample import cache_dir, prepare, real_clusters, real_embeddings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ngram_cache.md"
CASES = [("knn", "importance", "knn", False, "-"), ("knn+ngram", "importance", "knn+ngram", False, "off"),
         ("knn+ngram", "importance", "knn+ngram", True, "empty"), ("knn+ngram", "importance", "knn+ngram", True, "filled"),
         ("ngram", "ngram", "auto", False, "off"), ("ngram", "ngram", "auto", True, "empty"),
         ("ngram", "ngram", "auto", True, "filled")]


def worker(a: argparse.Namespace) -> None:
    import impsamp
    from impsamp.resampling import ResampleConfig

    cfg = ResampleConfig(tokens=a.tokens, method=a.method, within=a.within, seed=0)
    t0 = time.perf_counter()
    sel = impsamp.resample(a.emb, a.clu, a.out, targets=[a.target], config=cfg, overwrite=True,
                           ngram_cache=a.cache)
    wall = time.perf_counter() - t0
    data = {o.path: o.sha256 for o in sel.manifest.outputs if o.path.startswith("data-")}
    print(json.dumps({"wall_s": wall, "data": data, "rows": sel.stats["rows"]}))


def child(emb: str, clu: str, out: Path, target: str, tokens: int, method: str, within: str, cache: bool,
          cache_root: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--emb", emb, "--clu", clu, "--out", str(out),
           "--target", target, "--tokens", str(tokens), "--method", method, "--within", within]
    cmd += ["--cache"] if cache else []
    env = {**os.environ, "IMPSAMP_CACHE_DIR": str(cache_root), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure(emb: str, clu: str, docs: int, tokens: int, target: str, repeats: int, scratch: Path) -> list[dict]:
    """Every case `repeats` times; the ONNX model and tokenizer come from the real user cache (linked in)."""
    from impsamp.config import cache_dir as user_cache

    rows = []
    for label, method, within, cache, state in CASES:
        walls, data = [], None
        for _ in range(repeats):
            root = Path(tempfile.mkdtemp(dir=scratch))
            for kept in ("onnx", "tokenizers"):  # the embedding model's export: not what is measured
                if (user_cache() / kept).exists():
                    os.symlink(user_cache() / kept, root / kept)
            if state == "filled":  # a previous target filled the cache
                child(emb, clu, root / "first", target, tokens, method, within, True, root)
            r = child(emb, clu, root / "out", target, tokens, method, within, cache, root)
            walls.append(r["wall_s"])
            data = data or r["data"]
            assert r["data"] == data, "another selection"
            kept_bytes = sum(f.stat().st_size for f in (root / "ngram").rglob("*.npz")) if cache else 0
            shutil.rmtree(root)
        rows.append({"selector": label, "cache": state, "wall_s": float(np.median(walls)), "walls": walls,
                     "data": data, "kept_mb": kept_bytes / 1e6, "docs": docs})
        print(f"  {docs:,} docs {label} cache {state}: {np.median(walls):.2f} s", file=sys.stderr, flush=True)
    for sel in ("knn+ngram", "ngram"):  # with or without the cache: the same selection
        assert len({json.dumps(r["data"], sort_keys=True) for r in rows if r["selector"] == sel}) == 1, sel
    return rows


def report(results: dict[int, list[dict]], emb_mb: dict[int, float], repeats: int) -> str:
    lines = [f"## Per-target cost of the n-gram selectors with the kept n-gram features ({dt.date.today()})", "",
             f"Machine: {machine()}. `benchmarks/bench_ngram_cache.py`; each run a fresh process, medians of "
             f"{repeats}; one target (python_docs' 200-document sample as text), `--tokens 200,000 x copies`. "
             "'off': `--no-ngram-cache` (the text hashed twice per target: 0.6.2's only path); 'empty': the first "
             "target on the embedding (hashes once, keeps the features); 'filled': every later target. The "
             "selections with and without the cache are the same bytes (checked).", "",
             "| generic documents | selector | n-gram cache | per-target s | vs `knn` | kept features MB "
             "(embedding MB) |", "|---:|---|---|---:|---:|---:|"]
    for copies, rows in results.items():
        knn = next(r["wall_s"] for r in rows if r["selector"] == "knn")
        for r in rows:
            kept = f"{r['kept_mb']:.1f} ({emb_mb[copies]:.1f})" if r["cache"] in ("empty", "filled") else "-"
            lines.append(f"| {r['docs']:,} | `{r['selector']}` | {r['cache']} | {r['wall_s']:.2f} | "
                         f"{r['wall_s'] / knn:.2f}x | {kept} |")
    lines.append("")
    for copies, rows in results.items():
        w = {(r["selector"], r["cache"]): r["wall_s"] for r in rows}
        for sel in ("knn+ngram", "ngram"):
            lines.append(f"- {rows[0]['docs']:,} documents, `{sel}`: a later target "
                         f"{w[(sel, 'off')] / w[(sel, 'filled')]:.1f}x faster with the cache "
                         f"({w[(sel, 'off')]:.2f} -> {w[(sel, 'filled')]:.2f} s); the first target "
                         f"{w[(sel, 'empty')]:.2f} s")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--copies", default="1,10", help="sizes of the generic corpus, in copies of the pool")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--domain", default="python_docs")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--emb", "--clu", "--out", "--target", "--method", "--within"):
        p.add_argument(flag, help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cache", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    import impsamp

    target = str(impsamp.demo_corpus().sample(a.domain))
    scratch = cache_dir() / "ngram-bench"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    results, emb_mb = {}, {}
    for copies in [int(c) for c in a.copies.split(",")]:
        if copies == 1:
            emb, clu = str(real_embeddings()), str(real_clusters(64))
        else:
            corpus = prepare(cache_dir() / f"ngram-x{copies}", copies, 25, 64, real=True)
            emb, clu = corpus["emb"], corpus["clu"]
        emb_mb[copies] = sum(f.stat().st_size for f in Path(emb).rglob("*") if f.is_file()) / 1e6
        results[copies] = measure(emb, clu, 4800 * copies, 200_000 * copies, target, a.repeats, scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    text = report(results, emb_mb, a.repeats)
    print(text)
    if not a.no_write:
        RESULTS.write_text("# Per-target cost of the n-gram selectors\n\n" + text)


if __name__ == "__main__":
    main()
