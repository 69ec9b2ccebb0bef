"""Agents: one Markdown file each, ``agents/<name>.md``, YAML front matter + system prompt.

```markdown
---
name: veblen
description: Book research. Finds, summarises and compares books and their arguments.
model: local
tools: [note_append, note_search]
daily_token_budget: 2000000
---
You are R. Veblen, ...
```

Loading validates everything it can and reports every problem with its file, field and line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, Problem
from .settings import Settings
from .usage import Budget

DELEGATE = "delegate"  # the tool an agent with ``delegates_to`` is given (never in ``tools``)
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?\n?(.*)\Z", re.S | re.M)


class AgentSpec(BaseModel):
    """One agent as declared in its file. ``prompt`` is the Markdown body."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_RE.pattern)
    description: str = Field(min_length=1)
    model: str | None = None  # default: settings.default_model
    tools: list[str] = Field(default_factory=list)
    delegates_to: list[str] = Field(default_factory=list)
    daily_token_budget: int | None = Field(default=None, ge=0)
    daily_cost_budget: float | None = Field(default=None, ge=0)
    max_steps: int | None = Field(default=None, ge=1)
    max_tool_calls: int | None = Field(default=None, ge=1)
    max_task_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    # "required": every step but the last calls a tool (the last one answers), e.g. an agent
    # that works through a list; "auto": the model decides
    tool_choice: Literal["auto", "required"] = "auto"
    timeout_s: float | None = Field(default=None, gt=0)
    min_delegations: int = Field(default=0, ge=0)
    delegation_rounds: int | None = Field(default=None, ge=1)  # steps that may delegate
    prompt: str = ""

    def model_name(self, settings: Settings) -> str:
        return self.model or settings.default_model

    def budget(self, settings: Settings) -> Budget:
        """The agent's daily budget: its file's, else the config's default (the one rule)."""
        b = settings.budgets
        tokens = self.daily_token_budget
        cost = self.daily_cost_budget
        return Budget(
            b.default_daily_tokens if tokens is None else tokens,
            b.default_daily_cost_usd if cost is None else cost,
        )

    def budget_key(self, settings: Settings) -> str:
        """A stable text form of every budget that applies to the agent (its own and the
        workspace's): stored on a task paused for budget, which wakes when it changes."""
        mine, shared = self.budget(settings), settings.budgets.workspace()
        return json.dumps([mine.tokens, mine.cost_usd, shared.tokens, shared.cost_usd])


@dataclass(frozen=True)
class Team:
    """All agents of a workspace, validated together."""

    agents: dict[str, AgentSpec]

    def __getitem__(self, name: str) -> AgentSpec:
        return self.agents[name]

    def __contains__(self, name: object) -> bool:
        return name in self.agents

    def names(self) -> list[str]:
        return sorted(self.agents)


def _yaml_line(exc: yaml.YAMLError) -> int | None:
    # where the broken construct starts, else where the parser noticed
    mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
    return mark.line + 2 if mark is not None else None  # +1 for 1-based, +1 for the '---' line


def _key_lines(front: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    for i, line in enumerate(front.splitlines(), start=2):
        m = re.match(r"^([A-Za-z_][\w-]*)\s*:", line)
        if m:
            lines.setdefault(m.group(1), i)
    return lines


def parse_agent_file(path: Path) -> tuple[AgentSpec | None, list[Problem]]:
    """Parse one agent file. Returns the spec (or None) and the problems found."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(file, f"cannot read: {exc}")]
    m = FRONT_MATTER.match(text)
    if not m:
        return None, [Problem(file, "missing YAML front matter (a '---' block at the top)", line=1)]
    front, body = m.group(1), m.group(2)
    try:
        data = yaml.safe_load(front) or {}
    except yaml.YAMLError as exc:
        return None, [Problem(file, f"malformed YAML: {exc}", line=_yaml_line(exc))]
    if not isinstance(data, dict):
        return None, [Problem(file, "front matter must be a mapping of fields", line=2)]
    if "prompt" in data:
        return None, [Problem(file, "the system prompt is the file's body", "prompt")]
    lines = _key_lines(front)
    try:
        spec = AgentSpec.model_validate({**data, "prompt": body.strip()})
    except ValidationError as exc:
        return None, [_field_problem(file, err, lines) for err in exc.errors()]
    problems = []
    if spec.name != path.stem:
        problems.append(
            Problem(
                file,
                f"name {spec.name!r} does not match the file name {path.stem!r}",
                "name",
                lines.get("name"),
            )
        )
    if not spec.prompt:
        problems.append(
            Problem(file, "the system prompt (the body after the front matter) is empty")
        )
    return spec, problems


def _field_problem(file: str, err: Any, lines: dict[str, int]) -> Problem:
    loc = [str(p) for p in err["loc"]]
    key = loc[0] if loc else None
    msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    return Problem(file, msg, ".".join(loc) or None, lines.get(key) if key else None)


def _cycles(agents: dict[str, AgentSpec]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for nxt in agents[name].delegates_to:
            if nxt not in agents:
                continue
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[name] = 2

    for name in sorted(agents):
        if name not in state:
            visit(name, [name])
    return found


def check_team(
    specs: Iterable[tuple[Path, AgentSpec]], settings: Settings, tool_names: Collection[str]
) -> tuple[dict[str, AgentSpec], list[Problem]]:
    """Cross-file checks: duplicates, models, tools, delegate targets, cycles."""
    agents: dict[str, AgentSpec] = {}
    files: dict[str, Path] = {}
    problems: list[Problem] = []
    pairs = list(specs)
    for path, spec in pairs:
        if spec.name in agents:
            problems.append(
                Problem(
                    str(path),
                    f"duplicate agent name {spec.name!r} (also in {files[spec.name]})",
                    "name",
                )
            )
            continue
        agents[spec.name] = spec
        files[spec.name] = path
    for name, spec in agents.items():
        file = str(files[name])
        model = spec.model_name(settings)
        if model not in settings.models:
            known = ", ".join(sorted(settings.models)) or "none"
            problems.append(
                Problem(file, f"unknown model {model!r} (config has: {known})", "model")
            )
        for t in spec.tools:
            if t == DELEGATE:
                problems.append(
                    Problem(file, f"{DELEGATE!r} is given by delegates_to, not tools", "tools")
                )
            elif t not in tool_names:
                problems.append(Problem(file, f"unknown tool {t!r}", "tools"))
        for target in spec.delegates_to:
            if target not in agents and target not in {s.name for _, s in pairs}:
                problems.append(
                    Problem(file, f"unknown delegate target {target!r}", "delegates_to")
                )
            if target == name:
                problems.append(Problem(file, "an agent cannot delegate to itself", "delegates_to"))
        if spec.min_delegations > len(set(spec.delegates_to)):
            problems.append(
                Problem(
                    file,
                    "min_delegations is larger than the number of delegates_to",
                    "min_delegations",
                )
            )
    for cycle in _cycles(agents):
        if len(cycle) > 2:  # self-delegation is reported above
            problems.append(
                Problem(
                    str(files[cycle[0]]), "delegation cycle: " + " -> ".join(cycle), "delegates_to"
                )
            )
    return agents, problems


def load_team(agents_dir: Path, settings: Settings, tool_names: Collection[str]) -> Team:
    """Load and validate every ``*.md`` in ``agents_dir``. Raises ConfigError with all problems."""
    if not agents_dir.is_dir():
        raise ConfigError(Problem(str(agents_dir), "agents folder does not exist"))
    problems: list[Problem] = []
    specs: list[tuple[Path, AgentSpec]] = []
    for path in sorted(agents_dir.glob("*.md")):
        spec, found = parse_agent_file(path)
        problems.extend(found)
        if spec is not None:
            specs.append((path, spec))
    agents, cross = check_team(specs, settings, tool_names)
    problems.extend(cross)
    if problems:
        raise ConfigError(problems)
    if not agents:
        raise ConfigError(Problem(str(agents_dir), "no agents defined (add agents/<name>.md)"))
    return Team(agents)
