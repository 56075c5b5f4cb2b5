"""Transformer embedders: tokenizing, cutting and batching (shared), and the torch backend."""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError
from ..hardware import cpu_has_amx_bf16
from .config import CHARS_PER_TOKEN, CPU_CALLERS, MAX_BATCH_UNITS, EmbedConfig
from .contract import EmbeddedBatch, window_spans
from .models import ResolvedModel

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


@dataclass
class Prepared:
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

    def prepare(self, texts: Sequence[str]) -> Prepared:
        if self.windows:
            return self._prepare_windows(texts)
        return self._prepare_truncated(texts)

    def _prepare_truncated(self, texts: Sequence[str]) -> Prepared:
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
        prepared = Prepared(n, np.arange(n, dtype=np.int64), np.zeros(n, np.int32), tokens,
                             np.zeros(n, np.int64), ends)
        prepared.batches = self._batches(ids)
        return prepared

    def _prepare_windows(self, texts: Sequence[str]) -> Prepared:
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
            starts, ends = window_spans(first_starts, len(texts[i]), None, texts[i])
            starts_all += starts
            ends_all += ends
        prepared = Prepared(len(texts), np.asarray(owner, np.int64), np.asarray(window, np.int32),
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

    def run(self, prepared: Prepared) -> EmbeddedBatch:
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

    def _run_side_by_side(self, prepared: Prepared, pool: ThreadPoolExecutor, n: int,
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


def quiet_transformers() -> None:
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
        quiet_transformers()
        if device == "cpu" and threads:
            torch.set_num_threads(threads)
        # On CPU, CPU_CALLERS threads run alternate batches side by side, each on its share of the
        # cores (bfloat16 on 2 AMX cores, model alone: 245 vs 189-202 docs/s; float32 +2%; the
        # vectors are bit-identical either way).
        self._callers = min(CPU_CALLERS, threads or 1) if device == "cpu" else 1
        self._threads_per_caller = max(1, (threads or 1) // self._callers)
        self._pool = self._side_by_side_pool(self._callers, "impsamp-torch")
        precision = resolve_precision(precision, device)
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

    def run(self, prepared: Prepared) -> EmbeddedBatch:
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


def resolve_precision(precision: str, device: str) -> str:
    """`auto`: float16 on GPU, bfloat16 on CPUs with AMX, float32 otherwise."""
    if precision != "auto":
        return precision
    if device == "cuda":
        return "float16"
    return "bfloat16" if cpu_has_amx_bf16() else "float32"
