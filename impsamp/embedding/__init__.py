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
runs ~64,000), or `tokenize_processes` processes do, free of the GIL; with Ray, `--tokenize-tasks`
(`Execution.tokenize_tasks`) tokenizes each shard in a CPU-only task on any node (`tokenize_shard`)
and the GPU's task only runs the model (`embed_chunks`). On CPU, `CPU_CALLERS` threads run
alternate batches of a buffer side by side, each on its share of the cores (bit-identical vectors,
+15-20% end to end with bfloat16 on 2 cores). The ONNX backend lives in `impsamp.embedding.onnx_backend`.

Determinism: the bytes of every shard depend only on its documents and the config (batches never
cross shards), so a resumed run and a run with more workers write the same files as a plain run on
the same machine and backend.

Test-only hook: IMPSAMP_TEST_SLOW_SHARD=SECONDS sleeps after each committed shard, so that a test can
kill a run in the middle. Never set it otherwise.

Modules: `config` (EmbedConfig, defaults, schemas), `contract` (EmbeddedBatch, the Embedder protocol),
`models` (finding a model), `hashing` (the test embedder), `transformer` (tokenizing and batching, the
torch backend), `onnx_backend`, `loading` (`load_embedder`), `engine` (reading, tokenizing ahead, running the
model), `stage` (`embed`: resumable runs, worker pools, Ray) and `result` (`Embeddings`).
"""

from __future__ import annotations

from ..hardware import cpu_count, cpu_has_amx_bf16
from .config import (
                     BACKENDS,
                     CHARS_PER_TOKEN,
                     CPU_BATCH_TOKENS,
                     DEFAULT_MODEL,
                     DEVICES,
                     DOCS_SCHEMA,
                     FIRST_CHUNK,
                     GPU_BATCH_TOKENS,
                     PRECISIONS,
                     QUANTIZE,
                     SORT_BUFFER,
                     TEXTS_SCHEMA,
                     EmbedConfig,
                     EmbedderError,
)
from .contract import EmbeddedBatch, Embedder, same_model
from .engine import embed_texts, tokenize_serially
from .hashing import HashingEmbedder
from .loading import load_embedder
from .models import ResolvedModel, resolve_model, weights_sha256
from .result import Embeddings
from .stage import embed
from .transformer import TorchEmbedder, TransformerEmbedder

__all__ = ["BACKENDS", "CHARS_PER_TOKEN", "CPU_BATCH_TOKENS", "DEFAULT_MODEL", "FIRST_CHUNK", "GPU_BATCH_TOKENS",
           "SORT_BUFFER", "DEVICES", "DOCS_SCHEMA", "PRECISIONS", "QUANTIZE", "TEXTS_SCHEMA",
           "EmbedConfig", "EmbeddedBatch", "Embedder", "EmbedderError", "Embeddings", "HashingEmbedder",
           "ResolvedModel", "TorchEmbedder", "TransformerEmbedder", "cpu_count", "cpu_has_amx_bf16", "embed",
           "embed_texts", "load_embedder", "resolve_model", "same_model", "tokenize_serially", "weights_sha256"]
