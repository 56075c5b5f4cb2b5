"""Benchmark `impsamp cluster` against plain faiss on the same vectors; flat vs hierarchical; purity.

    .venv/bin/python benchmarks/bench_cluster.py                  # writes benchmarks/results/cluster.md
    .venv/bin/python benchmarks/bench_cluster.py --n 200000       # a smaller synthetic run
    .venv/bin/python benchmarks/bench_cluster.py --skip-demo      # synthetic part only

What is measured (every timed run in its own subprocess, page cache warm, peak RSS from ru_maxrss):
- impsamp cluster wall time / (faiss.Kmeans(d, k, niter=20, spherical=True, seed).train(x_sample)
  + index.search(x, 1)) on the same vectors, where x_sample is the sample impsamp fits on
  (`impsamp.clustering.sample_rows`), so the two must give identical assignments. The baseline
  holds x in memory as float32 and its load is not timed; impsamp reads its float16 shards.
- hierarchical 32x32 vs flat k=1024 on the synthetic vectors: wall time and peak memory.
- purity of flat k = 16, 64, 256 (and the matching 2-level trees) against the demo corpus's domains.

The demo embeddings are cached under benchmarks/.cache/ (a folder that ignores itself in git);
the synthetic vectors are written to a temporary folder and deleted at the end.
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

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results" / "cluster.md"
D = 384
NOTES = [
    "## Notes", "",
    "- The machine is shared (other jobs ran during the benchmark; see the load average): identical runs "
    "vary by tens of percent in wall time (see the run-order list), so the CPU-time ratio is the steadier "
    "comparison. Both sides run with the same OpenMP thread count (`--threads`, else faiss's default).",
    "- impsamp's fixed cost per run (fsync of every committed file and directory, sha256, counts.parquet, "
    "manifest.json, opening and checking the embeddings) is about 0.1 s of wall time, mostly waiting for "
    "the 14 fsyncs of the stage contract (its CPU cost is 0.02-0.03 s): it dominates the 4,800-vector "
    "cases, where faiss itself needs 30-100 ms, and vanishes at 1M vectors.",
    "- 'identical assignments': the baseline trains on exactly the rows impsamp samples "
    "(`impsamp.clustering.sample_rows(n, k * 256, seed)`) with the same faiss seed; plain faiss given all "
    "of x would draw its own subsample and find other (equally good) centroids.",
]


# ----------------------------------------------------------------------------- inputs


def cache_dir() -> Path:
    CACHE.mkdir(exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")   # the cache ignores itself
    return CACHE


def demo_embeddings() -> Path | None:
    """The bundled pool embedded with the real model (MiniLM, 128 tokens, ONNX when available), cached."""
    import impsamp

    try:
        from impsamp.embedding import EmbedConfig
    except ImportError as e:
        print(f"demo: impsamp.embedding is not available ({e}); skipping the demo corpus")
        return None
    out = cache_dir() / "demo-pool-emb"
    if (out / "manifest.json").exists():
        return out
    kwargs = {"max_tokens": 128}
    fields = getattr(EmbedConfig, "__dataclass_fields__", {})
    if "backend" in fields:
        kwargs["backend"] = "onnx"
    t0 = time.perf_counter()
    impsamp.embed(impsamp.demo_corpus().pool, out, EmbedConfig(**kwargs), overwrite=True)
    print(f"demo: embedded the pool in {time.perf_counter() - t0:.1f} s -> {out}")
    return out


def write_embed_dir(out: Path, chunks, *, model: str) -> Path:
    """An `embed`-layout directory from an iterator of (n_i, d) float16 chunks (one shard each)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from impsamp.manifest import StageRun

    run = StageRun(out, "embed", config={"model": model, "max_tokens": 128, "windows": False,
                                         "model_identity": {"name": model}},
                   inputs={"corpus": {"path": "synthetic"}}, overwrite=True).begin()
    shards, start, d = [], 0, None
    for i, v in enumerate(chunks):
        name, m, d = f"{i:05d}", len(v), v.shape[1]
        idx = np.arange(start, start + m, dtype=np.int64)
        vt, tt = run.tmp_path(f"vectors-{name}.npy"), run.tmp_path(f"docs-{name}.parquet")
        with open(vt, "wb") as f:
            np.save(f, v)
        pq.write_table(pa.table({
            "doc_index": idx, "id": pa.array(idx.astype(str)), "file": np.zeros(m, np.int32), "row": idx,
            "chars": np.full(m, 1000, np.int32), "tokens": (200 + idx % 300).astype(np.int32),
            "window": np.zeros(m, np.int32), "char_start": np.zeros(m, np.int64),
            "char_end": np.full(m, 1000, np.int64)}), tt)
        run.commit_shard(name, {f"vectors-{name}.npy": vt, f"docs-{name}.parquet": tt})
        shards.append({"name": name, "rows": m})
        start += m
    run.finish({"dim": d, "shards": shards})
    return out


def synthetic_chunks(n: int, *, d: int = D, components: int = 4096, seed: int = 0, shard_rows: int = 125_000):
    """A mixture of `components` Gaussians on the sphere (Zipf-weighted), L2-normalised, float16."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((components, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    p = 1.0 / np.arange(1, components + 1) ** 0.8
    p /= p.sum()
    for lo in range(0, n, shard_rows):
        m = min(shard_rows, n - lo)
        label = rng.choice(components, size=m, p=p)
        x = centers[label] + rng.standard_normal((m, d), dtype=np.float32) * (0.8 / np.sqrt(d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x.astype(np.float16)


def warm(path: Path) -> None:
    for f in sorted(path.glob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


# ----------------------------------------------------------------------------- one timed run (subprocess)


def worker(job: dict) -> dict:
    """Run one job `job["reps"]` times in this process (warm after the first); report the fastest run.

    Both kinds import the same modules before timing; impsamp's output folder is removed before each
    run, outside the timed region.
    """
    import faiss
    import pyarrow.parquet  # noqa: F401  (imported by both kinds before timing)

    from impsamp.clustering import ClusterConfig, cluster, sample_rows
    from impsamp.embedding import Embeddings

    runs = []
    for _ in range(job.get("reps", 1)):
        if job["kind"] == "impsamp":
            cfg = ClusterConfig(**job["config"])
            shutil.rmtree(job["out"], ignore_errors=True)
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            c = cluster(job["emb"], job["out"], cfg)
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            s = c.manifest.stats
            extra = {k: s[k] for k in ("train_points", "objective", "imbalance", "empty_clusters",
                                       "seconds_fit", "seconds_assign", "n_leaves")}
        else:  # plain faiss on the same vectors (float32 in memory), same sample and seed
            emb = Embeddings.load(job["emb"])
            x = np.concatenate([np.asarray(emb.shard_vectors(s), dtype=np.float32) for s in emb.shard_names])
            k, seed = job["k"], job["seed"]
            rows = sample_rows(len(x), job["sample"], seed) if job["sample"] else None
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            xt = x[rows] if rows is not None else x
            km = faiss.Kmeans(x.shape[1], k, niter=20, spherical=True, seed=seed,
                              max_points_per_centroid=max(256, -(-len(xt) // k)))
            km.train(xt)
            score, ids = km.index.search(x, 1)
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            np.save(job["out"], ids[:, 0].astype(np.int32))
            extra = {"train_points": len(xt), "objective": float(score.mean(dtype=np.float64))}
            del x, xt
        runs.append({"wall": wall, "cpu": cpu, **extra})
    return {**min(runs, key=lambda r: r["wall"]), "maxrss": peak_rss()}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss() -> int:
    """Peak RSS of this process in bytes.

    VmHWM (the high-water mark of this address space) where /proc exists: Linux carries ru_maxrss
    across execve, so a worker's ru_maxrss is at least its parent's RSS at the fork, whatever it used.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_job(job: dict) -> dict:
    r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True,
                       text=True)
    if r.returncode:
        raise SystemExit(f"worker failed: {job}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def leaves_of(out: Path) -> np.ndarray:
    from impsamp.clustering import Clusters

    return Clusters.load(out).leaf_assign()


# ----------------------------------------------------------------------------- parts


def bench_vs_faiss(emb: Path, k: int, work: Path, *, repeats: int, reps: int = 1,
                   sample: int | None = None) -> dict:
    """impsamp flat k vs plain faiss on the same sample: `repeats` subprocesses each (interleaved), each
    running the job `reps` times in-process; the fastest run is kept."""
    from impsamp.embedding import Embeddings

    n = Embeddings.load(emb).n
    size = min(n, sample or k * 256)
    raw, imp = [], []
    for _ in range(repeats):
        raw.append(run_job({"kind": "faiss", "emb": str(emb), "k": k, "seed": 0, "sample": size, "reps": reps,
                            "out": str(work / "raw.npy")}))
        imp.append(run_job({"kind": "impsamp", "emb": str(emb), "out": str(work / f"flat{k}"), "reps": reps,
                            "config": {"k": k, "seed": 0, **({"sample": sample} if sample else {})}}))
    same = np.array_equal(np.load(work / "raw.npy"), leaves_of(work / f"flat{k}"))
    best_raw, best_imp = min(raw, key=lambda r: r["wall"]), min(imp, key=lambda r: r["wall"])
    return {"n": n, "k": k, "reps": reps, "train_points": best_imp["train_points"], "raw": best_raw,
            "impsamp": best_imp, "ratio": best_imp["wall"] / best_raw["wall"], "identical": bool(same),
            "raw_walls": [r["wall"] for r in raw], "impsamp_walls": [r["wall"] for r in imp]}


def bench_hierarchy(emb: Path, work: Path, flat: dict, *, repeats: int) -> dict:
    hier = min((run_job({"kind": "impsamp", "emb": str(emb), "out": str(work / "h32x32"),
                         "config": {"levels": [32, 32], "seed": 0}, "reps": 1}) for _ in range(repeats)),
               key=lambda r: r["wall"])
    return {"hier": hier, "flat": flat["impsamp"], "speedup": flat["impsamp"]["wall"] / hier["wall"]}


def purity_table(emb: Path, work: Path) -> list[dict]:
    import pyarrow.parquet as pq

    import impsamp
    from impsamp.clustering import ClusterConfig, cluster
    from impsamp.embedding import Embeddings

    e = Embeddings.load(emb)
    table = pq.read_table(impsamp.demo_corpus().pool, columns=["domain"])
    domain_of = np.asarray(table.column("domain").to_pylist())
    doc_index = e.table().column("doc_index").to_numpy()
    labels = np.unique(domain_of, return_inverse=True)[1][doc_index]
    rows = []
    for k, levels in ((16, (4, 4)), (64, (8, 8)), (256, (16, 16))):
        for cfg in (ClusterConfig(k=k), ClusterConfig(levels=levels)):
            c = cluster(e, work / f"purity-{k}-{cfg.levels}", cfg, overwrite=True)
            leaves = c.leaf_assign()
            pur = sum(np.bincount(labels[leaves == j]).max() for j in np.unique(leaves)) / len(leaves)
            rows.append({"k": k, "shape": "x".join(map(str, levels)) if cfg.levels else "flat",
                         "leaves": c.n_leaves, "purity": pur, "objective": c.manifest.stats["objective"],
                         "imbalance": c.manifest.stats["imbalance"],
                         "empty": c.manifest.stats["empty_clusters"]})
    return rows


# ----------------------------------------------------------------------------- report


def gb(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report(parts: dict) -> str:
    command = f"`.venv/bin/python benchmarks/bench_cluster.py {' '.join(sys.argv[1:])}`".replace(" `", "`")
    lines = ["# `impsamp cluster` benchmark", "",
             f"Machine: {machine()}, faiss {faiss_info()}. Date: {dt.date.today().isoformat()}. Load average at the end: "
             f"{os.getloadavg()[0]:.1f} (a shared machine; each figure is the best of its runs).", "",
             f"Command: {command}", ""]
    lines += ["## impsamp cluster vs plain faiss, same vectors, same sample, same seed", "",
              "Baseline: `faiss.Kmeans(d, k, niter=20, spherical=True, seed=0).train(x_sample)` + "
              "`index.search(x, 1)`, x float32 in memory (load not timed). impsamp: `impsamp.cluster(...)` "
              "end to end (reads float16 shards, checks them, streams the assignment, writes and hashes "
              "files, counts). Target: ratio <= 1.15 and identical assignments.", "",
              row("vectors", "k", "train points", "faiss wall (s)", "impsamp wall (s)", "wall ratio",
                  "faiss CPU (s)", "impsamp CPU (s)", "CPU ratio", "identical assignments",
                  "subprocesses x runs each"),
              row(*["---"] * 11)]
    for name, r in parts.get("vs_faiss", []):
        raw, imp = r["raw"], r["impsamp"]
        lines.append(row(f"{name} ({r['n']:,} x {D})", r["k"], f"{r['train_points']:,}", f"{raw['wall']:.2f}",
                         f"{imp['wall']:.2f}", f"{r['ratio']:.3f}", f"{raw['cpu']:.2f}", f"{imp['cpu']:.2f}",
                         f"{imp['cpu'] / raw['cpu']:.3f}", "yes" if r["identical"] else "NO",
                         f"{len(r['raw_walls'])} x {r['reps']}"))
    lines += ["", "Best wall time of each subprocess (faiss / impsamp), in run order: " + "; ".join(
        f"{name} k={r['k']}: " + ", ".join(f"{a:.2f}/{b:.2f}"
                                           for a, b in zip(r["raw_walls"], r["impsamp_walls"], strict=True))
        for name, r in parts.get("vs_faiss", []))]
    if "hier" in parts:
        h, n, vec = parts["hier"], parts["n"], parts["n"] * D * 2
        flat = parts["vs_faiss"][-1][1]
        k = flat["k"]
        lines += ["", f"## Hierarchical 32x32 vs flat k={k} ({n:,} synthetic vectors, {D}-d)", "",
                  f"Vectors' size: {gb(vec)} as stored (float16), {gb(2 * vec)} as float32. "
                  "Peak RSS per run = VmHWM of its subprocess (ru_maxrss is carried across exec from the "
                  "forking parent, so it would report the parent's size). Target: hierarchy >= 3x faster, "
                  "peak under 3x the vectors' size.", "",
                  row("run", "leaves", "wall (s)", "fit (s)", "assign (s)", "peak RSS", "peak / float16 size",
                      "objective", "largest/mean", "empty"),
                  row(*["---"] * 10)]
        for label, r in ((f"faiss flat k={k} (baseline)", flat["raw"]), (f"impsamp flat k={k}", h["flat"]),
                         ("impsamp 32x32", h["hier"])):
            lines.append(row(label, r.get("n_leaves", k), f"{r['wall']:.2f}", r.get("seconds_fit", "-"),
                             r.get("seconds_assign", "-"), gb(r["maxrss"]), f"{r['maxrss'] / vec:.2f}",
                             f"{r['objective']:.4f}", f"{r.get('imbalance', float('nan')):.2f}",
                             r.get("empty_clusters", "-")))
        lines += ["", f"Speed-up of 32x32 over flat k={k}: {h['speedup']:.1f}x."]
    if "purity" in parts:
        lines += ["", "## Purity against the demo corpus's 8 domains (4,800 documents, real embeddings)", "",
                  "Purity = share of documents whose cluster's majority domain is their own (1/8 = chance "
                  "for balanced domains).", "",
                  row("k", "shape", "leaves", "purity", "objective (mean cos)", "largest/mean", "empty"),
                  row(*["---"] * 7)]
        for r in parts["purity"]:
            lines.append(row(r["k"], r["shape"], r["leaves"], f"{r['purity']:.3f}", f"{r['objective']:.4f}",
                             f"{r['imbalance']:.2f}", r["empty"]))
    lines += [""] + parts.get("notes", [])
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors [default: 1,000,000]")
    ap.add_argument("--k", type=int, default=1024, help="flat k on the synthetic vectors [default: 1024]")
    ap.add_argument("--repeats", type=int, default=2, help="runs of the synthetic comparison (best is kept)")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="OpenMP threads of every timed run (OMP_NUM_THREADS) [default: faiss's default, all "
                    "cores]; 1 gives steadier figures on a busy machine")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the workers
    parts: dict = {"vs_faiss": [], "notes": []}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        work = Path(tmp)
        emb = None if args.skip_demo else demo_embeddings()
        if emb is not None:
            warm(emb)
            for k in (16, 64):
                r = bench_vs_faiss(emb, k, work, repeats=3, reps=3)
                parts["vs_faiss"].append(("demo pool, MiniLM", r))
                print(f"demo k={k}: faiss {r['raw']['wall']:.3f}s impsamp {r['impsamp']['wall']:.3f}s "
                      f"ratio {r['ratio']:.3f} identical {r['identical']}", flush=True)
            parts["purity"] = purity_table(emb, work)
            for r in parts["purity"]:
                print(f"purity k={r['k']} {r['shape']}: {r['purity']:.3f}", flush=True)
        if not args.skip_synthetic:
            t0 = time.perf_counter()
            syn = write_embed_dir(work / "syn", synthetic_chunks(args.n), model="synthetic-gmm-384")
            print(f"synthetic: {args.n:,} vectors written in {time.perf_counter() - t0:.1f} s", flush=True)
            warm(syn)
            r = bench_vs_faiss(syn, args.k, work, repeats=args.repeats)
            parts["vs_faiss"].append(("synthetic mixture", r))
            print(f"synthetic k={args.k}: faiss {r['raw']['wall']:.1f}s impsamp {r['impsamp']['wall']:.1f}s "
                  f"ratio {r['ratio']:.3f} identical {r['identical']}", flush=True)
            parts["n"] = args.n
            parts["hier"] = bench_hierarchy(syn, work, r, repeats=args.repeats)
            h = parts["hier"]
            print(f"32x32: {h['hier']['wall']:.1f}s ({h['speedup']:.1f}x faster than flat), peak "
                  f"{gb(h['hier']['maxrss'])} vs flat {gb(h['flat']['maxrss'])}", flush=True)
    parts["notes"] += [*NOTES, "", f"Total benchmark time: {time.perf_counter() - t_start:.0f} s (the demo "
                       "embeddings come from the cache after the first run)."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(parts))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()


def faiss_info() -> str:
    import faiss

    return f"{faiss.__version__} (CPU, {faiss.omp_get_max_threads()} OpenMP threads), numpy {np.__version__}"
