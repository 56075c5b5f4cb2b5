"""Resumable checkpoints in safetensors: model weights, flattened optimizer state, a JSON state.

    checkpoints/ckpt-0-pretrain-00000250/   model.safetensors, optimizer.safetensors, state.json
    checkpoints/ckpt-1-finetune-00000040/

A checkpoint is written into `checkpoints/_tmp-*`, fsynced, then renamed into place (a directory
rename is atomic), so a killed run leaves either the old or the new checkpoint, never half of one.
Only the newest is kept. Nothing is ever loaded with pickle (`torch.load` is not used).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..manifest import fsync_dir, tmp_name
from .config import TrainError

PHASES = ("pretrain", "finetune")
CHECKPOINTS = "checkpoints"


def state_dict_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it (for the process)


def make_readable(path: Path) -> None:
    """safetensors writes its files 0600: give them the mode the process's other files get."""
    os.chmod(path, 0o666 & ~_UMASK)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Write the model's weights as safetensors, atomically."""
    tmp = tmp_name(path)
    save_file(state_dict_tensors(model), str(tmp), metadata={"format": "pt"})
    make_readable(tmp)
    _fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    state = load_file(str(path), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TrainError(f"{path} does not fit the model (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}); the run's config.json and weights disagree")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as {"state.<param>.<name>": tensor} plus the JSON-able rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in rest["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, Any]:
    """RNG states as JSON-able lists and ints (the trainer's batches do not depend on them)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state().tolist(), "numpy": None,
                             "python": _jsonable(random.getstate())}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the global RNG)
    state["numpy"] = [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    random.setstate(_tuples(state["python"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _jsonable(x: Any) -> Any:
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def checkpoint_name(phase: str, step: int) -> str:
    return f"ckpt-{PHASES.index(phase)}-{phase}-{step:08d}"


def save_checkpoint(run_dir: Path, phase: str, step: int, model: torch.nn.Module,
                    opt: torch.optim.Optimizer, state: dict[str, Any],
                    best: tuple[str, torch.nn.Module | Path] | None = None) -> Path:
    """Write checkpoint (phase, step) atomically and delete the older ones.

    `best`: (file name, weights) kept beside it: a model's weights, or a file (of the previous
    checkpoint) copied over."""
    root = run_dir / CHECKPOINTS
    final = root / checkpoint_name(phase, step)
    tmp = root / f"_tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state_dict_tensors(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tensors, rest = flatten_optimizer(opt)
    save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"format": "pt"})
    full = {"phase": phase, "step": step, "optimizer": rest, "rng": rng_state(), **state}
    (tmp / "state.json").write_text(json.dumps(full))
    if best is not None:
        name, weights = best
        if isinstance(weights, Path):
            shutil.copyfile(weights, tmp / name)
        else:
            save_file(state_dict_tensors(weights), str(tmp / name), metadata={"format": "pt"})
    for f in tmp.iterdir():
        _fsync_file(f)
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    for old in root.iterdir():
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.startswith("ckpt-") and (p / "state.json").exists())
    return done[-1] if done else None


def read_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "state.json").read_text())


def load_checkpoint(ckpt: Path, model: torch.nn.Module, opt: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore model (and optimizer) from `ckpt`; return its state.json (RNG states restored)."""
    state = read_state(ckpt)
    load_weights(model, ckpt / "model.safetensors")
    if opt is not None:
        opt.load_state_dict(unflatten_optimizer(load_file(str(ckpt / "optimizer.safetensors")),
                                                state["optimizer"]))
    set_rng_state(state["rng"])
    return state
