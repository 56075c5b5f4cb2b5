"""Planning: C(N), the choice under budgets, the decision map, and `compare --models ...,large,distill`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from impsamp.errors import ConfigError
from impsamp.planning import (Budgets, choose, cost_curves, decision_map, parse_inference_budget, plan_section,
                              plot_decision)

from ._helpers import invoke, ok, one_line_error, run_sub, tiny_compare_toml, under_field, write_corpus


def entry(generic, per_target, params, ppl, inference=None):
    return {"metrics": {"pretrained": {"macro_ppl": ppl * 2}, "finetuned": {"macro_ppl": ppl}},
            "costs": {"generic": generic, "per_target": per_target, "params_active": params,
                      "inference_flops_per_token": inference if inference is not None else 2 * params}}


ROWS = [("dense, importance", entry(0, 10, 5, 100)), ("experts G=4 (top)", entry(100, 1, 5, 120)),
        ("large", entry(500, 5, 25, 80))]


def test_cost_curves_are_generic_plus_n_times_per_target():
    n = np.array([1, 10, 1000])
    curves = cost_curves(ROWS, n)
    assert curves["dense, importance"].tolist() == [10, 100, 10000]
    assert curves["experts G=4 (top)"].tolist() == [101, 110, 1100]
    assert curves["large"].tolist() == [505, 550, 5500]


def test_choice_under_budgets_and_the_runner_up():
    free = choose(ROWS, Budgets())
    assert (free["best"], free["runner_up"]) == ("large", "dense, importance")
    small = choose(ROWS, Budgets(targets=100, inference=10))
    assert (small["best"], small["runner_up"]) == ("dense, importance", "experts G=4 (top)")
    assert small["total_cost"] == 0 + 100 * 10
    cheap = choose(ROWS, Budgets(inference=10, per_target=2))
    assert (cheap["best"], cheap["runner_up"]) == ("experts G=4 (top)", None)
    flops = choose(ROWS, Budgets(inference=20, inference_unit="flops"))  # 2 x params FLOPs per token
    assert flops["best"] == "dense, importance"
    # the paper's fourth budget: what may be spent before any target is known (generic FLOPs)
    early = choose(ROWS, Budgets(pretraining=100))
    assert (early["best"], early["fitting"]) == ("dense, importance", ["dense, importance", "experts G=4 (top)"])
    assert early["budgets"]["pretraining"] == 100
    none = choose(ROWS, Budgets(pretraining=50, per_target=2))
    assert none["best"] is None and "the least pretraining dense, importance (0 FLOP)" in none["why"]
    lines, _ = plan_section(ROWS, Budgets(pretraining=600))
    assert any("pretraining at most 600 FLOP. **Plan for large**" in li for li in lines), lines


def test_a_total_budget_over_the_targets_expected_picks_what_pays_off_at_that_n():
    """C(N) = generic + N x per-target at most the total: at 1 target the per-target dense run fits and wins, at
    100 only what pays in pretraining (experts: 100 + 100 x 1) does; without N it is refused (C(N) needs its N)."""
    one = choose(ROWS, Budgets(targets=1, total=300))
    assert (one["best"], one["fitting"]) == ("dense, importance", ["dense, importance", "experts G=4 (top)"])
    many = choose(ROWS, Budgets(targets=100, total=300))
    assert (many["best"], many["runner_up"], many["total_cost"]) == ("experts G=4 (top)", None, 200)
    assert many["budgets"]["total"] == 300
    none = choose(ROWS, Budgets(targets=100, total=150))
    assert none["best"] is None and "the least C(100) experts G=4 (top) (200 FLOP)" in none["why"]
    lines, _ = plan_section(ROWS, Budgets(targets=100, total=300))
    assert any(li.startswith("Budgets: 100 targets expected, C(100) at most 300 FLOP. **Plan for experts")
               for li in lines), lines
    with pytest.raises(ConfigError, match="--total-budget .* give --targets-expected"):
        Budgets(total=300)


def test_nothing_fits_is_said_in_one_line():
    plan = choose(ROWS, Budgets(inference=1))
    assert plan["best"] is None and plan["fitting"] == []
    assert "no strategy fits" in plan["why"] and "experts G=4 (top)" in plan["why"]
    lines, _ = plan_section(ROWS, Budgets(inference=1))
    said = [li for li in lines if "No strategy fits" in li]
    assert len(said) == 1 and "Plan for" not in "\n".join(lines)
    lines, plan = plan_section(ROWS, Budgets(targets=10, per_target=6))
    assert any(li.startswith("Budgets: 10 targets expected, per-target at most 6 FLOP. **Plan for large**")
               for li in lines), lines


def test_decision_map_redraws_the_papers_rule_from_the_rows():
    m = decision_map(ROWS)
    labels, grid = m["labels"], m["grid"]
    assert grid[-1, -1] == labels.index("large")              # everything affordable: the large model
    assert (grid[0] == -1).all()                              # below the smallest model: nothing fits
    small = int(np.argmax(m["params_edges"] >= 5))             # the row of cells from a small model's size up
    assert grid[small, -1] == labels.index("dense, importance")  # large per-target budget: importance sampling
    assert grid[small, 0] == -1 and labels.index("experts G=4 (top)") in grid[small].tolist()  # small: experts
    # the cells' edges are the rows' own costs: the boundaries lie where the choice changes, not a grid step off
    # (the demo's map drew importance's edge at 7.66e12 FLOPs; its cost is 7.32e12)
    assert {1, 5, 10} <= set(m["per_target_edges"].tolist()) and {5, 25} <= set(m["params_edges"].tolist())
    for i, y in enumerate(m["params_edges"][:-1]):
        for j, x in enumerate(m["per_target_edges"][:-1]):  # a budget exactly at a cell's lower edges chooses as it
            best = choose(ROWS, Budgets(inference=float(y), per_target=float(x)))["best"]
            assert grid[i, j] == (labels.index(best) if best else -1), (x, y)


def test_the_decision_map_holds_the_budgets_stated(tmp_path):
    """The map reaches the user's own budgets, honours the other ones (pretraining: `large` no longer fits
    anywhere), reads an inference budget in FLOPs on a FLOPs axis, and decision.png marks them."""
    b = Budgets(targets=10, inference=100, per_target=1000, pretraining=200)
    m = decision_map(ROWS, b)
    assert m["per_target_edges"][-1] > 1000 and m["params_edges"][-1] > 100  # the budgets lie on the map
    assert m["labels"].index("large") not in m["grid"].tolist() and m["labels"].index("large") in decision_map(ROWS)["grid"]
    flops = decision_map(ROWS, Budgets(inference=12, inference_unit="flops"))
    assert flops["unit"] == "flops" and {10, 50} <= set(flops["params_edges"].tolist())  # 2 x params per token
    for name, budgets in (("both", b), ("one", Budgets(per_target=3)), ("none", None)):
        assert plot_decision(tmp_path / f"{name}.png", ROWS, budgets)
    assert len({(tmp_path / f"{name}.png").read_bytes() for name in ("both", "one", "none")}) == 3


def test_costs_a_line_width_apart_share_a_line_and_a_sliver_of_the_map_is_said():
    from impsamp.planning import cost_lines, region_shares

    rows = [("dense, uniform", entry(4.96e12, 309.705e9, 2.23e6, 600)),
            ("projected network", entry(4.96e12, 309.737e9, 2.23e6, 590)),  # 0.01% apart: drawn on top, hidden
            ("experts G=4 (top)", entry(4.96e12, 309.705e9, 2.23e6, 610)), ("large", entry(5e13, 2e12, 1e7, 400))]
    lines = cost_lines(rows)
    assert [ln["labels"] for ln in lines] == [["dense, uniform", "projected network", "experts G=4 (top)"], ["large"]]
    assert lines[0]["exact"] is False and lines[1]["exact"] is True
    assert cost_lines(rows[:1] + rows[2:3])[0]["exact"] is True  # the same costs, exactly
    share = region_shares(decision_map(rows))
    labels = [label for label, _ in rows]
    assert share[labels.index("dense, uniform")] < 0.002 < share[labels.index("projected network")]
    assert sum(share.values()) == pytest.approx(1.0)


def test_the_plots_leave_the_callers_matplotlib_alone(tmp_path):
    """The library drew with pyplot after `matplotlib.use("Agg")`: a notebook calling `impsamp.compare` lost its
    backend. The plots are Figures now, and pyplot is never imported."""
    code = f"""
import sys
import matplotlib
from impsamp.planning import plot_costs, plot_decision
from tests.test_planning import ROWS
matplotlib.use("svg")  # a backend of the caller's own
assert plot_costs(__import__("pathlib").Path({str(tmp_path / "plan.png")!r}), ROWS, 10)
assert plot_decision(__import__("pathlib").Path({str(tmp_path / "decision.png")!r}), ROWS)
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, timeout=120)
    assert r.stdout.split() == ["svg", "False"], r.stdout + r.stderr
    assert (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "decision.png").stat().st_size > 1000


def test_inference_budget_parsing():
    assert parse_inference_budget("5e6") == (5e6, "params")
    assert parse_inference_budget("4.5M params") == (4.5e6, "params")
    assert parse_inference_budget("10M flops") == (1e7, "flops")
    assert parse_inference_budget("1e7flops") == (1e7, "flops")
    assert parse_inference_budget(".5m") == (5e5, "params") and parse_inference_budget(2e6) == (2e6, "params")
    for bad in ("lots", "0", "0flops", "-5", "1e400", "1.2.3", "nan", 0, float("inf")):  # 0 fits nothing
        with pytest.raises(ConfigError, match="--inference-budget .*give a positive"):
            parse_inference_budget(bad)


def test_budgets_given_through_the_python_api_are_checked_as_the_flags_are():
    # a misspelled unit read as parameters chose a row over the FLOPs budget; NaN fitted everything
    for kwargs, message in [({"inference": 2e6, "inference_unit": "FLOPs"}, "inference_unit must be params or flops"),
                            ({"per_target": float("nan")}, "--per-target-budget must be a finite number > 0"),
                            ({"inference": float("nan")}, "--inference-budget must be a finite number > 0"),
                            ({"targets": -5}, "--targets-expected must be > 0"),
                            ({"targets": 2.5}, "--targets-expected must be a whole number"),
                            ({"per_target": "1e9"}, "--per-target-budget must be a number"),
                            ({"pretraining": 0}, "--pretraining-budget must be > 0")]:
        with pytest.raises(ConfigError, match=message):
            Budgets(**kwargs)
    assert Budgets(targets=3, inference=1e7, inference_unit="flops").given


def test_nothing_fits_names_the_cheapest_with_its_units_intact():
    lines, plan = plan_section(ROWS, Budgets(per_target=1e-3))
    assert plan["best"] is None
    line = next(li for li in lines if li.startswith("Budgets:"))
    assert "**No strategy fits these budgets" in line and plan["why"][1:] in line  # not str.capitalize's lowercase


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    p = {"root": root, "generic": write_corpus(root / "generic.jsonl", 240),
         "target": write_corpus(root / "bio.jsonl", 40, seed=1, topics=("bio",), ids=False),
         "toml": tiny_compare_toml(root / "c.toml")}
    return p


def compare_args(p, out, *extra):
    return ["compare", "--generic", p["generic"], "--target", p["target"], "--eval", p["target"], "--out", out,
            "--methods", "uniform,importance", "--tokens", "2000", "--k", "4", "--steps", "4", "--finetune-steps",
            "2", "--config", p["toml"], "--no-progress", *extra]


def test_compare_plans_over_dense_large_and_distill(corpus, tmp_path):
    from impsamp.comparison import Report
    from impsamp.training import TrainRun

    out = tmp_path / "plan"
    body = {k: under_field(corpus[k], tmp_path / f"{k}.jsonl") for k in ("generic", "target")}  # text: `body`
    r = ok(invoke(*compare_args({**corpus, **body}, out, "--models", "dense,large,distill", "--targets-expected",
                                "50", "--inference-budget", "1e6", "--per-target-budget", "1e15", "--text-field",
                                "body")))
    assert "| large (tiny-large, 1 step) |" in r.output and "| distilled (teacher tiny-large, alpha 0.5) |" in r.output
    res = Report.load(out).results
    large, dist, uni = res["models"]["large"], res["models"]["distill"], res["methods"]["uniform"]
    assert large["costs"]["params_active"] > 4 * uni["costs"]["params_active"]
    assert dist["costs"]["teacher"] > 0 and dist["costs"]["generic"] == uni["costs"]["generic"] + large["costs"]["generic"]
    assert dist["per_target_without_teacher"] == pytest.approx(uni["costs"]["finetuning"])
    assert TrainRun.load(out / "runs" / "distill").config.teacher == str(out / "runs" / "large")
    plan = res["plan"]
    assert plan["best"] in ("dense, uniform", "dense, importance", "distilled (teacher tiny-large, alpha 0.5)")
    assert "large (tiny-large, 1 step)" not in plan["fitting"]  # over the inference budget
    assert f"plan: {plan['best']}" in r.output
    report = (out / "report.md").read_text()
    assert "## Which strategy to plan for" in report and "Plan for" in report
    assert (out / "plan.png").stat().st_size > 5000 and (out / "decision.png").stat().st_size > 5000

    # other budgets, from the same runs: `impsamp plan` chooses as the report would have, training nothing
    from impsamp.comparison_report import rows

    before = sorted(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file())
    r = ok(invoke("plan", out, "--per-target-budget", "1e20", "--inference-budget", "1e20flops", "--json"))
    again = choose(rows(res), Budgets(50, 1e20, "flops", 1e20))
    assert json.loads(r.output) == json.loads(json.dumps(again)) and "large (tiny-large, 1 step)" in again["fitting"]
    shown = ok(invoke("plan", out, "--targets-expected", "7")).output  # the others: the report's budgets
    assert "| C(7) |" in shown and f"Plan for {choose(rows(res), Budgets(7, 1e6, 'params', 1e15))['best']}" in shown
    ok(invoke("plan", out, "--per-target-budget", "1e13", "--plot", tmp_path / "mine" / "decision.png"))
    assert (tmp_path / "mine" / "decision.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "mine" / "decision.png").read_bytes() != (out / "decision.png").read_bytes()  # marked elsewhere
    one_line_error(invoke("plan", out, "--plot", out / "mine.png"), "inside the report")
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()) == before
    one_line_error(invoke("plan", out, "--per-target-budget", "-1"), "--per-target-budget must be > 0")
    # nothing may be spent before the target is known: only what pretrains per target (importance sampling) fits
    early = json.loads(ok(invoke("plan", out, "--pretraining-budget", "1", "--json")).output)
    assert early["fitting"] == [label for label, e in rows(res) if e["costs"]["generic"] <= 1] and early["fitting"]
    one_line_error(invoke("plan", out / "runs" / "large"), "expected a 'compare' output")
    _a_resumed_compare_keeps_the_large_and_distilled_runs(out, res, [str(body["target"])])
    # the total over the report's 50 targets: what fits is what C(50) allows, cheapest C(50) first when nothing does
    c50 = {label: e["costs"]["generic"] + 50 * e["costs"]["per_target"] for label, e in rows(res)}
    cut = sorted(c50.values())[1]
    total = json.loads(ok(invoke("plan", out, "--total-budget", str(cut), "--inference-budget", "1e20", "--json")).output)
    assert total["fitting"] and set(total["fitting"]) == {k for k, v in c50.items() if v <= cut} != set(c50)
    assert total["total_cost"] == c50[total["best"]]
    one_line_error(invoke("plan", out, "--total-budget", "1e10", "--targets-expected", "0"), "--targets-expected")


def _a_resumed_compare_keeps_the_large_and_distilled_runs(out, res, targets):
    """The distilled run was trained again by every resumed compare whose [compare] set a model shape (the run
    recorded none: the student fixes it), with a warning naming settings the user never gave distill."""
    import logging
    from types import SimpleNamespace

    import impsamp.distillation as distillation
    import impsamp.training as training
    from impsamp.comparison import CompareConfig, _train_config
    from impsamp.config import from_dict
    from impsamp.io import open_corpus
    from impsamp.manifest import MANIFEST
    from impsamp.strategies import model_entries

    cfg = from_dict(CompareConfig, res["config"])
    tcfg = _train_config(out, cfg, open_corpus(str(out.parent / "generic.jsonl"), text_field=cfg.text_field), False)
    evals = [e["path"] for e in json.loads((out / MANIFEST).read_text())["inputs"]["eval"]]

    def refuse(*a, **k):
        raise AssertionError("redone")

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("impsamp").addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(distillation, "distill", refuse)
            mp.setattr(training, "train", refuse)
            entries = model_entries(out, cfg, tcfg, None, None, {"uniform": SimpleNamespace(path=out / "selections" / "uniform")},
                                    None, targets, evals, False, lambda *a: None)
    finally:
        logging.getLogger("impsamp").removeHandler(handler)
    assert entries["distill"]["metrics"] == res["models"]["distill"]["metrics"]
    assert not [r for r in records if r.levelno >= logging.WARNING], [r.getMessage() for r in records]


def test_killed_compare_resumes_reusing_finished_runs(corpus, tmp_path):
    out = tmp_path / "k"
    args = compare_args(corpus, out, "--models", "dense,large")
    r = run_sub(*args, env={"IMPSAMP_TEST_KILL_AT": "finetune:1"}, timeout=300)  # the first run that fine-tunes
    assert r.returncode != 0 and not (out / "manifest.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/manifest.json")}  # finished selections
    assert stamps
    r = run_sub(*args, timeout=300)
    assert r.returncode == 0, r.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    ref = tmp_path / "ref"  # in a subprocess too: the same torch threads (in-process, float sums split otherwise)
    assert run_sub(*compare_args(corpus, ref, "--models", "dense,large"), timeout=300).returncode == 0
    table = lambda d: json.loads((d / "results.json").read_text())["models"]["large"]["metrics"]["finetuned"]  # noqa: E731
    assert table(out)["macro_ppl"] == table(ref)["macro_ppl"]


@pytest.mark.parametrize("preset", ["tiny", "slm-126m"])
def test_the_large_model_spends_the_dense_models_generic_flops_with_its_own_batch(preset):
    """`large` trains at the dense runs' generic FLOPs: the steps scaled by FLOPs per token alone gave the paper's
    llm-771m (batch 8) a quarter of slm-126m's (batch 32) pretraining compute."""
    from impsamp.comparison import CompareConfig
    from impsamp.strategies import large_config
    from impsamp.training import TrainConfig

    cfg = CompareConfig(preset=preset, models=("dense", "large"), steps=1000, dtype="float32")
    dense = TrainConfig(preset=preset, steps=1000, dtype="float32", seed=3)
    large = large_config(cfg, dense, 32_000)

    def generic(c):
        return c.steps * c.model_config(32_000).flops_per_token() * c.resolved("batch_size") * c.resolved("block_size")

    assert large.preset != preset and large.dtype == "float32" and large.seed == 3
    assert generic(large) == pytest.approx(generic(dense), rel=0.01)
    assert large_config(CompareConfig(preset=preset, models=("large",), large_steps=7), dense, 32_000).steps == 7
