"""The seed paper's equal-budget table in miniature: every strategy at three generic budgets, two in-domain
sizes, 8 domains, and the decision rule checked on the measured numbers.

    .venv/bin/python benchmarks/plan_table.py --budgets 30,120,480      # after experts_table / projected_table
    .venv/bin/python benchmarks/plan_table.py --budgets 4,8,16 --domains fortunes --finetune-steps 2

Shares experts_table.py's work folder and results (embeddings, k=64 clustering, tokenizer, samples;
dense, experts G=4/8, projected, soup and importance rows: a row measured there is not measured
again). Adds, at each budget S (steps of 4,096 tokens of generic pretraining):
- `large`: the `tiny-large` preset (22.6M parameters, about 5x `tiny`) pretrained on the pool at the
  dense model's generic FLOPs (S/5 steps, rounded), fine-tuned like the others;
- `distill`: the dense model of budget S fine-tuned with the fine-tuned large model as its teacher
  (alpha 0.5, T 2); its per-target cost includes the teacher's fine-tuning and forward passes;
- the budgets and models experts_table.py and projected_table.py did not reach (the smallest budget);
- `distill-dense` (below the largest budget given): the same student distilled from the largest budget's
  dense model fine-tuned on the target, a teacher better than the student (keys do not name the
  teacher's budget: keep --budgets' largest the same across runs);
- importance sampling at both in-domain sizes (a per-target selection of 120 x 4,096 tokens and a
  `tiny` model pretrained on it for 120 steps, experts_table.py's; fewer when the budgets are smaller).
Sizing for one developer session on 2 cores: `tiny` models, fine-tuning at most 12 steps with early
stopping, the large model at equal FLOPs (so its pretraining costs what the dense model's does), and
no row computed twice across the three scripts.

Results go to --work/results-plan.json (a rerun skips what is there; `--results results-plan-B.json`
names another file, so that two invocations can share the 2 cores, each on its own budgets, e.g. with
OMP_NUM_THREADS=1: each reads the other's rows; `--sizes quarter --strategies large,distill` runs a part) and
benchmarks/results/plan.md (+ plan-decision-S*.png).
Not run in CI.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from experts_table import STEP_TOKENS, _mean, result_files, run_table  # noqa: E402
from projected_table import NETS, ProjBench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT_MD = ROOT / "benchmarks" / "results" / "plan.md"
SIZES = ("full", "quarter")
IMPORTANCE_STEPS = 120


def importance_steps(budgets) -> int:
    return min(IMPORTANCE_STEPS, max(budgets))


class PlanBench(ProjBench):
    """Reads every result file of the work folder; writes its own rows to results-plan.json."""

    def __init__(self, args):
        super().__init__(args)
        self.path = self.work / (args.results or "results-plan.json")
        self.results = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.others = {}
        for path in result_files(self.work):
            if path != self.path:
                self.others.update(json.loads(path.read_text()))

    def once(self, key: str, fn):
        if key in self.others:
            return self.others[key]
        return super().once(key, fn)

    def all_results(self) -> dict:
        return {**self.others, **self.results}

    def large(self, steps: int) -> Path:
        from impsamp.errors import StageError
        from impsamp.training import TrainConfig, TrainRun, train

        dense = TrainConfig(tokenizer=str(self.tok)).model_config(4096)
        cfg = TrainConfig(preset="tiny-large", tokenizer=str(self.tok), seed=0, pretrain_costs="generic")
        large_steps = max(1, round(steps * dense.flops_per_token() / cfg.model_config(4096).flops_per_token()))
        path = self.work / f"S{steps}" / "large"
        try:
            TrainRun.load(path)
        except StageError:
            train([str(self.corpus.pool)], path, replace(cfg, steps=large_steps), overwrite=True)
        # no generic perplexity: the plan compares fine-tuned rows, and scoring 8 held-out sets with a
        # 5x model costs 4-5 minutes per budget on 2 cores
        self.once(f"S{steps}/large/generic", lambda: {"costs": TrainRun.load(path).metrics["costs"],
                                                     "steps": large_steps})
        return path

    def finetuned(self, steps: int, name: str, init: Path, domain: str, size: str) -> tuple[dict, Path]:
        from impsamp.training import train

        out = self.work / f"S{steps}" / "ft" / f"{name}-{size}-{domain}"
        run = train(None, out, self.ft_config(init=str(init)), finetune=[self.samples[domain][size]],
                    eval=[str(self.corpus.eval(domain))], overwrite=True)
        return {"before": run.metrics["pretrained"]["macro_ppl"], "after": run.metrics["finetuned"]["macro_ppl"],
                "costs": run.metrics["costs"]}, out

    def distilled(self, steps: int, domain: str, size: str, teacher: Path, name: str) -> dict:
        """The budget's dense model fine-tuned on the target guided by `teacher` (a fine-tuned run)."""
        from impsamp.distillation import distill

        out = self.work / f"S{steps}" / "ft" / f"{name}-{size}-{domain}"
        run = distill(teacher, self.work / f"S{steps}" / "dense", [self.samples[domain][size]], out,
                      config=self.ft_config(), eval=[str(self.corpus.eval(domain))], overwrite=True)
        c = run.metrics["costs"]
        return {"before": run.metrics["pretrained"]["macro_ppl"], "after": run.metrics["finetuned"]["macro_ppl"],
                "costs": c, "student_per_target": c["per_target"] - c["teacher"]}

    def importance_at(self, steps: int, domain: str, size: str) -> dict:
        from impsamp.resampling import ResampleConfig, resample
        from impsamp.training import TrainConfig, train

        sample, ev = self.samples[domain][size], [str(self.corpus.eval(domain))]
        sel = resample(self.emb, self.clu, self.work / "importance" / f"sel-{size}-{domain}", targets=[sample],
                       config=ResampleConfig(tokens=steps * STEP_TOKENS, seed=0, within="uniform"),
                       overwrite=True)  # within uniform: the seed paper's draw, as the committed tables measured it
        cfg = TrainConfig(steps=steps, tokenizer=str(self.tok), seed=0, finetune_steps=self.args.finetune_steps,
                          early_stopping=2, eval_every=2, finetune_val_fraction=0.2)
        run = train([str(sel.path)], self.work / "importance" / f"lm-{size}-{domain}", cfg, finetune=[sample],
                    eval=ev, overwrite=True)
        return {"before": run.metrics["pretrained"]["macro_ppl"], "after": run.metrics["finetuned"]["macro_ppl"],
                "costs": run.metrics["costs"]}

    def model(self, steps: int, name: str) -> Path:
        """A budget's pretrained model, trained (or loaded) the first time a row needs it."""
        if (steps, name) not in self.models:
            if name == "large":
                self.models[(steps, name)] = self.large(steps)
            elif name in NETS:
                self.models[(steps, name)] = self.network(steps, name)
            else:  # dense and the experts come together
                self.models.update({(steps, n): path for n, path in self.pretrain(steps).items()})
        return self.models[(steps, name)]

    def row(self, steps: int, name: str, size: str, domain: str) -> dict:
        """One strategy's fine-tuned row."""
        if name in ("distill", "distill-dense"):  # the teacher's row first: large, or the top budget's dense
            top = max(self.args.budgets)
            at, kind, prefix = (steps, "large", "large-") if name == "distill" else (top, "dense", "dense-top-")
            self.row_once(at, kind, size, domain)
            run = self.work / f"S{at}" / "ft" / f"{prefix}{size}-{domain}"
            return self.distilled(steps, domain, size, run, name)
        model = self.model(steps, name)
        if name == "large":
            return self.finetuned(steps, "large", model, domain, size)[0]
        if name in NETS:
            return self.specialise(steps, name, model, self.samples[domain][size],
                                   [str(self.corpus.eval(domain))], f"{size}-{domain}")
        return self.finetune(steps, name, model, domain, size)

    def row_once(self, steps: int, name: str, size: str, domain: str) -> dict:
        return self.once(f"S{steps}/{name}/top/{size}/{domain}", lambda: self.row(steps, name, size, domain))

    def run(self) -> None:
        """Budget by budget in the order given, the whole sample before the quarter, strategy by strategy
        over all the domains: an interrupted run leaves whole budgets and whole strategies (a macro
        row needs every domain) behind. Models are pretrained when a row first needs them; rows of
        other result files are reused."""
        names = ("dense", f"experts{self.args.groups[0]}", *NETS, "large", "distill", "distill-dense",
                 "importance")
        if self.args.strategies:
            unknown = set(self.args.strategies.split(",")) - set(names)
            if unknown:
                raise SystemExit(f"--strategies: no strategy {', '.join(sorted(unknown))}; "
                                 f"choose from {','.join(names)}")
            names = [n for n in names if n in self.args.strategies.split(",")]
        sizes = [s for s in SIZES if s in self.args.sizes.split(",")]
        self.prepare()
        self.models = {}
        for steps in self.args.budgets:
            for size in sizes:
                for name in names:
                    if name == "importance" or (name == "distill-dense" and steps == max(self.args.budgets)):
                        continue  # importance below; the largest budget's dense model is no better teacher
                    for d in self.domains:
                        self.row_once(steps, name, size, d)
        small = importance_steps(self.args.budgets)
        for size in sizes if "importance" in names else ():
            for d in self.domains:
                key = f"importance/S{small}/{d}" if size == "full" else f"importance/S{small}/{size}/{d}"
                self.once(key, lambda d=d, s=size: self.importance_at(small, d, s))


MODELS = ("dense", "experts4", "projected", "soup", "large", "distill", "distill-dense")
LABEL = {"dense": "dense", "experts4": "experts G=4", "projected": "projected network", "soup": "soup of experts",
         "large": "large (tiny-large)", "distill": "distilled (teacher tiny-large)",
         "distill-dense": "distilled (teacher: dense at the largest budget)",
         "importance": "importance sampling"}


def macro_rows(r: dict, steps: int, small: int, doms: list[str], size: str) -> list[tuple[str, dict]]:
    """(label, entry) per strategy at one budget and in-domain size, entries shaped like compare's rows."""
    out = []
    keys = [(m, f"S{steps}/{m}/top/{size}/" + "{d}") for m in MODELS]
    keys.append(("importance", f"importance/S{small}/" + ("{d}" if size == "full" else f"{size}/" + "{d}")))
    for m, pattern in keys:
        cells = [r.get(pattern.format(d=d)) for d in doms]
        if not all(cells):
            continue
        costs = {k: _mean([c["costs"].get(k, 0.0) for c in cells]) for k in
                 ("generic", "per_target", "teacher", "inference_flops_per_token", "params_active")}
        out.append((LABEL[m], {"metrics": {"pretrained": {"macro_ppl": _mean([c["before"] for c in cells])},
                                           "finetuned": {"macro_ppl": _mean([c["after"] for c in cells])}},
                               "costs": costs}))
    return out


def ppl(rows: list[tuple[str, dict]], label: str) -> float | None:
    """A strategy's macro perplexity after fine-tuning in one table, None if it has no row."""
    return next((e["metrics"]["finetuned"]["macro_ppl"] for lab, e in rows if lab == label), None)


def verdicts(tables: dict[tuple[int, str], list[tuple[str, dict]]], budgets) -> list[str]:
    """The paper's decision rule, checked on the numbers: holds / does not hold, with the figures."""
    lines = []
    small_models = ("dense", "experts G=4", "projected network", "soup of experts")
    for (steps, size), rows in sorted(tables.items()):
        imp = ppl(rows, "importance sampling")
        best_small = min(((ppl(rows, m), m) for m in small_models if ppl(rows, m) is not None), default=None)
        if imp is not None and best_small is not None:
            holds = imp < best_small[0]
            lines.append(f"- S={steps}, {size} sample: importance sampling is the best small model when the "
                         f"per-target budget is large: **{'holds' if holds else 'does not hold'}** (importance "
                         f"{imp:.1f} vs best pretrain-once small model {best_small[1]} {best_small[0]:.1f}).")
    for size in SIZES:
        rows = tables.get((budgets[-1], size), [])
        dense, shared = ppl(rows, "dense"), [(ppl(rows, m), m) for m in small_models[1:] if ppl(rows, m)]
        if dense and shared:
            best = min(shared)
            lines.append(f"- S={budgets[-1]}, {size} sample: experts or projected networks beat the dense model at "
                         f"the largest pretraining budget: **{'holds' if best[0] < dense else 'does not hold'}** "
                         f"({best[1]} {best[0]:.1f} vs dense {dense:.1f}).")
    for (steps, size), rows in sorted(tables.items()):
        large = ppl(rows, "large (tiny-large)")
        others = [(e["metrics"]["finetuned"]["macro_ppl"], lab) for lab, e in rows if not lab.startswith("large")]
        if large and others:
            best = min(others)
            lines.append(f"- S={steps}, {size} sample: the large model wins when inference is not limited: "
                         f"**{'holds' if large < best[0] else 'does not hold'}** (large {large:.1f} vs {best[1]} "
                         f"{best[0]:.1f}).")
        dist, dense = ppl(rows, "distilled (teacher tiny-large)"), ppl(rows, "dense")
        if dist and dense:
            lines.append(f"- S={steps}, {size} sample: distillation helps the small model at equal student cost: "
                         f"**{'holds' if dist < dense else 'does not hold'}** (distilled {dist:.1f} vs dense "
                         f"{dense:.1f}).")
        lines += better_teacher(rows, tables.get((max(budgets), size), []), steps, size, max(budgets))
    return lines


def better_teacher(rows: list, top_rows: list, steps: int, size: str, top: int) -> list[str]:
    """Distillation from the largest budget's dense model (fine-tuned): better than the student, so
    the rule's two halves can be checked: it helps at equal student cost, and counting the
    teacher, the teacher alone (same inference size) is better still."""
    dist, dense, teacher = ppl(rows, LABEL["distill-dense"]), ppl(rows, "dense"), ppl(top_rows, "dense")
    if not (dist and dense and teacher):
        return []
    helps, pays = dist < dense, dist < teacher
    return [f"- S={steps}, {size} sample, with a better teacher (the dense model of S={top}, fine-tuned: "
            f"{teacher:.1f}): distillation helps at equal student cost: "
            f"**{'holds' if helps else 'does not hold'}** (distilled {dist:.1f} vs dense {dense:.1f}); and not "
            "once its teacher is counted: "
            f"**{'does not hold' if pays else 'holds'}** (the teacher alone serves at the same inference "
            f"cost: {teacher:.1f})."]


def report(bench: PlanBench, started: float) -> str:
    from impsamp.costs import format_flops
    from impsamp.planning import plot_decision

    r, a = bench.all_results(), bench.args
    budgets, doms = a.budgets, bench.domains
    lines = ["# Which strategy for which budgets: the seed paper's table in miniature, bundled corpus", "",
             f"Machine: {machine()}. Date: {dt.date.today()}. Wall time: {(time.time() - started) / 60:.0f} min (this "
             f"invocation). Command: `.venv/bin/python benchmarks/plan_table.py --budgets "
             f"{','.join(map(str, budgets))} --finetune-steps {a.finetune_steps}`.", "",
             "Strategies as in experts.md and projected.md (all `tiny`-sized at inference but `large`), plus the "
             "`tiny-large` model at the dense model's generic FLOPs and the dense model distilled from it. Per "
             f"target: at most {a.finetune_steps} fine-tuning steps with early stopping. Perplexity after "
             "fine-tuning, macro over the 8 domains' held-out text; FLOPs per target averaged over the domains.", ""]
    tables = {}
    for steps in budgets:
        for size in SIZES:
            rows = macro_rows(r, steps, importance_steps(budgets), doms, size)
            if not any(label != LABEL["importance"] for label, _ in rows):  # no strategy of this budget yet
                continue
            tables[(steps, size)] = rows
            lines += [f"## S={steps} steps of generic pretraining, {size} sample", "",
                      "| strategy | ppl before | ppl after | generic FLOPs | per-target FLOPs | inference FLOPs/token "
                      "| params active |", "|---|---|---|---|---|---|---|"]
            for label, e in rows:
                c = e["costs"]
                lines.append(f"| {label} | {e['metrics']['pretrained']['macro_ppl']:.1f} | "
                             f"{e['metrics']['finetuned']['macro_ppl']:.1f} | {format_flops(c['generic'])} | "
                             f"{format_flops(c['per_target'])} | {format_flops(c['inference_flops_per_token'])} | "
                             f"{c['params_active'] / 1e6:.1f}M |")
            lines.append("")
            if size == "full" and not a.domains:
                png = OUT_MD.with_name(f"plan-decision-S{steps}.png")
                if plot_decision(png, rows):
                    lines += [f"![decision map, S={steps}]({png.name})", ""]
    lines += ["## The paper's decision rule, checked", ""] + (verdicts(tables, budgets) or ["(not measured yet)"])
    rows, seconds = measured_cost(r, budgets)
    lines += ["", f"Cost of the rows measured so far: {rows} result entries, {seconds / 3600:.1f} hours "
              "of one process (the sum of each entry's wall time; a model's pretraining is in the first entry that "
              "needed it; an entry that ran while its process was paused counts the pause)."]
    return "\n".join(lines) + "\n"


def measured_cost(r: dict, budgets) -> tuple[int, float]:
    """How many of the table's result entries exist and the sum of their wall times (seconds)."""
    small = importance_steps(budgets)
    keys = [k for k in r if any(k.startswith(f"S{b}/{m}/") for b in budgets for m in MODELS)
            and not k.endswith("/spread")]
    keys += [k for k in r if k.startswith(f"importance/S{small}/")]
    return len(keys), sum(r[k].get("seconds", 0.0) for k in keys)


def main() -> None:
    run_table(PlanBench, report, OUT_MD, __doc__)


if __name__ == "__main__":
    main()
