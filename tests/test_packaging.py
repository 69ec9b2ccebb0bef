"""The wheel carries the default workspace, so ``harness init`` works without the repository."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_wheel_carries_the_default_workspace_and_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("harness-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for part in ("config", "agents", "tools"):
        for src in (REPO / part).iterdir():
            if src.is_file() and src.suffix in (".md", ".toml", ".py"):
                assert f"harness/workspace/{part}/{src.name}" in names, src
    assert "harness/store/migrations/versions/0001_initial_schema.py" in names
    assert "harness/py.typed" in names
    for served in ("templates/base.html", "static/app.css", "static/vendor/htmx-2.0.11.min.js",
                   "static/vendor/htmx-LICENSE.txt"):  # fmt: skip
        assert f"harness/web/{served}" in names, served  # the dashboard's files
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
