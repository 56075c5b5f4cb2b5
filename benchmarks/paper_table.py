"""The seed paper's table on the bundled corpus: every domain as the target, every selector, one LM each.

    .venv/bin/python benchmarks/paper_table.py                     # all 8 domains, 4 methods (long)
    .venv/bin/python benchmarks/paper_table.py --domains python_docs,fortunes --steps 60
    .venv/bin/python benchmarks/paper_table.py --methods importance-uniform,importance,ngram --tokens 40000 --no-write
    .venv/bin/python benchmarks/paper_table.py --methods importance --windows  # windows as the unit

For each of the 8 bundled domains as the target (in-domain sample = `demo_corpus().sample(domain)`,
evaluation = `demo_corpus().eval(domain)`, generic = the pool of all 8 domains) it runs `impsamp
compare` with the same settings as `impsamp demo` (or the ones given): one selection per method at
the same token budget, the same LM pretrained on each with the same seed, fine-tuned on the sample,
evaluated on the held-out text. The pool is embedded and clustered once and reused by every domain.

Prints, and writes to benchmarks/results/paper.md: perplexity after pretraining only and after
fine-tuning per domain and method, the macro average over domains (the shape of the seed paper's
table), how often importance beats uniform after fine-tuning, and each selection's target-domain
share, unique documents and repetition. Not run in CI (tens of minutes on 2 CPU cores); resumable: each domain's compare folder
under --work is reused when its settings match.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402  (one machine description for every benchmark)
from impsamp.training.config import DTYPES  # noqa: E402  (the trainer's dtypes, one list)
from impsamp.training_noise import seed_words  # noqa: E402  (the seeds sentence of compare's report)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "paper.md"


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def run(args: argparse.Namespace) -> dict[str, dict]:
    from impsamp.clustering import ClusterConfig, cluster
    from impsamp.comparison import CompareConfig, compare
    from impsamp.embedding.loading import backend_label, embed_backend
    from impsamp.datasets import demo_corpus
    from impsamp.embedding import EmbedConfig, embed
    from impsamp.demonstration import DEMO_DEFAULTS

    corpus = demo_corpus()
    domains = args.domains.split(",") if args.domains else list(corpus.domains)
    overrides = {f.name: getattr(args, f.name) for f in fields(CompareConfig)
                 if getattr(args, f.name, None) is not None}
    overrides["methods"] = tuple(args.methods.split(","))
    cfg = CompareConfig(**{**DEMO_DEFAULTS, **overrides})
    work = Path(args.work)
    backend, quantize = embed_backend(cfg.backend)
    emb_dir = work / f"embeddings-{backend_label((backend, quantize))}-{cfg.max_tokens}{'-windows' * args.windows}"
    clu_dir = emb_dir.with_name(f"clusters-k{cfg.k}-s{cfg.seed}-{emb_dir.name}")
    t0 = time.time()
    if not (emb_dir / "manifest.json").exists():
        embed(corpus.pool, emb_dir, EmbedConfig(model=cfg.model, max_tokens=cfg.max_tokens, backend=backend,
                                               quantize=quantize, windows=args.windows),
              overwrite=True, progress=True)
    if not (clu_dir / "manifest.json").exists():
        cluster(emb_dir, clu_dir, ClusterConfig(k=cfg.k, seed=cfg.seed), overwrite=True)
    results = {}
    for d in domains:
        out = work / f"compare-{d}{'-windows' * args.windows}"  # the embeddings differ
        started = time.time()
        try:
            from impsamp.comparison import Report

            report = Report.load(out)
            if report.results.get("config") != json.loads(json.dumps(asdict(cfg))):
                raise ValueError("other settings")
        except Exception:  # noqa: BLE001 - not there, incomplete or other settings: run it
            report = compare([corpus.pool], [corpus.sample(d)], [corpus.eval(d)], out, cfg,
                             embeddings=emb_dir, clusters=clu_dir, overwrite=True, progress=args.progress)
        results[d] = report.results
        print(f"[paper] {d}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    print(f"[paper] all domains: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return {"config": asdict(cfg), "windows": args.windows, "domains": results}


def table(res: dict) -> str:
    methods = list(res["config"]["methods"])
    domains = list(res["domains"])
    lines = []
    for phase, label in (("finetuned", "after fine-tuning"), ("pretrained", "pretrained only")):
        head = ["domain"] + methods
        lines += [f"Perplexity on the held-out in-domain text, {label} (lower is better):", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        per_method: dict[str, list[float]] = {m: [] for m in methods}
        for d in domains:
            row = [d]
            vals = {m: res["domains"][d]["methods"][m]["metrics"].get(phase, {}).get("macro_ppl", float("nan"))
                    for m in methods}
            best = min(vals.values())
            for m in methods:
                per_method[m].append(vals[m])
                row.append(f"**{vals[m]:.2f}**" if vals[m] == best else f"{vals[m]:.2f}")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("| **macro average** | " + " | ".join(f"{_mean(per_method[m]):.2f}" for m in methods) + " |")
        lines.append("")
    if "importance" in methods and "uniform" in methods:
        wins = [d for d in domains
                if res["domains"][d]["methods"]["importance"]["metrics"]["finetuned"]["macro_ppl"]
                < res["domains"][d]["methods"]["uniform"]["metrics"]["finetuned"]["macro_ppl"]]
        lines += [f"importance beats uniform after fine-tuning on {len(wins)} of {len(domains)} domains"
                  + (f" (not on: {', '.join(sorted(set(domains) - set(wins)))})" if len(wins) < len(domains) else "")
                  + ".", ""]
    head = ["domain"] + methods
    lines += ["Each selection: share of its rows from the target domain / unique documents / repetition (rows "
              "that repeat a document already selected):", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in domains:
        ms = res["domains"][d]["methods"]
        lines.append("| " + " | ".join([d] + [f"{ms[m].get('target_domain_share', float('nan')):.0%} / "
                                               f"{ms[m]['selection']['unique_documents']:,} / "
                                               f"{ms[m]['selection']['repetition_rate']:.0%}"
                                               for m in methods]) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--domains", help="comma-separated bundled domains (default: all 8)")
    p.add_argument("--methods", default="uniform,importance,ngram,classifier")
    p.add_argument("--tokens", type=int)
    p.add_argument("--k", type=int)
    p.add_argument("--scheme")
    p.add_argument("--max-tokens", dest="max_tokens", type=int)
    p.add_argument("--dtype", choices=DTYPES,
                   help="training dtype (the committed 0.6.0 tables: float32; auto is bfloat16 on AVX512-BF16 CPUs)")
    p.add_argument("--within", help="importance's --within (auto, knn, knn+ngram, ngram-classifier)")
    p.add_argument("--within-temperature", dest="within_temperature", type=float, help="importance's tau inside the clusters")
    p.add_argument("--within-repeats", dest="within_repeats", help="importance's even|weighted repeats")
    p.add_argument("--max-repeat", dest="max_repeat", type=int, help="importance methods: the repeat cap")
    p.add_argument("--within-top", dest="within_top", type=float,
                   help="importance's --within-top F: only the top units holding F x the budget may be drawn")
    p.add_argument("--preset")
    p.add_argument("--steps", type=int)
    p.add_argument("--finetune-steps", dest="finetune_steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--train-seed", dest="train_seed", type=int,
                   help="the LMs' seed, when it should differ from the selections' (--seed): the training's own noise")
    p.add_argument("--lm-seeds", dest="lm_seeds", type=int,
                   help="LMs per selection (seeds --train-seed and after): cells are their means")
    p.add_argument("--windows", action="store_true",
                   help="embed the pool in --max-tokens windows: the window is the selection unit (else truncated)")
    p.add_argument("--work", default=str(ROOT / "benchmarks" / ".cache" / "paper"), help="where the runs go")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    args = p.parse_args()
    load0, t0 = os.getloadavg()[0], time.time()
    res = run(args)
    text = table(res)
    cfg = res["config"]
    header = "\n".join([
        "# The paper table on the bundled corpus", "",
        f"Machine: {machine()}; date {dt.date.today().isoformat()}; load average {load0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end; {time.time() - t0:.0f} s in all (runs reused from "
        f"`{args.work}` count as 0).",
        f"Command: `python benchmarks/paper_table.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`.",
        f"Settings (as `impsamp demo`): budget {cfg['tokens']:,} tokens per selection, k={cfg['k']}, scheme "
        f"`{cfg['scheme']}`, embedding max tokens {cfg['max_tokens']} "
        f"({'windows: the window is the unit' if res['windows'] else 'truncated'}), importance's within "
        f"`{cfg.get('within', 'auto')}`, tau "
        f"{cfg['within_temperature']} and repeats `{cfg['within_repeats']}`, repeat cap "
        f"{cfg['max_repeat'] or 'default (importance: 4)'}, within-top {cfg.get('within_top') or 'off'}, LM preset `{cfg['preset']}` "
        f"{cfg['steps']} pretraining + {cfg['finetune_steps']} fine-tuning steps, training dtype "
        f"`{cfg.get('dtype', 'auto')}`, {seed_words(cfg)}.", ""])
    print(header + "\n" + text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(header + "\n" + text + "\n")
        (RESULTS.with_suffix(".json")).write_text(json.dumps(res, indent=1, default=float) + "\n")
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
