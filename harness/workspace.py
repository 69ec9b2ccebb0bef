"""The default workspace shipped in the wheel (``harness/workspace``: config, agents, tools).

In the repository these are links to the top-level ``config/``, ``agents/`` and ``tools/``,
so the repository root is itself a workspace and there is one copy of each file.
"""

from __future__ import annotations

import shutil
from importlib.resources import as_file, files
from pathlib import Path

PARTS = ("config", "agents", "tools")
SKIP = {"__pycache__"}


def write_workspace(target: Path) -> list[Path]:
    """Copy the default workspace into ``target``; returns the files written."""
    written: list[Path] = []
    with as_file(files("harness") / "workspace") as source:
        for part in PARTS:
            for src in sorted(Path(source, part).rglob("*")):
                if src.is_dir() or SKIP & set(src.parts) or src.suffix == ".pyc":
                    continue
                dest = target / part / src.relative_to(Path(source, part))
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
                written.append(dest)
    (target / "var").mkdir(parents=True, exist_ok=True)
    written.append(_ignore_var(target / ".gitignore"))
    return written


def _ignore_var(path: Path) -> Path:
    """A ``.gitignore`` keeping ``var/`` (the database, run folders, logs) out of git; an
    existing one gets the line added unless it has it."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    if not {"var", "var/", "/var", "/var/"} & {line.strip() for line in lines}:
        lines.append("var/")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
