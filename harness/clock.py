"""The one wall clock of the store, queue and ledger: replaceable in tests.

``now()`` is seconds since the epoch. ``use(fn)`` swaps the source (e.g. a fake clock that a
test moves past midnight); it applies process-wide.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_source: Callable[[], float] = time.time


def now() -> float:
    return _source()


def use(source: Callable[[], float] | None) -> None:
    """Use ``source`` as the clock (``None``: the real one again)."""
    global _source
    _source = source or time.time
