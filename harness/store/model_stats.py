"""What calls taught about each model, kept across restarts: how its server's token counts
compare with harness's estimate, and the context window an overflow error revealed.
Functions of a connection."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, bindparam, select, update

from .. import clock
from .engine import insert_ignore, run
from .schema import model_stats

__all__ = ["Stats", "load_model_stats", "save_model_stats"]

_LOAD = select(
    model_stats.c.model,
    model_stats.c.estimate_ratio,
    model_stats.c.samples,
    model_stats.c.new_ratio,
    model_stats.c.new_samples,
    model_stats.c.context_window,
)
_SAVE = (
    update(model_stats)
    .where(model_stats.c.model == bindparam("p_model"))
    .values(
        estimate_ratio=bindparam("ratio"),
        samples=bindparam("samples"),
        new_ratio=bindparam("new_ratio"),
        new_samples=bindparam("new_samples"),
        context_window=bindparam("window"),
        updated_at=bindparam("t"),
    )
)


Stats = tuple[float, int, float, int, int | None]  # see provider.tokens.Calibration


def load_model_stats(conn: Connection) -> dict[str, Stats]:
    """Model name -> (whole-prompt ratio, samples, appended-part ratio, samples, window)."""
    return {
        m: (float(r), int(n), float(nr), int(nn), w)
        for m, r, n, nr, nn, w in conn.execute(_LOAD).all()
    }


def save_model_stats(conn: Connection, stats: Mapping[str, Stats]) -> int:
    """Store each model's figures (created on first save); returns how many."""
    t = clock.now()
    for model, (ratio, samples, new_ratio, new_samples, window) in sorted(stats.items()):
        params = {"p_model": model, "ratio": ratio, "samples": samples, "new_ratio": new_ratio,
                  "new_samples": new_samples, "window": window, "t": t}  # fmt: skip
        if run(conn, _SAVE, params).rowcount != 1:
            row = {"model": model, "estimate_ratio": ratio, "samples": samples,
                   "new_ratio": new_ratio, "new_samples": new_samples,
                   "context_window": window, "updated_at": t}  # fmt: skip
            run(conn, insert_ignore(conn, model_stats), [row])
    return len(stats)
