"""The training's own noise in `compare`: each selection trained under several LM seeds (`--lm-seeds N`).

One LM run is a noisy yardstick: on the bundled corpus (database_docs, 40,000 tokens) one selection scored
335.6 to 394.7 perplexity under four LM seeds, more than most differences between selectors. With
`--lm-seeds N` every dense row is trained under seeds s, s+1, ..., s+N-1 (s: `--train-seed`, else `--seed`),
its perplexities are the means over them, and each method is paired with the first one on the same LM
seed: the mean difference, its standard error and how many seeds it is lower in.

    results["methods"][m]["lm_seeds"] = {"seeds": [...], "pretrained_ppl": [...], "finetuned_ppl": [...]}
    results["lm_seeds"] = {"seeds": [...], "baseline": m0, "paired": {m: {"mean", "se", "lower", "n"}}}
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

AVERAGED = ("ppl", "bpb", "loss")


def lm_seeds(seed: int, train_seed: int | None, n: int) -> list[int]:
    """The LM seeds of every dense row: `train_seed` (else `seed`) and the n - 1 after it."""
    first = seed if train_seed is None else train_seed
    return [first + i for i in range(n)]


def run_dir(runs: Path, method: str, index: int, seed: int) -> Path:
    """The first seed's run is `runs/<method>` (where a one-seed compare has it); the others `<method>-lm<seed>`,
    each its own stage, so a killed compare resumes after the last finished LM."""
    return runs / method if index == 0 else runs / f"{method}-lm{seed}"


def mean_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run's metrics with every pretrained and fine-tuned perplexity, bits per byte and loss (macro
    and per file) replaced by its mean over the runs."""
    out = copy.deepcopy(runs[0])
    for phase in ("pretrained", "finetuned"):
        if phase not in out:
            continue
        for key in AVERAGED:
            if f"macro_{key}" in out[phase]:
                out[phase][f"macro_{key}"] = float(np.mean([r[phase][f"macro_{key}"] for r in runs]))
        for f, row in out[phase].get("per_file", {}).items():
            for key in AVERAGED:
                if key in row:
                    row[key] = float(np.mean([r[phase]["per_file"][f][key] for r in runs]))
    return out


def per_seed(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """What `results["methods"][m]["lm_seeds"]` holds: each seed's macro perplexities."""
    return {"seeds": list(seeds),
            "pretrained_ppl": [r["pretrained"]["macro_ppl"] for r in runs],
            "finetuned_ppl": [r.get("finetuned", {}).get("macro_ppl") for r in runs]}


def standard_error(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def plus_minus(values: list | None) -> str:
    """' ± se' after a perplexity measured under several LM seeds, else ''."""
    return f" ± {standard_error(values):.2f}" if values and None not in values and len(values) > 1 else ""


def seed_words(cfg: dict[str, Any]) -> str:
    """'seed 0', or the selection's and the LMs' seeds where they differ (a compare config, as a dict)."""
    seeds = lm_seeds(cfg["seed"], cfg.get("train_seed"), cfg.get("lm_seeds", 1))
    if seeds == [cfg["seed"]]:
        return f"seed {cfg['seed']}"
    return f"selection seed {cfg['seed']}, LM seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"


def paired(methods: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Every method against the first, paired on the LM seed (fine-tuned perplexity; pretrained where a run
    has no fine-tuning), or None with one seed."""
    named = [(m, e["lm_seeds"]) for m, e in methods.items() if "lm_seeds" in e]
    if not named:
        return None
    key = "finetuned_ppl" if all(v is not None for _, s in named for v in s["finetuned_ppl"]) else "pretrained_ppl"
    (base, ref), rest = named[0], named[1:]
    out: dict[str, Any] = {"seeds": ref["seeds"], "baseline": base, "measure": key, "paired": {}}
    for m, s in rest:
        diff = [a - b for a, b in zip(s[key], ref[key])]
        out["paired"][m] = {"mean": float(np.mean(diff)), "se": standard_error(diff),
                            "lower": int(sum(d < 0 for d in diff)), "n": len(diff)}
    return out


def report_lines(results: dict[str, Any]) -> list[str]:
    """The report's section on the training's noise (empty with one LM seed)."""
    noise = results.get("lm_seeds")
    if not noise:
        return []
    n, what = len(noise["seeds"]), {"finetuned_ppl": "fine-tuned"}.get(noise["measure"], "pretrained")
    pairs = f" Paired with `{noise['baseline']}` on the same LM seed ({what} perplexity):" if noise["paired"] else ""
    lines = [f"Training noise: every selection was trained under {n} LM seeds ({', '.join(map(str, noise['seeds']))}); "
             f"the perplexities above are their means, ± a standard error.{pairs}", ""]
    for m, p in noise["paired"].items():
        within = abs(p["mean"]) < 2 * p["se"]
        lines.append(f"- {m}: {p['mean']:+.2f} (standard error {p['se']:.2f}), lower in {p['lower']} of {p['n']} "
                     f"seeds{': within the training noise' if within else ''}")
    if noise["paired"]:
        lines += ["", "A difference under about two standard errors is not told apart from the training's own noise; "
                  "more seeds narrow it.", ""]
    return lines
