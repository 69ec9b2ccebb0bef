"""Shared fixtures: a workspace on disk, SQLite and PostgreSQL stores, a scripted runtime.

PostgreSQL tests use the server at 127.0.0.1:5432 (user postgres, trust auth): one database
per test session, created from ``test`` and dropped at the end. They are marked ``postgres``
and run in ``make test``; they fail (not skip) when the server is missing.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.store import Store

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "HARNESS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

pytest_plugins = ["tests.processes"]  # the ``procs`` fixture
if (REPO / "tests" / "llm_fixtures.py").exists():
    pytest_plugins.append("tests.llm_fixtures")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Every async test runs on asyncio, as harness's workers do."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's HARNESS_* settings."""
    for key in list(os.environ):
        if key.startswith("HARNESS_"):
            monkeypatch.delenv(key)


@pytest.fixture
def workspace_dir(tmp_path: Path) -> Path:
    """A copy of the repository's default workspace in a temp folder."""
    ws = tmp_path / "ws"
    for part in ("config", "agents", "tools"):
        shutil.copytree(REPO / part, ws / part, ignore=shutil.ignore_patterns("__pycache__"))
    (ws / "var").mkdir()
    return ws


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'harness.db'}"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session; its URL."""
    from sqlalchemy import create_engine, text

    name = f"harness_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _truncate(store: Store) -> None:
    from sqlalchemy import text

    from harness.store.schema import metadata

    names = ", ".join(t.name for t in metadata.sorted_tables)
    with store.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """The session database, emptied for this test."""
    store = Store.open(pg_database)
    _truncate(store)
    store.close()
    yield pg_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both backends: a SQLite file per test, and the PostgreSQL session database emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'harness.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.open(db_url)
    yield s
    s.close()
