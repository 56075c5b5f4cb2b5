"""Trainer throughput against a plain torch loop of the same model, measured in the same run.

    python benchmarks/bench_train.py                  # CPU: the `tiny` preset, ratio vs a plain loop
    python benchmarks/bench_train.py --gpu            # one GPU: slm-126m (bf16 + compile) MFU, and tiny

The plain loop is the baseline the trainer must not fall behind (target >= 0.95x): the same `GPT`
class, the same batch and sequence length, `torch.optim.AdamW(model.parameters())`, random tokens,
`loss.backward(); opt.step(); opt.zero_grad()` and nothing else (no clipping, schedule, logging,
memmap reads, checkpoints). The trainer is `impsamp.training.train()` itself on real text (the
bundled demo pool, a BPE trained on it), so everything its step loop does is counted.

CPU: the two loops are paired step by step (one plain step runs after every trainer step, through
the trainer's per-step hook, each timed on its own), so the load of a shared machine hits both
alike; tokens/s come from the median step time (robust to bursts of load from other processes),
warm-up steps and the last step (final validation + checkpoint) excluded.
GPU: the plain loop runs first (3 untimed warm-up steps, then `--steps`), then `train()`, whose
tokens/s is read from its metrics log, first logging interval (compilation) excluded.
The reported ratio is the median over `--repeats` runs.

MFU = tokens/s * (6 * N + 12 * n_layer * n_embd * block_size) / peak, with N the parameter count
(tied embedding counted once) and peak the card's dense bf16 peak (H100 SXM: 989 TFLOPS).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import statistics
import tempfile
import time
from pathlib import Path

import torch

import impsamp.training.loop as loop
from impsamp.datasets import demo_corpus
from impsamp.training import TrainConfig, train, train_tokenizer
from impsamp.training.config import PRESETS
from impsamp.training.model import GPT
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402  (one machine description for every benchmark)
from impsamp.training.config import DTYPES  # noqa: E402  (the trainer's dtypes, one list)

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


class PlainLoop:
    """The minimal loop: same GPT, random tokens, AdamW, backward, step, nothing else."""

    def __init__(self, cfg: TrainConfig, vocab: int, device: torch.device, bf16: bool, compile_: bool):
        torch.manual_seed(0)
        self.model = GPT(cfg.model_config(vocab)).to(device)
        self.fwd = torch.compile(self.model) if compile_ else self.model
        extra = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, **extra)
        self.shape = (cfg.resolved("batch_size"), cfg.resolved("block_size") + 1)
        self.vocab, self.device, self.bf16 = vocab, device, bf16

    def step(self) -> None:
        x = torch.randint(0, self.vocab, self.shape, device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.fwd(x[:, :-1], x[:, 1:])
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def tokens_per_s(self, steps: int, warmup: int = 3) -> float:
        for _ in range(warmup):
            self.step()
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        _sync(self.device)
        return (self.shape[0] * (self.shape[1] - 1)) * steps / (time.perf_counter() - t0)


def trainer(cfg: TrainConfig, data: list[Path], work: Path, name: str,
            plain: PlainLoop | None = None) -> dict:
    """Run train(); with `plain`, one plain-loop step runs after every trainer step (paired timing).

    Paired: the trainer's step time is the time between the end of one plain step and the end of
    the next trainer step, so both loops share whatever load the machine has at that moment.
    Unpaired: tokens/s from the trainer's metrics log, first logging interval excluded.
    """
    marks: list[tuple[float, float]] = []

    def hook(phase: str, step: int) -> None:
        t_end = time.perf_counter()
        plain.step()
        marks.append((t_end, time.perf_counter()))

    original = loop._step_hook
    if plain is not None:
        loop._step_hook = hook
    t0 = time.perf_counter()
    try:
        run = train(data, work / name, cfg, overwrite=True)
    finally:
        loop._step_hook = original
    wall = time.perf_counter() - t0
    tokens = cfg.resolved("batch_size") * cfg.resolved("block_size") * cfg.grad_accum
    out = {"wall_s": wall, "final_loss": run.metrics["train"]["final_loss"],
           "n_params": run.model_config.n_params(), "flops_per_token": run.model_config.flops_per_token()}
    if plain is not None:
        # skip warm-up steps and the last one (it includes the final validation and checkpoint)
        idx = range(min(3, len(marks) - 2) + 1, len(marks) - 1)
        ours = [marks[i][0] - marks[i - 1][1] for i in idx]
        base = [marks[i][1] - marks[i][0] for i in idx]
        if os.environ.get("BENCH_VERBOSE"):
            print("   trainer steps (s):", " ".join(f"{t:.3f}" for t in ours))
            print("   plain steps (s):  ", " ".join(f"{t:.3f}" for t in base))
        # medians: a burst of load from another process on a shared machine is not the loop's cost
        out.update(tokens_per_s=tokens / statistics.median(ours), plain=tokens / statistics.median(base),
                   step_ratios=[b / a for a, b in zip(ours, base, strict=True)])
        return out
    log = [json.loads(li) for li in (run.path / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in log if "tokens_per_s" in r][1:]
    per_interval = cfg.log_every * tokens
    out["tokens_per_s"] = per_interval * len(recs) / sum(per_interval / r["tokens_per_s"] for r in recs)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare(preset: str, steps: int, repeats: int, device: torch.device, work: Path, data: list[Path],
            tokenizer: Path, dtype: str = "auto", **overrides) -> dict:
    bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    cfg = TrainConfig(preset=preset, steps=steps, log_every=max(1, steps // 6), checkpoint_every=10 ** 9,
                      tokenizer=str(tokenizer), device=device.type, dtype=dtype, **overrides)
    rows = []
    compile_ = cfg.compile if cfg.compile is not None else device.type == "cuda"
    for i in range(repeats):
        plain = PlainLoop(cfg, _vocab(tokenizer), device, bf16, compile_)
        if device.type == "cpu":  # paired step by step: a shared CPU's load hits both alike
            ours = trainer(cfg, data, work, f"{preset}-{i}", plain)
            base = ours["plain"]
        else:
            base = plain.tokens_per_s(steps)
            ours = trainer(cfg, data, work, f"{preset}-{i}")
        del plain
        rows.append({"plain": base, **ours, "ratio": ours["tokens_per_s"] / base})
        print(f"  {preset} repeat {i}: plain {base:,.0f} tok/s, trainer {ours['tokens_per_s']:,.0f} tok/s, "
              f"ratio {rows[-1]['ratio']:.3f} (train() wall {ours['wall_s']:.1f} s)", flush=True)
    out = {k: statistics.median(r[k] for r in rows) for k in ("plain", "tokens_per_s", "ratio", "wall_s")}
    out.update(n_params=rows[0]["n_params"], flops_per_token=rows[0]["flops_per_token"], steps=steps,
               tokens_per_step=cfg.resolved("batch_size") * cfg.resolved("block_size"))
    return out


def _vocab(tokenizer: Path) -> int:
    from impsamp.training.config import padded_vocab
    from impsamp.training.tokenizer import load_tokenizer

    return padded_vocab(load_tokenizer(tokenizer).vocab_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="GPU mode: slm-126m (bf16 + compile) and tiny")
    ap.add_argument("--steps", type=int, default=None, help="steps per run [60]")
    ap.add_argument("--repeats", type=int, default=None, help="runs per preset [CPU 3, GPU 1]")
    ap.add_argument("--dtype", choices=DTYPES, default="auto",
                    help="autocast dtype of both loops [auto: bfloat16 on GPU, float32 on CPU]")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    args.repeats = args.repeats or (1 if args.gpu else 3)
    device = torch.device("cuda" if args.gpu else "cpu")
    demo = demo_corpus()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(f"machine: {machine()}; torch {torch.__version__}; load average {' '.join(load)}; "
          f"{datetime.date.today()}", flush=True)
    results: dict = {"machine": machine(), "date": str(datetime.date.today()), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        presets = ["slm-126m", "tiny"] if args.gpu else ["tiny"]
        for preset in presets:
            vocab = PRESETS[preset]["vocab_size"]
            tok = train_tokenizer([demo.pool], vocab, work / f"tok-{vocab}" / "tokenizer.json")
            steps = args.steps or 60
            r = compare(preset, steps, args.repeats, device, work, [demo.pool], tok, args.dtype)
            line = (f"{preset} ({args.dtype}): trainer {r['tokens_per_s']:,.0f} tok/s, "
                    f"plain loop {r['plain']:,.0f} tok/s, "
                    f"ratio {r['ratio']:.3f} (median of {args.repeats}); {r['n_params'] / 1e6:.2f}M params")
            if args.gpu:
                peak = next((v for k, v in PEAK_BF16.items() if k in machine()), None)
                if peak:
                    r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / peak
                    r["mfu_plain"] = r["plain"] * r["flops_per_token"] / peak
                    line += f"; MFU {100 * r['mfu']:.1f}% (plain loop {100 * r['mfu_plain']:.1f}%)"
            print(line, flush=True)
            results[preset] = r
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
