"""`compare`'s report: the table of every strategy (`markdown_table`), report.md, results.json, the
perplexity bar chart, the planning section and its figures, and report.html beside them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import upper_first
from .manifest import atomic_write_bytes
from .plots import figure, save_png
from .training_noise import plus_minus, report_lines, seed_words, standard_error


def rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, entry) of every row of the report: the dense model per method, then the other models."""
    out = [(m if "models" not in results else f"dense, {m}", e) for m, e in results["methods"].items()]
    for name, e in results.get("models", {}).items():
        out.append((_model_label(name, e), e))
    return out


def _model_label(name: str, e: dict[str, Any]) -> str:
    if name == "experts":
        return f"experts G={e['groups']} ({e['select']})"
    if name == "projected":
        return f"projected network (cluster {e['condition']})"
    if name == "large":
        return f"large ({e['preset']}, {e['steps']} step{'' if e['steps'] == 1 else 's'})"
    if name == "distill":
        return f"distilled (teacher {e['teacher']}, alpha {e['alpha']})"
    return "soup of experts" if name == "soup" else name


def markdown_table(results: dict[str, Any]) -> str:
    """The paper-style table: one row per strategy, perplexity and bits per byte before and after
    fine-tuning, what its selection repeated, and its costs (FLOPs paid once and per target,
    parameters at inference)."""
    from .costs import format_flops

    entries = rows(results)
    has_domain = any("target_domain_share" in e for _, e in entries)
    head = ["method", "ppl pretrained", "bpb pretrained", "ppl fine-tuned", "bpb fine-tuned",
            "repetition", "KL(t‖sel)"] + (["target-domain share"] if has_domain else []) + \
        ["generic FLOPs", "per-target FLOPs", "inference FLOPs/token", "params (inference)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, e in entries:
        pre, fin = e["metrics"]["pretrained"], e["metrics"].get("finetuned", {})
        s = e.get("selection")
        noise = e.get("lm_seeds") or {}
        row = [label, f"{pre['macro_ppl']:.2f}" + plus_minus(noise.get("pretrained_ppl")), f"{pre['macro_bpb']:.3f}",
               f"{fin.get('macro_ppl', float('nan')):.2f}" + plus_minus(noise.get("finetuned_ppl")),
               f"{fin.get('macro_bpb', float('nan')):.3f}",
               f"{s['repetition_rate']:.1%}" if s else "-", f"{s['kl_target_selected']:.3f}" if s else "-"]
        if has_domain:
            row.append(f"{e['target_domain_share']:.1%}" if "target_domain_share" in e else "-")
        c = e.get("costs") or {}
        row += [format_flops(c.get("generic", 0)), format_flops(c.get("per_target", 0)),
                format_flops(c.get("inference_flops_per_token", 0)),
                f"{c.get('params_active', 0) / 1e6:.2f}M" + (f" of {c['params_total'] / 1e6:.2f}M"
                                                             if c.get("params_total", 0) > c.get("params_active", 0)
                                                             else "")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_report(out: Path, results: dict[str, Any], clu) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if _plot_perplexity(out / "perplexity.png", results):
        files["perplexity.png"] = out / "perplexity.png"
    cfg = results["config"]
    trained = (f"pretrained on each selection of {cfg['tokens']:,} tokens from the generic corpus" if results["methods"]
               else "pretrained on the generic corpus (no dense model on a selection: `--models` has no dense)")
    lines = [
        "# impsamp compare", "",
        f"Same LM preset (`{cfg['preset']}`, {cfg['steps']} pretraining steps, {cfg['finetune_steps']} "
        f"fine-tuning steps, {seed_words(cfg)}) {trained}, then fine-tuned on the in-domain sample; perplexity "
        f"and bits per byte on the evaluation text (macro-averaged over files). Clusters: k={clu.n_leaves}.", "",
        markdown_table(results), "",
    ]
    lines += report_lines(results)
    if results.get("target_domain") and results["methods"]:
        lines += [f"Target domain: `{results['target_domain']}`. Domain shares of each selection (of its rows, as "
                  "the table's target-domain share):", ""]
        for m, e in results["methods"].items():
            shares = sorted(e.get("domain_shares", {}).items(), key=lambda kv: -kv[1])
            lines.append(f"- {m}: " + ", ".join(f"{d} {s:.0%}" if s >= 0.01 or s == 0 else f"{d} {s:.1%}"
                                                 for d, s in shares[:8]))  # (0.46% read as 0%)
        lines.append("")
    if "experts" in results.get("models", {}):
        e = results["models"]["experts"]
        lines += [f"Experts: {e['groups']} groups of the clusters, trained on the generic corpus at the dense "
                  f"model's generic FLOPs; rule `{e['select']}` chose expert {e['chosen']}, which holds "
                  f"{e['target_mass_on_chosen']:.0%} of the target's cluster mass (per group: "
                  + ", ".join(f"{m:.0%}" for m in e["group_mass"]) + "). The experts are in `experts/`, the "
                  f"fine-tuned one in `runs/experts-{e['select']}/`.", ""]
    for name in ("projected", "soup"):
        if name in results.get("models", {}):
            e = results["models"][name]
            h = f" with h = {e['basis']} basis matrices per layer" if "basis" in e else ""  # (older reports: no h)
            lines += [f"{upper_first(_model_label(name, e))}: one shared network{h} trained on the generic corpus for "
                      f"the dense runs' steps, its small model computed for the target ({e['why']}), then "
                      f"fine-tuned: `{name}/`, `runs/{name}-small/`, `runs/{name}/`.", ""]
    plan_lines, results["plan"] = _plan(out, results, files)
    lines += plan_lines
    lines += ["Selections are in `selections/<method>/` (each with its data card, histogram plot and cluster "
              "explorer, `explorer.html`, linked from `report.html`), "
              "runs in `runs/<method>/`, every number in `results.json`. FLOPs: training 6 x parameters x "
              "tokens plus attention, embedding 2 x the encoder's parameters x tokens embedded; generic is paid "
              "once for all targets (pretraining on the generic corpus; embedding it, for the strategies that "
              "read its clusters or vectors), per-target for each new one (embedding its sample, pretraining on "
              "a selection made for it, fine-tuning).", ""]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
    files["report.md"] = out / "report.md"
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2, default=float) + "\n").encode())
    files["results.json"] = out / "results.json"
    from .explorer import write_report_html  # report.html beside report.md, each selection's explorer linked

    return {**files, **write_report_html(out, clu, list(results["methods"]), seed=cfg["seed"])}


def _plan(out: Path, results: dict[str, Any], files: dict[str, Path]) -> tuple[list[str], dict[str, Any]]:
    """The planning section (C(N), the choice under the stated budgets, the decision figure)."""
    from .planning import Budgets, parse_inference_budget, plan_section, plot_costs, plot_decision

    cfg = results["config"]
    value, unit = parse_inference_budget(cfg.get("inference_budget"))
    budgets = Budgets(cfg.get("targets_expected"), value, unit, cfg.get("per_target_budget"),
                      cfg.get("pretraining_budget"), cfg.get("total_budget"))
    entries = rows(results)
    for name, plot in (("plan.png", lambda p: plot_costs(p, entries, budgets.targets)),
                       ("decision.png", lambda p: plot_decision(p, entries, budgets))):
        if plot(out / name):
            files[name] = out / name
    return plan_section(entries, budgets)


def _plot_perplexity(path: Path, results: dict[str, Any]) -> bool:
    entries = rows(results)
    methods = [label for label, _ in entries]
    pre = [e["metrics"]["pretrained"]["macro_ppl"] for _, e in entries]
    fin = [e["metrics"].get("finetuned", {}).get("macro_ppl", np.nan) for _, e in entries]
    pre_se, fin_se = ([standard_error(e["lm_seeds"][key]) if "lm_seeds" in e else np.nan for _, e in entries]
                      for key in ("pretrained_ppl", "finetuned_ppl"))  # error bars where there are several LM seeds
    x = np.arange(len(methods))
    fig = figure((max(6.0, 1.4 * len(methods)), 3.8))
    if fig is None:
        return False
    ax = fig.add_subplot()
    ax.bar(x - 0.2, pre, width=0.4, yerr=pre_se, capsize=3, label="pretrained only")
    ax.bar(x + 0.2, fin, width=0.4, yerr=fin_se, capsize=3, label="after fine-tuning")
    tops = np.asarray([*pre, *fin]) + np.nan_to_num(np.asarray([*pre_se, *fin_se], dtype=float))
    ax.set_ylim(top=1.05 * np.nanmax(tops))  # the error bars inside
    ax.set_xticks(x, methods, rotation=20 if max(map(len, methods)) > 12 else 0, ha="right" if
                  max(map(len, methods)) > 12 else "center")
    ax.set_ylabel("in-domain perplexity (lower is better)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)  # above the axes, off the bars
    fig.tight_layout()
    save_png(fig, path)
    return True
