"""Write a new migration from the difference between ``harness.store.schema`` and the newest one.

``make migration MSG="add x to y"`` (developers only): upgrades a scratch SQLite database to
the current head, then lets Alembic autogenerate the next revision into ``versions/``.
Review the file (Alembic cannot see renames), set ``HEAD_REVISION`` in
``harness/store/migrations/__init__.py`` to its id, and run the test suite on both backends.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config

from harness.store.engine import MIGRATIONS, make_engine, upgrade


def main(message: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'scratch.db'}")
        upgrade(engine)
        with engine.begin() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.revision(cfg, message=message, autogenerate=True)
        engine.dispose()


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].strip():
        sys.exit('usage: python -m harness.store.migrations.new "what changes"')
    main(sys.argv[1])
