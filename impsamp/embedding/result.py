"""`Embeddings`: the handle on a finished embed output (vectors memory-mapped, unit tables)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import from_dict
from ..errors import StageError
from ..io import Corpus, reopen_corpus
from ..manifest import Manifest, read_manifest
from .config import DOCS_SCHEMA, EmbedConfig
from .contract import Embedder, same_model
from .loading import load_embedder


def vectors_name(shard: str) -> str:
    return f"vectors-{shard}.npy"


def docs_name(shard: str) -> str:
    return f"docs-{shard}.parquet"


@dataclass(frozen=True, repr=False)
class Embeddings:
    """A finished `embed` stage directory: vectors (memory-mapped) row-aligned with a unit table."""

    path: Path
    manifest: Manifest
    dim: int
    n: int
    """Units (documents, or windows with `windows=True`)."""
    shard_names: list[str]

    def __repr__(self) -> str:
        return f"Embeddings({str(self.path)!r}, n={self.n}, dim={self.dim}, model={self.model_info.get('name')!r})"

    @classmethod
    def load(cls, path: str | Path) -> Embeddings:
        """Open a complete `embed` output.

        Raises:
            StageError: missing, incomplete, damaged, or not an `embed` output.
        """
        manifest = read_manifest(path, expect_stage="embed")  # first: it checks `path` is a path
        path = Path(path).absolute()  # the handle outlives an os.chdir
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
    def flops(self) -> float:
        """What embedding the corpus cost (2 x the encoder's parameters per token embedded; 0 for an encoder
        `costs.ENCODERS` does not know): paid once, by every strategy that reads these vectors."""
        from ..costs import encoder_flops, encoder_params

        return encoder_flops(encoder_params(self.model_info.get("name", "")), int(self.manifest.stats.get("tokens", 0)))

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
        path = self.path / vectors_name(name)
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as e:
            raise StageError(f"{path} cannot be read as vectors ({str(e)[:200]}); the embeddings are "
                             "damaged: rerun `impsamp embed` with --overwrite") from None

    def shard_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """The unit table of one shard (only `columns`, if given)."""
        import pyarrow.parquet as pq

        path = self.path / docs_name(name)
        try:
            with pq.ParquetFile(path) as f:  # one file: no pyarrow.dataset machinery
                return f.read(columns=columns)
        except (OSError, ValueError, pa.ArrowException) as e:
            raise StageError(f"{path} cannot be read as a Parquet table ({str(e)[:200]}); the embeddings are "
                             "damaged: rerun `impsamp embed` with --overwrite") from None

    def shard_columns(self, name: str) -> list[str]:
        """The columns of one shard's unit table (older outputs lack the `text_*` lengths)."""
        import pyarrow.parquet as pq

        path = self.path / docs_name(name)
        try:
            return list(pq.read_schema(path).names)
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
        inputs = self.manifest.inputs
        spec = inputs.get("corpus") if isinstance(inputs, dict) else None
        corpus = reopen_corpus(spec, source=str(self.path / "manifest.json"))
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
