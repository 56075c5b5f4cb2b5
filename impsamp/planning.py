"""Which strategy to plan for: the planning report over every row of a `compare` (the seed paper's
question, answered on the user's own data; the rows' models are `strategies`).

    plan = choose(rows, Budgets(targets=100, inference=5e6, per_target=2e13, total=5e15))
    plan["best"], plan["runner_up"], plan["why"]

Every row of a compare (dense per method, experts, projected, soup, large, distill) has generic
FLOPs (paid once), per-target FLOPs, inference FLOPs per token, active parameters and perplexity
after fine-tuning. The report adds:
- C(N) = generic + N x per-target for N = 1..1,000 (`cost_curves`, plan.png);
- the strategy with the lowest perplexity after fine-tuning among those within the budgets the
  user states (inference: active parameters or FLOPs per token; per-target FLOPs; generic FLOPs; the
  total C(N) for the N targets expected), the runner-up, and C(N) at that N (`choose`); one line when
  nothing fits;
- the paper's decision figure redrawn from these numbers (`decision_map`, decision.png): over a grid
  of per-target and inference budgets, the row that `choose` would pick.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import positive
from .costs import format_flops
from .errors import ConfigError, upper_first
from .plots import figure, save_png

LARGE_PRESET = {"tiny": "tiny-large", "slm-126m": "llm-771m"}
"""The large model of each small preset (about 5-6x its parameters and inference FLOPs)."""
N_TARGETS = np.unique(np.round(np.logspace(0, 3, 61)).astype(int))


@dataclass(frozen=True)
class Budgets:
    targets: int | None = None
    """Targets expected (C(N) is reported at this N)."""
    inference: float | None = None
    """Largest deployed model: active parameters, or FLOPs per token when `inference_unit` is flops."""
    inference_unit: str = "params"
    per_target: float | None = None
    """Largest per-target FLOPs (selection, pretraining on a selection, fine-tuning, teacher)."""
    pretraining: float | None = None
    """Largest generic FLOPs, spent before any target is known (the paper's pretraining budget)."""
    total: float | None = None
    """Largest C(N) = generic + N x per-target for the N = `targets` expected: where pretraining once pays off."""

    FLAGS = {"targets": "--targets-expected", "inference": "--inference-budget", "per_target": "--per-target-budget",
             "pretraining": "--pretraining-budget", "total": "--total-budget"}

    def __post_init__(self) -> None:
        for name, flag in self.FLAGS.items():  # NaN would fit everything, a negative N price nothing
            positive(name, getattr(self, name), flag=flag)
        if self.targets is not None and self.targets != int(self.targets):
            raise ConfigError(f"--targets-expected must be a whole number of targets, got {self.targets}")
        if self.inference_unit not in ("params", "flops"):  # 'FLOPs' read as parameters chose a wrong row
            raise ConfigError(f"inference_unit must be params or flops, got {self.inference_unit!r}")
        if self.total is not None and not self.targets:
            raise ConfigError("--total-budget is C(N) for the N targets you expect: give --targets-expected too")

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.targets, self.inference, self.per_target, self.pretraining,
                                           self.total))

    def cost(self, c: dict[str, float]) -> float:
        """C(N) of a row's costs at the targets expected (1 when none are)."""
        return c["generic"] + (self.targets or 1) * c["per_target"]


def parse_inference_budget(text: str | float | None) -> tuple[float | None, str]:
    """'5e6', '5e6params', '4.5M params' -> parameters; '1e7flops', '10M flops' -> FLOPs per token."""
    if text is None:
        return None, "params"
    bad = ConfigError(f"--inference-budget {text!r}: give a positive parameter count (5e6, 4.5M params) or FLOPs "
                      "per token (1e7flops, 10M flops)")
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), "params"
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)(e[+-]?\d+)?\s*([kmgt]?)\s*(params?|flops?)?\s*",
                         str(text).lower())
        if not m:
            raise bad
        scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(3)]
        value = float(m.group(1) + (m.group(2) or "")) * scale
        unit = "flops" if (m.group(4) or "params").startswith("flop") else "params"
    if not (math.isfinite(value) and value > 0):  # 0 fits nothing; 1e400 is no number
        raise bad
    return value, unit


def row_costs(entry: dict[str, Any]) -> dict[str, float]:
    c = entry.get("costs") or {}
    return {"generic": float(c.get("generic", 0.0)), "per_target": float(c.get("per_target", 0.0)),
            "teacher": float(c.get("teacher", 0.0)), "inference": float(c.get("inference_flops_per_token", 0.0)),
            "params": float(c.get("params_active", 0.0))}


def cost_curves(rows: list[tuple[str, dict[str, Any]]], n: np.ndarray = N_TARGETS) -> dict[str, np.ndarray]:
    """C(N) = generic + N x per-target of every row."""
    out = {}
    for label, e in rows:
        c = row_costs(e)
        out[label] = c["generic"] + n * c["per_target"]
    return out


def _fits(c: dict[str, float], b: Budgets) -> bool:
    if b.per_target is not None and c["per_target"] > b.per_target:
        return False
    if b.pretraining is not None and c["generic"] > b.pretraining:
        return False
    if b.total is not None and b.cost(c) > b.total:
        return False
    if b.inference is not None:
        used = c["inference"] if b.inference_unit == "flops" else c["params"]
        if used > b.inference:
            return False
    return True


def choose(rows: list[tuple[str, dict[str, Any]]], b: Budgets) -> dict[str, Any]:
    """The row with the lowest perplexity after fine-tuning within the budgets, and the runner-up."""
    scored = []
    for label, e in rows:
        ppl = e["metrics"].get("finetuned", {}).get("macro_ppl")
        if ppl is None or not math.isfinite(ppl):
            continue
        c = row_costs(e)
        scored.append((ppl, label, c, _fits(c, b)))
    fitting = sorted((s for s in scored if s[3]), key=lambda s: (s[0], s[1]))
    n = b.targets or 1
    out: dict[str, Any] = {"budgets": {"targets": b.targets, "inference": b.inference,
                                       "inference_unit": b.inference_unit, "per_target": b.per_target,
                                       "pretraining": b.pretraining, "total": b.total},
                           "fitting": [s[1] for s in fitting]}
    if not fitting:
        out.update(best=None, runner_up=None, why=_why_nothing_fits(scored, b))
        return out
    best = fitting[0]
    out.update(best=best[1], best_ppl=best[0], total_cost=b.cost(best[2]),
               runner_up=fitting[1][1] if len(fitting) > 1 else None,
               runner_up_ppl=fitting[1][0] if len(fitting) > 1 else None)
    out["why"] = ((f"{best[1]} has the lowest perplexity after fine-tuning ({best[0]:.2f}) of the "
                   f"{len(fitting)} strategies within the budgets" if len(fitting) > 1 else
                   f"{best[1]} is the only strategy within the budgets (perplexity after fine-tuning {best[0]:.2f})")
                  + f"; C({n}) = {format_flops(out['total_cost'])}")
    return out


def _why_nothing_fits(scored: list[tuple[float, str, dict[str, float], bool]], b: Budgets) -> str:
    """"no strategy fits these budgets", and the rows nearest to fitting: the cheapest per target, the smallest
    at inference, and for the budgets stated the least pretraining and the least C(N)."""
    if not scored:
        return "no strategy fits these budgets"

    def least(cost) -> tuple[str, dict[str, float]]:
        """(label, costs) of the row with the least `cost(costs)`."""
        return min(((label, costs) for _, label, costs, _ in scored), key=lambda row: cost(row[1]))

    cheap, small = least(lambda c: c["per_target"]), least(lambda c: c["params"])
    parts = [f"the cheapest per target is {cheap[0]} ({format_flops(cheap[1]['per_target'])}) and the smallest at "
             f"inference {small[0]} ({_count(small[1]['params'])} parameters, {format_flops(small[1]['inference'])} "
             "per token)"]
    if b.pretraining is not None:
        early = least(lambda c: c["generic"])
        parts.append(f"the least pretraining {early[0]} ({format_flops(early[1]['generic'])})")
    if b.total is not None:
        whole = least(b.cost)
        parts.append(f"the least C({b.targets}) {whole[0]} ({format_flops(b.cost(whole[1]))})")
    return "no strategy fits these budgets: " + "; ".join(parts)


def decision_map(rows: list[tuple[str, dict[str, Any]]], b: Budgets | None = None) -> dict[str, Any]:
    """The row `choose` picks for every per-target budget x inference budget (active parameters, or FLOPs per
    token where `b` states the inference budget in FLOPs), under `b`'s other budgets (targets, pretraining, total):
    the choice changes only where a budget crosses a row's cost, so the map's cells run between those costs
    (`*_edges`, with a margin each side, reaching `b`'s own two budgets) and each holds one choice (`grid[i, j]`,
    -1 for none), taken inside the cell: its edges are where the choice changes, exactly."""
    b = b or Budgets()
    unit = b.inference_unit
    costs = [row_costs(e) for _, e in rows]
    per = sorted({c["per_target"] for c in costs if c["per_target"] > 0})
    used = sorted({v for c in costs if (v := c["inference" if unit == "flops" else "params"]) > 0})
    if not per or not used:
        return {}
    xs = np.asarray([min(per[0], b.per_target or per[0]) / 10 ** 0.5, *per,
                     max(per[-1], b.per_target or per[-1]) * 10 ** 0.5])
    ys = np.asarray([min(used[0], b.inference or used[0]) / 10 ** 0.2, *used,
                     max(used[-1], b.inference or used[-1]) * 10 ** 0.2])
    labels = [label for label, _ in rows]
    grid = np.full((len(ys) - 1, len(xs) - 1), -1, dtype=np.int64)
    for i, y in enumerate(np.sqrt(ys[:-1] * ys[1:])):  # inside each cell: past its lower edges' costs
        for j, x in enumerate(np.sqrt(xs[:-1] * xs[1:])):
            best = choose(rows, replace(b, inference=float(y), per_target=float(x)))["best"]
            grid[i, j] = labels.index(best) if best is not None else -1
    return {"per_target_edges": xs, "params_edges": ys, "grid": grid, "labels": labels, "unit": unit}


def region_shares(m: dict[str, Any]) -> dict[int, float]:
    """Each choice's share of the decision map's area as drawn (log axes): a choice won over a sliver of budgets
    (two rows' costs 0.01% apart) is in the legend but not to be seen."""
    area = np.outer(np.diff(np.log(m["params_edges"])), np.diff(np.log(m["per_target_edges"])))
    return {int(i): float(area[m["grid"] == i].sum() / area.sum()) for i in np.unique(m["grid"])}


# ---- the report section and its figures


def plan_section(rows: list[tuple[str, dict[str, Any]]], b: Budgets, *, source: str = "the rows above",
                 guide: bool = True) -> tuple[list[str], dict[str, Any]]:
    """Markdown lines of the planning report (C(N) of the rows, from `source`; the choice; with `guide`, how to
    read the figures) and the choice (for results.json)."""
    plan = choose(rows, b)
    ns = sorted({1, 10, 100, 1000, *([b.targets] if b.targets else [])})
    lines = ["## Which strategy to plan for", "",
             f"Cost of serving N targets, C(N) = generic (paid once) + N x per-target, from {source}:", "",
             "| strategy | " + " | ".join(f"C({k})" for k in ns) + " | inference FLOPs/token | ppl after fine-tuning |",
             "|---|" + "---|" * (len(ns) + 2)]
    for label, e in rows:
        c = row_costs(e)
        ppl = e["metrics"].get("finetuned", {}).get("macro_ppl", float("nan"))
        lines.append(f"| {label} | " + " | ".join(format_flops(c["generic"] + k * c["per_target"]) for k in ns)
                     + f" | {format_flops(c['inference'])} | {ppl:.2f} |")
    lines.append("")
    if b.given:
        stated = ", ".join(x for x in (
            f"{b.targets} targets expected" if b.targets else "",
            (f"inference at most {format_flops(b.inference)} per token" if b.inference_unit == "flops" else
             f"inference at most {_count(b.inference)} parameters") if b.inference is not None else "",
            f"per-target at most {format_flops(b.per_target)}" if b.per_target is not None else "",
            f"pretraining at most {format_flops(b.pretraining)}" if b.pretraining is not None else "",
            f"C({b.targets}) at most {format_flops(b.total)}" if b.total is not None else "") if x)
        if plan["best"] is None:
            lines += [f"Budgets: {stated}. **{upper_first(plan['why'])}.**", ""]
        else:
            runner = (f"; runner-up: {plan['runner_up']} ({plan['runner_up_ppl']:.2f})" if plan["runner_up"]
                      else "; no other strategy fits")
            lines += [f"Budgets: {stated}. **Plan for {plan['best']}**: {plan['why']}{runner}.", ""]
    if guide:
        lines += ["How to read it: `plan.png` draws C(N) for N from 1 to 1,000 (a strategy that pays in pretraining climbs "
                  "slowly, by its per-target embedding and fine-tuning; one that pretrains per target climbs fast); `decision.png` shades, for each per-target budget and "
                  "inference budget (active parameters, or FLOPs per token where the budget is stated so), the strategy with "
                  "the lowest perplexity after fine-tuning that fits both and the other budgets stated (the seed paper's "
                  "decision figure, redrawn from these runs; the budgets stated are marked: a star, or a line). State your budgets "
                  "with `--targets-expected`, `--inference-budget`, `--per-target-budget`, `--pretraining-budget` and "
                  "`--total-budget` "
                  "to get the choice in one line (`impsamp plan` reads them for this report, training nothing).", ""]
    return lines, plan


def _count(n: float) -> str:
    """5e6 -> '5M', 22_550_000 -> '22.6M', 300 -> '300'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def cost_lines(rows: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The C(N) curves to draw: strategies whose costs are within 0.5% everywhere (a line's width on the log
    plot) share one line, else the later one hides the first; `exact` where they agree to the FLOP's thousand."""
    lines: list[dict[str, Any]] = []
    for label, curve in cost_curves(rows).items():
        line = next((ln for ln in lines if np.allclose(curve, ln["curve"], rtol=5e-3, atol=1.0)), None)
        if line is None:
            lines.append({"curve": curve, "labels": [label], "exact": True})
        else:
            line["labels"].append(label)
            line["exact"] = line["exact"] and bool(np.allclose(curve, line["curve"], rtol=0, atol=1e3))
    return lines


def plot_costs(path: Path, rows: list[tuple[str, dict[str, Any]]], targets: int | None = None) -> bool:
    fig = figure((7.0, 4.2))
    if fig is None:
        return False
    ax = fig.add_subplot()
    styles = ("-", "--", "-.", ":")
    for i, line in enumerate(cost_lines(rows)):
        same = " (the same costs)" if line["exact"] else " (costs within 0.5%)"
        ax.plot(N_TARGETS, line["curve"], linestyle=styles[i % len(styles)], linewidth=1.6,
                label=" = ".join(line["labels"]) + (same if len(line["labels"]) > 1 else ""))
    if targets:
        ax.axvline(targets, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("targets served (N)")
    ax.set_ylabel("total FLOPs, C(N)")
    ax.set_title("C(N) = generic + N x per-target")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
    return True


def plot_decision(path: Path, rows: list[tuple[str, dict[str, Any]]], budgets: Budgets | None = None) -> bool:
    """decision.png: `decision_map` shaded, the budgets stated (`budgets`) marked: a star where both axes' are
    given, else a line; the other budgets stated named in the title."""
    b = budgets or Budgets()
    m = decision_map(rows, b)
    fig = figure((8.6, 4.6)) if m else None
    if fig is None:
        return False
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    labels = m["labels"]
    used = sorted(set(m["grid"].ravel().tolist()))
    colors = colormaps["tab10"]
    cmap = ListedColormap(["#eeeeee"] + [colors(i % 10) for i in range(len(labels))])
    ax = fig.add_subplot()
    ax.pcolormesh(m["per_target_edges"], m["params_edges"], m["grid"] + 1, cmap=cmap, vmin=0, vmax=len(labels),
                  shading="flat")
    flops = m["unit"] == "flops"
    _log_axes(ax, flops, [float(np.log10(e[-1] / e[0])) for e in (m["per_target_edges"], m["params_edges"])])
    ax.set_xlabel("per-target budget (FLOPs)")
    ax.set_ylabel("inference budget (FLOPs per token)" if flops else "inference budget (active parameters)")
    fixed = ", ".join(x for x in (f"pretraining at most {format_flops(b.pretraining)}" if b.pretraining else "",
                                  f"C({b.targets}) at most {format_flops(b.total)}" if b.total else "") if x)
    ax.set_title("lowest perplexity after fine-tuning within both budgets" + (f"\n({fixed})" if fixed else ""))
    handles = [Rectangle((0, 0), 1, 1, color=cmap(i + 1)) for i in used if i >= 0]
    share = region_shares(m)
    names = [labels[i] + (" (a strip too thin to see)" if share[i] < 0.002 else "") for i in used if i >= 0]
    if -1 in used:
        handles.append(Rectangle((0, 0), 1, 1, color=cmap(0)))
        names.append("nothing fits")
    mark = dict(color="black", linestyle="--", linewidth=1.2)
    if b.per_target is not None and b.inference is not None:
        ax.plot([b.per_target], [b.inference], marker="*", markersize=15, color="black", markeredgecolor="white",
                linestyle="none")
        handles.append(Line2D([], [], marker="*", markersize=11, color="black", linestyle="none"))
        names.append("your budgets")
    elif b.per_target is not None or b.inference is not None:
        (ax.axvline(b.per_target, **mark) if b.per_target is not None else ax.axhline(b.inference, **mark))
        handles.append(Line2D([], [], **mark))
        names.append(f"your {'per-target' if b.per_target is not None else 'inference'} budget")
    ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()  # the legend beside the map, not on it
    save_png(fig, path)
    return True


def _log_axes(ax: Any, flops_y: bool, decades: list[float]) -> None:
    """Log axes labelled in the report's units (2 TFLOP, 5M); an axis spanning `decades` of at most two labels its
    2s and 5s too (on a wider one they would run into each other)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")  # (first: setting a scale resets the locators)
    ax.set_yscale("log")
    for axis, fmt, span in zip((ax.xaxis, ax.yaxis), (_short_flops, _short_flops if flops_y else _count), decades):
        label = FuncFormatter(lambda v, _, fmt=fmt: fmt(v))
        axis.set_major_locator(LogLocator(subs=(1.0,)))
        axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        axis.set_major_formatter(label)
        axis.set_minor_formatter(label if span <= 2.2 else NullFormatter())


def _short_flops(v: float) -> str:
    """A tick's FLOPs: 2e12 -> '2 TFLOP', 5e11 -> '500 GFLOP'."""
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6),
                        ("kFLOP", 1e3)):
        if v >= scale * 0.9995:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g} FLOP"
