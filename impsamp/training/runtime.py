"""Where training runs: device and dtype choice, `torchrun` (DDP) setup, a memory estimate.

    rt = Runtime.start(cfg)     # reads RANK/WORLD_SIZE/LOCAL_RANK set by torchrun
    with rt.autocast():
        loss = model(x, y)
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch

from .config import PRESETS, ModelConfig, TrainConfig, TrainError

GIB = 1 << 30


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype
    """Autocast dtype (float32 means no autocast)."""
    compile: bool
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, cfg: TrainConfig) -> Runtime:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(cfg.device, local_rank if world > 1 else None)
        dtype = resolve_dtype(cfg.dtype, device)
        compile_ = device.type == "cuda" if cfg.compile is None else cfg.compile
        rt = cls(device, dtype, compile_, rank, local_rank, world)
        if world > 1:
            import torch.distributed as dist

            if device.type == "cuda":
                torch.cuda.set_device(device)
            if not dist.is_initialized():
                # Long timeout: rank 0 trains the tokenizer and tokenizes while the others wait.
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                        timeout=datetime.timedelta(hours=4))
                rt.owns_group = True
        return rt

    def barrier(self) -> None:
        if self.ddp:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a barrier too); `obj` itself in a single process."""
        if not self.ddp:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def seed(self, seed: int) -> None:
        """Seed torch and the global Python and NumPy RNGs (checkpoints record them: one seed, one
        checkpoint's bytes); TF32 matmuls on CUDA."""
        import random

        import numpy as np

        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002

    def wrap(self, model: torch.nn.Module, *, find_unused_parameters: bool = False) -> torch.nn.Module:
        """What the training step calls: the model, compiled and/or in DDP as this run asks."""
        fwd: torch.nn.Module = torch.compile(model) if self.compile else model
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            fwd = DDP(fwd, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                      find_unused_parameters=find_unused_parameters)
        return fwd

    def check_replicas(self, model: torch.nn.Module, phase: str) -> None:
        """Under DDP every rank must end a phase with the same weights (averaged gradients, same
        optimizer): compare a float64 checksum per parameter across ranks, refuse to go on if not."""
        if not self.ddp:
            return
        import torch.distributed as dist

        with torch.no_grad():
            hi = torch.stack([p.double().sum() for p in model.parameters()])
        lo = hi.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        if not torch.equal(hi, lo):
            raise TrainError(f"the {self.world} DDP replicas disagree after {phase} (seen by rank "
                             f"{self.rank}): their gradients were not averaged (a bug: please report it)")

    def mean(self, t: torch.Tensor) -> float:
        """A scalar averaged over the ranks (itself without DDP)."""
        if self.ddp:
            import torch.distributed as dist

            t = t.detach().clone()
            dist.all_reduce(t)
            t /= self.world
        return float(t)

    def close(self, *, finished: bool = False) -> None:
        """Leave the process group. A finished run first waits for every rank (`finished`): a rank that tore
        its gloo group down while another still used it aborted now and then ("terminate called without an
        active exception", once in ~10 runs of the suite beside another). A failed run does not wait: the
        others may be gone."""
        if self.owns_group:
            import torch.distributed as dist

            if finished:
                with contextlib.suppress(Exception):  # a rank that failed is reported by itself (torchrun)
                    dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    from .config import check_device

    check_device(name)  # a name torch does not know: one line, not torch's RuntimeError
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(f"--device {name}: no CUDA GPU is visible to torch {torch.__version__} "
                             "(torch.cuda.is_available() is False); use --device cpu or --device auto")
        if name == "cuda":
            if (local_rank or 0) >= torch.cuda.device_count():
                raise TrainError(f"torchrun started local rank {local_rank} but only "
                                 f"{torch.cuda.device_count()} GPU(s) are visible on this node; start at "
                                 "most one process per GPU (--nproc_per_node)")
            return torch.device("cuda", local_rank or 0)
        if local_rank is not None:
            raise TrainError(f"--device {name} under torchrun would put every process on one GPU; pass "
                             "--device cuda (or auto): each process takes the GPU of its LOCAL_RANK")
        index = int(name.split(":")[1])
        if index >= torch.cuda.device_count():
            raise TrainError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible")
        return torch.device(name)
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainError("--device mps: Apple MPS is not available here; use --device cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu":
            from ..hardware import cpu_has_bf16_matmul

            # AMX tiles: ~1.25x less CPU time per step for the tiny preset (Xeon with AMX); AVX512-BF16:
            # ~1.4x less for a tiny fine-tuning run (AMD EPYC Zen 4); float32 on CPUs without either
            return torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


# ----------------------------------------------------------------------------- memory


def estimate_memory(m: ModelConfig, batch_size: int, act_bytes: int) -> int:
    """Bytes one process needs to train `m` with `batch_size` sequences of `m.block_size` tokens.

    fp32 weights, gradients and two AdamW moments (16 bytes per parameter), plus saved activations
    per layer and token, (9 * n_embd + 5 * mlp_hidden) values in the autocast dtype and two fp32
    residual copies (flash/SDPA attention saves no T x T matrix), plus the logits (autocast copy,
    fp32 copy and its gradient), plus 10% and 512 MiB for the allocator and kernels' workspaces.
    """
    tokens = batch_size * m.block_size
    states = 16 * m.n_params()
    acts = m.n_layer * tokens * ((9 * m.n_embd + 5 * m.mlp_hidden) * act_bytes + 8 * m.n_embd)
    logits = tokens * m.vocab_size * (act_bytes + 8)
    return int(1.1 * (states + acts + logits)) + 512 * (1 << 20)


def free_memory(device: torch.device) -> int | None:
    """Free bytes on `device` (CUDA: mem_get_info; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        with contextlib.suppress(OSError, ValueError, StopIteration):
            with open("/proc/meminfo") as f:
                line = next(li for li in f if li.startswith("MemAvailable:"))
            return int(line.split()[1]) * 1024
    return None


def check_memory(cfg: TrainConfig, m: ModelConfig, rt: Runtime, free: int | None = None) -> None:
    """Refuse a model/batch that cannot fit, saying what would."""
    free = free_memory(rt.device) if free is None else free
    if free is None:
        return
    act = 2 if rt.dtype == torch.bfloat16 else 4
    batch = cfg.resolved("batch_size")
    need = estimate_memory(m, batch, act)
    if need <= free:
        return
    per_seq = estimate_memory(m, 2, act) - estimate_memory(m, 1, act)
    fits = int((free - estimate_memory(m, 1, act)) // per_seq) + 1 if per_seq else 0
    where = f"{rt.device} has {free / GIB:.1f} GiB free"
    if fits >= 1:
        hint = (f"--batch-size {fits} fits (raise --grad-accum to {-(-batch * cfg.grad_accum // fits)} "
                "to keep the tokens per step)")
    else:
        ok = [name for name, p in PRESETS.items() if estimate_memory(
              ModelConfig(p["vocab_size"], p["n_layer"], p["n_embd"], p["n_head"], p["mlp_hidden"],
                          p["block_size"]), 1, act) <= free]
        hint = f"even one sequence does not fit; presets that fit: {', '.join(ok) or 'none'}"
    raise TrainError(f"the model ({m.n_params() / 1e6:,.0f}M parameters) with --batch-size {batch} needs "
                     f"about {need / GIB:.1f} GiB but {where}: {hint}")
