"""The ONNX Runtime backend of `embed`: export a model's transformer once, run it without PyTorch.

    impsamp embed CORPUS --out runs/emb --backend onnx                 # float32, same vectors as torch
    impsamp embed CORPUS --out runs/emb --backend onnx --quantize int8 # dynamic int8, ~3x faster on CPU

The Hugging Face transformer of a sentence-transformers model is exported with `torch.onnx.export`
(the TorchScript exporter, eager attention, dynamic batch and sequence axes), its attention, LayerNorm
and GELU subgraphs are fused into ONNX Runtime's contrib ops for BERT-like models (the optimizer's
portable Python fusions only), and the result goes to impsamp's user cache (`impsamp.config.cache_dir`)
under `onnx/<weights sha256>-v<recipe>/` (`model.onnx`, `model-int8.onnx`, `export.json`). The folder
is built under a temporary name and renamed, each later file is written to a temporary name and
renamed, so a crash or a concurrent run never leaves a half-written model. Every graph is checked
against PyTorch (on another shape than the trace's, with padding) before it is kept; the int8 model is
compared with float32 on a few probe sentences once (a warning below cosine 0.98). The tokenizer that
transformers builds is cached beside (`model_tokenizer`), so that once both are cached, embedding needs
neither torch nor transformers: a new target costs ~0.7 s before its first document, not ~4 s.

Pooling (mean, CLS or max, read from the model's Pooling config) and L2 normalisation run in numpy
on the transformer's last hidden state; tokenization uses the model's fast tokenizer, exactly as
the torch backend does. Models with other modules after pooling (e.g. Dense) need `--backend torch`.
On CPU two sessions run alternate batches side by side, each with half the threads (`CPU_SESSIONS`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..config import cache_dir
from ..errors import ConfigError, ImpsampError, StageError
from ..manifest import sha256_file, tmp_name
from ..usercache import LEFTOVER_SECONDS, Hold, touch
from .config import CPU_CALLERS
from .contract import EmbeddedBatch, l2_normalize
from .models import ResolvedModel
from .transformer import TransformerEmbedder, quiet_transformers

logger = logging.getLogger(__name__)

EXPORT_RECIPE = 3
"""Bump when the export or quantization recipe changes: old cache entries are then ignored."""
OPSET = 17
TOOLCHAIN = (("torch",), ("transformers",), ("onnx",), ("onnxruntime", "onnxruntime-gpu"))
"""What makes the cached file (export, fusion, quantization): its versions name the cache entry, so that an
upgrade exports again instead of reusing a file another version made."""
_UNSUPPORTED = ("{name}: the onnx backend runs Transformer + Pooling (mean, cls or max) (+ Normalize) "
                "models; this one has other modules or pooling; use --backend torch")
_PROBE = ["The cat sat on the mat.", "Quarterly revenue rose 4% on strong cloud demand.",
          "def add(a, b):\n    return a + b", "Thou shalt not kill.",
          "The protein folds into a beta sheet within microseconds."]


def onnx_model_path(resolved: ResolvedModel, quantize: str | None = None) -> tuple[Path, Hold]:
    """The cached ONNX file of a model (exported, and quantized, on first use), and a hold on its cache
    folder: `impsamp cache --clear` leaves the folder until the caller releases it (its sessions loaded)."""
    folder = cache_dir() / "onnx" / f"{resolved.weights_sha256[:32]}-v{EXPORT_RECIPE}-{toolchain()}"
    fp32 = folder / "model.onnx"
    for _ in range(3):  # a clear that removes the folder between its export and the hold: export again
        if not fp32.is_file():
            _export(resolved, folder)
        hold = Hold(folder, wait=True)  # waits out a cache clear deciding on it (it holds it exclusive)
        if hold.held and fp32.is_file():
            break
        hold.release()
    else:
        raise StageError(f"{folder}: the exported model keeps being removed (`impsamp cache --clear` running "
                         "in a loop?); rerun when it is not")
    int8 = folder / "model-int8.onnx"
    _remove_killed_quantizes(int8)
    if quantize != "int8":
        return fp32, hold
    try:
        if not int8.is_file():
            _quantize(fp32, int8)
    except BaseException:
        hold.release()
        raise
    return int8, hold


def toolchain() -> str:
    """A short digest of the installed `TOOLCHAIN` versions."""
    versions = []
    for dists in TOOLCHAIN:  # a library's first installed distribution (onnxruntime or onnxruntime-gpu)
        found = "none"
        for dist in dists:
            try:
                found = f"{dist}={importlib.metadata.version(dist)}"
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        versions.append(f"{dists[0]}:{found}")
    return hashlib.sha256(";".join(versions).encode()).hexdigest()[:12]


def _wrap(model: Any, bias_mask: bool) -> Any:
    """The transformer as (input_ids, attention_mask) -> last hidden state, for the exporter.

    With `bias_mask` the mask is passed as a 4-D additive bias (no mask-building code in the graph),
    the fallback for models whose own mask code does not trace into a shape-generic graph.
    """
    torch = require("torch")

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):  # (B, T) int64 each -> (B, T, H)
            if bias_mask:
                keep = attention_mask.unsqueeze(1).unsqueeze(2).to(torch.float32)  # (B, 1, 1, T)
                attention_mask = (1.0 - keep) * torch.finfo(torch.float32).min
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHiddenState().eval()  # eval: the exporter restores the wrapper's mode on the model


def _export(resolved: ResolvedModel, folder: Path) -> None:
    """Export, check against PyTorch, fuse with ONNX Runtime's transformer optimizer, commit atomically."""
    if resolved.pooling is None:
        raise ConfigError(_UNSUPPORTED.format(name=resolved.name))
    torch = require("torch")
    transformers = require("transformers")
    quiet_transformers()
    folder.parent.mkdir(parents=True, exist_ok=True)
    logger.warning("exporting %s to ONNX once (cached in %s)", resolved.name, folder)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=folder.parent))
    try:
        model = transformers.AutoModel.from_pretrained(str(resolved.transformer_folder),
                                                       attn_implementation="eager").eval()
        raw = tmp / "raw.onnx"
        for bias_mask in (False, True):  # the model's own mask first: the optimizer fuses its attention
            wrapper = _wrap(model, bias_mask)
            _torch_export(wrapper, raw)
            diff = _max_diff(wrapper, raw)
            if diff < 1e-3:
                break
        else:
            raise ImpsampError(f"the ONNX export of {resolved.name} does not match PyTorch (max difference "
                               f"{diff:.3g}); use --backend torch for this model")
        fused = _fuse(raw, tmp / "fused.onnx", model.config)
        fused_diff = _max_diff(wrapper, tmp / "fused.onnx") if fused else None
        if fused_diff is not None and fused_diff < 1e-3:
            os.replace(tmp / "fused.onnx", tmp / "model.onnx")
            raw.unlink()
        else:
            os.replace(raw, tmp / "model.onnx")
            (tmp / "fused.onnx").unlink(missing_ok=True)
            fused = None
        meta = {"model": resolved.name, "weights_sha256": resolved.weights_sha256, "recipe": EXPORT_RECIPE,
                "opset": OPSET, "torch": torch.__version__, "transformers": transformers.__version__,
                "mask": "bias" if bias_mask else "model", "fused_operators": fused,
                "check_max_abs_diff": fused_diff if fused else diff}
        (tmp / "export.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, folder)  # atomic; fails if another process got there first
        except OSError:
            if not (folder / "model.onnx").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _torch_export(wrapper: Any, path: Path) -> None:
    torch = require("torch")
    ids = torch.full((2, 16), 1000, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "last_hidden_state": {0: "batch", 1: "seq"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)


_FUSABLE = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra"}


def _fuse(raw: Path, out: Path, config: Any) -> dict[str, int] | None:
    """Fuse attention, LayerNorm and GELU subgraphs into ONNX Runtime's contrib ops (BERT-like models).

    Only the optimizer's Python fusions run here (opt_level=0): the file stays portable across
    machines and execution providers; the session applies its own optimizations when it loads.
    Residual adds and LayerNorm stay separate ops (no SkipLayerNormalization, here nor in the session):
    ONNX Runtime's CPU SkipLayerNormalization kernel took ~3x the time of Add + LayerNormalization
    (all-MiniLM-L6-v2, 32 x 128 tokens, onnxruntime 1.32: int8 135 -> 171 docs/s, float32 68 -> 73).
    """
    if getattr(config, "model_type", None) not in _FUSABLE:
        return None
    try:
        optimizer = require("onnxruntime.transformers.optimizer")
        fusion_options = require("onnxruntime.transformers.fusion_options")
        options = fusion_options.FusionOptions("bert")
        options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
        heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0)
        hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
        with warnings.catch_warnings(), _root_logging_off():
            warnings.simplefilter("ignore")
            fused = optimizer.optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=hidden,
                                             opt_level=0, optimization_options=options)
            fused.save_model_to_file(str(out))
        return {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
    except Exception as e:  # noqa: BLE001 - an optional speed-up: fall back to the plain graph
        logger.info("onnxruntime transformer optimizer failed (%s); using the unfused graph", e)
        return None


def _session(path: Path, threads: int | None, device: str = "cpu") -> Any:
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = threads
    # Idle pool threads sleep instead of spinning: each op here runs for milliseconds, so waking costs
    # little, while spinning threads steal the cores from their peers on a shared machine (1.2-1.7x
    # slower medians measured on the 2-core dev box under load). IMPSAMP_ORT_SPIN=1 lets them spin
    # (ONNX Runtime's own default), which can be faster on a machine nothing else uses.
    spin = os.environ.get("IMPSAMP_ORT_SPIN", "0") == "1"
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), so, providers=providers,
                                disabled_optimizers=_CPU_DISABLED_FUSIONS if device == "cpu" else [])


CPU_SESSIONS = CPU_CALLERS
"""ONNX Runtime sessions an `OnnxEmbedder` runs side by side on CPU (given at least 2 threads)."""
_CPU_DISABLED_FUSIONS = ["SkipLayerNormFusion"]
"""Session fusions left out on CPU: SkipLayerNormalization is slower there than what it replaces (see
`_fuse`); a CUDA session fuses it again."""


def _max_diff(wrapper: Any, path: Path) -> float:
    """Largest difference between PyTorch and the exported graph, on a batch of another shape than the
    trace's and with padding (only unpadded positions count)."""
    torch = require("torch")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (3, 37), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    mask[2, 5:] = 0
    with torch.no_grad():
        want = wrapper(ids, mask).numpy()
    try:
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        got = _session(path, threads=None).run(None, feeds)[0]
    except Exception as e:  # noqa: BLE001 - a graph ONNX Runtime cannot run is a failed export
        logger.info("the exported graph %s does not run: %s", path.name, e)
        return float("inf")
    valid = mask.numpy().astype(bool)
    return float(np.abs(got - want)[valid].max()) if got.shape == want.shape else float("inf")


@contextlib.contextmanager
def _root_logging_off() -> Iterator[None]:
    """onnxruntime.quantization logs through the root logger (INFO per node, a WARNING per call)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _remove_killed_quantizes(int8: Path) -> None:
    """The scratch folders of quantizes killed over a day ago (a live one's is younger): they would stay inside
    the cache entry, as large as the model, until the whole entry is cleared."""
    for old in int8.parent.glob(f".tmp-{int8.stem}-*"):
        with contextlib.suppress(OSError):
            if time.time() - old.lstat().st_mtime > LEFTOVER_SECONDS:
                shutil.rmtree(old)


def _quantize(fp32: Path, int8: Path) -> None:
    onnx = require("onnx")
    quantization = require("onnxruntime.quantization")
    logger.warning("quantizing %s to int8 once (cached)", fp32)
    # ONNX Runtime writes a scratch `<input>-inferred.onnx` beside its input and deletes it: two processes
    # quantizing the same cached model would share (and delete) one scratch file. Each run quantizes a
    # link to the model inside a folder of its own and renames the result into place.
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{int8.stem}-", dir=int8.parent))
    try:
        source = tmp / fp32.name
        try:
            os.link(fp32, source)
        except OSError:  # a file system without hard links
            shutil.copyfile(fp32, source)
        with warnings.catch_warnings(), _root_logging_off():
            warnings.simplefilter("ignore")
            # Weights of the MatMul and fused Attention nodes, one scale per output channel (per-tensor
            # scales lost ~0.05 of cosine on all-MiniLM-L6-v2); activations are quantized per batch.
            quantization.quantize_dynamic(str(source), str(tmp / int8.name),
                                          weight_type=quantization.QuantType.QInt8,
                                          per_channel=True, op_types_to_quantize=["MatMul", "Attention"],
                                          extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        os.replace(tmp / int8.name, int8)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """(B, T, H) hidden states, (B, T) mask -> (B, H), as sentence-transformers' Pooling does."""
    m = mask[..., None].astype(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return np.where(m > 0, hidden, -1e9).max(axis=1)
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


_TOKENIZER_SKIP = (".safetensors", ".bin", ".onnx", ".h5", ".msgpack", ".ot", ".md")


def _tokenizer_key(resolved: ResolvedModel) -> str:
    """sha256 over what transformers builds the tokenizer from: the transformer folder's small files
    (vocabularies, tokenizer and model configs; not weights) and the installed transformers version."""
    h = hashlib.sha256()
    for f in sorted(resolved.transformer_folder.iterdir()):
        if f.is_file() and f.suffix not in _TOKENIZER_SKIP and f.stat().st_size < (64 << 20):
            h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    try:
        h.update(importlib.metadata.version("transformers").encode())
    except importlib.metadata.PackageNotFoundError:
        pass
    return h.hexdigest()


def model_tokenizer(resolved: ResolvedModel) -> tuple[Any, int]:
    """The model's fast tokenizer exactly as transformers builds it, and its padding id.

    Importing transformers (and torch with it) takes 2-3 s, most of a small target's cost, so the
    first load keeps the `tokenizers` serialization of what transformers built in the cache
    (`tokenizers/<key>.json`, keyed by `_tokenizer_key`); later loads read it back with `tokenizers`
    alone. The embedder always tokenizes with such a round-tripped copy (`TransformerEmbedder`), so
    both ways give the same token ids.
    """
    tokenizers = require("tokenizers")
    record = cache_dir() / "tokenizers" / f"{_tokenizer_key(resolved)[:32]}.json"
    try:
        cached = json.loads(record.read_text())
        loaded = tokenizers.Tokenizer.from_str(cached["tokenizer"]), int(cached["pad_id"])
        touch(record)
        return loaded
    except Exception:  # noqa: BLE001 - missing, unreadable or from another tokenizers: build it again
        pass
    transformers = require("transformers")
    quiet_transformers()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(resolved.transformer_folder))
    if not hasattr(hf_tok, "backend_tokenizer"):
        raise ConfigError(f"{resolved.name}: impsamp needs a model with a fast (Rust) tokenizer")
    pad_id = int(hf_tok.pad_token_id or 0)
    tmp = tmp_name(record)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"model": resolved.name, "pad_id": pad_id,
                                   "tokenizer": hf_tok.backend_tokenizer.to_str()}) + "\n")
        os.replace(tmp, record)
    except OSError as e:  # a read-only cache only costs the import next time
        logger.info("could not cache the tokenizer of %s in %s: %s", resolved.name, record, e)
        tmp.unlink(missing_ok=True)
    return hf_tok.backend_tokenizer, pad_id


class OnnxEmbedder(TransformerEmbedder):
    """A sentence-transformers model's transformer run with ONNX Runtime, pooled and normalised here."""

    def __init__(self, resolved: ResolvedModel, *, max_tokens: int, windows: bool, batch_tokens: int,
                 device: str, quantize: str | None, threads: int | None = None):
        if resolved.pooling is None:
            raise ConfigError(_UNSUPPORTED.format(name=resolved.name))
        backend_tokenizer, pad_id = model_tokenizer(resolved)
        super().__init__(resolved, backend_tokenizer, max_tokens=max_tokens, windows=windows,
                         batch_tokens=batch_tokens, pad_id=pad_id)
        self.path, hold = onnx_model_path(resolved, quantize)
        # On CPU, CPU_SESSIONS sessions run alternate batches side by side, each on its share of the
        # threads: fewer threads per operator wait on each other (int8 on 2 cores: 215-220 vs 195-205
        # docs/s, model alone; float32 even; the vectors are bit-identical either way).
        n = min(CPU_SESSIONS, threads or 1) if device == "cpu" else 1
        with hold:  # the sessions hold the model in memory: the cache entry may go after this
            self._sessions = [_session(self.path, max(1, (threads or 1) // n) if threads else None, device)
                              for _ in range(n)]
        self._session = self._sessions[0]
        self._pool = self._side_by_side_pool(n, "impsamp-onnx")
        self._pooling = resolved.pooling
        self.dim = int(self._session.get_outputs()[0].shape[-1] or resolved.hidden_size)
        self.name = resolved.name
        self.identity = {**self._identity("onnx", quantize, "int8" if quantize else "float32"),
                         "compute": f"onnx export recipe {EXPORT_RECIPE}, toolchain {toolchain()}"}
        if quantize:
            self._check_int8(threads)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, session: Any = None) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        hidden = (session or self._session).run(None, feed)[0]
        return l2_normalize(_pool(hidden, attention_mask, self._pooling))

    def run(self, prepared: Any) -> EmbeddedBatch:
        if self._pool is None or len(prepared.batches) < 2:
            return super().run(prepared)
        return self._run_side_by_side(prepared, self._pool, len(self._sessions),
                                      lambda k, ids, mask: self.forward(ids, mask, self._sessions[k]))

    def _check_int8(self, threads: int | None) -> None:
        """Compare int8 with float32 on the probe sentences (once; the result is cached beside the model)."""
        record = self.path.with_name("model-int8.check.json")
        try:
            self.int8_probe_cosine = float(json.loads(record.read_text())["mean_cosine"])
        except (OSError, ValueError, KeyError):
            probe = self.prepare(_PROBE)
            fp32 = _session(self.path.with_name("model.onnx"), threads)
            cos: list[float] = []
            for _, ids, mask in probe.batches:
                hidden = fp32.run(None, {"input_ids": ids, "attention_mask": mask})[0]
                want = l2_normalize(_pool(hidden, mask, self._pooling))
                cos.extend((self.forward(ids, mask) * want).sum(axis=1).tolist())
            self.int8_probe_cosine = float(np.mean(cos))
            tmp = tmp_name(record)
            check = {"mean_cosine": self.int8_probe_cosine, "probe": _PROBE}
            tmp.write_text(json.dumps(check, indent=2) + "\n")
            os.replace(tmp, record)
        if self.int8_probe_cosine < 0.98:
            logger.warning("int8 %s: mean cosine to float32 on probe sentences is %.4f (< 0.98); "
                           "prefer --quantize none for this model", self.name, self.int8_probe_cosine)
