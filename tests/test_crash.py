"""Crash suite: every stage is SIGKILLed through the real CLI at seeded random moments, then rerun.

For embed, cluster, resample and train: the command is started as a subprocess, killed at several
moments (one blind, during start-up; the others a random time after a random number of committed
shards or steps), and after each kill the directory must not pass for a result: no manifest, and the
stage that reads it refuses it in one line. The same command then resumes, and its payload must be
byte-identical to an uninterrupted run's, with no temp residue or bookkeeping left. The manifest's own
write is interrupted too (killed between its half-written temp file and the rename).
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from impsamp.errors import StageError
from impsamp.manifest import MANIFEST, RUN_RECORD, SHARD_RECORDS, is_tmp_name, iter_stage_files, read_manifest
from tests._helpers import (
    CLUSTER_ARGS,
    EMBED_ARGS,
    ENV,
    RESAMPLE_ARGS,
    TRAIN_ARGS,
    argv,
    assert_clean,
    build_pipeline,
    comparable,
    invoke,
    ok,
    one_line_error,
    run_sub,
    stable_stats,
)

KILLS = {"embed": 4, "cluster": 4, "resample": 4, "train": 3}
LAST = {"embed": 11, "cluster": 12, "resample": 15, "train": 2}  # progress() a kill may wait for, at most
SLOW = {"embed": ("IMPSAMP_TEST_SLOW_SHARD", 0.12), "cluster": ("IMPSAMP_TEST_SLOW_SHARD", 0.12),
        "resample": ("IMPSAMP_TEST_SLOW_SHARD", 0.12), "train": ("IMPSAMP_TEST_STEP_SLEEP", 0.3)}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    p = build_pipeline(tmp_path_factory.mktemp("crash"))
    p["lm"] = p["root"] / "lm"  # the uninterrupted training run, made in-process
    ok(invoke(*TRAIN_ARGS(p["sel"], p["lm"])))
    return p


def command(stage: str, p: dict, out: Path) -> list:
    return {"embed": lambda: EMBED_ARGS(p["generic"], out),
            "cluster": lambda: CLUSTER_ARGS(p["emb"], out),
            "resample": lambda: RESAMPLE_ARGS(p["emb"], p["clu"], p["target"], out),
            "train": lambda: TRAIN_ARGS(p["sel"], out)}[stage]()


def reader(stage: str, p: dict, out: Path, scratch: Path) -> list:
    """The command of the next stage, reading `out` as its input."""
    return {"embed": lambda: CLUSTER_ARGS(out, scratch),
            "cluster": lambda: RESAMPLE_ARGS(p["emb"], out, p["target"], scratch),
            "resample": lambda: TRAIN_ARGS(out, scratch),
            "train": lambda: ["evaluate", out, "--eval", p["target"], "--device", "cpu"]}[stage]()


def reference(stage: str, p: dict) -> Path:
    return {"embed": p["emb"], "cluster": p["clu"], "resample": p["sel"], "train": p["lm"]}[stage]


def progress(out: Path) -> int:
    """Committed shards (or, for train, logged steps) so far."""
    n = len(list((out / SHARD_RECORDS).glob("*.json"))) if (out / SHARD_RECORDS).is_dir() else 0
    log = out / "metrics.jsonl"
    return n + (len(log.read_text().splitlines()) if log.is_file() else 0)


def check_refused(stage: str, p: dict, out: Path, scratch: Path) -> None:
    """A killed (incomplete) output is never taken for a result."""
    assert not (out / MANIFEST).exists()
    with pytest.raises(StageError):
        read_manifest(out)
    assert not any(is_tmp_name(part) for f in iter_stage_files(out) if out.exists()
                   for part in f.relative_to(out).parts)
    line = one_line_error(invoke(*reader(stage, p, out, scratch)))
    assert str(out) in line, line
    if (out / RUN_RECORD).exists():
        assert "incomplete" in line and f"impsamp {stage}" in line, line
    assert not (scratch / MANIFEST).exists()


def kill_at(proc: subprocess.Popen, out: Path, rng: random.Random, blind: bool, delay: float, last: int
            ) -> str:
    """SIGKILL `proc` at a random moment; returns where (for the failure message)."""
    if blind:  # during start-up: imports, opening the inputs, begin()
        wait = rng.uniform(0.05, 0.8)
        time.sleep(wait)
        where = f"blind {wait:.2f}s"
    else:
        target = min(progress(out) + rng.randint(1, 3), last)
        deadline = time.monotonic() + 90
        while progress(out) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        extra = rng.uniform(0, 1.2 * delay)  # inside the pause after a commit, or into the next write
        time.sleep(extra)
        where = f"after {target} commits + {extra:.2f}s"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return where


@pytest.mark.parametrize("stage", ["embed", "cluster", "resample", "train"])
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_bytes(stage, pipe, tmp_path):
    rng = random.Random(f"crash-{stage}")
    out = tmp_path / stage
    env_name, delay = SLOW[stage]
    cmd = argv(*command(stage, pipe, out))
    killed, log = 0, []
    for i in range(KILLS[stage]):
        proc = subprocess.Popen(cmd, env={**ENV, env_name: str(delay)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        where = kill_at(proc, out, rng, blind=(i == 0), delay=delay, last=LAST[stage])
        log.append((where, proc.returncode, progress(out)))
        if proc.returncode != -signal.SIGKILL or (out / MANIFEST).exists():
            break  # the run ended before the kill
        killed += 1
        check_refused(stage, pipe, out, tmp_path / f"reader-{i}")
    print(f"{stage}: {killed} kills {log}")  # (shown with -s)
    assert killed >= 2, log  # at least one kill mid-stage besides the blind one
    if not (out / MANIFEST).exists():  # (unless the last run ended before its kill)
        # the same command resumes
        r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (r.stderr, log)
    assert comparable(out) == comparable(reference(stage, pipe)), log
    assert stable_stats(out) == stable_stats(reference(stage, pipe)), log
    assert_clean(out)
    ok(invoke(*reader(stage, pipe, out, tmp_path / "reader-final")))  # and the next stage takes it


# A stage whose manifest write is killed after the temp file is half written, before the rename.
KILL_IN_MANIFEST = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    import impsamp.manifest as m

    original = m.atomic_write_bytes

    def half_then_hang(path, data):
        path = Path(path)
        if path.name != m.MANIFEST:
            return original(path, data)
        with open(m.tmp_name(path), "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
        Path(os.environ["READY"]).write_text("manifest half written")
        time.sleep(120)

    m.atomic_write_bytes = half_then_hang
    from impsamp_cli.main import main
    sys.argv = ["impsamp", *sys.argv[1:]]
    main()
''')


@pytest.mark.parametrize("stage", ["embed", "cluster", "resample"])
def test_a_killed_manifest_write_is_not_a_result_and_the_rerun_completes(stage, pipe, tmp_path):
    script = tmp_path / "kill_in_manifest.py"
    script.write_text(KILL_IN_MANIFEST)
    out, ready = tmp_path / stage, tmp_path / "ready"
    args = [str(a) for a in command(stage, pipe, out)]
    proc = subprocess.Popen([argv()[0], str(script), *args], env={**ENV, "READY": str(ready)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    half = list(out.glob(f".{MANIFEST}.tmp-*"))
    assert len(half) == 1 and half[0].stat().st_size > 0
    check_refused(stage, pipe, out, tmp_path / "reader")
    with pytest.raises(StageError, match="incomplete"):
        read_manifest(out)
    r = run_sub(*args)
    assert r.returncode == 0, r.stderr
    assert comparable(out) == comparable(reference(stage, pipe))
    assert stable_stats(out) == stable_stats(reference(stage, pipe))
    assert_clean(out)  # the half-written temp manifest is gone


def test_ctrl_c_stops_a_process_pool_at_once_leaves_no_process_and_resumes(tmp_path):
    """Ctrl-C (SIGINT to the process group, twice, as an impatient user does) on `embed --workers 2`: the run
    stops within seconds, not after every queued shard ran (a worker that caught it went on to its next one),
    no pool process outlives it (the second Ctrl-C once hung the exit forever), and the rerun completes to the
    bytes of an uninterrupted run."""
    import os

    import json

    words = [f"w{i}" for i in range(3000)]  # long documents: each shard takes a while, as real ones do
    rng = random.Random(0)
    corpus = tmp_path / "g.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choices(words, k=400))}) + "\n" for _ in range(8000)))
    args = ["embed", corpus, "--model", "hashing:256", "--rows-per-shard", "500", "--no-progress"]
    out = tmp_path / "emb"
    # SIGINT's default handling restored in the child: a test run started in the background (CI's shell) has it
    # ignored, and a process started with SIGINT ignored never sees Ctrl-C
    proc = subprocess.Popen(argv(*args, "--out", out, "--workers", "2"), env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not any((out / SHARD_RECORDS).glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted: make the corpus larger"
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.3)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    stopped = time.monotonic()
    try:
        _, err = proc.communicate(timeout=30)
    finally:  # a hung run (the bug this guards against) must not outlive the test
        with contextlib.suppress(ProcessLookupError):
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "Interrupted; rerun" in err and "Traceback" not in err, err
    assert time.monotonic() - stopped < 10
    for _ in range(50):  # every process of its group gone (the pool's workers, the resource tracker)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a process of the interrupted run outlived it")
    committed = len(list((out / SHARD_RECORDS).glob("*.json")))
    assert committed < 16 and not (out / MANIFEST).exists()  # stopped, not run to the end
    ok(invoke(*args, "--out", out, "--workers", "2"))
    ok(invoke(*args, "--out", tmp_path / "ref"))
    assert_clean(out)
    assert comparable(out) == comparable(tmp_path / "ref")
