"""What calls taught about each model, kept across restarts: how its server's token counts
compare with harness's estimate, and the context window an overflow error revealed.
Functions of a connection."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, bindparam, select, update

from .. import clock
from .engine import insert_ignore, run
from .schema import model_stats

__all__ = ["load_model_stats", "save_model_stats"]

_LOAD = select(
    model_stats.c.model,
    model_stats.c.estimate_ratio,
    model_stats.c.samples,
    model_stats.c.context_window,
)
_SAVE = (
    update(model_stats)
    .where(model_stats.c.model == bindparam("p_model"))
    .values(
        estimate_ratio=bindparam("ratio"),
        samples=bindparam("samples"),
        context_window=bindparam("window"),
        updated_at=bindparam("t"),
    )
)


def load_model_stats(conn: Connection) -> dict[str, tuple[float, int, int | None]]:
    """Model name -> (estimate ratio, samples, learned window)."""
    return {m: (float(r), int(n), w) for m, r, n, w in conn.execute(_LOAD).all()}


def save_model_stats(conn: Connection, stats: Mapping[str, tuple[float, int, int | None]]) -> int:
    """Store each model's figures (created on first save); returns how many."""
    t = clock.now()
    for model, (ratio, samples, window) in sorted(stats.items()):
        params = {"p_model": model, "ratio": ratio, "samples": samples, "window": window, "t": t}
        if run(conn, _SAVE, params).rowcount != 1:
            row = {"model": model, "estimate_ratio": ratio, "samples": samples,
                   "context_window": window, "updated_at": t}  # fmt: skip
            run(conn, insert_ignore(conn, model_stats), [row])
    return len(stats)
