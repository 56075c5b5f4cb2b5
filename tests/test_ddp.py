"""`torchrun -m impsamp train`: two CPU processes (gloo) train one run and resume exactly after crashes.

The job runs as a user would start it (`python -m torch.distributed.run --nproc_per_node 2 -m impsamp
train ...`). A crash is a SIGKILL of one rank at a known step (IMPSAMP_TEST_KILL_AT, see
`impsamp.training.loop._step_hook`); torchrun then stops the other rank, as it does in a real job.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from click.testing import CliRunner  # noqa: E402

from impsamp.training import TrainRun  # noqa: E402
from impsamp.training.data import Batches, TokenBin  # noqa: E402

pytestmark = pytest.mark.slow

STEPS, FT_STEPS, BATCH, BLOCK, ACCUM, WORLD = 6, 4, 4, 32, 2, 2
FLAGS = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--mlp-hidden", "64",
         "--block-size", str(BLOCK), "--vocab-size", "300", "--batch-size", str(BATCH),
         "--grad-accum", str(ACCUM), "--lr", "3e-3",
         "--steps", str(STEPS), "--finetune-steps", str(FT_STEPS), "--checkpoint-every", "2",
         "--log-every", "3", "--device", "cpu", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0"}
ENV.pop("IMPSAMP_TEST_KILL_AT", None)
ENV.pop("IMPSAMP_TEST_STEP_SLEEP", None)
FINISHED = {"tokenizer.json", "model.safetensors", "pretrained.safetensors", "config.json", "metrics.jsonl",
            "eval.json", "manifest.json"}

WORDS = ["the cat", "a dog", "the old horse", "a small bird", "sleeps in", "runs to", "looks at",
         "the barn", "the green field", "the river", "a quiet farm", "the hill"]


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(24)) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ddp-corpus")
    return {"data": _write_jsonl(d / "data.jsonl", _docs(60, 0)),
            "finetune": _write_jsonl(d / "finetune.jsonl", _docs(20, 1)),
            "eval": _write_jsonl(d / "eval.jsonl", _docs(6, 2))}


def _torchrun(corpus: dict[str, Path], out: Path, kill_at: str | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
            "-m", "impsamp", "train", "--data", str(corpus["data"]), "--finetune", str(corpus["finetune"]),
            "--eval", str(corpus["eval"]), *FLAGS, "--out", str(out)]
    return subprocess.Popen(args, env=_env(out, kill_at), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _env(out: Path, kill_at: str | None = None) -> dict[str, str]:
    """ENV with TMPDIR beside `out`: torchrun's agent leaves a log folder there (not in /tmp)."""
    tmp = out.parent / f"{out.name}-tmp"
    tmp.mkdir(exist_ok=True)
    return {**ENV, "TMPDIR": str(tmp), **({"IMPSAMP_TEST_KILL_AT": kill_at} if kill_at else {})}


def _wait(proc: subprocess.Popen, ok: bool, timeout: float = 150) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"torchrun did not finish in {timeout} s: {proc.communicate()[0]}")
    assert (proc.returncode == 0) == ok, f"exit code {proc.returncode}:\n{out}"
    return out


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("ckpt-*"))


def _log(run: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock fields (tokens_per_s, time)."""
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "time")} for r in recs]


def test_rank_slices_are_disjoint_and_batches_are_a_function_of_the_step(tmp_path):
    n = 10_000
    path = tmp_path / "ids.bin"
    np.arange(n, dtype=np.uint32).tofile(path)  # token value = its position in the memmap
    bin_ = TokenBin(str(path), "uint32", n, 1, n)
    ranks = [Batches(bin_, 16, 8, seed=3, rank=r, world=2) for r in range(2)]
    seen = []
    for b in ranks:
        xs = np.concatenate([b.get(step, micro)[0].numpy() for step in range(20) for micro in range(2)])
        x, y = b.get(5, 1)
        assert torch.equal(x[:, 1:], y[:, :-1]) and x.shape == (8, 16)  # y is x shifted by one token
        assert torch.equal(b.get(5, 1)[0], x)  # the same (step, micro) gives the same batch
        assert not torch.equal(b.get(6, 1)[0], x) and not torch.equal(b.get(5, 0)[0], x)
        seen.append((int(xs.min()), int(xs.max()) + 1))
    (lo0, hi0), (lo1, hi1) = seen
    assert lo0 >= 0 and hi0 <= n // 2 <= lo1 and hi1 <= n, seen  # each rank stays in its half
    assert not torch.equal(ranks[0].get(0)[0] + n // 2, ranks[1].get(0)[0])  # not the same draw shifted
    whole = Batches(bin_, 16, 8, seed=3)
    xs = np.concatenate([whole.get(step)[0].numpy() for step in range(40)])
    assert xs.min() < n // 2 < xs.max()  # one process reads everything


def test_help_states_the_global_batch():
    from impsamp_cli.main import cli

    res = CliRunner().invoke(cli, ["train", "--help"])
    text = " ".join(res.output.split()).replace("- ", "-")  # undo click's wrapping at hyphens
    assert res.exit_code == 0 and "torchrun" in text
    assert "global batch of --batch-size x --grad-accum x world size sequences" in text


def test_torchrun_trains_one_run_and_resumes_after_crashes_to_the_same_weights(corpus, tmp_path):
    ref_dir, run = tmp_path / "ref", tmp_path / "run"
    ref = _torchrun(corpus, ref_dir)  # uninterrupted, alongside the crashed runs
    # 1. rank 0 dies right after writing the pretraining checkpoint of step 4
    _wait(_torchrun(corpus, run, kill_at="pretrain:4"), ok=False)
    assert not (run / "manifest.json").exists()
    assert _checkpoints(run) == ["ckpt-0-pretrain-00000004"]
    # a single process may not take over a two-process run
    from impsamp_cli.main import cli

    res = CliRunner().invoke(cli, ["train", "--data", str(corpus["data"]), "--finetune",
                                   str(corpus["finetune"]), "--eval", str(corpus["eval"]), *FLAGS,
                                   "--out", str(run)])
    assert res.exit_code == 1 and "started by 2 process(es) and this is 1" in res.output, res.output
    # 2. rank 1 dies after fine-tuning step 3: rank 0 cannot reach step 4 without it, so the
    #    newest checkpoint is fine-tuning step 2 (pretraining finished and was scored)
    _wait(_torchrun(corpus, run, kill_at="finetune:3:1"), ok=False)
    assert _checkpoints(run) == ["ckpt-1-finetune-00000002"]
    assert (run / "pretrained.safetensors").is_file() and not (run / "manifest.json").exists()
    # 3. the same command finishes the run
    out = _wait(_torchrun(corpus, run), ok=True)
    ref_out = _wait(ref, ok=True)

    for name in ("model.safetensors", "pretrained.safetensors", "tokenizer.json"):
        assert (run / name).read_bytes() == (ref_dir / name).read_bytes(), name
    a, b = (json.loads((p / "eval.json").read_text()) for p in (run, ref_dir))
    assert a["pretrained"] == b["pretrained"] and a["finetuned"] == b["finetuned"]
    assert a["train"]["final_loss"] == b["train"]["final_loss"]
    assert a["train"]["val_loss"] == b["train"]["val_loss"]
    assert _log(run) == _log(ref_dir)  # same steps, losses, val losses, lr, grad norms

    # one set of outputs, written by rank 0 only: nothing else in the run directory, one summary
    for d, text in ((run, out), (ref_dir, ref_out)):
        assert {p.name for p in d.iterdir() if not p.name.startswith(".")} >= FINISHED
        assert not (d / "checkpoints").exists() and not (d / "cache").exists()
        assert not [p for p in d.rglob("*") if "tmp" in p.name], sorted(d.rglob("*"))
        assert text.count(f"{d}: trained") == 1, text
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in ref_dir.iterdir())

    info = json.loads((run / "config.json").read_text())
    assert info["world_size"] == WORLD
    log = _log(run)
    pre = [r for r in log if r["phase"] == "pretrain"]
    ft = [r for r in log if r["phase"] == "finetune"]
    # the global batch: per-rank batch x grad accumulation x world size sequences of BLOCK tokens
    assert pre[-1]["step"] == STEPS and pre[-1]["tokens"] == STEPS * BATCH * ACCUM * WORLD * BLOCK
    assert ft[-1]["step"] == FT_STEPS and ft[-1]["tokens"] == FT_STEPS * BATCH * ACCUM * WORLD * BLOCK
    losses = [r["loss"] for r in log]
    assert all(math.isfinite(x) for x in losses) and pre[-1]["loss"] < pre[0]["loss"], losses
    assert a["finetuned"]["macro_ppl"] < a["pretrained"]["macro_ppl"]
    assert TrainRun.load(run).metrics["train"]["steps"] == STEPS


def test_a_corpus_that_fails_on_rank_0_stops_every_rank_with_its_error(tmp_path):
    """Rank 0 prepares the data while the others wait: its error must end the job, not hang it."""
    blank = _write_jsonl(tmp_path / "blank.jsonl", ["   ", ""])
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
            "-m", "impsamp", "train", "--data", str(blank), *FLAGS, "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(args, env=_env(tmp_path / "run"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out = _wait(proc, ok=False, timeout=90)
    assert "Error: " in out and "no document with text to train on" in out, out
    assert not (tmp_path / "run" / "manifest.json").exists()
