"""Projected network (SLM-pn) and soup of experts against the dense model and the experts, bundled corpus.

    .venv/bin/python benchmarks/projected_table.py --budgets 120,480        # after experts_table.py (same --work)
    .venv/bin/python benchmarks/projected_table.py --budgets 10,40 --domains fortunes --finetune-steps 4

Shares experts_table.py's work folder: the same embeddings, clustering (k=64), tokenizer, samples
and its results (dense and experts rows, read from results.json). Adds, at each budget S:
- `projected`: one shared network (`tiny` shape, h=16 bases, m=16 codes, one code per cluster of the
  64) trained S steps of 4,096 tokens on the pool, one cluster per micro-batch: the dense model's
  generic FLOPs; per target the top cluster's small model is projected and fine-tuned like the dense;
- `soup`: the same network conditioned on histograms (random mixtures of 1-4 clusters); per target
  the whole histogram gives the small model.
Generic perplexity: each held-out document scored by its own cluster's small model. Then a target
spread over two clusters' worth of domains (an even mix of two domains' samples, evaluated on both
held-out sets) with every model at the larger budget, and the wall time of `project`.

Results go to --work/results-projected.json (a rerun skips what is there) and
benchmarks/results/projected.md. Not run in CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from experts_table import Bench, budget_table, result_files, run_table, scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT_MD = ROOT / "benchmarks" / "results" / "projected.md"
NETS = {"projected": "cluster", "soup": "histogram"}
SPREAD = ("kjv_bible", "python_docs")


class ProjBench(Bench):
    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.path = self.work / "results-projected.json"
        self.results = json.loads(self.path.read_text()) if self.path.exists() else {}
        experts = self.work / "results.json"
        self.experts = json.loads(experts.read_text()) if experts.exists() else {}

    def network(self, steps: int, name: str) -> Path:
        from impsamp.errors import StageError
        from impsamp.projection import evaluate_projected
        from impsamp.training import TrainConfig, TrainRun, train

        path = self.work / f"S{steps}" / name
        try:
            TrainRun.load(path)
        except StageError:
            cfg = TrainConfig(arch="projected", clusters=str(self.work / "clu"), condition=NETS[name], steps=steps,
                              tokenizer=str(self.tok), seed=0, dtype=self.args.dtype)
            train(None, path, cfg, overwrite=True)
        self.once(f"S{steps}/{name}/generic", lambda: {**scores(evaluate_projected(path, self.evals)),
                                                       "costs": TrainRun.load(path).metrics["costs"],
                                                       "train": TrainRun.load(path).metrics["train"]})
        return path

    def specialise(self, steps: int, name: str, net: Path, target, evals: list[str], tag: str) -> dict:
        from impsamp.projection import project
        from impsamp.training import train

        out = self.work / f"S{steps}" / "ft" / f"{name}-{tag}"
        t = time.perf_counter()
        small = project(net, out.with_name(out.name + "-small"), target=target, overwrite=True)
        seconds = time.perf_counter() - t
        rec = json.loads((small.path / "projection.json").read_text())
        run = train(None, out, self.ft_config(init=str(small.path)), finetune=target if isinstance(target, list)
                    else [target], eval=evals, overwrite=True)
        return {"before": run.metrics["pretrained"]["macro_ppl"], "after": run.metrics["finetuned"]["macro_ppl"],
                "costs": run.metrics["costs"], "condition": rec["condition"], "project_seconds": round(seconds, 2),
                "top_mass": max(rec["group_mass"]), "per_file": {Path(k).stem: v["ppl"] for k, v in
                                                                  run.metrics["finetuned"]["per_file"].items()}}

    def spread_target(self) -> tuple[str, list[str]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.work / "samples" / f"spread-{'-'.join(SPREAD)}.parquet"
        tables = [pq.read_table(self.corpus.sample(d)).select(["text"]) for d in SPREAD]
        n = min(t.num_rows for t in tables)
        if not path.exists():  # an even mix: as many documents from each
            pq.write_table(pa.concat_tables([t.slice(0, n) for t in tables]), path)
        return str(path), [self.eval_file(d) for d in SPREAD]

    def spread_baselines(self, steps: int, target: str, evals: list[str]) -> None:
        from impsamp.mixture import specialize
        from impsamp.training import train

        dense = self.work / f"S{steps}" / "dense"
        experts = self.work / f"S{steps}" / f"experts{self.args.groups[0]}"

        def one(kind: str) -> dict:
            out = self.work / f"S{steps}" / "ft" / f"{kind}-spread"
            if kind == "dense":
                run = train(None, out, self.ft_config(init=str(dense)), finetune=[target], eval=evals, overwrite=True)
            else:
                run = specialize(experts, [target], out, select="top", config=self.ft_config(), eval=evals,
                                 overwrite=True)
            return {"before": run.metrics["pretrained"]["macro_ppl"], "after": run.metrics["finetuned"]["macro_ppl"],
                    "costs": run.metrics["costs"], "per_file": {Path(k).stem: v["ppl"] for k, v in
                                                                run.metrics["finetuned"]["per_file"].items()}}

        for kind, path in (("dense", dense), (f"experts{self.args.groups[0]}", experts)):
            if (path / "manifest.json").exists():
                self.once(f"S{steps}/{kind}/spread", lambda k=kind: one(k))
            else:
                print(f"[bench] no {path} (run experts_table.py first): its spread row is skipped")

    def project_timing(self, steps: int) -> None:
        from impsamp.clustering import Clusters
        from impsamp.histograms import histogram
        from impsamp.projection import project

        hist = self.work / "samples" / "python_docs.hist.json"
        histogram(self.corpus.sample("python_docs"), Clusters.load(self.work / "clu")).save(hist)

        def timed() -> dict:
            out = {}
            for name in NETS:
                net = self.work / f"S{steps}" / name
                t = time.perf_counter()
                project(net, self.work / "timing" / name, target=str(hist), overwrite=True)
                out[name] = round(time.perf_counter() - t, 3)
            return out

        self.once(f"S{steps}/project_seconds_from_histogram", timed)

    def per_target(self, steps: int, size: str) -> None:
        for name in NETS:
            net = self.network(steps, name)
            for d in self.domains:
                ev = [self.eval_file(d)]
                self.once(f"S{steps}/{name}/top/{size}/{d}", lambda n=name, p=net, d=d, ev=ev: self.specialise(
                    steps, n, p, self.samples[d][size], ev, f"{size}-{d}"))

    def run(self) -> None:
        """The larger budget first (where the paper's claim is), its whole-sample row, the spread
        target and `project`'s wall time, then the quarter samples and the smaller budget."""
        self.prepare()
        small, large = self.args.budgets
        self.per_target(large, "full")
        target, evals = self.spread_target()
        for name in NETS:
            net = self.work / f"S{large}" / name
            self.once(f"S{large}/{name}/spread", lambda n=name, p=net: self.specialise(large, n, p, target, evals,
                                                                                        "spread"))
        self.spread_baselines(large, target, evals)
        self.project_timing(large)
        self.per_target(large, "quarter")
        for size in ("full", "quarter"):
            self.per_target(small, size)
        experts = self.work / "results.json"  # what experts_table.py finished meanwhile
        self.experts = json.loads(experts.read_text()) if experts.exists() else {}


def report(bench: ProjBench, started: float) -> str:
    r, ex, a = bench.results, bench.experts, bench.args
    small, large = a.budgets
    doms = bench.domains
    both = {**ex, **r}
    for path in result_files(bench.work):  # plan_table.py measures the budgets this script did not reach
        both = {**json.loads(path.read_text()), **both}
    names = ["dense"] + [f"experts{g}" for g in a.groups] + list(NETS)
    label = {"dense": "dense", **{f"experts{g}": f"experts G={g} (top)" for g in a.groups},
             "projected": "projected network (top cluster)", "soup": "soup of experts (histogram)"}
    lines = [
        "# Projected network (SLM-pn) and soup of experts vs dense and experts, bundled corpus", "",
        f"Machine: {machine()}. Date: {dt.date.today()}. Wall time: {(time.time() - started) / 60:.0f} min "
        f"(this invocation). Command: `.venv/bin/python benchmarks/projected_table.py --budgets {small},{large} "
        f"--finetune-steps {a.finetune_steps}` (after `experts_table.py` with the same budgets).", "",
        "Every served model is the `tiny` preset (4.5M parameters, the same inference FLOPs per token). The "
        "projected network and the soup share attention, embeddings and norms; each MLP weight is a combination "
        "of 16 basis matrices with coefficients from a 16-dim code (one per cluster of the 64, or from the "
        "histogram through a small network); they train the dense model's steps and batch, so the same generic "
        "FLOPs. Per target: the small model projected for the target, then fine-tuned like the dense model "
        f"(at most {a.finetune_steps} steps, early stopping on 20% of the sample, best weights kept). Generic "
        "perplexity: the 8 domains' held-out text, each document by its own group's model.", "",
    ]
    for steps in (small, large):
        lines += budget_table(both, steps, names, label, doms)
    lines += ["## Per domain after fine-tuning (whole sample / quarter sample)", "",
              "| domain | " + " | ".join(f"{label[n].split(' (')[0]}, S={s}" for s in (small, large)
                                       for n in ("dense", *NETS)) + " |", "|---|" + "---|" * (2 * (1 + len(NETS)))]
    for d in doms:
        cells = []
        for s in (small, large):
            for n in ("dense", *NETS):
                f, q = both.get(f"S{s}/{n}/top/full/{d}"), both.get(f"S{s}/{n}/top/quarter/{d}")
                cells.append(f"{f['after']:.1f} / {q['after']:.1f}" if f and q else "-")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines.append("")
    spread = {n: both.get(f"S{large}/{n}/spread") for n in ("dense", f"experts{a.groups[0]}", *NETS)}
    if any(spread.values()):
        lines += [f"## A target spread over clusters ({large} steps)", "",
                  f"Target: an even mix of the {' and '.join(SPREAD)} samples (as many documents from each); "
                  "perplexity after fine-tuning on each domain's held-out text and their mean.", "",
                  "| model | " + " | ".join(SPREAD) + " | mean | top group's share of the target |",
                  "|---|" + "---|" * (len(SPREAD) + 2)]
        for n, e in spread.items():
            if e:
                share = f"{e['top_mass']:.0%}" if "top_mass" in e else "-"
                lines.append(f"| {label[n]} | " + " | ".join(f"{e['per_file'][d]:.1f}" for d in SPREAD)
                             + f" | {e['after']:.2f} | {share} |")
        lines.append("")
    timing = r.get(f"S{large}/project_seconds_from_histogram")
    if timing:
        per = [x["project_seconds"] for k, x in r.items() if k.startswith(f"S{large}/") and isinstance(x, dict)
               and "project_seconds" in x]
        lines += ["## Wall time of `project`", "",
                  f"From a saved histogram: projected {timing['projected']:.2f} s, soup {timing['soup']:.2f} s "
                  "(load the network, compute 4 layers' MLPs, write the run). From a raw sample (embedding it with "
                  f"all-MiniLM-L6-v2 first, in the benchmark's warm process): median {sorted(per)[len(per) // 2]:.2f} s "
                  f"over {len(per)} projections.", ""]
    return "\n".join(lines)


def main() -> None:
    run_table(ProjBench, report, OUT_MD, __doc__)


if __name__ == "__main__":
    main()
