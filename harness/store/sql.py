"""Portable SQL text for the read models, run on either kind of connection.

A view in ``views`` is written once as SQL text with ``:name`` parameters (the subset both
SQLite and PostgreSQL read alike) and runs on a SQLAlchemy ``Connection`` (the worker, the
dashboard, the MCP server) or on a bare ``sqlite3.Connection`` (the read-only commands'
light path, ``store.light``, which never imports SQLAlchemy).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from sqlalchemy import Connection, TextClause

__all__ = ["Conn", "fetch", "first", "placeholders"]

Conn: TypeAlias = "Connection | sqlite3.Connection"


def fetch(conn: Conn, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of ``sql`` as dicts (column name -> value)."""
    if isinstance(conn, sqlite3.Connection):
        cursor = conn.execute(sql, dict(params or {}))
        names = [d[0] for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor]
    return [dict(r) for r in conn.execute(_text(sql), dict(params or {})).mappings()]


def first(conn: Conn, sql: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The first row of ``sql`` (None when there is none)."""
    rows = fetch(conn, sql, params)
    return rows[0] if rows else None


def placeholders(name: str, values: Iterable[Any]) -> tuple[str, dict[str, Any]]:
    """``:name_0, :name_1, ...`` for an ``IN (...)`` and the parameters they take."""
    params = {f"{name}_{i}": v for i, v in enumerate(values)}
    return ", ".join(f":{key}" for key in params) or "NULL", params


@cache
def _text(sql: str) -> TextClause:
    from sqlalchemy import text

    return text(sql)
