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
from concurrent.futures import ThreadPoolExecutor

import pytest

from impsamp import guards
from impsamp.embedding import EmbedConfig, embed
from impsamp.embedding.hashing import HashingEmbedder
from impsamp.errors import StageError
from impsamp.manifest import MANIFEST, RUN_RECORD, SHARD_RECORDS, StageRun

from ._helpers import ENV, EMBED_ARGS, argv, invoke, ok, one_line_error, payload, write_corpus

NO_FOLDER_FLOCK = textwrap.dedent('''
    import errno, fcntl, os, stat
    _flock = fcntl.flock

    def flock(fd, op):  # as on NFS: no exclusive flock on a folder (it cannot be opened for writing)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "Bad file descriptor")
        return _flock(fd, op)
''')
HOLDER = textwrap.dedent('''
    import os, sys, time
    from impsamp.manifest import StageRun
    if os.environ.get("NFS"):
        exec(os.environ["NFS"])
        fcntl.flock = flock
    run = StageRun(sys.argv[1], "embed", config={"model": sys.argv[4]} if sys.argv[4] else {}, inputs={},
                   slice_name=None if sys.argv[2] == "whole" else sys.argv[2],
                   overwrite=sys.argv[3] == "overwrite").begin()
    print("holding", flush=True)
    time.sleep(120)
''')


def _holder(out, slice_name: str | None = None, overwrite: bool = False, config: str = "", nfs: bool = False
            ) -> subprocess.Popen:
    """A process that begins a run (or a slice of one) in `out` and keeps it open (until killed)."""
    modes = [slice_name or "whole", "overwrite" if overwrite else "-", config]
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), *modes],
                            env={**ENV, "NFS": NO_FOLDER_FLOCK} if nfs else ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().strip() == "holding", proc.communicate()
    return proc


def _run(out, slice_name: str | None = None) -> StageRun:
    return StageRun(out, "embed", config={}, inputs={}, slice_name=slice_name)


def _let_go(run: StageRun) -> None:
    """Drop the locks a begun run took in this thread (the folder's and a slice's)."""
    for key in guards._mine():
        guards.release(key)


@pytest.fixture(autouse=True)
def _short_slice_wait(monkeypatch):
    """A slice waits this long for another one setting the folder up (10 s in use)."""
    monkeypatch.setattr(guards, "SLICE_WAIT", 0.5)


def test_a_second_writer_is_refused_until_the_first_ends_however_it_ends(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out)
    try:
        with pytest.raises(StageError, match="being written by another process"):
            _run(out).begin()
        with pytest.raises(StageError, match="being written by another process"):
            _run(out, slice_name="1-of-2").begin()  # a slice neither: the holder is a whole run
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    run = _run(out).begin()  # killed: the kernel dropped its lock, nothing to clear by hand
    assert run.fresh is False  # and the killed run's record is there to resume
    run.finish(stats={})


def test_a_busy_folder_is_refused_before_the_model_loads_or_the_inputs_are_read(tmp_path, monkeypatch):
    """`embed` into a folder another process writes stops at once, not after loading the model (half a
    minute, or minutes for an ONNX export); `resample` before it embeds the target."""
    from impsamp.embedding import stage
    from impsamp.resampling import ResampleConfig, resample

    def load_embedder(*a, **k):
        raise AssertionError("the model was loaded for a run that cannot write its folder")

    monkeypatch.setattr(stage, "load_embedder", load_embedder)
    corpus = write_corpus(tmp_path / "c.jsonl", 10)
    out = tmp_path / "out"
    proc = _holder(out)
    try:
        for overwrite in (False, True):
            with pytest.raises(StageError, match="being written by another process"):
                embed(corpus, out, EmbedConfig(model="all-MiniLM-L6-v2"), overwrite=overwrite)
        with pytest.raises(StageError, match="being written by another process"):  # its inputs are not there
            resample(tmp_path / "no-emb", tmp_path / "no-clu", out, targets=[corpus], config=ResampleConfig(tokens=100))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with pytest.raises(AssertionError, match="the model was loaded"):  # free again: it goes on to the model
        embed(corpus, out, EmbedConfig(model="all-MiniLM-L6-v2"))


def test_slices_share_their_folder_and_a_whole_run_is_refused_while_one_writes(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out, slice_name="0-of-2")
    try:
        _let_go(_run(out, slice_name="1-of-2").begin())  # another slice of the same run: allowed
        with pytest.raises(StageError, match="being written by another process"):
            _run(out).begin()  # `finalize` (a whole run) while a slice still writes: refused
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_the_same_slice_started_twice_is_refused_in_one_line_and_finalize_removes_the_slice_locks(tmp_path):
    """A requeued array task beside the first: the same --shard-index again stops at once (it used to compute
    and commit the slice a second time); the other slice runs beside it; the files the slices lock are gone
    from the finished output."""
    out = tmp_path / "out"
    proc = _holder(out, slice_name="0-of-2")
    try:
        with pytest.raises(StageError, match=r"^slice 0 of 2 of .* is running in another process \(the same "
                                             r"--shard-index started twice\)"):
            _run(out, slice_name="0-of-2").begin()
        assert not guards._mine()  # the refused twin let go of the folder's lock too
        corpus = write_corpus(tmp_path / "c.jsonl", 60)
        one_line_error(invoke(*EMBED_ARGS(corpus, out, "--num-shards", "2", "--shard-index", "0")),
                       "slice 0 of 2", "the same --shard-index started twice")
        _let_go(_run(out, slice_name="1-of-2").begin())
        assert [p.name for p in out.glob(".slice-*")] == [guards.slice_lock("0-of-2")]  # slice 1's file went with it
    finally:
        proc.kill()
        proc.wait(timeout=30)
    _let_go(_run(out, slice_name="0-of-2").begin())  # its holder was killed: the slice runs again
    assert (out / guards.slice_lock("0-of-2")).exists() is False
    proc = _holder(out, slice_name="0-of-2")
    proc.kill()
    proc.wait(timeout=30)  # a killed slice leaves its file...
    _run(out).begin().finish(stats={})  # ...that a whole run (`finalize`) removes: no slice runs beside it
    assert not list(out.glob(".slice-*"))


CLAIMER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from impsamp.guards import claim
    with claim(Path(sys.argv[1]), "data-00001"):
        print("holding", flush=True)
        time.sleep(120)
''')


def test_a_claimed_shard_waits_for_its_claimer_to_end_however_it_ends(tmp_path):
    """`guards.claim`: the slices of an experts run write each shard of group data once; one whose claimer was
    killed is taken over, and the claim files go with their holders."""
    import threading

    from impsamp.guards import claim

    proc = subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    entered = threading.Event()

    def take():
        with claim(tmp_path, "data-00001"):
            entered.set()

    with claim(tmp_path, "data-00002"):  # another shard: not waited for
        pass
    waiter = threading.Thread(target=take)
    waiter.start()
    try:
        assert not entered.wait(0.5)  # held by the other process
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert entered.wait(10)  # killed: its claim went with it
    waiter.join(10)
    assert not list(tmp_path.glob(".claim-*"))  # the file the killed claimer left is removed by the next holder


def test_slices_of_one_run_with_overwrite_empty_the_old_output_once_and_then_join(tmp_path):
    out, new = tmp_path / "out", {"model": "new"}
    _run(out).begin().finish(stats={})  # a complete output of other settings
    proc = _holder(out, slice_name="0-of-2", overwrite=True, config="new")  # slice 0 empties it and starts
    try:
        assert not (out / MANIFEST).exists()
        again = StageRun(out, "embed", config=new, inputs={}, slice_name="1-of-2", overwrite=True).begin()
        assert again.fresh is False  # slice 1 joins slice 0's run, deleting nothing
        _let_go(again)
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_rerun_in_the_same_process_takes_over_an_earlier_runs_lock(tmp_path):
    out = tmp_path / "out"
    _run(out).begin()  # never finished: a failed run whose traceback a notebook keeps alive
    _run(out).begin().finish(stats={})
    assert (out / MANIFEST).exists()
    proc = _holder(out, overwrite=True)  # the lock went with the finish: another process may now write
    proc.kill()
    proc.wait(timeout=30)
    ok(invoke("embed", write_corpus(tmp_path / "c.jsonl", 20), "--out", out, "--model", "hashing:16",
              "--overwrite", "--no-progress"))


def test_overwrite_while_a_run_still_writes_is_refused_and_the_run_finishes_intact(tmp_path):
    corpus = write_corpus(tmp_path / "generic.jsonl", 150)
    ref, out = tmp_path / "ref", tmp_path / "out"
    ok(invoke(*EMBED_ARGS(corpus, ref)))
    proc = subprocess.Popen(argv(*EMBED_ARGS(corpus, out)), env={**ENV, "IMPSAMP_TEST_SLOW_SHARD": "1"},
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


def test_a_slice_with_overwrite_does_not_empty_the_folder_while_another_slice_writes_it(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out, slice_name="0-of-2")  # slice 0 of a run, still writing
    try:
        other = StageRun(out, "embed", config={"model": "another"}, inputs={}, slice_name="1-of-2", overwrite=True)
        with pytest.raises(StageError, match="being written by slices of another run; pass --overwrite when"):
            other.begin()  # another run's slice asks to start over: it would delete slice 0's work
        assert (out / RUN_RECORD).exists()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    _let_go(StageRun(out, "embed", config={"model": "another"}, inputs={}, slice_name="0-of-2", overwrite=True).begin())


def test_threads_of_one_process_neither_share_a_folder_nor_let_go_of_each_others_locks(tmp_path):
    import threading

    from impsamp.guards import released_on_return

    go, started, finish = threading.Event(), threading.Event(), threading.Event()

    def slow_stage(out):
        go.wait(30)
        _run(out).begin()
        started.set()
        finish.wait(30)

    @released_on_return
    def quick_stage(out):
        _run(out).begin()
        go.set()  # the worker takes its lock while this stage runs: it is not this stage's to let go of
        assert started.wait(30)

    worker = threading.Thread(target=slow_stage, args=(tmp_path / "a",))
    worker.start()
    try:
        quick_stage(tmp_path / "b")
        with pytest.raises(StageError, match="another thread of this process"):
            _run(tmp_path / "a").begin()
        proc = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path / "a"), "whole", "overwrite", ""],
                              env=ENV, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "being written by another process" in proc.stdout + proc.stderr
    finally:
        finish.set()
        worker.join(30)
    _run(tmp_path / "a").begin().finish(stats={})  # its thread ended: its folder is free


def test_overwrite_through_a_symlink_then_bad_input_puts_the_old_output_back(tmp_path):
    corpus, bad = write_corpus(tmp_path / "good.jsonl", 60), tmp_path / "bad.jsonl"
    bad.write_text(corpus.read_text() + "{not json\n")
    real, link = tmp_path / "real", tmp_path / "link"
    ok(invoke(*EMBED_ARGS(corpus, real)))
    before = {p.name: p.read_bytes() for p in real.iterdir()}
    link.symlink_to(real)
    one_line_error(invoke(*EMBED_ARGS(bad, link, "--overwrite")), "line 61")
    assert link.is_symlink() and {p.name: p.read_bytes() for p in real.iterdir()} == before  # no shards left
    ok(invoke(*EMBED_ARGS(corpus, link, "--overwrite", "--rows-per-shard", "30")))
    assert (real / MANIFEST).exists() and "docs-00002.parquet" not in {p.name for p in real.iterdir()}
    assert not (real / "_replaced").exists()  # the old output goes once the new one is complete


def test_a_demo_waits_for_another_filling_the_shared_embedding_cache_and_uses_its_embeddings(tmp_path):
    from impsamp.demonstration import cached_embeddings as _cached_embeddings
    from impsamp.comparison import CompareConfig

    pool, cache = write_corpus(tmp_path / "pool.jsonl", 150), tmp_path / "cache" / "emb"
    cfg = CompareConfig(model="hashing:64")
    proc = subprocess.Popen(argv("embed", pool, "--out", cache, "--model", "hashing:64", "--max-tokens",
                                 cfg.max_tokens, "--rows-per-shard", "25", "--no-progress"),
                            env={**ENV, "IMPSAMP_TEST_SLOW_SHARD": "0.5"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (cache / RUN_RECORD).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    with ThreadPoolExecutor(1) as pool_:  # a wait that never ends fails the test instead of hanging it
        assert pool_.submit(_cached_embeddings, pool, cache, cfg, False).result(timeout=60) == cache
    assert proc.wait(timeout=60) == 0, proc.communicate()
    assert json.loads((cache / MANIFEST).read_text())["stats"]["resumed_shards"] == 0  # the other's, unshared


def test_a_demo_waits_for_another_demos_embedding_not_for_the_rest_of_its_run(tmp_path):
    """The first demo holds its cached embeddings (a shared lock) for its whole run, so that `impsamp cache
    --clear` leaves them; a second demo that found them being written waits for the writer only."""
    from impsamp.demonstration import cached_embeddings as _cached_embeddings
    from impsamp.comparison import CompareConfig

    pool, cache = write_corpus(tmp_path / "pool.jsonl", 150), tmp_path / "cache" / "emb"
    code = textwrap.dedent(f"""
        import contextlib, sys, time
        from pathlib import Path
        from impsamp.demonstration import cached_embeddings as _cached_embeddings
        from impsamp.comparison import CompareConfig
        with contextlib.ExitStack() as stack:
            _cached_embeddings(Path({str(pool)!r}), Path({str(cache)!r}), CompareConfig(model="hashing:64"),
                               False, stack)
            print("embedded", flush=True)
            time.sleep(120)  # the rest of the first demo: selections, training
    """)
    first = subprocess.Popen([sys.executable, "-c", code], env={**ENV, "IMPSAMP_TEST_SLOW_SHARD": "0.5"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (cache / RUN_RECORD).exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.01)
        started = time.monotonic()
        with ThreadPoolExecutor(1) as ex:
            got = ex.submit(_cached_embeddings, pool, cache, CompareConfig(model="hashing:64"), False)
            assert got.result(timeout=60) == cache
        assert first.poll() is None and time.monotonic() - started < 60  # not after the first demo's end
        assert first.stdout.readline().strip() == "embedded"
    finally:
        first.kill()
        first.wait(timeout=30)


def test_a_begin_that_refuses_lets_go_of_the_folder(tmp_path):
    out = tmp_path / "out"
    _run(out).begin().finish(stats={})
    with pytest.raises(StageError, match="already holds a complete"):
        _run(out).begin()  # no --overwrite: refused after the lock was taken
    proc = _holder(out, overwrite=True)  # so another process may write it now
    proc.kill()
    proc.wait(timeout=30)


def test_a_damaged_demo_cache_is_a_one_line_error_not_an_endless_retry(tmp_path):
    from impsamp.demonstration import cached_embeddings as _cached_embeddings
    from impsamp.comparison import CompareConfig

    pool, cache = write_corpus(tmp_path / "pool.jsonl", 40), tmp_path / "cache" / "emb"
    cfg = CompareConfig(model="hashing:64")
    ok(invoke("embed", pool, "--out", cache, "--model", "hashing:64", "--max-tokens", cfg.max_tokens,
              "--no-progress"))
    next(cache.glob("vectors-*.npy")).unlink()
    with ThreadPoolExecutor(1) as ex, pytest.raises(StageError, match="vectors-00000.npy is missing"):
        ex.submit(_cached_embeddings, pool, cache, cfg, False).result(timeout=60)


def test_a_filesystem_without_locks_runs_unlocked_and_says_so_once(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl
    import logging

    def no_locks(fd, op):
        raise OSError(errno.EBADF, "Bad file descriptor")  # NFS: no flock on a folder opened read-only

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(guards, "_WARNED", [])
    with caplog.at_level(logging.WARNING, logger="impsamp.guards"):
        for name in ("a", "b"):
            run = _run(tmp_path / name).begin()
            assert run._lock is None and not (tmp_path / name / guards.LOCK_FILE).exists()
            run.finish(stats={})
    assert [r.getMessage().startswith(f"cannot lock {tmp_path / 'a'}") for r in caplog.records] == [True]


def test_without_flock_on_folders_a_lock_file_inside_does_the_same_and_finish_removes_it(tmp_path,
                                                                                         monkeypatch):
    import fcntl

    scope: dict = {}
    exec(NO_FOLDER_FLOCK, scope)
    monkeypatch.setattr(fcntl, "flock", scope["flock"])
    out = tmp_path / "out"
    proc = _holder(out, nfs=True)
    try:
        assert (out / guards.LOCK_FILE).exists()
        with pytest.raises(StageError, match="being written by another process"):
            _run(out).begin()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    run = _run(out).begin()  # the killed holder's lock went with it; its run resumes
    assert run.fresh is False
    run.finish(stats={})
    assert [p.name for p in out.iterdir()] == [MANIFEST]  # the lock file is not part of the output
    with pytest.raises(StageError, match="already holds a complete"):
        _run(out).begin()
    assert [p.name for p in out.iterdir()] == [MANIFEST]  # nor left by a refused run
    StageRun(out, "embed", config={"model": "x"}, inputs={}, overwrite=True).begin()  # empties it...
    assert (out / guards.LOCK_FILE).exists()  # ...but for the lock it holds
    r = subprocess.run([sys.executable, "-c", HOLDER, str(out), "whole", "overwrite", "y"],
                       env={**ENV, "NFS": NO_FOLDER_FLOCK}, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "being written by another process" in r.stdout + r.stderr


def test_a_whole_run_that_takes_the_folder_while_a_slice_shares_it_stops_the_slice(tmp_path, monkeypatch):
    import fcntl

    out, real, rival = tmp_path / "out", fcntl.flock, []

    def overtaken(fd, op):  # Linux drops the exclusive lock before it takes the shared one: a rival gets in
        if op & fcntl.LOCK_SH and not rival:
            real(fd, fcntl.LOCK_UN)
            rival.append(_holder(out, overwrite=True, config="other"))
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", overtaken)
    try:
        with pytest.raises(StageError, match="being written by another process"):
            _run(out, slice_name="0-of-2").begin()
        st = out.stat()
        assert (st.st_dev, st.st_ino) not in guards._HELD  # the slice let go of its descriptor
        assert json.loads((out / RUN_RECORD).read_text())["config"] == {"model": "other"}
    finally:
        for proc in rival:
            proc.kill()
            proc.wait(timeout=30)


def test_an_output_inside_a_corpus_folder_an_input_comes_from_is_refused(tmp_path):
    """A stage writing inside a corpus folder it reads (directly, or through the embeddings made from it) would
    add to that corpus: every later run over the folder would read (or refuse) the output."""
    from ._helpers import CLUSTER_ARGS, RESAMPLE_ARGS, TRAIN_ARGS

    corpus = tmp_path / "corpus"
    write_corpus(corpus / "part.jsonl", 60)
    target = write_corpus(tmp_path / "target.jsonl", 20, seed=1, topics=("bio",))
    one_line_error(invoke(*EMBED_ARGS(corpus, corpus / "emb")), f"inside {corpus}", "outside it")
    ok(invoke(*EMBED_ARGS(corpus, tmp_path / "emb")))
    one_line_error(invoke(*CLUSTER_ARGS(tmp_path / "emb", corpus / "clu")), f"inside {corpus}")
    ok(invoke(*CLUSTER_ARGS(tmp_path / "emb", tmp_path / "clu")))
    one_line_error(invoke(*RESAMPLE_ARGS(tmp_path / "emb", tmp_path / "clu", target, corpus / "sel")),
                   f"inside {corpus}")
    one_line_error(invoke(*TRAIN_ARGS(corpus, corpus / "run")), f"inside {corpus}")
    one_line_error(invoke("compare", "--generic", corpus, "--target", target, "--eval", target, "--out",
                          corpus / "cmp", "--methods", "uniform"), f"{corpus / 'cmp'} is inside {corpus}")
    assert sorted(p.name for p in corpus.iterdir()) == ["part.jsonl"]  # nothing written there
    ok(invoke(*RESAMPLE_ARGS(tmp_path / "emb", tmp_path / "clu", target, tmp_path / "sel")))  # outside: as before
    # through every stage behind: the selection's embeddings were made from the folder
    one_line_error(invoke(*TRAIN_ARGS(tmp_path / "sel", corpus / "run")), f"inside {corpus}")
    ok(invoke(*EMBED_ARGS(corpus, corpus / "_emb")))  # names a folder's reading skips: never part of the corpus
    ok(invoke(*EMBED_ARGS(corpus, tmp_path / "emb2")))  # and the corpus still reads as it did
    assert len(json.loads((tmp_path / "emb2" / "manifest.json").read_text())["inputs"]["corpus"]["files"]) == 1
    # a file written inside a finished output would go with its next --overwrite: refused too
    clu = tmp_path / "clu"
    one_line_error(invoke("histogram", clu, "--target", target, "--out", clu / "t.hist.json"), "a finished impsamp output")
    one_line_error(invoke("inspect", clu, "--out", clu / "e.html"), "a finished impsamp output")


def test_an_output_a_corpus_glob_could_match_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """A corpus given as a pattern reads whatever it matches later too: an output it reaches (or a folder the
    stage would fill under it) would be read, or refused, by the next run of the same command. Where the
    pattern cannot reach, the output is accepted; the check also follows a selection back to its corpus."""
    from ._helpers import CLUSTER_ARGS, RESAMPLE_ARGS, TRAIN_ARGS

    monkeypatch.chdir(tmp_path)  # relative patterns, as typed in a shell
    write_corpus(tmp_path / "data" / "a.jsonl", 60)
    target = write_corpus(tmp_path / "tgt" / "t.jsonl", 20, seed=1, topics=("bio",))
    for out in ["data/emb", "data/_emb"]:  # `*` matches `_emb` (a folder's own reading would skip it)
        one_line_error(invoke(*EMBED_ARGS("data/*", out)), "could be matched by", f"{tmp_path}/data/*")
    ok(invoke(*EMBED_ARGS("data/*", "data/.emb")))  # `*` passes over hidden names, as the shell's does
    ok(invoke(*EMBED_ARGS("data/*.jsonl", "data/emb")))  # `emb` is not `*.jsonl`: out of its reach
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".emb", "a.jsonl", "emb"]
    ok(invoke(*CLUSTER_ARGS("data/emb", "clu")))
    one_line_error(invoke(*RESAMPLE_ARGS("data/emb", "clu", "tgt/*", "tgt/sel")), "could be matched by")
    one_line_error(invoke(*RESAMPLE_ARGS("data/emb", "clu", target, "data/x.jsonl")), "could be matched by")
    ok(invoke(*RESAMPLE_ARGS("data/emb", "clu", "tgt/*", "sel")))
    one_line_error(invoke(*TRAIN_ARGS("sel", "tgt/run")), "could be matched by", f"{tmp_path}/tgt/*")
    one_line_error(invoke("compare", "--generic", "data/**/*.jsonl", "--target", target, "--eval", target,
                          "--out", "data/deep/cmp", "--methods", "uniform"), "could be matched by")
    ok(invoke(*EMBED_ARGS("data/**/*.jsonl", "data/.cache/emb")))  # `**` passes over hidden names too
    assert not (tmp_path / "tgt" / "sel").exists() and not (tmp_path / "data" / "deep").exists()
    assert sorted(p.name for p in (tmp_path / "tgt").iterdir()) == ["t.jsonl"]


READER = textwrap.dedent('''
    import sys, time
    from impsamp.guards import hold_inputs
    hold_inputs(sys.argv[1])
    print("holding", flush=True)
    time.sleep(120)
''')


def test_a_stage_output_being_read_is_not_overwritten_and_one_being_written_is_not_read(tmp_path):
    """A review: `cluster --overwrite` of the clusters a resample was reading made a selection marked complete
    from half the old centroids and half the new (KL 1.43 from its target). A reader share-locks its inputs."""
    from impsamp.resampling import ResampleConfig
    from impsamp.resampling.inputs import open_inputs

    root = tmp_path
    corpus = write_corpus(root / "c.jsonl", 60)
    ok(invoke(*EMBED_ARGS(corpus, root / "emb")))
    ok(invoke("cluster", root / "emb", "--out", root / "clu", "--k", "3", "--no-progress"))
    reader = subprocess.Popen([sys.executable, "-c", READER, str(root / "clu")], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert reader.stdout.readline().strip() == "holding", reader.communicate()
        r = invoke("cluster", root / "emb", "--out", root / "clu", "--k", "3", "--seed", "9", "--overwrite",
                   "--no-progress")
        one_line_error(r, "being written by another process", "or read by one as its input")
        assert (root / "clu" / MANIFEST).is_file()  # untouched
    finally:
        reader.kill()
        reader.wait(timeout=30)
    writer = _holder(root / "busy")  # a stage writing its output: not read meanwhile
    try:
        with pytest.raises(StageError, match="busy is being written by another process; wait for it to end before"):
            guards.hold_inputs(root / "busy")
        open_inputs(root / "emb", root / "clu", ResampleConfig(docs=5))  # the others: read as ever, and held
        import os

        held = {(st.st_dev, st.st_ino) for st in (os.stat(root / "emb"), os.stat(root / "clu"))}
        assert held <= guards._mine()
    finally:
        writer.kill()
        writer.wait(timeout=30)
        for key in guards._mine():
            guards.release(key)


def test_two_threads_reading_one_input_keep_their_own_locks(tmp_path):
    """A second thread's read lock on a folder took over the first's entry: the first's lock then outlived it
    (never released), and its end released the second's."""
    import threading

    folder = tmp_path / "in"
    folder.mkdir()
    took, done = threading.Event(), threading.Event()
    theirs: set = set()

    def reader():
        guards.hold_inputs(folder)
        theirs.update(guards._mine())
        took.set()
        done.wait(10)
        for key in guards._mine():
            guards.release(key)

    t = threading.Thread(target=reader)
    t.start()
    took.wait(10)
    guards.hold_inputs(folder)
    mine = guards._mine()
    assert len(theirs) == 1 and len(mine) == 1 and not theirs & mine  # each thread its own
    for key in mine:
        guards.release(key)
    assert theirs <= set(guards._HELD)  # the other thread's lock is still held
    done.set()
    t.join(10)
    assert not theirs & set(guards._HELD)
