"""Shared helpers of the hardening suites (crash, bad input, determinism, safety)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from impsamp_cli.main import cli

from impsamp.manifest import MANIFEST, RUN_RECORD, SHARD_RECORDS, is_tmp_name, iter_stage_files

TOPICS = {
    "bio": "protein folding kinetics gene expression yeast cell membrane transport enzyme".split(),
    "code": "python list comprehension rust borrow checker sql join index compiler".split(),
    "law": "contract breach damages appellate court ruling statute limitations plaintiff".split(),
}

# tiny model settings for `impsamp train` (a few seconds on one CPU core)
TRAIN_FLAGS = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--mlp-hidden", "64",
               "--block-size", "32", "--vocab-size", "300", "--batch-size", "4", "--log-every", "2", "--device", "cpu",
               "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0",
       "HF_HUB_OFFLINE": "1"}
ENV.pop("IMPSAMP_TEST_SLOW_SHARD", None)
ENV.pop("IMPSAMP_TEST_STEP_SLEEP", None)
TIMING = ("tokens_per_s", "time", "seconds")  # wall-clock fields of the train logs: never compared


def doc(rng: random.Random, topic: str) -> str:
    words = TOPICS[topic]
    return " ".join(rng.choice(words) for _ in range(rng.randint(8, 30)))


def write_corpus(path: Path, n: int, *, seed: int = 0, topics=("bio", "code", "law"), ids: bool = True
                 ) -> Path:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rec = {"id": f"g{i}"} if ids else {}
        rec["text"] = doc(rng, topics[i % len(topics)])
        rows.append(json.dumps(rec))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def build_pipeline(root: Path, n: int = 300) -> dict[str, Path]:
    """generic corpus -> embed (hashing:64, 50-row shards) -> cluster (k=4) -> resample, in-process."""
    p = {"root": root, "generic": write_corpus(root / "generic.jsonl", n),
         "target": write_corpus(root / "bio.jsonl", 40, seed=1, topics=("bio",), ids=False)}
    p["emb"], p["clu"], p["sel"] = root / "emb", root / "clu", root / "sel"
    ok(invoke(*EMBED_ARGS(p["generic"], p["emb"])))
    ok(invoke(*CLUSTER_ARGS(p["emb"], p["clu"])))
    ok(invoke(*RESAMPLE_ARGS(p["emb"], p["clu"], p["target"], p["sel"])))
    return p


def EMBED_ARGS(corpus, out, *extra):  # noqa: N802
    return ["embed", corpus, "--out", out, "--model", "hashing:64", "--rows-per-shard", "25", "--no-progress",
            *extra]


def CLUSTER_ARGS(emb, out, *extra):  # noqa: N802
    return ["cluster", emb, "--out", out, "--k", "4", "--seed", "0", "--no-progress", *extra]


def RESAMPLE_ARGS(emb, clu, target, out, *extra):  # noqa: N802
    return ["resample", emb, clu, "--target", target, "--out", out, "--docs", "200", "--rows-per-shard", "40",
            "--no-progress", *extra]


def TRAIN_ARGS(data, out, *extra):  # noqa: N802
    return ["train", "--data", data, "--out", out, *TRAIN_FLAGS, "--steps", "6", "--checkpoint-every", "2",
            *extra]


def invoke(*args):
    """Run the CLI in-process (click's CliRunner)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def argv(*args) -> list[str]:
    """The CLI as a subprocess command line."""
    return [sys.executable, "-m", "impsamp", *map(str, args)]


def run_sub(*args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv(*args), env={**ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(result, *needles: str) -> str:
    """Non-zero exit, exactly one line `Error: ...`, no traceback, every needle in it."""
    out = result.output
    assert result.exit_code not in (0, None), out
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # handled, not a crash
    assert "Traceback" not in out, out
    lines = [li for li in out.splitlines() if li.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), out
    for needle in needles:
        assert needle in lines[0], (needle, out)
    return lines[0]


def under_field(src: Path, dst: Path, field: str = "body") -> Path:
    """A copy of JSONL corpus `src` whose text is under `field` (and no `text` field)."""
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    dst.write_text("".join(json.dumps({field: r["text"]}) + "\n" for r in rows))
    return dst


def with_and_without_text_field(args, corpus: Path, tmp: Path, suffix: str = "") -> tuple[Path, Path]:
    """`args(corpus, out)` on a copy of `corpus` with its text under `body`: refused in one line without
    --text-field, run with it (out `yes`), and run on `corpus` itself (out `ref`); returns (yes, ref)."""
    body = under_field(corpus, tmp / "body.jsonl")
    one_line_error(invoke(*args(body, tmp / f"no{suffix}")), "no 'text' field", "--text-field")
    ok(invoke(*args(body, tmp / f"yes{suffix}"), "--text-field", "body"))
    ok(invoke(*args(corpus, tmp / f"ref{suffix}")))
    return tmp / f"yes{suffix}", tmp / f"ref{suffix}"


def payload(out: Path) -> dict[str, bytes]:
    """Every file a reader sees (manifest excluded: it holds timings), by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in iter_stage_files(out) if p.name != MANIFEST}


def comparable(out: Path) -> dict[str, object]:
    """The payload bytes; the train logs without their wall-clock fields, the data card without the
    command line it quotes."""
    files: dict[str, object] = dict(payload(out))
    if "metrics.jsonl" in files:
        files["metrics.jsonl"] = [_drop_timing(json.loads(ln)) for ln in files["metrics.jsonl"].splitlines()]
    if "README.md" in files:  # the data card quotes the command line, whose --out differs
        files["README.md"] = [ln for ln in files["README.md"].splitlines() if not ln.startswith(b"impsamp ")]
    if "eval.json" in files:
        files["eval.json"] = _drop_timing(json.loads(files["eval.json"]))
    return files


def stable_stats(out: Path) -> dict:
    """Manifest stats without what depends on the clock or on how the run went (resumed, workers)."""
    s = json.loads((out / MANIFEST).read_text())["stats"]
    return _drop_timing({k: v for k, v in s.items() if not (k.startswith("seconds") or k.endswith(
        ("per_second", "per_s")) or k == "resumed_shards")})


def _drop_timing(obj):
    if isinstance(obj, dict):
        return {k: _drop_timing(v) for k, v in obj.items() if k not in TIMING}
    return obj


def assert_clean(out: Path) -> None:
    """A finished stage directory: payload + manifest, no temp residue, no run bookkeeping."""
    from impsamp.manifest import read_manifest, verify_outputs

    leftovers = [p for p in out.rglob("*") if is_tmp_name(p.name) or p.name in (SHARD_RECORDS, RUN_RECORD)]
    assert leftovers == [], leftovers
    m = read_manifest(out)
    verify_outputs(out, m)
    assert not any(is_tmp_name(part) for o in m.outputs for part in Path(o.path).parts), m.outputs
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == sorted([MANIFEST, *(o.path for o in m.outputs)])


def no_manifest_anywhere(root: Path) -> bool:
    return not any(root.rglob(MANIFEST)) if root.exists() else True


def tiny_compare_toml(path: Path) -> Path:
    """A [compare] config for the test corpora: hashed embeddings and a 1-layer, 32-wide LM."""
    path.write_text('[compare]\nmodel = "hashing:64"\nbackend = "torch"\nvocab_size = 300\nn_layer = 1\n'
                    'n_embd = 32\nn_head = 2\nblock_size = 32\nbatch_size = 4\n')
    return path
