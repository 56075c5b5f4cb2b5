"""Locate the small real-text demo corpus bundled with impsamp (8 domains, Parquet).

The demo corpus is a documented subset of eight public-domain or permissively licensed English
text domains (see ``data_cards/impsamp-demo.md`` in the source repository). It has one generic
pool of 4,800 documents (600 per domain, rows shuffled across domains) and, for each domain, an
in-domain sample and a disjoint evaluation set taken from pages, chapters or speeches that never
occur in the pool. Every file has the string columns ``id``, ``text`` and ``domain``.

Example:
    >>> from impsamp.datasets import demo_corpus
    >>> demo = demo_corpus()
    >>> demo.pool.name
    'pool.parquet'
    >>> demo.sample("shakespeare").name
    'shakespeare.parquet'

This module only needs the standard library; reading the files needs pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, CorpusError

__all__ = ["DEMO_DOMAINS", "DemoCorpus", "demo_corpus"]

DEMO_DOMAINS: tuple[str, ...] = (
    "austen_novels",
    "database_docs",
    "factbook",
    "fortunes",
    "kjv_bible",
    "python_docs",
    "shakespeare",
    "sotu_speeches",
)
"""The names of the eight demo domains, sorted."""

_DEMO_ROOT = Path(__file__).parent / "data" / "demo"


@dataclass(frozen=True)
class DemoCorpus:
    """Paths of the bundled demo corpus.

    Attributes:
        root: Folder holding the demo files.
        pool: The generic pool Parquet file (600 documents per domain, shuffled).
        domains: The domain names, sorted.
    """

    root: Path
    pool: Path
    domains: tuple[str, ...]

    def _check(self, domain: str) -> None:
        if domain not in self.domains:
            raise ConfigError(
                f"unknown demo domain {domain!r}; valid domains: {', '.join(self.domains)}"
            )

    def sample(self, domain: str) -> Path:
        """Return the in-domain sample Parquet file of a domain.

        Args:
            domain: One of `domains`.

        Returns:
            The path of ``sample/<domain>.parquet``.

        Raises:
            ConfigError: If `domain` is not a demo domain.
        """
        self._check(domain)
        return self.root / "sample" / f"{domain}.parquet"

    def eval(self, domain: str) -> Path:
        """Return the evaluation Parquet file of a domain.

        Its documents come from other groups (pages, chapters, speeches) than both the pool and
        the in-domain sample.

        Args:
            domain: One of `domains`.

        Returns:
            The path of ``eval/<domain>.parquet``.

        Raises:
            ConfigError: If `domain` is not a demo domain.
        """
        self._check(domain)
        return self.root / "eval" / f"{domain}.parquet"


def demo_corpus() -> DemoCorpus:
    """Return the paths of the demo corpus shipped inside the impsamp package.

    Returns:
        A `DemoCorpus` rooted at ``impsamp/data/demo`` next to this module.

    Raises:
        CorpusError: If the demo files are missing (for example in a package built without its
            data files).
    """
    pool = _DEMO_ROOT / "pool.parquet"
    if not pool.is_file():
        raise CorpusError(
            f"the demo corpus is missing: {pool} does not exist; rebuild it with "
            "python data_cards/build_demo_corpus.py or reinstall impsamp"
        )
    return DemoCorpus(root=_DEMO_ROOT, pool=pool, domains=DEMO_DOMAINS)
