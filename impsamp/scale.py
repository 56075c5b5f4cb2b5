"""How a stage runs its shards: in this process, as Slurm-array slices, or as Ray tasks.

The shards of a stage are fixed by the data (DESIGN.md, "Scale"); where they run never changes the
output bytes. `Execution` says where, and is deliberately not part of a stage's config: it does not
enter the manifest nor the resume key, so slices, a Ray run and a plain run share one directory.

Slices (a Slurm array, `--num-shards N --shard-index I`): a slice processes only the shards whose
index i has i % N == I, commits each through the stage contract (`StageRun.commit_shard`) and stops
without writing manifest.json. `impsamp.finalize(out_dir)` (`impsamp finalize DIR`, in `finalizing`) checks that every shard
is committed and writes the manifest; rerunning the stage without the flags completes it as well.

Ray (`engine="ray"`): each shard runs as a Ray task (`ray.remote`); a task writes its payload under
temp names (`.name.tmp-PID`, unique per process, so a retried task never writes over another
attempt's files) and returns their paths, and the driver commits them through the same `StageRun`.
A commit is idempotent: a shard that already has a record is not committed twice (the duplicate's
temp files are deleted). The output directory must be on a filesystem that every Ray node sees.
A task argument may be `Upstream(fn, args)`: a CPU-only task run first, whose result Ray hands to the
task (embed's `--tokenize-tasks`: a shard tokenized anywhere, its ids fed to a GPU task). Tasks are
submitted a window at a time (twice the cluster's CPUs) so that results do not pile up.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, ImpsampError, StageError, keeping_output
from .manifest import StageRun
from .pools import InOrder, in_processes, in_threads

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
MAX_RETRIES = 3
"""Ray retries of a task whose worker died (the shard is recomputed from scratch)."""
TEST_CRASH_ENV = "IMPSAMP_TEST_CRASH_ONCE"
"""Test-only hook: a marker-file path; the first Ray task to start creates it and kills its worker
process (os._exit), so a test can check that Ray's retry ends with the same output. Never set it
otherwise."""


@dataclass(frozen=True)
class Execution:
    """Where the shards of a stage run. Never part of the config: the output bytes do not depend on it."""

    engine: str = "local"
    """`local` (this process, or `--workers` local processes for embed) or `ray` (Ray tasks)."""
    ray_address: str | None = None
    """Address of a running Ray cluster (`auto`, `ray://host:10001`, ...); default: start a local one."""
    num_shards: int | None = None
    """Slice count of a Slurm-array style run (with `shard_index`)."""
    shard_index: int | None = None
    """This slice: it processes the shards with index % num_shards == shard_index."""
    gpus_per_worker: float = 1.0
    """Ray, embed on cuda: GPUs each embedding task requests (0.5 = two replicas per GPU)."""
    num_cpus: int | None = None
    """CPUs of a local Ray started here [default: all of this machine's]."""
    tokenize_tasks: bool = False
    """Ray, embed: tokenize each shard in a CPU-only task of its own, whose token ids Ray hands to the
    task that runs the model: a GPU is then fed by every CPU of the cluster, not only its own host's."""
    require_complete: bool = False
    """Finalize: process no shard; refuse unless every shard is committed."""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if self.ray_address is not None and self.engine != "ray":
            raise ConfigError("--ray-address needs --engine ray")
        if self.tokenize_tasks and self.engine != "ray":
            raise ConfigError("--tokenize-tasks needs --engine ray (locally, --tokenize-processes N "
                              "tokenizes in N processes)")
        if (self.num_shards is None) != (self.shard_index is None):
            raise ConfigError("--num-shards and --shard-index go together (a Slurm array: "
                              "--num-shards N --shard-index $SLURM_ARRAY_TASK_ID)")
        if self.num_shards is not None:
            n = self.num_shards
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"--num-shards must be an integer >= 1, got {self.num_shards!r}")
            if (isinstance(self.shard_index, bool) or not isinstance(self.shard_index, int)
                    or not 0 <= self.shard_index < self.num_shards):
                raise ConfigError(f"--shard-index must be in 0..{self.num_shards - 1} (--num-shards "
                                  f"{self.num_shards}), got {self.shard_index!r}")
        if not isinstance(self.gpus_per_worker, (int, float)) or not 0 < self.gpus_per_worker <= 1_000:
            raise ConfigError(f"--gpus-per-worker must be > 0 (0.5 runs two replicas per GPU), got "
                              f"{self.gpus_per_worker!r}")

    @property
    def sliced(self) -> bool:
        return self.num_shards is not None

    @property
    def slice_name(self) -> str | None:
        """This slice as "3-of-16" (None: not a slice); its lock file in the folder bears it (`guards.hold_slice`)."""
        return None if self.num_shards is None else f"{self.shard_index}-of-{self.num_shards}"

    def in_workers(self, processes: int, tasks: int) -> bool:
        """Whether `run_tasks` runs these tasks outside this process (Ray tasks, or a process pool): their
        arguments must then pickle."""
        return self.engine == "ray" or (processes > 1 and tasks > 1)

    def mine(self, index: int) -> bool:
        """Whether this run processes the shard with this index."""
        if self.require_complete:
            return False
        return not self.sliced or index % self.num_shards == self.shard_index  # type: ignore[operator]


LOCAL = Execution()


@dataclass(frozen=True)
class SliceResult:
    """What a slice run did: it committed its shards and left the manifest to `finalize`."""

    out_dir: Path
    stage: str
    num_shards: int
    shard_index: int
    committed: int
    """Shards this slice committed now."""
    done: int
    """Shards committed by all slices so far."""
    total: int

    def summary(self) -> str:
        left = self.total - self.done
        nxt = (f"run `impsamp finalize {self.out_dir}` to write the manifest" if left == 0 else
               f"{left} left to the other slices; then `impsamp finalize {self.out_dir}`")
        return (f"slice {self.shard_index}/{self.num_shards}: committed {self.committed} shard(s); "
                f"{self.done} of {self.total} done in {self.out_dir}; {nxt}")


def slice_result(run: StageRun, execution: Execution, committed: int, names: Sequence[str]) -> SliceResult:
    done = sum(run.is_done(n) for n in names)
    return SliceResult(run.out_dir, run.stage, int(execution.num_shards or 1),
                       int(execution.shard_index or 0), committed, done, len(names))


def check_complete(run: StageRun, names: Sequence[str]) -> None:
    """Raise a one-line StageError unless every shard in `names` is committed (finalize)."""
    missing = [n for n in names if not run.is_done(n)]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise StageError(f"{run.out_dir}: {len(missing)} of {len(names)} shard(s) are missing ({shown}); run "
                         f"the remaining --shard-index slices, or rerun `impsamp {run.stage}` without "
                         "--num-shards to complete it")


def commit_once(run: StageRun, shard: str, files: Mapping[str, Path], **kwargs: Any) -> bool:
    """Commit a shard unless it already has a record (a duplicated task); returns whether it committed."""
    if run.is_done(shard):
        for tmp in files.values():
            Path(tmp).unlink(missing_ok=True)
        return False
    run.commit_shard(shard, files, **kwargs)
    return True


# ----------------------------------------------------------------------------- the executor


def run_tasks(execution: Execution, fn: Callable[..., Any], tasks: Sequence[tuple[str, tuple[Any, ...]]],
              done: Callable[[str, Any], None], *, shared: Mapping[str, Any] | None = None, threads: int = 1,
              processes: int = 0, stream: Callable[[Callable[[], None]], Iterator[tuple[str, Any]]] | None = None,
              done_in_background: bool = False, num_cpus: float | None = 1, num_gpus: float = 0) -> None:
    """Run a stage's shard tasks where `execution` says, and hand each result to `done(key, result)` in
    this process, which commits it through the stage contract. The one place that decides how shards
    run: no stage branches on the engine.

    Every task is `fn(*args)`; an argument `Shared(name)` stands for `shared[name]` (put in Ray's object
    store once). `fn` writes its files under this process's temp names (`manifest.tmp_name`) and
    returns what `done` commits, so its result is the same wherever it ran.

    - Ray (`engine="ray"`): Ray tasks with `num_cpus` / `num_gpus` each (see `run_ray`).
    - Here, `processes` > 1: a pool of spawned processes (torch and threads do not survive fork).
    - Here, `stream` given: `stream(check)` yields (key, result) itself, e.g. a model that reads ahead
      across shards, calling `check()` often (it raises a failed background `done` at once); `fn` is
      not used.
    - Here, otherwise: `threads` threads (each task's `done` on its own thread: commits are
      independent), or one after another.
    With `done_in_background` (one thread here, a stream, or one after another), each `done` runs on a
    thread while the next task runs, one in flight: memory stays bounded and commits stay in order.
    Slices (`num_shards`) choose their tasks before: `execution.mine(i)`.
    """
    if not tasks:
        return
    if execution.engine == "ray":
        run_ray(execution, fn, tasks, done, num_cpus=num_cpus, num_gpus=num_gpus, shared=shared)
        return
    values = dict(shared or {})
    calls = [(key, tuple(_in_place(a, values) for a in args)) for key, args in tasks]
    if stream is not None:
        order = InOrder(done, done_in_background)
        order.run(stream(order.check))
    elif execution.in_workers(processes, len(calls)):
        in_processes(fn, calls, done, processes)
    elif threads > 1 and len(calls) > 1:
        in_threads(fn, calls, done, threads)
    else:
        InOrder(done, done_in_background).run((key, fn(*args)) for key, args in calls)


def _in_place(arg: Any, values: Mapping[str, Any]) -> Any:
    """A task argument's value here: `Shared` looked up, `Upstream` computed."""
    if isinstance(arg, Shared):
        return values[arg.name]
    if isinstance(arg, Upstream):
        return arg.fn(*(_in_place(a, values) for a in arg.args))
    return arg


# ----------------------------------------------------------------------------- Ray


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'ray>=2.9' (or pip install "
                          "'impsamp[ray]')") from None
    return ray


@contextlib.contextmanager
def ray_session(execution: Execution) -> Iterator[Any]:
    """Connect to Ray (the address given, an already initialised Ray, or a new local one we shut down)."""
    ray = _ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False,
                                  "logging_level": logging.WARNING}
        address = execution.ray_address or os.environ.get("RAY_ADDRESS")  # `ray job submit` sets the latter
        if address:
            check_reachable(address)
            kwargs["address"] = address
        else:  # a Ray of our own, even where `ray start` runs one on this machine (else ray.init joins that)
            from .hardware import cpu_count

            kwargs.update(address="local", num_cpus=execution.num_cpus or cpu_count())
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = execution.ray_address or "a local cluster"
            raise ConfigError(f"--engine ray: cannot start or reach Ray at {where} "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A `host:port` (or `ray://host:port`) that nothing answers at for `timeout` seconds is one line (Ray itself
    retries for minutes, printing only its own warnings); `auto` and other forms are Ray's to judge. Tried again
    until then: a head node started a moment ago may not listen yet."""
    import re
    import socket
    import time

    m = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)", address.strip())
    if not m:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((m.group(1), int(m.group(2))), timeout=max(0.1, deadline - time.monotonic())).close()
            return
        except (OSError, ValueError) as e:
            unknown_host = isinstance(e, (socket.gaierror, ValueError))
            if unknown_host or time.monotonic() + 0.5 >= deadline:
                raise ConfigError(f"--ray-address {address}: nothing answers there ({getattr(e, 'strerror', None) or e}); "
                                  "give the head node's address and port (`ray start --head` prints it), or `auto` "
                                  "on a node of the cluster") from None
        time.sleep(0.5)


@contextlib.contextmanager
def engine_session(execution: Execution) -> Iterator[None]:
    """Around a stage's several passes: with Ray, one session (connected, or a local Ray started once
    and stopped at the end) that every `run_tasks` call inside reuses; nothing for the other engines."""
    if execution.engine != "ray":
        yield
        return
    with ray_session(execution):
        yield


def _crash_once(marker: str | None) -> None:
    """Test-only (TEST_CRASH_ENV): the first task to get here kills its own worker process."""
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


def _task(fn: Callable[..., Any], marker: str | None, *args: Any) -> Any:
    _crash_once(marker)
    return fn(*args)


def run_ray(execution: Execution, fn: Callable[..., Any], tasks: Sequence[tuple[Any, tuple[Any, ...]]],
            on_result: Callable[[Any, Any], None], *, num_cpus: float | None = 1, num_gpus: float = 0,
            shared: Mapping[str, Any] | None = None) -> None:
    """Run `fn(*args)` for every (key, args) as Ray tasks; `on_result(key, result)` in the driver as each
    ends.

    `num_cpus=None` with `num_gpus` asks for the GPUs' share of their node's CPUs (`gpu_task_cpus`): a
    task that feeds a GPU from host threads then gets the cores it uses, and GPU tasks on one node do
    not oversubscribe it. `shared` values are put in the object store once; an argument equal to
    `Shared(name)` is replaced by the reference (Ray resolves it to the value in the task). A library
    error raised in a task is re-raised here as itself (one line for the CLI), not wrapped in Ray's
    traceback.
    """
    with ray_session(execution) as ray:
        refs = {name: ray.put(value) for name, value in (shared or {}).items()}
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if num_cpus is None:
            num_cpus = gpu_task_cpus(nodes, num_gpus)
        # a task asking for more CPUs than any node has would wait forever
        largest = max((r.get("CPU", 0) for r in nodes), default=1)
        num_cpus = max(min(num_cpus, largest), 0.001) if largest else num_cpus
        remote = ray.remote(_task).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=MAX_RETRIES)
        upstream = ray.remote(_task)
        marker = os.environ.get(TEST_CRASH_ENV) or None

        upstream_refs: list[Any] = []  # cancelled with the tasks if the run fails

        def arg(a: Any) -> Any:
            if isinstance(a, Shared):
                return refs[a.name]
            if isinstance(a, Upstream):  # its result goes from its node to the task's, not through here
                ref = upstream.options(num_cpus=a.num_cpus, num_gpus=0, max_retries=MAX_RETRIES).remote(
                    a.fn, None, *(arg(b) for b in a.args))
                upstream_refs.append(ref)
                return ref
            return a

        # at most `window` tasks in flight: the CPUs stay busy, and what tasks made (upstream token ids
        # ahead of slower model tasks, shards' n-gram matrices the driver writes) does not pile up in the
        # object store (sized by the CPUs up at the start: an autoscaling cluster's later nodes do not widen it)
        window = max(8, 2 * int(sum(r.get("CPU", 0) for r in nodes)))
        todo = iter(tasks)
        pending: dict[Any, Any] = {}
        try:
            for key, args in itertools.islice(todo, window):
                pending[remote.remote(fn, marker, *(arg(a) for a in args))] = key
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    key = pending.pop(ref)
                    on_result(key, _get(ray, ref, key))
                    for key, args in itertools.islice(todo, 1):
                        pending[remote.remote(fn, marker, *(arg(a) for a in args))] = key
        except BaseException:
            for ref in [*pending, *upstream_refs]:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise


def gpu_task_cpus(nodes: Sequence[Mapping[str, float]], num_gpus: float) -> int:
    """Whole CPUs for a task holding `num_gpus` GPUs: that share of a GPU node's CPUs, the smallest over
    the nodes that can hold the task (so the share fits on each), at least 1; 1 when none is up (an
    autoscaling cluster). `nodes`: the alive nodes' Ray resources."""
    shares = [r.get("CPU", 0) * num_gpus / r["GPU"] for r in nodes if r.get("GPU", 0) >= num_gpus > 0]
    return max(1, int(min(shares))) if shares else 1


def task_cpus(default: int) -> int:
    """Whole CPUs that Ray assigned to the running task; `default` outside a Ray task."""
    ray = sys.modules.get("ray")  # a Ray worker has imported it; elsewhere there is no task
    if ray is None or not ray.is_initialized():
        return default
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 - the driver, or an older Ray: no assignment to read
        return default
    return max(1, int(cpus)) if cpus else default


@dataclass(frozen=True)
class Shared:
    """A placeholder argument of `run_ray`: the value put once in the object store under `name`."""

    name: str


@dataclass(frozen=True)
class Upstream:
    """A task argument that is the result of `fn(*args)` run first as a Ray task of its own, on
    `num_cpus` CPUs and no GPU (e.g. a shard tokenized on any node for a task that holds a GPU); Ray
    passes the result between the nodes. Outside Ray it is computed in place. `args` may hold `Shared`."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    num_cpus: float = 1


def _get(ray: Any, ref: Any, key: Any) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, (ImpsampError, OSError, MemoryError)):
            raise cause from None
        if not isinstance(cause, ray.exceptions.RayError):  # a bug: its traceback is wanted
            raise
        failure = cause  # an upstream task's worker or node died past its retries
    except ray.exceptions.RayError as e:  # the worker or node died more often than max_retries, ...
        failure = e
    first = (str(failure).strip().splitlines() or [""])[0][:200]
    raise keeping_output(StageError(
        f"the Ray task of shard {key} failed after {MAX_RETRIES} retries ({type(failure).__name__}: "
        f"{first}); the shards committed so far are kept: rerun the same command to resume")) from None


__all__ = ["ENGINES", "LOCAL", "Execution", "SliceResult", "check_complete", "commit_once", "run_tasks",
           "ray_session", "engine_session", "run_ray", "check_reachable"]
