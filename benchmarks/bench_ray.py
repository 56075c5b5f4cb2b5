"""Embedding throughput with `--engine ray` against `--engine local`, same documents, same shards.

    python benchmarks/bench_ray.py                                    # 2,000 demo documents, CPU
    python benchmarks/bench_ray.py --write benchmarks/results/ray.md
    python benchmarks/bench_ray.py --device cuda --gpus-per-worker 0.5
    python benchmarks/bench_ray.py --device cuda --engines local,ray-fed --docs 40000 --rows-per-shard 1000

Both engines embed the first N documents of the bundled demo corpus (`impsamp.datasets.demo_corpus()`)
with sentence-transformers/all-MiniLM-L6-v2 (torch backend, 128 tokens) in shards of
`--rows-per-shard` rows, each engine in its own fresh subprocess. Timed: the whole `embed()` call,
as a user runs it: reading, loading the model (in the driver, and for Ray in its worker process too),
for Ray starting the local Ray and stopping it, embedding, writing and committing the shards and the
manifest. The overhead ratio is local docs/s over Ray docs/s. The script also checks that all
outputs hold the same bytes. `ray-fed` is `--engine ray --tokenize-tasks`: each shard tokenized in a
CPU-only Ray task that hands its token ids to the model's task (on a GPU host, every core but the
model task's tokenizes; a GPU fed by more nodes than its own).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402  (one machine description for every benchmark)

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
LABELS = {"ray": "ray (local Ray started and stopped by the run)",
          "ray-fed": "ray --tokenize-tasks (shards tokenized in CPU-only tasks)"}


def _child(spec: dict) -> None:
    from impsamp.embedding import EmbedConfig, embed
    from impsamp.scale import Execution

    cfg = EmbedConfig(model=MODEL, backend="torch", max_tokens=128, device=spec["device"],
                      rows_per_shard=spec["rows_per_shard"])
    ex = Execution(engine="local" if spec["engine"] == "local" else "ray", gpus_per_worker=spec["gpus_per_worker"],
                   tokenize_tasks=spec["engine"] == "ray-fed")
    t0 = time.perf_counter()
    emb = embed(spec["corpus"], spec["out"], cfg, execution=ex)
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256()
    for p in sorted(Path(spec["out"]).iterdir()):
        if p.name != "manifest.json":
            digest.update(p.name.encode() + p.read_bytes())
    print(json.dumps({"seconds": seconds, "docs": emb.manifest.stats["documents"],
                      "precision": emb.model_info.get("precision"), "sha256": digest.hexdigest()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--rows-per-shard", type=int, default=500)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--gpus-per-worker", type=float, default=1.0)
    p.add_argument("--engines", default="local,ray", help="comma-separated: local, ray, ray-fed")
    p.add_argument("--write", type=Path, default=None, help="write a Markdown result file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return

    import pyarrow.parquet as pq
    import ray

    import impsamp

    started = time.time()
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "docs.parquet"
        pq.write_table(pq.read_table(impsamp.demo_corpus().pool).slice(0, args.docs), corpus)
        for engine in args.engines.split(","):
            spec = {"engine": engine, "corpus": str(corpus), "out": str(Path(tmp) / engine),
                    "device": args.device, "rows_per_shard": args.rows_per_shard,
                    "gpus_per_worker": args.gpus_per_worker}
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                 text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if out.returncode != 0:
                sys.exit(f"{engine} failed:\n{out.stderr[-3000:]}")
            results[engine] = r = json.loads(out.stdout.strip().splitlines()[-1])
            r["docs_per_s"] = r["docs"] / r["seconds"]
            print(f"{engine:7s} {r['docs_per_s']:8.1f} docs/s  ({r['seconds']:.1f} s, {r['docs']} docs, "
                  f"{r['precision']})", flush=True)
    load_after = os.getloadavg()
    local = results["local"]
    ray_r = results.get("ray") or results[next(e for e in results if e != "local")]
    ratio = local["docs_per_s"] / ray_r["docs_per_s"]
    same = len({r["sha256"] for r in results.values()}) == 1
    print(f"overhead ratio local/ray: {ratio:.2f}x; outputs byte-identical: {same}")
    if args.write:
        shards = -(-args.docs // args.rows_per_shard)
        lines = [
            "# `--engine ray` against `--engine local` (embed)",
            "",
            f"Command: `python benchmarks/bench_ray.py --engines {args.engines} --docs {args.docs} --rows-per-shard "
            f"{args.rows_per_shard} --device {args.device} --gpus-per-worker {args.gpus_per_worker} --write "
            f"{args.write}`.",
            "",
            f"Machine: {machine()}; ray {ray.__version__}, python {platform.python_version()}.",
            f"Date: {dt.date.today().isoformat()}; {args.docs:,} documents of the bundled demo corpus in "
            f"{shards} shards of {args.rows_per_shard}; {MODEL}, torch backend, 128 tokens, device "
            f"{args.device}, precision {local['precision']}; one run each, each engine in a fresh process; "
            f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (shared machine); "
            f"{time.time() - started:.0f} s in all.",
            "",
            "| engine | docs/s | seconds |",
            "|---|---|---|",
            f"| local | {local['docs_per_s']:.1f} | {local['seconds']:.1f} |",
            *(f"| {LABELS[e]} | {r['docs_per_s']:.1f} | {r['seconds']:.1f} |" for e, r in results.items()
              if e != "local"),
            "",
            f"Overhead ratio (local docs/s / ray docs/s): {ratio:.2f}x. Outputs byte-identical: "
            f"{'yes' if same else 'NO'}.",
            "",
            f"Ray took {ray_r['seconds'] - local['seconds']:+.1f} s in all: starting a local Ray and "
            "loading the model a second time, in the Ray worker process (the driver loads it too, to record "
            "the model's identity), plus the noise of a shared machine (one run each, so a difference of a "
            "few seconds is within it). On one machine Ray brings nothing but that fixed cost; its use is "
            "spreading the shards over many machines or GPUs.",
        ]
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
