"""The one progress bar every stage uses: tqdm on stderr, silent when disabled (imports tqdm on first use)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress_bar(enabled: bool, desc: str, unit: str, *, total: int | None = None, items: Iterable[Any] | None = None,
                 initial: int = 0, leave: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar over `items` (iterate it) or up to `total` (call `.update(n)`), on stderr.

    Disabled, it draws nothing and costs nothing per update; it is always a context manager."""
    from tqdm.auto import tqdm

    return tqdm(items, total=total, initial=initial, desc=desc, unit=unit, leave=leave, disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, **kwargs)
