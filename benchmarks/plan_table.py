"""The seed paper's equal-budget table in miniature: every strategy at three generic budgets, two in-domain
sizes, 8 domains, and the decision rule checked on the measured numbers.

    # the table sized for one developer session on 2 cores, from an empty work folder (plan-session.md)
    .venv/bin/python benchmarks/plan_table.py --budgets 20,80,320 --groups 4 --finetune-steps 6 --dtype bfloat16 \
        --eval-docs 60 --importance-steps 80 --jobs 2 --work /tmp/plan-session --out benchmarks/results/plan-session.md
    # the full-size table (plan.md: 12.3 process-hours, three sessions), after experts_table / projected_table
    .venv/bin/python benchmarks/plan_table.py --budgets 30,120,480
    .venv/bin/python benchmarks/plan_table.py --budgets 4,8,16 --domains fortunes --finetune-steps 2   # a smoke run

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
- importance sampling at both in-domain sizes (a per-target selection of N x 4,096 tokens and a
  `tiny` model pretrained on it for that many steps: --importance-steps, default 120, experts_table.py's).
Sizing for one developer session (3 hours) on 2 cores: the full-size table's 12.3 process-hours went to
per-target rows (fine-tuning, validating and scoring: 336 of them, 48 with the 5x large model) more than to
pretraining. The session sizing cuts each row and keeps every cell: fine-tuning 6 steps instead of 12,
scoring the first 60 held-out documents of each domain (30-65% of the text; the same documents in every
row), bfloat16 autocast (a fine-tuning run 1.4x faster than float32 on a CPU with AVX512-BF16 and no AMX;
the default where AMX is), budgets 20/80/320 (4x apart, as 30/120/480) with importance sampling at the
middle one, the experts at G=4 only, and two worker processes of one torch thread (`--jobs 2`): the
pretrained models and importance entries first, then the fine-tuned rows, then the distilled rows, the
slow kinds first within a phase. The workers hand their entries to the parent, which writes the results
file after each, so a killed run resumes; the settings that change every number (--dtype, --eval-docs,
--finetune-steps) are recorded in the work folder, and other settings are refused there.

Results go to --work/results-plan.json (a rerun skips what is there; `--results results-plan-B.json`
names another file, so that two invocations can share the 2 cores, each on its own budgets, e.g. with
OMP_NUM_THREADS=1: each reads the other's rows; `--sizes quarter --strategies large,distill` runs a part) and
benchmarks/results/plan.md or --out (+ <out>-decision-S*.png).
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

IMPORTANCE_STEPS = 120
DEFAULT_SETTINGS = {"dtype": "auto", "eval_docs": None, "finetune_steps": 12}

ROOT = Path(__file__).resolve().parents[1]
OUT_MD = ROOT / "benchmarks" / "results" / "plan.md"
SIZES = ("full", "quarter")


def importance_steps(args) -> int:
    """Importance sampling's per-target pretraining steps: --importance-steps, else 120 (at most the
    largest budget)."""
    return args.importance_steps or min(IMPORTANCE_STEPS, max(args.budgets))


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

    def settings(self) -> dict:
        """The flags that change every row's numbers; a work folder's rows are all measured with one set."""
        return {"dtype": self.args.dtype, "eval_docs": self.args.eval_docs, "finetune_steps": self.args.finetune_steps}

    def check_settings(self) -> None:
        """Refuse to mix rows measured with other settings in one work folder; record them in a new one."""
        recorded, mine = self.all_results().get("settings"), self.settings()
        if recorded is None and any(self.all_results()) and mine != DEFAULT_SETTINGS:
            raise SystemExit(f"plan_table: {self.work} holds rows measured with the default settings "
                             f"{DEFAULT_SETTINGS}; give another --work for {mine}")
        if recorded is not None and recorded != mine:
            raise SystemExit(f"plan_table: {self.work} holds rows measured with {recorded}, not {mine}: "
                             "give those flags or another --work")
        if recorded is None:
            self.results["settings"] = mine
            self.save()

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
        cfg = TrainConfig(preset="tiny-large", tokenizer=str(self.tok), seed=0, pretrain_costs="generic",
                          dtype=self.args.dtype)
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
                    eval=[self.eval_file(domain)], overwrite=True)
        return {"before": run.metrics["pretrained"]["macro_ppl"], "after": run.metrics["finetuned"]["macro_ppl"],
                "costs": run.metrics["costs"]}, out

    def distilled(self, steps: int, domain: str, size: str, teacher: Path, name: str) -> dict:
        """The budget's dense model fine-tuned on the target guided by `teacher` (a fine-tuned run)."""
        from impsamp.distillation import distill

        out = self.work / f"S{steps}" / "ft" / f"{name}-{size}-{domain}"
        run = distill(teacher, self.work / f"S{steps}" / "dense", [self.samples[domain][size]], out,
                      config=self.ft_config(), eval=[self.eval_file(domain)], overwrite=True)
        c = run.metrics["costs"]
        return {"before": run.metrics["pretrained"]["macro_ppl"], "after": run.metrics["finetuned"]["macro_ppl"],
                "costs": c, "student_per_target": c["per_target"] - c["teacher"]}

    def importance_at(self, steps: int, domain: str, size: str) -> dict:
        from impsamp.resampling import ResampleConfig, resample
        from impsamp.training import train

        sample, ev = self.samples[domain][size], [self.eval_file(domain)]
        sel = resample(self.emb, self.clu, self.work / "importance" / f"sel-{size}-{domain}", targets=[sample],
                       config=ResampleConfig(tokens=steps * STEP_TOKENS, seed=0, within="uniform"),
                       overwrite=True)  # within uniform: the seed paper's draw, as the committed tables measured it
        cfg = replace(self.ft_config(), steps=steps, tokenizer=str(self.tok))
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
                                   [self.eval_file(domain)], f"{size}-{domain}")
        return self.finetune(steps, name, model, domain, size)

    def row_once(self, steps: int, name: str, size: str, domain: str) -> dict:
        return self.once(f"S{steps}/{name}/top/{size}/{domain}", lambda: self.row(steps, name, size, domain))

    def selected(self) -> tuple[list[str], list[str]]:
        """The strategies and in-domain sizes this invocation runs (--strategies, --sizes)."""
        names = ["dense", f"experts{self.args.groups[0]}", *NETS, "large", "distill", "distill-dense", "importance"]
        if self.args.strategies:
            unknown = set(self.args.strategies.split(",")) - set(names)
            if unknown:
                raise SystemExit(f"--strategies: no strategy {', '.join(sorted(unknown))}; "
                                 f"choose from {','.join(names)}")
            names = [n for n in names if n in self.args.strategies.split(",")]
        return names, [s for s in SIZES if s in self.args.sizes.split(",")]

    def entries(self, names: list[str], sizes: list[str]) -> list[tuple[str, tuple]]:
        """(result key, call) for every entry of the table, in the serial run's order: budget by budget,
        the whole sample before the quarter, strategy by strategy over all the domains (an interrupted
        run leaves whole budgets and strategies behind: a macro row needs every domain), importance last."""
        out = []
        for steps in self.args.budgets:
            for size in sizes:
                for name in names:
                    if name == "importance" or (name == "distill-dense" and steps == max(self.args.budgets)):
                        continue  # importance below; the largest budget's dense model is no better teacher
                    out += [(f"S{steps}/{name}/top/{size}/{d}", ("row", steps, name, size, d)) for d in self.domains]
        small = importance_steps(self.args)
        for size in sizes if "importance" in names else ():
            for d in self.domains:
                key = f"importance/S{small}/{d}" if size == "full" else f"importance/S{small}/{size}/{d}"
                out.append((key, ("importance", small, d, size)))
        return out

    def compute(self, call: tuple) -> dict:
        if call[0] == "row":
            return self.row(*call[1:])
        return self.importance_at(*call[1:])

    def run(self) -> None:
        """Every entry not measured yet, serially or over --jobs worker processes; models are pretrained
        when a row first needs them (serially) or first of all (in parallel); other result files' rows are
        reused."""
        started = time.time()
        names, sizes = self.selected()
        self.check_settings()
        self.prepare()
        self.models = {}
        todo = [(k, c) for k, c in self.entries(names, sizes) if k not in self.all_results()]
        if self.args.jobs > 1:
            self.run_parallel(todo)
        else:
            for key, call in todo:
                self.once(key, lambda c=call: self.compute(c))
        if todo:  # the report gives the wall time of the runs that measured its rows
            self.results.setdefault("runs", []).append(
                {"date": str(dt.date.today()), "minutes": round((time.time() - started) / 60, 1),
                 "entries": len(todo), "command": command_line(self.args), "machine": machine()})
            self.save()

    def teacher_key(self, steps: int, name: str, size: str, domain: str) -> str:
        """The fine-tuned row a distilled row learns from: the same budget's large model, or the largest
        budget's dense model."""
        if name == "distill":
            return f"S{steps}/large/top/{size}/{domain}"
        return f"S{max(self.args.budgets)}/dense/top/{size}/{domain}"

    def phases(self, todo: list[tuple[str, tuple]]) -> list[list[tuple[str | None, tuple]]]:
        """The parallel run's three phases, each task's needs in an earlier phase: every pretrained model
        the rows need and the importance entries (each trains its own model); the fine-tuned rows, the
        distilled rows' teachers among them; the distilled rows. The costliest first within a phase."""
        distilled = [t for t in todo if t[1][0] == "row" and t[1][2].startswith("distill")]
        rows = {k: c for k, c in todo if c[0] == "row" and not c[2].startswith("distill")}
        done = self.all_results()
        for _, (_, steps, name, size, d) in distilled:
            key = self.teacher_key(steps, name, size, d)
            if key not in done and key not in rows:
                teacher = key.split("/")
                rows[key] = ("row", int(teacher[0][1:]), teacher[1], size, d)
        models = {(c[1], model_of(c[2])) for c in rows.values()} | {(c[1], "dense") for _, c in distilled}
        weight = {"dense": 2, "large": 1.5}  # dense brings the experts (as many FLOPs again); large is slow
        slow = {"large": 4, "importance": 3, "distill-dense": 2, "distill": 2}  # seconds per row, roughly
        return [
            sorted([(None, ("model", s, n)) for s, n in models], key=lambda t: -t[1][1] * weight.get(t[1][2], 1))
            + [t for t in todo if t[1][0] == "importance"],
            sorted(rows.items(), key=lambda t: -slow.get(t[1][2], 1)),
            sorted(distilled, key=lambda t: -slow.get(t[1][2], 1)),
        ]

    def run_parallel(self, todo: list[tuple[str, tuple]]) -> None:
        """The phases over a pool of --jobs processes, one torch thread each. Workers return their
        entries and this process writes them after each task, so a killed run keeps every finished
        entry; a phase with a failed task stops the run (a later phase would redo the failed work in
        two workers at once)."""
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        started, done, phases = time.time(), 0, self.phases(todo)
        with ProcessPoolExecutor(self.args.jobs, mp_context=get_context("spawn")) as pool:
            for i, phase in enumerate(phases, 1):
                failed = []
                futures = {pool.submit(_work, self.args, key, call): (key, call) for key, call in phase}
                for f in as_completed(futures):
                    key, call = futures[f]
                    try:
                        new = f.result()
                    except Exception as e:  # a broken pool (a worker killed) lands here too
                        failed.append(f"{key or ' '.join(map(str, call))}: {type(e).__name__}: {e}")
                        continue
                    self.results.update(new)
                    self.save()
                    done += 1
                    print(f"[plan] phase {i}/{len(phases)}, {done} tasks done, "
                          f"{(time.time() - started) / 60:.1f} min: {key or ' '.join(map(str, call))}", flush=True)
                if failed:
                    raise SystemExit(f"plan_table: phase {i} failed (rerun to retry; finished entries are kept):\n"
                                     + "\n".join(failed))


def model_of(name: str) -> str:
    """The pretrained model a strategy's row starts from (the dense run trains the experts too)."""
    return "dense" if name.startswith(("experts", "distill")) else name


def _work(args, key: str | None, call: tuple) -> dict:
    """One task in a worker process: returns the result entries it made (the parent saves them)."""
    import torch

    torch.set_num_threads(1)
    bench = PlanBench(args)
    bench.save = lambda: None
    before = set(bench.results)
    bench.prepare()
    bench.models = {}
    if call[0] == "model":  # its wall time is an entry, so that the table's cost counts pretraining
        bench.once(f"S{call[1]}/{call[2]}/pretrain", lambda: {"path": str(bench.model(call[1], call[2]))})
    else:
        bench.once(key, lambda: bench.compute(call))
    return {k: v for k, v in bench.results.items() if k not in before}


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
    out = Path(a.out) if a.out else OUT_MD
    st = r.get("settings") or DEFAULT_SETTINGS
    lines = ["# Which strategy for which budgets: the seed paper's table in miniature, bundled corpus", "",
             f"Machine: {machine()}. Date: {dt.date.today()}. Command: `.venv/bin/python benchmarks/plan_table.py "
             f"{command_line(a)}`.", "", *run_lines(r.get("runs", []), started), "",
             "Strategies as in experts.md and projected.md (all `tiny`-sized at inference but `large`), plus the "
             "`tiny-large` model at the dense model's generic FLOPs and the dense model distilled from it. Per "
             f"target: at most {st['finetune_steps']} fine-tuning steps with early stopping. Perplexity after "
             "fine-tuning, macro over the 8 domains' held-out text"
             + (f" (the first {st['eval_docs']} documents of each)" if st["eval_docs"] else "")
             + "; FLOPs per target averaged over the domains. Autocast dtype: "
             + {"auto": "the trainer's choice (bfloat16 with AMX, else float32)"}.get(st["dtype"], st["dtype"])
             + ".", ""]
    tables = {}
    for steps in budgets:
        for size in SIZES:
            rows = macro_rows(r, steps, importance_steps(a), doms, size)
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
                png = out.with_name(f"{out.stem}-decision-S{steps}.png")
                if plot_decision(png, rows):
                    lines += [f"![decision map, S={steps}]({png.name})", ""]
    lines += ["## The paper's decision rule, checked", ""] + (verdicts(tables, budgets) or ["(not measured yet)"])
    rows, seconds = measured_cost(r, a)
    lines += ["", f"Cost of the rows measured so far: {rows} result entries, {seconds / 3600:.1f} hours "
              "of one process (the sum of each entry's wall time; pretraining counts where it ran inside an entry: "
              "the first row that needed the model in a serial run, its `pretrain` entry in a parallel one; an "
              "entry that ran while its process was paused counts the pause)."]
    return "\n".join(lines) + "\n"


def run_lines(runs: list[dict], started: float) -> list[str]:
    """Wall time of the runs recorded in the results (each with its entries and command), or of this one."""
    if not runs:
        return [f"Wall time: {(time.time() - started) / 60:.0f} min (this invocation)."]
    return [f"Wall time of the runs that measured the rows: {sum(x['minutes'] for x in runs):.0f} min "
            f"({len(runs)} run{'s' * (len(runs) > 1)}: "
            + "; ".join(f"{x['date']}, {x['minutes']:.0f} min, {x['entries']} entries, {x['machine']}, "
                        f"`{x['command']}`" for x in runs) + ")."]


def command_line(a) -> str:
    """The flags that shaped this table (those not at their defaults), as a command to rerun it."""
    def text(v):
        return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    parts = [f"--budgets {text(a.budgets)}", f"--finetune-steps {a.finetune_steps}"]
    for dest in ("groups", "k", "dtype", "eval_docs", "importance_steps", "jobs", "work", "out"):
        if text(getattr(a, dest)) != text(a.defaults[dest]):
            parts.append(f"--{dest.replace('_', '-')} {text(getattr(a, dest))}")
    return " ".join(parts)


def measured_cost(r: dict, a) -> tuple[int, float]:
    """How many of the table's result entries exist and the sum of their wall times (seconds)."""
    budgets, small = a.budgets, importance_steps(a)
    keys = [k for k in r if any(k.startswith(f"S{b}/{m}/") for b in budgets for m in MODELS)
            and not k.endswith("/spread")]
    keys += [k for k in r if k.startswith(f"importance/S{small}/")]
    return len(keys), sum(r[k].get("seconds", 0.0) for k in keys)


def main() -> None:
    run_table(PlanBench, report, OUT_MD, __doc__)


if __name__ == "__main__":
    main()
