"""Schema migrations (Alembic). ``HEAD_REVISION`` must name the newest revision in
``versions/`` (a test checks it): a database at that revision needs no Alembic at start-up."""

HEAD_REVISION = "0004"
