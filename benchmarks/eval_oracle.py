"""How far any selector could go: select with the held-out evaluation text itself as the target.

    .venv/bin/python benchmarks/eval_oracle.py --prepare-only                # embeddings, clusters, tokenizer
    .venv/bin/python benchmarks/eval_oracle.py --tokens 40000 & \
    .venv/bin/python benchmarks/eval_oracle.py --tokens 200000 & wait        # one LM per core

Issue 24 asks for a selector 10% below the seed paper's `match` (macro perplexity after fine-tuning, 8
bundled domains). `selection_ceiling.py` bounds selectors that find the target domain's documents; but a
selector may also rank documents inside the domain (`ngram` beats that ceiling on some domains), so that
bound is not strict. This script cheats on purpose: it selects with the evaluation text as the target (the
text every perplexity is measured on, which no real selector sees), with the default `importance` and with
`ngram`, then trains exactly as the paper table does (the same pool embeddings and k = 64 clusters, the
tokenizer trained on the pool, the demo's LM `mini` 80 + 20 steps, fine-tuned on the in-domain *sample*,
scored on the evaluation text). The pool holds no evaluation document, so nothing leaks verbatim; what the
oracle gains is knowing which pool documents look like the test text. `match` (the sample as the target,
within-cluster draws uniform) runs in the same process as the yardstick.

Prints a markdown table per budget and writes `benchmarks/results/eval_oracle.json` and `.md`. Not run in CI (about
2 minutes per LM on one core, 3 LMs per domain and budget); resumable: finished runs under --work are
reused when this impsamp version made them.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "eval_oracle.json"
REPORT = RESULTS.with_suffix(".md")
SELECTORS = {  # name -> (method, within, target: "sample" or "eval")
    "match": ("importance", "uniform", "sample"),
    "oracle importance": ("importance", "auto", "eval"),
    "oracle ngram": ("ngram", None, "eval"),
}


def stages(work: Path, seed: int):
    """The pool's embeddings (ONNX int8, 128 tokens: the committed paper table's) and k = 64 clusters."""
    from impsamp.clustering import ClusterConfig, Clusters, cluster
    from impsamp.datasets import demo_corpus
    from impsamp.embedding import EmbedConfig, Embeddings, embed

    emb_dir, clu_dir = work / "embeddings", work / f"clusters-k64-s{seed}"
    if not (emb_dir / "manifest.json").exists():
        embed(demo_corpus().pool, emb_dir, EmbedConfig(max_tokens=128, backend="onnx", quantize="int8"),
              overwrite=True, progress=True)
    if not (clu_dir / "manifest.json").exists():
        cluster(Embeddings.load(emb_dir), clu_dir, ClusterConfig(k=64, seed=seed), overwrite=True)
    return Embeddings.load(emb_dir), Clusters.load(clu_dir)


def selection(work: Path, name: str, domain: str, tokens: int, seed: int):
    from impsamp.datasets import demo_corpus
    from impsamp.resampling import ResampleConfig, Selection, resample

    out = work / f"selection-{name.replace(' ', '_')}-{domain}-{tokens}-s{seed}"
    if (out / "manifest.json").exists():
        return Selection.load(out)
    method, within, target = SELECTORS[name]
    corpus = demo_corpus()
    emb, clu = stages(work, seed)
    extra = {"within": within} if within else {}
    return resample(emb, clu, out, overwrite=True,
                    targets=[corpus.sample(domain) if target == "sample" else corpus.eval(domain)],
                    config=ResampleConfig(tokens=tokens, seed=seed, method=method, **extra))


def lm_run(work: Path, name: str, domain: str, tokens: int, args: argparse.Namespace) -> dict:
    """The paper table's LM on one selection: fine-tuned on the sample, scored on the evaluation text."""
    from impsamp.datasets import demo_corpus
    from impsamp.domains import domain_column, domain_shares
    from impsamp.io import open_corpus
    from impsamp.training import TrainConfig, train
    from impsamp.training.provenance import finished_run
    from selection_ceiling import tokenizer

    corpus = demo_corpus()
    sel = selection(work, name, domain, tokens, args.seed)
    cfg = TrainConfig(preset="mini", steps=80, finetune_steps=20, seed=args.seed,
                      tokenizer=str(tokenizer(work).resolve()), dtype="float32", pretrain_costs="per-target")
    path = work / f"run-{name.replace(' ', '_')}-{domain}-{tokens}-s{args.seed}"
    started = time.time()
    tr = finished_run(path, cfg, [str(sel.path)]) or train(
        [sel.path], path, cfg, finetune=[corpus.sample(domain)], eval=[corpus.eval(domain)], overwrite=True)
    shares = domain_shares(sel, domain_column(open_corpus([str(corpus.pool)])))
    return {"finetuned": tr.metrics["finetuned"]["macro_ppl"], "pretrained": tr.metrics["pretrained"]["macro_ppl"],
            "target_share": round(shares.get(domain, 0.0), 4),
            "unique_documents": sel.stats["unique_documents"], "repetition": sel.stats["repetition_rate"],
            "seconds": round(time.time() - started, 1)}


def table(res: dict, tokens: int) -> str:
    names = list(SELECTORS)
    head = ["domain"] + names + ["best oracle / match"]
    lines = [f"{tokens:,} tokens (perplexity after fine-tuning; target share in brackets):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sums = {n: 0.0 for n in names}
    best_sum = 0.0
    for d, runs in res.items():
        best = min(runs[n]["finetuned"] for n in names[1:])
        best_sum += best
        for n in names:
            sums[n] += runs[n]["finetuned"]
        lines.append("| " + " | ".join([d] + [f"{runs[n]['finetuned']:.2f} ({runs[n]['target_share']:.0%})"
                                              for n in names] + [f"{best / runs['match']['finetuned']:.3f}"]) + " |")
    k = max(len(res), 1)
    lines.append("| **macro average** | " + " | ".join(f"{sums[n] / k:.2f}" for n in names)
                 + f" | {best_sum / max(sums['match'], 1e-9):.3f} |")
    lines += ["", "; ".join(f"{n} / match: {sums[n] / max(sums['match'], 1e-9):.3f}" for n in names[1:])
              + f"; per-domain best oracle / match: {best_sum / max(sums['match'], 1e-9):.3f} (goal of issue 24: 0.900)"]
    return "\n".join(lines)


def save(work: Path, key: str, res: dict) -> None:
    """Merge one budget's runs into the results file under a lock (the other budget's process writes it too),
    and write the markdown report of every budget in it."""
    with open(work / "results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results.setdefault(key, {}).update(res)
        results["machine"] = machine()
        for path, text in ((RESULTS, json.dumps(results, indent=1) + "\n"), (REPORT, report(results))):
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(path)


def report(results: dict) -> str:
    """`eval_oracle.md`: the script's purpose in a line, the machine, a table per budget and seed."""
    keys = sorted((k for k in results if k != "machine"), key=lambda k: (int(k.split("k")[0]), k))
    parts = ["# Selecting with the evaluation text as the target (an oracle no selector can be)", "",
             f"Machine: {results['machine']}. `python benchmarks/eval_oracle.py` (the demo's LM, `mini` 80 + 20 "
             "steps, float32, fine-tuned on the sample, scored on the evaluation text; k = 64 clusters of the pool's "
             "ONNX int8 embeddings). `match` selects with the sample, as the seed paper; the oracles select with "
             "the evaluation text itself.", ""]
    for k in keys:
        parts += [f"## {k}", "", table(results[k], int(k.split("k")[0]) * 1000), ""]
    return "\n".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", default="40000,200000", help="comma-separated budgets (embedding-model tokens)")
    p.add_argument("--domains", help="comma-separated bundled domains (default: all 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(ROOT / "benchmarks" / ".cache" / "oracle"))
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    p.add_argument("--prepare-only", action="store_true", help="embeddings, clusters and tokenizer; no LM")
    args = p.parse_args()
    import torch

    from impsamp.datasets import demo_corpus
    from selection_ceiling import tokenizer

    torch.set_num_threads(1)  # one LM per core: run a process per budget side by side
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.prepare_only:
        stages(work, args.seed)
        tokenizer(work)
        print(f"prepared {work}")
        return
    domains = args.domains.split(",") if args.domains else list(demo_corpus().domains)
    print(f"Machine: {machine()}; `mini` 80 + 20 steps, float32, seed {args.seed}.", flush=True)
    for tokens in [int(t) for t in args.tokens.split(",")]:
        res = {}
        for d in domains:
            res[d] = {n: lm_run(work, n, d, tokens, args) for n in SELECTORS}
            print(f"[oracle] {d} {tokens}: {json.dumps(res[d])}", file=sys.stderr, flush=True)
        print("\n" + table(res, tokens) + "\n", flush=True)
        if not args.no_write:
            save(work, f"{tokens // 1000}k s{args.seed}", res)


if __name__ == "__main__":
    main()
