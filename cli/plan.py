"""`impsamp plan REPORT`: the planning choice of a finished comparison under other budgets, nothing trained again."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .app import cli


@cli.command()
@click.argument("report_dir", type=click.Path(path_type=Path))
@click.option("--targets-expected", type=int, default=None,
              help="How many targets you expect (C(N) is reported there) [default: the report's].")
@click.option("--inference-budget", default=None,
              help="The largest model you can serve, active parameters (5e6) or FLOPs per token (1e7flops) "
                   "[default: the report's].")
@click.option("--per-target-budget", type=float, default=None,
              help="The most FLOPs you can spend per target [default: the report's].")
@click.option("--pretraining-budget", type=float, default=None,
              help="The most generic FLOPs you can spend before any target is known [default: the report's].")
@click.option("--total-budget", type=float, default=None,
              help="The most FLOPs for all the targets expected together, C(N) = generic + N x per-target (needs "
                   "--targets-expected, here or in the report) [default: the report's].")
@click.option("--json", "as_json", is_flag=True, help="Print the choice as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the decision map with these budgets marked into this PNG (outside the report).")
def plan(report_dir, targets_expected, inference_budget, per_target_budget, pretraining_budget, total_budget, as_json,
         plot):
    """Which strategy to plan for, from a finished `impsamp compare` (or `impsamp demo`) report, under the
    budgets you give: the C(N) table and the choice, as the report's planning section has them. Nothing is
    trained again; a budget you leave out keeps the value the report was made with. The report's
    `decision.png` marks the report's budgets; `--plot FILE` draws it with these.

    \b
    Examples:
      impsamp plan runs/law-plan --per-target-budget 1e13
      impsamp plan runs/law-plan --pretraining-budget 1e15   # little before the targets: per-target strategies
      impsamp plan runs/law-plan --targets-expected 500 --total-budget 2e17   # what pays off over 500 targets
      impsamp plan impsamp-demo --targets-expected 1000 --inference-budget 1e7flops --json
      impsamp plan runs/law-plan --per-target-budget 1e13 --inference-budget 5e6 --plot law-decision.png
    """
    from impsamp.comparison import Report
    from impsamp.comparison_report import rows
    from impsamp.config import positive
    from impsamp.planning import Budgets, parse_inference_budget, plan_section

    positive("targets_expected", targets_expected, flag="--targets-expected")
    positive("per_target_budget", per_target_budget, flag="--per-target-budget")
    positive("pretraining_budget", pretraining_budget, flag="--pretraining-budget")
    positive("total_budget", total_budget, flag="--total-budget")
    value, unit = parse_inference_budget(inference_budget)
    report = Report.load(report_dir)
    recorded = report.results.get("config", {})
    if inference_budget is None:
        value, unit = parse_inference_budget(recorded.get("inference_budget"))
    given = {"targets_expected": targets_expected, "per_target_budget": per_target_budget,
             "pretraining_budget": pretraining_budget, "total_budget": total_budget}
    b = {k: v if v is not None else recorded.get(k) for k, v in given.items()}  # what is left out: the report's
    budgets = Budgets(b["targets_expected"], value, unit, b["per_target_budget"], b["pretraining_budget"],
                      b["total_budget"])
    lines, choice = plan_section(rows(report.results), budgets, source=f"the runs of {report_dir}", guide=False)
    if plot is not None:
        _plot(plot, report_dir, rows(report.results), budgets)
    if as_json:
        click.echo(json.dumps(choice, indent=2))
        return
    click.echo("\n".join(lines[2:]).rstrip())  # without the section's heading


def _plot(path: Path, report_dir: Path, entries, budgets) -> None:
    """decision.png for these budgets, written to `path` (never into the finished report, whose files its
    manifest lists)."""
    from impsamp.errors import ConfigError
    from impsamp.planning import plot_decision

    if report_dir.resolve() in path.resolve().parents:
        raise ConfigError(f"--plot {path}: that is inside the report {report_dir}, whose files are its manifest's; "
                          "write it elsewhere (--plot decision-mine.png)")
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--plot {path}: give a .png file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        drawn = plot_decision(path, entries, budgets)
    except OSError as e:
        raise ConfigError(f"--plot {path}: cannot write it ({e.strerror or e}); choose a writable place") from None
    if not drawn:
        raise ConfigError("--plot: the decision map needs matplotlib and a report with per-target costs "
                          "(pip install matplotlib)")
    click.echo(f"decision map with these budgets: {path}", err=True)
