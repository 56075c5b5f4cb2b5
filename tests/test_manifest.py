"""The stage contract: shards committed by rename, manifest last, resume after SIGKILL, never clobber."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from impsamp.errors import StageError, keeping_output
from impsamp.manifest import (
    MANIFEST,
    RUN_RECORD,
    SHARD_RECORDS,
    Manifest,
    StageRun,
    atomic_write_bytes,
    describe_dir,
    fingerprint,
    is_tmp_name,
    iter_stage_files,
    read_manifest,
    verify_outputs,
)
from impsamp.outdir import MARK, REPLACED

# A tiny stage: N shards of deterministic bytes, each written in two halves with a sleep between them
# (a kill lands mid-write), then a whole-stage summary file and the manifest.
DEMO_STAGE = textwrap.dedent('''
    import hashlib, json, sys, time
    from pathlib import Path
    from impsamp.manifest import StageRun

    out, n, sleep, seed = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    fail_at = int(sys.argv[5]) if len(sys.argv) > 5 else -1
    run = StageRun(out, "embed", config={"seed": seed, "shards": n},
                   inputs={"corpus": {"path": "data/x.jsonl", "fingerprint": "sha256:demo"}},
                   overwrite="--overwrite" in sys.argv).begin()
    skipped, rows = [], 0
    for i in range(n):
        name = f"{i:05d}"
        if run.is_done(name):
            skipped.append(i)
            rows += run.shard_record(name)["stats"]["rows"]
            continue
        if i == fail_at:
            raise RuntimeError(f"shard {i} failed")
        payload = b"".join(hashlib.sha256(f"{seed}-{i}-{j}".encode()).digest() for j in range(2048))
        rel = f"vectors/part-{name}.bin"
        tmp = run.tmp_path(rel)
        with open(tmp, "wb") as f:
            f.write(payload[: len(payload) // 2])
            f.flush()
            time.sleep(sleep)
            f.write(payload[len(payload) // 2:])
        run.commit_shard(name, {rel: tmp}, stats={"rows": 100 + i}, rows={rel: 100 + i})
        rows += 100 + i
    if fail_at == n:
        raise RuntimeError("failed before finish")
    tmp = run.tmp_path("summary.json")
    tmp.write_text(json.dumps({"rows": rows, "seed": seed}))
    run.finish(stats={"rows": rows}, extra_files={"summary.json": tmp})
    print(json.dumps({"skipped": skipped}))
''')


@pytest.fixture
def stage(tmp_path):
    """Run the demo stage as a subprocess: stage(out, n, sleep=0, seed=0, fail_at=None, overwrite=False)."""
    script = tmp_path / "demo_stage.py"
    script.write_text(DEMO_STAGE)

    def argv(out, n, sleep=0.0, seed=0, fail_at=None, overwrite=False):
        return ([sys.executable, str(script), str(out), str(n), str(sleep), str(seed)]
                + [str(-1 if fail_at is None else fail_at)] + (["--overwrite"] if overwrite else []))

    def run(*args, **kw):
        return subprocess.run(argv(*args, **kw), capture_output=True, text=True, timeout=60)

    run.argv = argv
    return run


def payload(out: Path) -> dict[str, bytes]:
    """Every file a reader sees (manifest excluded: it holds timings), by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in iter_stage_files(out) if p.name != MANIFEST}


def assert_clean(out: Path) -> None:
    """A finished stage directory: payload + manifest, no temp residue, no run bookkeeping."""
    leftovers = [p for p in out.rglob("*") if is_tmp_name(p.name) or p.name in (SHARD_RECORDS, RUN_RECORD, REPLACED)]
    assert leftovers == []
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == sorted([MANIFEST, *(o.path for o in read_manifest(out).outputs)])


def same_result(a: Path, b: Path) -> None:
    assert payload(a) == payload(b)
    ma, mb = read_manifest(a), read_manifest(b)
    assert ma.outputs == mb.outputs and ma.fingerprint == mb.fingerprint and ma.config == mb.config
    assert {k: v for k, v in ma.stats.items() if k != "seconds"} == {k: v for k, v in mb.stats.items()
                                                                     if k != "seconds"}
    verify_outputs(a, ma)
    verify_outputs(b, mb)


def wait_for(predicate, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the demo stage never reached the kill point"
        time.sleep(0.005)


# ----------------------------------------------------------------------------- crash and resume


def test_sigkill_mid_write_then_resume_gives_the_uninterrupted_bytes(tmp_path, stage):
    ref, out = tmp_path / "ref", tmp_path / "out"
    r = stage(ref, 5)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"skipped": []}

    proc = subprocess.Popen(stage.argv(out, 5, sleep=0.4), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # after shard 0 is committed and while shard 1 is half written
        # (the temp file exists a moment before its first half is written: wait for the bytes)
        def half_written() -> bool:
            try:
                return any(p.stat().st_size == 32 * 1024 for p in (out / "vectors").glob(".part-00001.bin.tmp-*"))
            except FileNotFoundError:  # renamed between the listing and the stat
                return False

        wait_for(lambda: (out / SHARD_RECORDS / "00000.json").exists() and half_written(), proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # the half-written directory: not complete, and says so
    assert not (out / MANIFEST).exists()
    residue = list((out / "vectors").glob(".part-00001.bin.tmp-*"))
    assert residue and residue[0].stat().st_size == 32 * 1024  # the half that was written
    with pytest.raises(StageError, match=r"incomplete 'embed' output \(1 shard committed"):
        read_manifest(out)
    with pytest.raises(StageError, match="incomplete"):
        read_manifest(out, expect_stage="embed")
    assert "incomplete" in describe_dir(out)

    r = stage(out, 5)  # the same command resumes
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"skipped": [0]}
    same_result(ref, out)
    assert_clean(out)


def test_a_failing_run_leaves_no_manifest_and_resumes(tmp_path, stage):
    out = tmp_path / "out"
    r = stage(out, 4, fail_at=2)
    assert r.returncode != 0 and "shard 2 failed" in r.stderr
    assert not (out / MANIFEST).exists()
    assert sorted(p.name for p in (out / SHARD_RECORDS).iterdir()) == ["00000.json", "00001.json"]
    with pytest.raises(StageError, match="incomplete 'embed' output.*rerun the same `impsamp embed`"):
        read_manifest(out)
    r = stage(out, 4)
    assert r.returncode == 0 and json.loads(r.stdout) == {"skipped": [0, 1]}
    assert stage(tmp_path / "ref", 4).returncode == 0
    same_result(tmp_path / "ref", out)
    assert_clean(out)


def _commit_one(run: StageRun, name: str) -> None:
    tmp = run.tmp_path(f"{name}.bin")
    tmp.write_bytes(name.encode())
    run.commit_shard(name, {f"{name}.bin": tmp})


def test_bad_input_met_by_a_fresh_run_discards_it_a_resumed_run_and_io_failures_keep_it(tmp_path):
    from impsamp.errors import CorpusError

    def attempt(out, err, key="a"):
        run = StageRun(out, "embed", config={"k": key}, inputs={}).begin()
        with pytest.raises(type(err)), run.discarded_on_error():
            _commit_one(run, "s0")
            raise err

    attempt(tmp_path / "new", CorpusError("bad row"))
    assert not (tmp_path / "new").exists()  # the run made the folder: gone
    (tmp_path / "mine").mkdir()
    attempt(tmp_path / "mine", CorpusError("bad row"))
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())  # the user's: emptied
    (tmp_path / "mine" / ".notes.tmp-1").write_text("looks like residue")
    (tmp_path / "mine" / SHARD_RECORDS).mkdir()  # an empty record folder left by an earlier run
    attempt(tmp_path / "mine", CorpusError("bad row"))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == [".notes.tmp-1"]  # files there before: kept
    assert StageRun(tmp_path / "mine", "embed", config={}, inputs={}).begin().fresh  # the next run starts anew
    attempt(tmp_path / "died", keeping_output(StageError("a worker died; rerun to resume")))
    assert (tmp_path / "died" / RUN_RECORD).exists()
    io = OSError(5, "Input/output error")  # a read that failed in the operating system, reported as a
    wrapped = StageError(f"vectors-00000.npy cannot be read ({io})")  # damaged input (`raise ... from None`
    wrapped.__context__ = io  # keeps it as the context): resumable too
    attempt(tmp_path / "nfs", wrapped)
    assert (tmp_path / "nfs" / RUN_RECORD).exists()
    from impsamp.embedding.config import EmbedderError

    attempt(tmp_path / "mine2", EmbedderError("returned non-finite vectors"))  # the user's embedder code
    assert (tmp_path / "mine2" / RUN_RECORD).exists()
    run = StageRun(tmp_path / "died", "embed", config={"k": "a"}, inputs={}).begin()
    assert not run.fresh and run.is_done("s0")
    with pytest.raises(CorpusError), run.discarded_on_error():
        raise CorpusError("bad row")
    assert run.is_done("s0")  # a resumed run keeps what earlier attempts committed
    run = StageRun(tmp_path / "off", "embed", config={}, inputs={}).begin()
    with pytest.raises(CorpusError), run.discarded_on_error(enabled=False):  # a slice: others share it
        _commit_one(run, "s0")
        raise CorpusError("bad row")
    assert run.is_done("s0")


def test_an_interrupted_run_with_other_settings_is_refused_without_overwrite(tmp_path, stage):
    out = tmp_path / "out"
    assert stage(out, 4, fail_at=2).returncode != 0
    before = payload(out)
    r = stage(out, 4, seed=1)
    assert r.returncode != 0
    assert "StageError" in r.stderr and "interrupted 'embed' run with other settings" in r.stderr
    assert "--overwrite" in r.stderr
    assert payload(out) == before  # untouched
    r = stage(out, 4, seed=1, overwrite=True)  # starts over
    assert r.returncode == 0 and json.loads(r.stdout) == {"skipped": []}
    assert stage(tmp_path / "ref", 4, seed=1).returncode == 0
    same_result(tmp_path / "ref", out)


def test_a_complete_output_is_replaced_only_with_overwrite(tmp_path, stage):
    out = tmp_path / "out"
    assert stage(out, 2).returncode == 0
    manifest_bytes = (out / MANIFEST).read_bytes()
    for seed in (0, 1):  # same settings or not: a complete output is not touched
        r = stage(out, 2, seed=seed)
        assert r.returncode != 0 and "already holds a complete 'embed' output" in r.stderr
        assert (out / MANIFEST).read_bytes() == manifest_bytes
    r = stage(out, 3, seed=1, overwrite=True)
    assert r.returncode == 0, r.stderr
    assert read_manifest(out).config == {"seed": 1, "shards": 3}
    assert stage(tmp_path / "ref", 3, seed=1).returncode == 0
    same_result(tmp_path / "ref", out)
    assert_clean(out)


def test_overwrite_keeps_the_old_output_until_the_new_one_completes(tmp_path, stage):
    out = tmp_path / "out"
    assert stage(out, 2).returncode == 0
    old, old_manifest = payload(out), (out / MANIFEST).read_bytes()
    r = stage(out, 3, seed=1, fail_at=2, overwrite=True)  # the replacement dies halfway
    assert r.returncode != 0 and "shard 2 failed" in r.stderr
    assert not (out / MANIFEST).exists()  # not complete: no reader takes it for the old or the new output
    kept = {k: v for k, v in payload(out / REPLACED).items() if k != MARK}
    assert kept == old and (out / REPLACED / MANIFEST).read_bytes() == old_manifest
    assert f"the 'embed' output it replaces is kept in {out / REPLACED}" in describe_dir(out)
    r = stage(out, 3, seed=2)  # other settings, no --overwrite: refused, and told where the old output is
    assert r.returncode != 0 and "interrupted 'embed' run with other settings" in r.stderr
    assert str(out / REPLACED) in r.stderr
    r = stage(out, 3, seed=1, overwrite=True)  # the same command again resumes, then drops the old output
    assert r.returncode == 0 and json.loads(r.stdout) == {"skipped": [0, 1]}
    assert stage(tmp_path / "ref", 3, seed=1).returncode == 0
    same_result(tmp_path / "ref", out)
    assert_clean(out)
    assert not (out / REPLACED).exists()


def test_a_replacement_that_meets_bad_input_puts_the_old_output_back(tmp_path, stage):
    out = tmp_path / "out"
    assert stage(out, 2).returncode == 0
    from impsamp.errors import CorpusError

    old = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    run = StageRun(out, "embed", config={"seed": 9}, inputs={}, overwrite=True).begin()
    with pytest.raises(CorpusError), run.discarded_on_error():
        _commit_one(run, "s0")
        raise CorpusError("bad row")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == old
    read_manifest(out)
    r = stage(out, 2, seed=1)
    assert r.returncode != 0 and "already holds a complete 'embed' output" in r.stderr


class _Stop(BaseException):
    """A kill, as far as the folder is concerned: nothing after it runs, no handler cleans up."""


def _stop_after(monkeypatch, n: int) -> None:
    """Make every `os.replace` after the first n stop the process (the whole process's: `outdir.os` is `os`)."""
    import impsamp.outdir as outdir

    calls, real = [0], os.replace

    def replace(a, b):
        calls[0] += 1
        if calls[0] > n:
            raise _Stop
        real(a, b)

    monkeypatch.setattr(outdir.os, "replace", replace)


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize("when", ["set aside", "put back"])
def test_a_replacement_stopped_at_any_move_loses_nothing_of_the_old_output(tmp_path, stage, monkeypatch, when):
    from impsamp.errors import CorpusError

    out = tmp_path / "out"
    assert stage(out, 2).returncode == 0
    old = _files(out)
    # this stage's set-aside: 4 renames (manifest, summary.json, vectors/, the folder), then the new run's record
    # (n = 4: set aside, stopped before the run began); put back: 5 (the folder twice, then its entries,
    # manifest last), after the first, which leaves a resumable run (its record is still there)
    for n in range(5) if when == "set aside" else range(1, 6):
        with monkeypatch.context() as m:
            if when == "set aside":
                _stop_after(m, n)
                with contextlib.suppress(_Stop):
                    StageRun(out, "embed", config={"seed": 9}, inputs={}, overwrite=True).begin()
            else:
                run = StageRun(out, "embed", config={"seed": 9}, inputs={}, overwrite=True).begin()
                _commit_one(run, "s0")
                _stop_after(m, n)
                with contextlib.suppress(_Stop), pytest.raises(CorpusError), run.discarded_on_error():
                    raise CorpusError("bad row")
        assert (out / MANIFEST).exists() or "rerun the command to put it back" in describe_dir(out), n
        with pytest.raises(StageError, match="already holds a complete 'embed' output"):
            StageRun(out, "embed", config={"seed": 9}, inputs={}).begin()  # any run first puts it back
        assert _files(out) == old, n
        read_manifest(out)


def _unlink_failing(error):
    """A `Path.unlink` that raises `error` on the payload files of `_replaced/` (its manifest goes)."""
    real = Path.unlink

    def unlink(self, missing_ok=False):
        if self.parent.name == REPLACED and self.name not in (MANIFEST, MARK):
            raise error() if error is _Stop else error(13, "Permission denied", str(self))
        real(self, missing_ok=missing_ok)
    return unlink


def test_a_replaced_output_that_cannot_be_deleted_is_said_each_time_never_claimed_removed(
        tmp_path, stage, monkeypatch, caplog):
    import impsamp.outdir as outdir

    out = tmp_path / "out"
    assert stage(out, 2).returncode == 0
    with monkeypatch.context() as m:
        m.setattr(outdir.Path, "unlink", _unlink_failing(PermissionError))
        run = StageRun(out, "embed", config={"seed": 9}, inputs={}, overwrite=True).begin()
        _commit_one(run, "s0")
        run.finish(stats={})
        assert f"could not delete {out / REPLACED}" in caplog.text and "Permission denied" in caplog.text
        assert read_manifest(out).config == {"seed": 9} and not (out / REPLACED / MANIFEST).exists()
        for _ in range(2):  # every later run says it again, and never that it removed it
            caplog.clear()
            with pytest.raises(StageError, match="already holds a complete 'embed' output"):
                StageRun(out, "embed", config={"seed": 9}, inputs={}).begin()
            assert f"delete {out / REPLACED} yourself" in caplog.text and "removed" not in caplog.text
    caplog.clear()
    with pytest.raises(StageError, match="already holds a complete 'embed' output"):
        StageRun(out, "embed", config={"seed": 9}, inputs={}).begin()  # deletable again: it goes
    assert "removed what a finished run left" in caplog.text and not (out / REPLACED).exists()


def test_a_users_folder_named_replaced_inside_a_complete_output_is_not_deleted(tmp_path, stage):
    out = tmp_path / "out"
    assert stage(out, 2).returncode == 0
    (out / REPLACED).mkdir()
    (out / REPLACED / "notes.txt").write_text("mine")
    with pytest.raises(StageError, match="already holds a complete 'embed' output"):
        StageRun(out, "embed", config={"seed": 9}, inputs={}).begin()
    assert (out / REPLACED / "notes.txt").read_text() == "mine"


def test_a_cleanup_stopped_after_the_manifest_leaves_nothing_that_looks_complete_and_the_next_run_ends_it(
        tmp_path, stage, monkeypatch):
    import impsamp.outdir as outdir

    out = tmp_path / "out"
    assert stage(out, 2).returncode == 0
    with monkeypatch.context() as m:  # the replaced output is being deleted when the process stops
        m.setattr(outdir.Path, "unlink", _unlink_failing(_Stop))
        with contextlib.suppress(_Stop):
            run = StageRun(out, "embed", config={"seed": 9}, inputs={}, overwrite=True).begin()
            _commit_one(run, "s0")
            run.finish(stats={})
    new = _files(out)
    assert (out / REPLACED).is_dir() and not (out / REPLACED / MANIFEST).exists()  # never "complete" again
    assert read_manifest(out).config == {"seed": 9}  # the new output is complete
    with pytest.raises(StageError, match="already holds a complete 'embed' output"):
        StageRun(out, "embed", config={"seed": 9}, inputs={}).begin()  # ends the cleanup first
    assert not (out / REPLACED).exists() and not (out / RUN_RECORD).exists() and not (out / SHARD_RECORDS).exists()
    assert {k: v for k, v in new.items() if k.split("/")[0] not in (REPLACED, RUN_RECORD, SHARD_RECORDS)} == _files(out)


@pytest.mark.parametrize("name", [REPLACED, "_replaced.part", "_replaced.undo", "_replaced.back"])
def test_overwrite_never_takes_a_folder_for_ours_because_of_a_folder_named_like_its_own(tmp_path, stage, name):
    proj = tmp_path / "proj"
    assert stage(proj / name, 2).returncode == 0  # the user's own output, in a subfolder of theirs
    for extra in ({}, {"notes.txt": "mine"}):
        for f, text in extra.items():
            (proj / f).write_text(text)
        before = _files(proj)
        for overwrite in (False, True):
            with pytest.raises(StageError, match="not empty and is not an impsamp output|does not leave"):
                StageRun(proj, "embed", config={}, inputs={}, overwrite=overwrite).begin()
        assert _files(proj) == before
    (proj / "_replaced.undo").mkdir(exist_ok=True)  # an empty one beside a file of theirs: nothing deleted
    with pytest.raises(StageError):
        StageRun(proj, "embed", config={}, inputs={}, overwrite=True).begin()
    assert _files(proj) == before


def test_an_empty_move_folder_beside_a_complete_output_is_forgotten(tmp_path, stage):
    out = tmp_path / "out"
    assert stage(out, 2).returncode == 0
    before = _files(out)
    for name in ("_replaced.part", "_replaced.back"):  # made, killed before its mark; or emptied, unmarked
        (out / name).mkdir()
        with pytest.raises(StageError, match="already holds a complete 'embed' output"):
            StageRun(out, "embed", config={"seed": 9}, inputs={}).begin()
        assert _files(out) == before and not (out / name).exists()


def test_two_half_done_moves_at_once_are_refused_not_guessed(tmp_path, stage, monkeypatch):
    out = tmp_path / "out"
    assert stage(out, 2).returncode == 0
    with monkeypatch.context() as m:
        _stop_after(m, 2)  # set aside halfway: manifest and summary.json moved
        with contextlib.suppress(_Stop):
            StageRun(out, "embed", config={"seed": 9}, inputs={}, overwrite=True).begin()
    (out / "_replaced.back").mkdir()
    (out / "_replaced.back" / MARK).write_text("")
    before = _files(out)
    with pytest.raises(StageError, match=r"_replaced.part, _replaced.back in a state impsamp does not leave"):
        StageRun(out, "embed", config={"seed": 9}, inputs={}, overwrite=True).begin()
    assert _files(out) == before


def test_overwrite_never_deletes_an_input_of_the_run(tmp_path):
    out = tmp_path / "out"
    StageRun(out, "embed", config={}, inputs={}).begin().finish(stats={})
    (out / "corpus.jsonl").write_text('{"text": "mine"}\n')
    named = [{"inputs": {"corpus": {"files": [{"path": str(out / "corpus.jsonl")}]}}},  # in the recorded inputs
             {"inputs": {"run": {"path": str(out)}}},  # the folder itself
             {"inputs": {}, "input_paths": ([tmp_path / "elsewhere", out / "corpus.jsonl"],)}]  # read, not recorded
    for kw in named:
        with pytest.raises(StageError, match=f"{out} is also an input of this run .*choose another output"):
            StageRun(out, "embed", config={"seed": 1}, overwrite=True, **kw).begin()
        assert (out / MANIFEST).exists() and (out / "corpus.jsonl").exists()
    StageRun(out, "embed", config={"seed": 1}, inputs={"corpus": {"path": str(tmp_path / "elsewhere")}},
             overwrite=True).begin()  # an input outside: replaced as before
    assert not (out / "corpus.jsonl").exists()


def test_a_directory_that_is_not_ours_is_never_deleted(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    other = tmp_path / "other"  # another tool's output, with its own manifest.json
    other.mkdir()
    (other / MANIFEST).write_text(json.dumps({"version": 2, "files": ["a.bin"]}))
    (other / "a.bin").write_bytes(b"data")
    for out in (mine, other):
        for overwrite in (False, True):
            with pytest.raises(StageError, match="not empty and is not an impsamp output"):
                StageRun(out, "embed", config={}, inputs={}, overwrite=overwrite).begin()
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in other.iterdir()) == ["a.bin", MANIFEST]
    with pytest.raises(StageError, match="exists and is a file"):
        StageRun(mine / "thesis.tex", "embed", config={}, inputs={}, overwrite=True).begin()


def test_an_interrupted_manifest_write_is_not_taken_as_complete(tmp_path, stage):
    out = tmp_path / "out"
    r = stage(out, 3, fail_at=3)  # every shard committed, then it stops before finish
    assert r.returncode != 0 and "failed before finish" in r.stderr
    # killed inside atomic_write: the temp manifest was written, the rename never happened
    good = {"stage": "embed", "impsamp_version": "0.1.0", "outputs": [], "config": {}, "inputs": {}}
    (out / ".manifest.json.tmp-123").write_text(json.dumps(good))
    with pytest.raises(StageError, match="incomplete 'embed' output"):
        read_manifest(out)
    r = stage(out, 3)
    assert r.returncode == 0 and json.loads(r.stdout) == {"skipped": [0, 1, 2]}
    assert stage(tmp_path / "ref", 3).returncode == 0
    same_result(tmp_path / "ref", out)
    assert_clean(out)


def test_a_run_killed_before_its_run_record_can_start_again(tmp_path, stage):
    """Killed inside `begin`: only temp residue (and perhaps an empty _shards/) is there."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "._run.json.tmp-4242").write_text('{"stage": "em')
    (out / SHARD_RECORDS).mkdir()
    r = stage(out, 2)
    assert r.returncode == 0, r.stderr
    assert stage(tmp_path / "ref", 2).returncode == 0
    same_result(tmp_path / "ref", out)
    assert_clean(out)


def test_a_shard_renamed_but_not_recorded_is_redone(tmp_path, stage):
    """Killed between the payload rename and the shard record: the shard is redone, same bytes."""
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert stage(ref, 3).returncode == 0
    assert stage(out, 3, fail_at=2).returncode != 0
    (out / SHARD_RECORDS / "00001.json").unlink()  # as if killed just before writing the record
    (out / "vectors" / "part-00001.bin").write_bytes(b"garbage from a previous attempt")
    r = stage(out, 3)
    assert r.returncode == 0 and json.loads(r.stdout) == {"skipped": [0]}
    same_result(ref, out)


def test_a_run_killed_after_the_manifest_but_before_cleanup_is_complete(tmp_path, stage):
    out = tmp_path / "out"
    assert stage(out, 2).returncode == 0
    (out / RUN_RECORD).write_text(json.dumps({"stage": "embed", "key": "sha256:x"}))
    (out / SHARD_RECORDS).mkdir()
    assert read_manifest(out).stage == "embed"
    assert [p.name for p in iter_stage_files(out)] == [MANIFEST, "summary.json", "part-00000.bin",
                                                       "part-00001.bin"]
    r = stage(out, 2)
    assert r.returncode != 0 and "already holds a complete" in r.stderr


# ----------------------------------------------------------------------------- the manifest


def test_the_manifest_records_config_inputs_outputs_stats_and_versions(tmp_path, stage):
    out = tmp_path / "out"
    assert stage(out, 2).returncode == 0
    raw = json.loads((out / MANIFEST).read_text())
    assert set(raw) == {"stage", "impsamp_version", "config", "inputs", "outputs", "stats", "env",
                        "created_at", "fingerprint"}
    m = read_manifest(out, expect_stage="embed")
    assert m.config == {"seed": 0, "shards": 2}
    assert m.inputs["corpus"]["fingerprint"] == "sha256:demo"
    assert [(o.path, o.bytes, o.rows) for o in m.outputs] == [
        ("summary.json", (out / "summary.json").stat().st_size, None),
        ("vectors/part-00000.bin", 65536, 100), ("vectors/part-00001.bin", 65536, 101)]
    assert all(len(o.sha256) == 64 for o in m.outputs)
    assert m.stats["rows"] == 201 and m.stats["seconds"] >= 0
    assert m.env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert m.fingerprint.startswith("sha256:")
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_read_manifest_says_what_it_found(tmp_path, stage):
    out = tmp_path / "emb"
    assert stage(out, 1).returncode == 0
    with pytest.raises(StageError, match=r"emb is an 'embed' output; expected a 'cluster' output "
                                         r"\(from `impsamp cluster`\)"):
        read_manifest(out, expect_stage="cluster")
    assert read_manifest(out, expect_stage=("cluster", "embed")).stage == "embed"
    with pytest.raises(StageError, match="does not exist; expected a 'cluster' output"):
        read_manifest(tmp_path / "missing", expect_stage="cluster")
    (tmp_path / "f").write_text("x")
    with pytest.raises(StageError, match="is a file, not a stage directory"):
        read_manifest(tmp_path / "f")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StageError, match=r"is not an impsamp output \(no manifest.json\)"):
        read_manifest(tmp_path / "plain")


def test_read_manifest_detects_damage(tmp_path, stage):
    out = tmp_path / "out"
    assert stage(out, 2).returncode == 0
    part = out / "vectors" / "part-00001.bin"
    data = part.read_bytes()
    part.write_bytes(data[:-1])
    with pytest.raises(StageError, match="has 65535 bytes, the manifest says 65536.*--overwrite"):
        read_manifest(out)
    part.unlink()
    with pytest.raises(StageError, match="part-00001.bin is missing"):
        read_manifest(out)
    part.write_bytes(b"\x00" + data[1:])  # same size, other bytes: only the sha256 sees it
    with pytest.raises(StageError, match="does not match its sha256"):
        verify_outputs(out, read_manifest(out))
    (out / MANIFEST).write_text('{"stage": "embed", "impsamp_version": "0.7.15"}')
    with pytest.raises(StageError, match="is corrupt"):
        read_manifest(out)
    (out / MANIFEST).write_text('{"stage": "build", "name": "x"}')  # another tool's manifest
    with pytest.raises(StageError, match="is not an impsamp manifest.*expected an 'embed' output"):
        read_manifest(out, expect_stage="embed")
    (out / MANIFEST).write_text("[1, 2")
    with pytest.raises(StageError, match="is corrupt"):
        read_manifest(out)


def test_fingerprint_is_stable_under_key_order():
    a = fingerprint({"k": 1024, "seed": 0, "nested": {"x": [1, 2], "y": None}})
    b = fingerprint({"nested": {"y": None, "x": [1, 2]}, "seed": 0, "k": 1024})
    assert a == b and a.startswith("sha256:")
    assert a != fingerprint({"k": 1024, "seed": 1, "nested": {"x": [1, 2], "y": None}})
    assert a != fingerprint({"k": 1024, "seed": 0, "nested": {"x": [2, 1], "y": None}})


def test_the_run_key_depends_on_config_and_inputs_only(tmp_path):
    def key(**kw):
        base = {"out_dir": tmp_path / "a", "stage": "embed", "config": {"k": 1, "s": 2}, "inputs": {"c": "x"}}
        return StageRun(**{**base, **kw}).key

    assert key() == key(out_dir=tmp_path / "b") == key(config={"s": 2, "k": 1})
    assert len({key(), key(config={"k": 2, "s": 2}), key(inputs={"c": "y"}), key(stage="cluster")}) == 4


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    atomic_write_bytes(p, b"old")

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(p, b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.json"]


def test_a_stage_in_process_writes_exactly_payload_and_manifest(tmp_path):
    out = tmp_path / "nested" / "out"  # parents are created
    run = StageRun(out, "cluster", config={"k": 2}, inputs={}).begin()
    for i in range(3):
        tmp = run.tmp_path(f"a-{i}.txt")
        tmp.write_text(f"shard {i}")
        run.commit_shard(f"{i:05d}", {f"a-{i}.txt": tmp})
        assert run.is_done(f"{i:05d}")
    m = run.finish(stats={"n": 3})
    assert sorted(p.name for p in out.iterdir()) == ["a-0.txt", "a-1.txt", "a-2.txt", MANIFEST]
    assert read_manifest(out, expect_stage="cluster") == m


def test_an_interrupted_run_names_the_command_that_resumes_it(tmp_path, monkeypatch):
    """`specialize` and `distill` write `train` runs: an interrupted one says to rerun `specialize`, not `train`."""
    from click.testing import CliRunner
    from impsamp_cli.main import cli

    from impsamp import manifest

    monkeypatch.setattr(manifest, "COMMAND", "specialize")  # as `impsamp specialize` sets it
    StageRun(tmp_path / "sp", "train", config={}, inputs={}).begin()
    assert "rerun the same `impsamp specialize` command to resume it" in describe_dir(tmp_path / "sp")
    monkeypatch.setattr(manifest, "COMMAND", None)  # the Python API: the stage's own name
    StageRun(tmp_path / "tr", "train", config={}, inputs={}).begin()
    assert "rerun the same `impsamp train` command" in describe_dir(tmp_path / "tr")
    r = CliRunner().invoke(cli, ["info", str(tmp_path / "sp")])
    assert "`impsamp specialize`" in r.output and manifest.COMMAND is None  # set for one command only
