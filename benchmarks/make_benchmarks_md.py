"""Assemble BENCHMARKS.md from the summary below and the per-stage results in benchmarks/results/.

    python benchmarks/make_benchmarks_md.py
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = (ROOT / "benchmarks" / "summary.md").read_text()
parts = [SUMMARY]
for name in ("embed", "embed_gpu", "cluster", "resample", "jsonl_read", "ngram_cache", "within_purity", "membership", "histogram_prior",
             "budget", "train", "demo", "paper", "rare_target", "eval_oracle", "experts", "projected", "plan",
             "plan-session", "ray"):
    f = ROOT / "benchmarks" / "results" / f"{name}.md"
    if f.exists():
        text = f.read_text().strip()
        # demote the result files' headings by one level under the stage heading
        text = "\n".join(("#" + line) if line.startswith("#") else line for line in text.splitlines())
        # images beside the result file, linked from the repository root
        text = re.sub(r"!\[([^]]*)\]\((?!https?:|/)([^)]+)\)", r"![\1](benchmarks/results/\2)", text)
        parts.append(f"\n---\n\n# {name}\n\n(from `benchmarks/results/{name}.md`)\n\n{text}\n")
(ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
print(f"wrote {ROOT / 'BENCHMARKS.md'}")
