"""One writer per output folder (`impsamp.guards.hold`): a second process is refused in one line, slices of
one run share their folder, a killed holder leaves no stale lock, and a rerun in the same process is not
blocked by an earlier run of it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from impsamp.embedding import EmbedConfig, embed
from impsamp.embedding.hashing import HashingEmbedder
from impsamp.errors import StageError
from impsamp.manifest import MANIFEST, RUN_RECORD, SHARD_RECORDS, StageRun

from ._helpers import ENV, EMBED_ARGS, argv, invoke, ok, one_line_error, payload, write_corpus

HOLDER = textwrap.dedent('''
    import sys, time
    from impsamp.manifest import StageRun
    run = StageRun(sys.argv[1], "embed", config={}, inputs={}, shared=sys.argv[2] == "shared",
                   overwrite=sys.argv[3] == "overwrite").begin()
    print("holding", flush=True)
    time.sleep(120)
''')


def _holder(out, shared: bool = False, overwrite: bool = False) -> subprocess.Popen:
    """A process that begins a run in `out` and keeps it open (until killed)."""
    modes = ["shared" if shared else "whole", "overwrite" if overwrite else "-"]
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), *modes], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().strip() == "holding", proc.communicate()
    return proc


def _run(out, shared: bool = False) -> StageRun:
    return StageRun(out, "embed", config={}, inputs={}, shared=shared)


def test_a_second_writer_is_refused_until_the_first_ends_however_it_ends(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out)
    try:
        with pytest.raises(StageError, match="being written by another process"):
            _run(out).begin()
        with pytest.raises(StageError, match="being written by another process"):
            _run(out, shared=True).begin()  # a slice neither: the holder is a whole run
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    run = _run(out).begin()  # killed: the kernel dropped its lock, nothing to clear by hand
    assert run.fresh is False  # and the killed run's record is there to resume
    run.finish(stats={})


def test_slices_share_their_folder_and_a_whole_run_waits_for_none_of_them(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out, shared=True)
    try:
        _run(out, shared=True).begin()  # another slice of the same run: allowed
        with pytest.raises(StageError, match="being written by another process"):
            _run(out).begin()  # `finalize` (a whole run) while a slice still writes: refused
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_rerun_in_the_same_process_takes_over_an_earlier_runs_lock(tmp_path):
    out = tmp_path / "out"
    first = _run(out).begin()  # never finished: a failed run whose traceback a notebook keeps alive
    again = _run(out).begin()
    again.finish(stats={})
    assert (out / MANIFEST).exists() and first.key == again.key
    proc = _holder(out, overwrite=True)  # the lock went with the finish: another process may now write
    proc.kill()
    proc.wait(timeout=30)
    ok(invoke("embed", write_corpus(tmp_path / "c.jsonl", 20), "--out", out, "--model", "hashing:16",
              "--overwrite", "--no-progress"))


def test_overwrite_while_a_run_still_writes_is_refused_and_the_run_finishes_intact(tmp_path):
    corpus = write_corpus(tmp_path / "generic.jsonl", 150)
    ref, out = tmp_path / "ref", tmp_path / "out"
    ok(invoke(*EMBED_ARGS(corpus, ref)))
    proc = subprocess.Popen(argv(*EMBED_ARGS(corpus, out)), env={**ENV, "IMPSAMP_TEST_SLOW_SHARD": "0.4"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while len(list((out / SHARD_RECORDS).glob("*.json"))) < 1:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    busy = "being written by another process"
    one_line_error(invoke(*EMBED_ARGS(corpus, out, "--overwrite")), str(out), busy, "wait for it")
    one_line_error(invoke(*EMBED_ARGS(corpus, out)), busy)  # a second resume of it too
    assert proc.wait(timeout=120) == 0, proc.communicate()
    assert payload(out) == payload(ref)  # nothing of the first run deleted or written twice


def test_a_run_that_stopped_in_this_process_does_not_block_the_command_elsewhere(tmp_path):
    """A library call that raised (here Ctrl-C in a notebook, on the second shard) lets go of its folder: the
    same command in a terminal resumes it."""
    corpus, out = write_corpus(tmp_path / "generic.jsonl", 150), tmp_path / "emb"

    class Interrupted(HashingEmbedder):
        calls = 0

        def embed_texts(self, texts):
            Interrupted.calls += 1
            if Interrupted.calls == 2:
                raise KeyboardInterrupt
            return super().embed_texts(texts)

    with pytest.raises(KeyboardInterrupt):
        embed(corpus, out, EmbedConfig(model="hashing:64", rows_per_shard=25), embedder=Interrupted(64))
    assert (out / RUN_RECORD).exists() and not (out / MANIFEST).exists()
    r = subprocess.run(argv(*EMBED_ARGS(corpus, out)), env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr  # not "being written by another process"
    assert json.loads((out / MANIFEST).read_text())["stats"]["resumed_shards"] >= 1
