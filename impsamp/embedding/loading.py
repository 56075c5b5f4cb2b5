"""`load_embedder`: the embedder a config names (hashing, torch or ONNX Runtime), on the device it resolves."""

from __future__ import annotations

from .._deps import require
from ..config import as_config
from ..errors import ConfigError, ImpsampError
from ..hardware import cpu_count
from .config import CPU_BATCH_TOKENS, GPU_BATCH_TOKENS, MAX_PREPARE_THREADS, EmbedConfig
from .contract import Embedder
from .hashing import HashingEmbedder
from .models import resolve_model
from .transformer import TorchEmbedder, TransformerEmbedder


def resolve_device(cfg: EmbedConfig) -> str:
    if cfg.backend == "onnx" and not cfg.model.startswith("hashing:"):
        ort = require("onnxruntime")
        has_gpu = "CUDAExecutionProvider" in ort.get_available_providers()
        if cfg.device == "cuda" and not has_gpu:
            raise ConfigError("--device cuda with --backend onnx needs onnxruntime-gpu (the CUDA execution "
                              "provider is not available here); use --device cpu or --backend torch")
        if cfg.quantize and cfg.device == "cuda":
            raise ConfigError("--quantize int8 runs on the CPU; use --device cpu (or auto)")
        return "cuda" if has_gpu and cfg.device != "cpu" and not cfg.quantize else "cpu"
    if cfg.device == "cpu" or (cfg.device == "auto" and cfg.model.startswith("hashing:")):
        return "cpu"
    try:
        torch = require("torch")
        has_gpu = bool(torch.cuda.is_available())
    except ImpsampError:
        has_gpu = False
    if cfg.device == "cuda" and not has_gpu:
        raise ConfigError("--device cuda: no CUDA GPU is available here (torch.cuda.is_available() is "
                          "False); use --device cpu or --device auto")
    return "cuda" if has_gpu else "cpu"


def load_embedder(config: EmbedConfig | None = None, *, threads: int | None = None) -> Embedder:
    """The embedder a config names: `hashing:DIM`, or a sentence-transformers model on torch or ONNX.

    Args:
        config: model, max_tokens, windows, backend, quantize, device and batch_tokens are used.
        threads: CPU threads for torch / ONNX Runtime (default: all cores).

    Raises:
        ConfigError: unknown model, `cuda` without a GPU, an ONNX-incompatible model, ...
    """
    cfg = as_config(EmbedConfig, config) or EmbedConfig()
    device = resolve_device(cfg)
    if cfg.model.startswith("hashing:"):
        dim = cfg.model.split(":", 1)[1]
        if not dim.isdigit():
            raise ConfigError(f"--model hashing:DIM needs an integer DIM, got {cfg.model!r}")
        return HashingEmbedder(int(dim), max_tokens=cfg.max_tokens, windows=cfg.windows)
    if cfg.precision == "float16" and device == "cpu":
        raise ConfigError("--precision float16 runs on GPU only and no GPU is in use; use bfloat16 or float32")
    resolved = resolve_model(cfg.model)
    batch_tokens = cfg.batch_tokens or (GPU_BATCH_TOKENS if device == "cuda" else CPU_BATCH_TOKENS[cfg.backend])
    threads = threads or cpu_count()
    embedder: TransformerEmbedder
    if cfg.backend == "onnx":
        from .onnx_backend import OnnxEmbedder  # (imports onnxruntime)

        embedder = OnnxEmbedder(resolved, max_tokens=cfg.max_tokens, windows=cfg.windows,
                                batch_tokens=batch_tokens, device=device, quantize=cfg.quantize,
                                threads=threads)
    else:
        embedder = TorchEmbedder(resolved, max_tokens=cfg.max_tokens, windows=cfg.windows,
                                 batch_tokens=batch_tokens, device=device, precision=cfg.precision,
                                 threads=threads)
    embedder.config = cfg
    if device == "cuda":  # one core runs the model's Python; the others tokenize
        embedder.prepare_threads = max(1, min(MAX_PREPARE_THREADS, threads - 1))
    return embedder


def embed_backend(backend: str) -> tuple[str, str | None]:
    """`auto` -> (backend, quantize): the fastest close-enough embedding on this machine (see
    `impsamp.comparison.CompareConfig.backend`); `torch` and `onnx` -> that backend in float32 (torch: its precision rule)."""
    if backend != "auto":
        return backend, None
    from .. import hardware

    if hardware.cpu_has_amx_bf16():
        return "torch", None
    try:
        import torch

        if torch.cuda.is_available():
            return "torch", None
    except ImportError:
        pass
    return "onnx", "int8"


def backend_label(backend: tuple[str, str | None]) -> str:
    """`onnx-int8`, `onnx`, `torch`: a backend choice in a folder name."""
    return "-".join(x for x in backend if x)
