"""Where `scale.run_tasks` runs shard tasks in this machine: in order (commits on a thread beside the next task),
on threads, or in a pool of spawned processes that Ctrl-C stops at once and that end with their parent."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any


class InOrder:
    """Hands results to `done` in order; with `background`, each `done` runs on a thread while the next
    result is made (one in flight). `check()` raises a failed `done` at once (a stream calls it often)."""

    def __init__(self, done: Callable[[str, Any], None], background: bool) -> None:
        self.done, self.background, self.pending = done, background, None

    def check(self) -> None:
        if self.pending is not None and self.pending.done():
            self.pending.result()

    def run(self, results: Iterator[tuple[str, Any]]) -> None:
        if not self.background:
            for key, result in results:
                self.done(key, result)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="impsamp-commit") as committer:
            it = iter(results)
            while True:
                self.check()  # a failed commit stops the run before the next task, not one later
                try:
                    key, result = next(it)
                except StopIteration:
                    break
                if self.pending is not None:
                    self.pending.result()  # the previous one is committed (or its error raised) first
                self.pending = committer.submit(self.done, key, result)
            if self.pending is not None:
                self.pending.result()


def in_threads(fn: Callable[..., Any], calls: list[tuple[str, tuple[Any, ...]]],
                done: Callable[[str, Any], None], threads: int) -> None:
    """At most `threads` tasks at once (Arrow reads, takes and writes release the GIL), each followed by
    its `done` on the same thread; the first error cancels what has not started."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(min(threads, len(calls))) as pool:
        pending: set[Any] = set()
        try:
            for key, args in calls:
                pending.add(pool.submit(lambda key=key, args=args: done(key, fn(*args))))
                if len(pending) >= threads:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        f.result()
            for f in pending:
                f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def in_processes(fn: Callable[..., Any], calls: list[tuple[str, tuple[Any, ...]]],
                  done: Callable[[str, Any], None], processes: int) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(max_workers=min(processes, len(calls)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=pool_process_init, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(fn, *args): key for key, args in calls}
        for fut in as_completed(futures):
            done(futures[fut], fut.result())
    except BaseException:
        # Ctrl-C, a failed shard: stop the shards in flight now (what they wrote is temp files, which the next run
        # removes), not after every queued shard ran, and leave no process behind for the exit to wait on
        procs = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown, which drops them
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.terminate()
        raise
    pool.shutdown(wait=True)


def pool_process_init(parent: int, die_with_parent: bool = True) -> None:
    """A pool process leaves Ctrl-C to its parent, which stops the pool (a worker that caught it went on to its
    next shard), and on Linux ends with its parent (SIGTERM or SIGKILL of the run left the workers running).
    Linux sends that signal when the *thread* that started the process ends: `die_with_parent` only for a pool
    used and shut down by the thread that made it (`in_processes`), not one kept for later calls."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if die_with_parent and sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)
