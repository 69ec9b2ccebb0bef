"""Reading many goals for ``harness submit --from FILE``: one goal per line, or JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError, Problem


def read_goals(path: Path) -> list[tuple[str | None, str]]:
    """``[(agent or None, goal), ...]``. Blank lines and ``#`` comments are skipped.

    A line starting with ``{`` is a JSON object with ``goal`` and optional ``agent``. Every
    bad line is reported (file and line) and nothing is enqueued.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem(str(path), f"cannot read: {exc}")) from exc
    items: list[tuple[str | None, str]] = []
    problems: list[Problem] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("{"):
            items.append((None, line))
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            problems.append(Problem(str(path), f"not valid JSON: {exc.args[0]}", line=n))
            continue
        goal, agent = obj.get("goal"), obj.get("agent")
        unknown = set(obj) - {"goal", "agent"}
        if unknown:
            problems.append(
                Problem(str(path), f"unknown field(s): {', '.join(sorted(unknown))}", line=n)
            )
        elif not isinstance(goal, str) or not goal.strip():
            problems.append(Problem(str(path), "needs a non-empty string", "goal", n))
        elif agent is not None and not isinstance(agent, str):
            problems.append(Problem(str(path), "must be a string", "agent", n))
        else:
            items.append((agent, goal.strip()))
    if problems:
        raise ConfigError(problems)
    if not items:
        raise ConfigError(Problem(str(path), "no goals in file"))
    return items
