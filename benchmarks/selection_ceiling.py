"""The ceiling of any selector on the bundled pool: train on the target domain's own pool documents.

    .venv/bin/python benchmarks/selection_ceiling.py --tokens 40000,200000          # 8 domains x 2 budgets
    .venv/bin/python benchmarks/selection_ceiling.py --tokens 40000 --domains sotu_speeches --no-write

On 2 cores, prepare once, then run one process per budget side by side (each LM uses one thread):

    .venv/bin/python benchmarks/selection_ceiling.py --tokens 40000,200000 --prepare-only
    .venv/bin/python benchmarks/selection_ceiling.py --tokens 40000 & \
    .venv/bin/python benchmarks/selection_ceiling.py --tokens 200000 & wait

A selector can at best pick the target domain's documents and nothing else. This script does that with
the labels the bundled pool carries (its `domain` column, which no selector sees): for each domain, the
pool's documents of that domain are embedded and drawn uniformly up to the budget (without replacement
while the domain holds the budget; past that, the seed paper's way inside the domain: its own k-means
histogram matched, with repeats). Everything else is `paper_table.py`'s: the tokenizer trained on the whole
pool (so perplexities compare with the paper table), the demo's LM (`mini`, 80 + 20 steps), fine-tuned on
the in-domain sample, scored on the held-out text. The default `--dtype float32` is what the committed paper
table (`benchmarks/results/paper-0.6.0.json`) was measured in; its rows are printed beside the ceiling when
the settings are that table's (float32, 80 + 20 steps).

Prints a markdown table (per domain: the paper table's methods and the ceiling, macro average) and writes
`benchmarks/results/ceiling.json`. Not run in CI (about 2 minutes per LM on one core); resumable: a
finished run under --work is reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AGAINST = ROOT / "benchmarks" / "results" / "paper-0.6.0.json"
RESULTS = ROOT / "benchmarks" / "results" / "ceiling.json"


def domain_selection(work: Path, domain: str, tokens: int, seed: int, pool: Path | None = None):
    """The target domain's documents in `pool` (default: the bundled pool) at the budget (an impsamp selection,
    counted as resample counts). `work` keeps one domain pool per domain: give another `pool` its own `work`."""
    import numpy as np
    import pyarrow.parquet as pq

    from impsamp.clustering import ClusterConfig, Clusters, cluster
    from impsamp.datasets import demo_corpus
    from impsamp.embedding import EmbedConfig, Embeddings, embed
    from impsamp.errors import ConfigError
    from impsamp.resampling import ResampleConfig, Selection, resample

    corpus = demo_corpus()
    out = work / f"selection-{domain}-{tokens}-s{seed}"
    if (out / "manifest.json").exists():
        return Selection.load(out)
    pure = work / f"pool-{domain}.parquet"
    if not pure.exists():
        table = pq.read_table(corpus.pool if pool is None else pool)
        pq.write_table(table.filter(np.asarray(table.column("domain").to_pylist()) == domain), pure)
    emb_dir, clu_dir = work / f"embeddings-{domain}", work / f"clusters-{domain}-s{seed}"
    if not (emb_dir / "manifest.json").exists():  # the paper table's embeddings (ONNX int8, 128 tokens)
        embed(pure, emb_dir, EmbedConfig(max_tokens=128, backend="onnx", quantize="int8"), overwrite=True)
    if not (clu_dir / "manifest.json").exists():
        cluster(Embeddings.load(emb_dir), clu_dir, ClusterConfig(k=8, seed=seed), overwrite=True)
    emb, clu = Embeddings.load(emb_dir), Clusters.load(clu_dir)
    try:
        return resample(emb, clu, out, targets=[corpus.sample(domain)], overwrite=True,
                        config=ResampleConfig(tokens=tokens, seed=seed, method="uniform"))
    except ConfigError as e:
        if "impossible without replacement" not in str(e):
            raise
        # the domain holds less than the budget: repeats, the seed paper's way
        return resample(emb, clu, out, targets=[corpus.sample(domain)], overwrite=True,
                        config=ResampleConfig(tokens=tokens, seed=seed, method="importance", within="uniform"))


def tokenizer(work: Path) -> Path:
    """The tokenizer `compare` trains: on the generic corpus (the whole pool), 4,096 tokens."""
    from impsamp.datasets import demo_corpus
    from impsamp.training import train_tokenizer

    tok = work / "tokenizer.json"
    if not tok.exists():
        train_tokenizer([str(demo_corpus().pool)], 4096, tok, text_field="text")
    return tok


def ceiling_run(work: Path, domain: str, tokens: int, args: argparse.Namespace) -> dict:
    """One LM on the domain's own documents: perplexity after pretraining and after fine-tuning."""
    from impsamp.datasets import demo_corpus
    from impsamp.training import TrainConfig, train
    from impsamp.training.provenance import finished_run

    corpus = demo_corpus()
    tok = tokenizer(work)
    sel = domain_selection(work, domain, tokens, args.seed)
    cfg = TrainConfig(preset="mini", steps=args.steps, finetune_steps=args.finetune_steps, seed=args.seed,
                      tokenizer=str(tok.resolve()), dtype=args.dtype, pretrain_costs="per-target")
    path = work / f"run-{domain}-{tokens}-{settings_key(args)}"
    started = time.time()
    tr = finished_run(path, cfg, [str(sel.path)]) or train(
        [sel.path], path, cfg, finetune=[corpus.sample(domain)], eval=[corpus.eval(domain)], overwrite=True)
    return {"finetuned": tr.metrics["finetuned"]["macro_ppl"], "pretrained": tr.metrics["pretrained"]["macro_ppl"],
            "rows": sel.stats["rows"], "unique_documents": sel.stats["unique_documents"],
            "method": sel.manifest.config["method"], "seconds": round(time.time() - started, 1)}


def settings_key(args: argparse.Namespace) -> str:
    """What changes every number besides the budget: seed, dtype, steps."""
    return f"s{args.seed}-{args.dtype}-{args.steps}+{args.finetune_steps}"


def table(ceiling: dict, against: dict, tokens: int, seed: int) -> str:
    """Per domain: the paper table's methods at this budget and seed (`against`: {} when the settings
    are not that table's), then the ceiling; macro averages."""
    key = f"{tokens // 1000}k s{seed}"
    ref = against.get(key, {"config": {"methods": []}, "domains": {}})
    methods = list(ref["config"]["methods"])
    domains = [d for d in ceiling if d in ref["domains"]] if methods else list(ceiling)
    head = ["domain"] + methods + ["ceiling (the domain's own documents)"]
    lines = [f"{tokens:,} tokens, seed {seed} (paper table: `{key}` of {AGAINST.name}):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sums = [0.0] * (len(methods) + 1)
    for d in domains:
        vals = [ref["domains"][d]["methods"][m]["metrics"]["finetuned"]["macro_ppl"] for m in methods]
        vals.append(ceiling[d]["finetuned"])
        sums = [s + v for s, v in zip(sums, vals)]
        lines.append("| " + " | ".join([d] + [f"{v:.2f}" for v in vals]) + " |")
    n = max(len(domains), 1)
    lines.append("| **macro average** | " + " | ".join(f"{s / n:.2f}" for s in sums) + " |")
    if methods and domains:
        lines += ["", f"ceiling / {methods[0]}: {sums[-1] / sums[0]:.3f} (over {len(domains)} domains)"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", default="40000,200000", help="comma-separated budgets (embedding-model tokens)")
    p.add_argument("--domains", help="comma-separated bundled domains (default: all 8)")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--finetune-steps", dest="finetune_steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", help="training dtype (the committed paper table: float32)")
    p.add_argument("--work", default=str(ROOT / "benchmarks" / ".cache" / "ceiling"))
    p.add_argument("--against", default=str(AGAINST), help="paper-table results to print beside the ceiling")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    p.add_argument("--prepare-only", action="store_true",
                   help="make the tokenizer and every domain's selection at every budget, train nothing (run it "
                        "once before budgets run side by side: they share these files)")
    args = p.parse_args()
    import torch

    from impsamp.datasets import demo_corpus

    torch.set_num_threads(1)  # one LM per core: run two of these side by side on 2 cores
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    domains = args.domains.split(",") if args.domains else list(demo_corpus().domains)
    paper_settings = (args.dtype, args.steps, args.finetune_steps) == ("float32", 80, 20)
    against = json.loads(Path(args.against).read_text()) if Path(args.against).exists() and paper_settings else {}
    budgets = [int(t) for t in args.tokens.split(",")]
    if args.prepare_only:
        tokenizer(work)
        for tokens in budgets:
            for d in domains:
                domain_selection(work, d, tokens, args.seed)
        print(f"prepared {len(domains)} domains x {len(budgets)} budgets in {work}")
        return
    print(f"Machine: {machine()}; training dtype {args.dtype}, `mini` {args.steps} + {args.finetune_steps} "
          f"steps, seed {args.seed}.", flush=True)
    for tokens in budgets:
        ceiling = {}
        for d in domains:
            ceiling[d] = ceiling_run(work, d, tokens, args)
            print(f"[ceiling] {d} {tokens}: {json.dumps(ceiling[d])}", file=sys.stderr, flush=True)
        print("\n" + table(ceiling, against, tokens, args.seed) + "\n", flush=True)
        if not args.no_write:
            save(work, f"{tokens // 1000}k {settings_key(args)}", ceiling)


def save(work: Path, key: str, ceiling: dict) -> None:
    """Merge one budget's runs into the results file, under a lock in the work folder (another budget's
    process may be writing it too)."""
    import fcntl
    import os

    with open(work / "results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results.setdefault(key, {}).update(ceiling)
        tmp = RESULTS.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(RESULTS)


if __name__ == "__main__":
    main()
