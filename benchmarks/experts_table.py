"""Cluster experts (SLM-mix) against one dense model at equal generic pretraining FLOPs, on the bundled corpus.

    .venv/bin/python benchmarks/experts_table.py                  # the whole table (about an hour, 2 cores)
    .venv/bin/python benchmarks/experts_table.py --budgets 10,40 --domains fortunes --finetune-steps 4

Generic corpus: the bundled pool (8 domains, 4,800 documents), embedded with all-MiniLM-L6-v2 (128
tokens) and clustered once (k=64). One shared BPE tokenizer (4,096). Models, all of the `tiny`
preset (4.5M parameters, the inference size of every row):
- `dense`: one model pretrained on the whole pool for S steps of 4,096 tokens;
- `experts G=4`, `experts G=8`: the 64 clusters merged into G groups, one expert per group, the
  S x 4,096 tokens split in proportion to the groups' tokens (the same generic FLOPs);
each at two budgets S (the larger 4x the smaller). Generic perplexity: the 8 domains' held-out text
(the pool's distribution), scored by the dense model, or routed (each document by its group's expert).
Per target (every domain), at two in-domain sizes (a quarter of the sample and all of it): the
dense model fine-tuned, and the experts specialised with `top`; early stopping on 20% of the
sample held out (patience 2, every 2 steps, at most --finetune-steps). Then the three selection rules
(G=4, larger budget, whole sample) and importance sampling at the same inference size (a selection of
S_small x 4,096 tokens per target, a `tiny` model pretrained on it for S_small steps, fine-tuned the
same way; its whole cost is per target).

Results go to --work/results.json after every run (a rerun skips what is there) and to
benchmarks/results/experts.md. Not run in CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from impsamp.training.config import DTYPES  # noqa: E402  (the trainer's dtypes, one list)

ROOT = Path(__file__).resolve().parents[1]
OUT_MD = ROOT / "benchmarks" / "results" / "experts.md"
STEP_TOKENS = 16 * 256


class Bench:
    def __init__(self, args: argparse.Namespace):
        from impsamp.datasets import demo_corpus

        self.args, self.work = args, Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.corpus = demo_corpus()
        self.domains = args.domains.split(",") if args.domains else list(self.corpus.domains)
        self.path = self.work / "results.json"
        self.results = json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self) -> None:
        """Atomically: a reader (plan_table's workers) never sees half a file."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, sort_keys=True))
        tmp.replace(self.path)

    def once(self, key: str, fn):
        if key not in self.results:
            t = time.time()
            self.results[key] = {**fn(), "seconds": round(time.time() - t, 1)}
            self.save()
            print(f"[bench] {key}: {json.dumps({k: v for k, v in self.results[key].items() if k != 'per_file'})[:200]}",
                  flush=True)
        return self.results[key]

    # ---- shared generic stages

    def prepare(self) -> None:
        from impsamp.clustering import ClusterConfig, Clusters, cluster
        from impsamp.embedding import EmbedConfig, Embeddings, embed
        from impsamp.errors import StageError
        from impsamp.training import train_tokenizer

        try:
            self.emb = Embeddings.load(self.work / "emb")
        except StageError:
            self.emb = embed(self.corpus.pool, self.work / "emb",
                             EmbedConfig(max_tokens=128, backend="onnx"), overwrite=True)
        try:
            self.clu = Clusters.load(self.work / "clu")
        except StageError:
            self.clu = cluster(self.emb, self.work / "clu", ClusterConfig(k=self.args.k, seed=0), overwrite=True)
        self.tok = self.work / "tokenizer.json"
        if not self.tok.exists():
            train_tokenizer([str(self.corpus.pool)], 4096, self.tok)
        import pyarrow.parquet as pq

        self.evals = [self.eval_file(d) for d in self.corpus.domains]

        self.samples = {}
        for d in self.domains:
            full = self.corpus.sample(d)
            quarter = self.work / "samples" / f"{d}-quarter.parquet"
            if not quarter.exists():
                quarter.parent.mkdir(exist_ok=True)
                t = pq.read_table(full)
                pq.write_table(t.slice(0, max(8, t.num_rows // 4)), quarter)
            self.samples[d] = {"quarter": str(quarter), "full": str(full)}

    def eval_file(self, domain: str) -> str:
        """A domain's held-out text: the whole split, or its first --eval-docs documents (written once)."""
        import pyarrow.parquet as pq

        full = self.corpus.eval(domain)
        if not self.args.eval_docs:
            return str(full)
        path = self.work / "evals" / str(self.args.eval_docs) / f"{domain}.parquet"  # the domain's name kept
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            pq.write_table(pq.read_table(full).slice(0, self.args.eval_docs), tmp)
            tmp.replace(path)
        return str(path)

    def ft_config(self, **kw):
        from impsamp.training import TrainConfig

        return TrainConfig(finetune_steps=self.args.finetune_steps, early_stopping=2, eval_every=2,
                           finetune_val_fraction=0.2, seed=0, dtype=self.args.dtype, **kw)

    # ---- generic pretraining at equal FLOPs

    def pretrain(self, steps: int) -> dict[str, Path]:
        from impsamp.errors import StageError
        from impsamp.mixture import Experts, ExpertsConfig, evaluate_routed, experts
        from impsamp.training import TrainConfig, TrainRun, evaluate, train

        models = {}
        dense = self.work / f"S{steps}" / "dense"
        try:
            TrainRun.load(dense)
        except StageError:
            train([str(self.corpus.pool)], dense, TrainConfig(steps=steps, tokenizer=str(self.tok), seed=0,
                                                              pretrain_costs="generic", dtype=self.args.dtype), overwrite=True)
        models["dense"] = dense
        self.once(f"S{steps}/dense/generic", lambda: scores(evaluate(dense, self.evals), TrainRun.load(dense)))
        for g in self.args.groups:
            path = self.work / f"S{steps}" / f"experts{g}"
            try:
                Experts.load(path)
            except StageError:
                experts(self.emb, self.clu, path, ExpertsConfig(groups=g, total_tokens=steps * STEP_TOKENS,
                                                                tokenizer=str(self.tok),
                                                                train={"dtype": self.args.dtype}), overwrite=True)
            models[f"experts{g}"] = path
            self.once(f"S{steps}/experts{g}/generic",
                      lambda p=path: {**scores(evaluate_routed(p, self.evals)),
                                      "costs": Experts.load(p).costs.to_dict()})
        return models

    # ---- per target

    def finetune(self, steps: int, name: str, model: Path, domain: str, size: str, select: str = "top") -> dict:
        from impsamp.mixture import specialize
        from impsamp.training import train

        out = self.work / f"S{steps}" / "ft" / f"{name}-{select}-{size}-{domain}"
        sample, ev = self.samples[domain][size], [self.eval_file(domain)]
        if name == "dense":
            run = train(None, out, self.ft_config(init=str(model)), finetune=[sample], eval=ev, overwrite=True)
        else:
            run = specialize(model, [sample], out, select=select, config=self.ft_config(), eval=ev, overwrite=True)
        res = {"before": run.metrics["pretrained"]["macro_ppl"], "after": run.metrics["finetuned"]["macro_ppl"],
               "costs": run.metrics["costs"], "early_stopping": run.metrics.get("early_stopping")}
        spec = out / "specialization.json"
        if spec.exists():
            rec = json.loads(spec.read_text())
            res.update(chosen=rec["chosen"], top_group=rec["top_group"], mass_on_chosen=rec["target_mass_on_chosen"])
        return res

    def importance(self, steps: int, domain: str) -> dict:
        from impsamp.resampling import ResampleConfig, resample
        from impsamp.training import train

        sample, ev = self.samples[domain]["full"], [self.eval_file(domain)]
        sel = resample(self.emb, self.clu, self.work / "importance" / f"sel-{domain}", targets=[sample],
                       config=ResampleConfig(tokens=steps * STEP_TOKENS, seed=0, within="uniform"),
                       overwrite=True)  # within uniform: the seed paper's draw, as the committed tables measured it
        cfg = replace(self.ft_config(), steps=steps, tokenizer=str(self.tok))
        run = train([str(sel.path)], self.work / "importance" / f"lm-{domain}", cfg, finetune=[sample], eval=ev,
                    overwrite=True)
        return {"before": run.metrics["pretrained"]["macro_ppl"], "after": run.metrics["finetuned"]["macro_ppl"],
                "costs": run.metrics["costs"]}

    def run(self) -> None:
        """Every row, the larger budget's whole-sample rows, selection rules and importance rows first (the
        parts a session is most likely not to reach otherwise); each row is kept in results.json, so the
        order changes no figure."""
        self.prepare()
        small, large = self.args.budgets
        models = self.pretrain(large)
        self.top_rows(large, models, "full")
        rule_model = f"experts{self.args.groups[0]}"
        for select in ("lowest-loss", "all"):
            for d in self.domains:
                self.once(f"S{large}/{rule_model}/{select}/full/{d}",
                          lambda s=select, d=d: self.finetune(large, rule_model, models[rule_model], d, "full", s))
        for d in self.domains:
            self.once(f"importance/S{small}/{d}", lambda d=d: self.importance(small, d))
        self.top_rows(large, models, "quarter")
        models = self.pretrain(small)
        for size in ("full", "quarter"):
            self.top_rows(small, models, size)

    def top_rows(self, steps: int, models: dict[str, Path], size: str) -> None:
        for name, path in models.items():
            for d in self.domains:
                self.once(f"S{steps}/{name}/top/{size}/{d}",
                          lambda n=name, p=path, d=d: self.finetune(steps, n, p, d, size))


def scores(m: dict, run=None) -> dict:
    out = {"macro_ppl": m["macro_ppl"], "per_file": {Path(k).stem: v["ppl"] for k, v in m["per_file"].items()}}
    if run is not None:
        out["costs"] = run.metrics["costs"]
    return out


def result_files(work: Path) -> list[Path]:
    """Every result file of the three table scripts in a work folder (plan_table may write several,
    one per invocation run side by side with --results)."""
    names = [work / "results.json", work / "results-projected.json", *sorted(work.glob("results-plan*.json"))]
    return [p for p in names if p.exists()]


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def budget_table(r: dict, steps: int, names: list[str], label: dict[str, str], doms: list[str]) -> list[str]:
    """One budget's rows: generic perplexity, costs, macro perplexity before and after fine-tuning."""
    from impsamp.costs import format_flops

    lines = [f"## Generic pretraining budget: {steps} steps ({steps * STEP_TOKENS:,} tokens)", "",
             "| model | generic ppl | generic FLOPs (paid once) | params stored / active | before fine-tuning "
             "| after, quarter sample | after, whole sample |", "|---|---|---|---|---|---|---|"]
    for n in names:
        gen = r.get(f"S{steps}/{n}/generic")
        if gen is None:
            continue
        c = gen["costs"]
        full = [r.get(f"S{steps}/{n}/top/full/{d}") for d in doms]
        quarter = [r.get(f"S{steps}/{n}/top/quarter/{d}") for d in doms]
        lines.append(f"| {label[n]} | {gen['macro_ppl']:.2f} | {format_flops(c['generic'])} | "
                     f"{c['params_total'] / 1e6:.1f}M / {c['params_active'] / 1e6:.1f}M | "
                     f"{_macro(full, 'before')} | {_macro(quarter, 'after')} | {_macro(full, 'after')} |")
    return lines + [""]


def _macro(cells: list, field: str) -> str:
    """A macro average only over every domain; else how many domains are measured (a partial mean
    would compare unlike sets of domains)."""
    done = [c[field] for c in cells if c]
    return f"{_mean(done):.2f}" if len(done) == len(cells) else f"({len(done)} of {len(cells)} domains)"


def arguments(description: str) -> argparse.Namespace:
    """The flags both tables take (they share --work)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--work", default="/tmp/impsamp-bench-experts")
    ap.add_argument("--budgets", default="30,120", help="small,large generic pretraining steps")
    ap.add_argument("--groups", default="4,8")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--domains", default=None)
    ap.add_argument("--finetune-steps", type=int, default=12)
    ap.add_argument("--dtype", default="auto", choices=DTYPES,
                    help="every model's autocast dtype (auto: the trainer's choice for this CPU)")
    ap.add_argument("--eval-docs", type=int, default=None,
                    help="score each domain's first N held-out documents [default: all of them]")
    ap.add_argument("--out", default=None, help="the report's Markdown file [default: benchmarks/results/<table>.md]")
    ap.add_argument("--importance-steps", type=int, default=None,
                    help="plan_table only: importance sampling's per-target pretraining steps [default: 120, at "
                         "most the largest budget]")
    ap.add_argument("--jobs", type=int, default=1,
                    help="plan_table only: worker processes, one torch thread each (2 on a 2-core machine)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--results", default=None, help="plan_table only: its result file in --work")
    ap.add_argument("--sizes", default="full,quarter", help="plan_table only: the in-domain sizes to run")
    ap.add_argument("--strategies", default=None,
                    help="plan_table only: the strategies to run (default all, importance included)")
    args = ap.parse_args()
    args.defaults = {dest: ap.get_default(dest) for dest in vars(args)}  # to name only the flags given
    args.budgets = tuple(int(x) for x in args.budgets.split(","))
    args.groups = [int(x) for x in args.groups.split(",")]
    return args


def report(bench: Bench, started: float) -> str:
    from impsamp.costs import format_flops

    r, a = bench.results, bench.args
    small, large = a.budgets
    names = ["dense"] + [f"experts{g}" for g in a.groups]
    label = {"dense": "dense", **{f"experts{g}": f"experts G={g} (top)" for g in a.groups}}
    doms = bench.domains
    lines = [
        "# Cluster experts (SLM-mix) vs one dense model, bundled corpus", "",
        f"Machine: {machine()}. Date: {dt.date.today()}. Wall time: {(time.time() - started) / 60:.0f} min "
        f"(this invocation). Command: `.venv/bin/python benchmarks/experts_table.py "
        f"--budgets {small},{large} --finetune-steps {a.finetune_steps}`.", "",
        "Every model is the `tiny` preset (4.5M parameters: the same inference cost per token in every row). "
        f"Budgets: {small} and {large} steps of 4,096 tokens of generic pretraining, spent on one dense model or "
        "split over the experts in proportion to their groups' tokens, in whole steps (equal generic FLOPs). "
        "Generic perplexity: the 8 domains' held-out text, routed "
        "to each document's expert for the mixtures. Fine-tuning: at most "
        f"{a.finetune_steps} steps, early stopping on 20% of the sample held out (patience 2, every 2 steps), "
        "best weights kept. Perplexity macro-averaged over the 8 domains' held-out text.", "",
    ]
    for steps in (small, large):
        lines += budget_table(r, steps, names, label, doms)
    lines += ["## Per domain after fine-tuning (whole sample / quarter sample)", "",
              "| domain | " + " | ".join(f"{label[n]}, S={s}" for s in (small, large) for n in names) + " |",
              "|---|" + "---|" * (2 * len(names))]
    for d in doms:
        cells = []
        for s in (small, large):
            for n in names:
                f, q = r.get(f"S{s}/{n}/top/full/{d}"), r.get(f"S{s}/{n}/top/quarter/{d}")
                cells.append(f"{f['after']:.1f} / {q['after']:.1f}" if f and q else "-")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines.append("")
    rule = f"experts{a.groups[0]}"
    lines += [f"## Selection rules (G={a.groups[0]}, {large} steps, whole sample)", "",
              "| rule | macro ppl after | per-target FLOPs | experts chosen (per domain) |", "|---|---|---|---|"]
    for select in ("top", "lowest-loss", "all"):
        rows = [r.get(f"S{large}/{rule}/{select}/full/{d}") for d in doms]
        done = [x for x in rows if x]
        if done:  # a partial row says over how many domains
            part = "" if len(done) == len(rows) else f" ({len(done)} of {len(rows)} domains)"
            lines.append(f"| {select}{part} | {_mean([x['after'] for x in done]):.2f} | "
                         f"{format_flops(_mean([x['costs']['per_target'] for x in done]))} | "
                         f"{', '.join(str(x.get('chosen')) if x else '-' for x in rows)} |")
    lines.append("")
    imp = [r.get(f"importance/S{small}/{d}") for d in doms]
    if all(imp):
        lines += ["## Importance sampling at the same inference size", "",
                  f"A `tiny` model pretrained per target on its importance-sampled selection ({small} steps), then "
                  "fine-tuned on the whole sample: all of its cost is per target.", "",
                  "| strategy | macro ppl after | generic FLOPs | per-target FLOPs |", "|---|---|---|---|",
                  f"| importance sampling | {_mean([x['after'] for x in imp]):.2f} | 0 | "
                  f"{format_flops(_mean([x['costs']['per_target'] for x in imp]))} |"]
        for s in (small, large):
            for n in names:
                rows = [r.get(f"S{s}/{n}/top/full/{d}") for d in doms]
                if all(rows):
                    lines.append(f"| {label[n]}, S={s} | {_mean([x['after'] for x in rows]):.2f} | "
                                 f"{format_flops(rows[0]['costs']['generic'])} | "
                                 f"{format_flops(_mean([x['costs']['per_target'] for x in rows]))} |")
        lines.append("")
    return "\n".join(lines)


def run_table(bench_class, report_fn, out_md: Path, doc: str) -> None:
    """The main of every table script: run (unless --report-only), print the report, write it unless
    --domains limits the run."""
    args = arguments(doc.splitlines()[0])
    out_md = Path(args.out) if args.out else out_md
    out_md.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    bench = bench_class(args)
    if not args.report_only:
        bench.run()
    text = report_fn(bench, started)
    print(text)
    if not args.domains:
        out_md.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    run_table(Bench, report, OUT_MD, __doc__)


if __name__ == "__main__":
    main()
