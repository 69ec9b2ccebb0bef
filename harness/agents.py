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

Loading validates everything it can and reports every problem of every file, in reading
order, each with its file, line (counted from the top of the file), field and, where one is
known, a fix ("did you mean `web_fetch`?"). A field that fails its schema does not hide the
others: models, tools and delegate targets are checked in every file that has them. What is
refused: a file that is not a regular file (a FIFO is never opened), duplicate keys, YAML
aliases, numbers that are booleans, text or past their range; a UTF-8 byte-order mark is fine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError, Problem
from .settings import INT64_MAX, MAX_DAILY_COST, MAX_DAILY_TOKENS, Settings
from .sources import did_you_mean, read_text
from .usage import Budget

DELEGATE = "delegate"  # the tool an agent with ``delegates_to`` is given (never in ``tools``)
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?\n?(.*)\Z", re.S | re.M)
FIRST_LINE = 2  # the front matter's first line in the file (after the opening '---')
SAMPLING = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed")


class AgentSpec(BaseModel):
    """One agent as declared in its file. ``prompt`` is the Markdown body."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    name: str = Field(pattern=NAME_RE.pattern)
    description: str = Field(min_length=1, max_length=4_000)
    model: str | None = None  # default: settings.default_model
    tools: list[str] = Field(default_factory=list)
    delegates_to: list[str] = Field(default_factory=list)
    daily_token_budget: int | None = Field(default=None, ge=0, le=MAX_DAILY_TOKENS)
    daily_cost_budget: float | None = Field(default=None, ge=0, le=MAX_DAILY_COST)
    max_steps: int | None = Field(default=None, ge=1, le=10_000)
    max_tool_calls: int | None = Field(default=None, ge=1, le=1_000_000)
    max_task_tokens: int | None = Field(default=None, ge=1, le=MAX_DAILY_TOKENS)
    max_tokens: int | None = Field(default=None, ge=1, le=10_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)  # against repetition
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)  # same seed, same sampling
    # "required": every step but the last calls a tool (the last one answers), e.g. an agent
    # that works through a list; "auto": the model decides
    tool_choice: Literal["auto", "required"] = "auto"
    timeout_s: float | None = Field(default=None, ge=0.1, le=7 * 86_400)
    min_delegations: int = Field(default=0, ge=0, le=1_000)
    delegation_rounds: int | None = Field(default=None, ge=1, le=1_000)  # steps that delegate
    prompt: str = ""

    @field_validator("*")
    @classmethod
    def _int64(cls, value: Any) -> Any:
        if isinstance(value, int) and not -INT64_MAX <= value <= INT64_MAX:
            raise ValueError("is past the 64-bit range a database column holds")
        return value

    def model_name(self, settings: Settings) -> str:
        return self.model or settings.default_model

    def sampling(self) -> dict[str, Any]:
        """The sampling settings the file gives, as ``ChatRequest`` fields (None: the
        server's default)."""
        return {key: getattr(self, key) for key in SAMPLING}

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


FIELDS = frozenset(AgentSpec.model_fields) - {"prompt"}


class _AnyTool(frozenset[str]):
    """Every name is a tool: for reading a team without importing its tools."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str)


ANY_TOOL: Collection[str] = _AnyTool()
"""Pass as ``tool_names`` to skip the tool checks (listings; ``agents validate`` checks)."""


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


# -- one file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentFile:
    """One agent file as read: its spec (None when it did not validate), its problems, the
    raw front matter (for the checks that still apply to a file that failed) and the line
    of every key and list item in it."""

    path: Path
    spec: AgentSpec | None
    problems: list[Problem]
    data: dict[str, Any] = field(default_factory=dict)
    lines: dict[tuple[str, int | None], int] = field(default_factory=dict)
    body_line: int = FIRST_LINE

    def line(self, key: str, index: int | None = None) -> int | None:
        """The file line of ``key`` (or of its ``index``-th list item, else the key's)."""
        return self.lines.get((key, index)) or self.lines.get((key, None))

    def names(self, key: str) -> list[tuple[int, str]]:
        """``(index, name)`` of the text items of list field ``key`` (even when the file
        failed validation: a list of names is checked whatever else is wrong)."""
        value = self.data.get(key)
        if not isinstance(value, list):
            return []
        return [(i, v) for i, v in enumerate(value) if isinstance(v, str)]

    def text(self, key: str) -> str | None:
        value = self.data.get(key)
        return value if isinstance(value, str) else None

    def problem(self, message: str, key: str, index: int | None = None, **kw: Any) -> Problem:
        return Problem(str(self.path), message, key, self.line(key, index), **kw)


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys and aliases (``*name``: no use in front
    matter, and a way to make a small file expand to a huge one)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in front matter", mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:
                continue  # unhashable: SafeLoader reports it
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first + FIRST_LINE})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep)


def _yaml_problem(file: str, exc: yaml.YAMLError) -> Problem:
    """A YAML error with its line counted from the top of the file (PyYAML's own message
    counts from the front matter, so it is rebuilt from the parts)."""
    # where the broken construct starts, else where the parser noticed
    mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    text = f"{context}, {problem}" if context else problem
    line = mark.line + FIRST_LINE if mark is not None else None
    return Problem(file, f"malformed YAML: {text}", line=line)


def _node_lines(node: Any) -> dict[tuple[str, int | None], int]:
    """The file line of each top-level key, and of each item of a list value."""
    lines: dict[tuple[str, int | None], int] = {}
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key_node, value_node in node.value:
        key = str(key_node.value)
        lines.setdefault((key, None), key_node.start_mark.line + FIRST_LINE)
        if isinstance(value_node, yaml.SequenceNode):
            for i, item in enumerate(value_node.value):
                lines.setdefault((key, i), item.start_mark.line + FIRST_LINE)
    return lines


def _front_matter(path: Path) -> AgentFile | tuple[dict[str, Any], dict[Any, int], str, int]:
    """The file's front matter (data, lines), body and the body's first line, or an
    AgentFile holding the problem that stops reading it."""
    file = str(path)
    try:
        text = read_text(path)
    except ConfigError as exc:
        return AgentFile(path, None, exc.problems)
    m = FRONT_MATTER.match(text)
    if not m:
        problem = Problem(file, "missing YAML front matter (a '---' block at the top)", line=1)
        return AgentFile(path, None, [problem])
    front, body = m.group(1), m.group(2)
    body_line = FIRST_LINE + front.count("\n") + 1
    try:
        loader = _Loader(front)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else {}
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        return AgentFile(path, None, [_yaml_problem(file, exc)])
    except RecursionError:
        return AgentFile(path, None, [Problem(file, "front matter nested too deeply", line=2)])
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problem = Problem(file, "front matter must be a mapping of fields", line=FIRST_LINE)
        return AgentFile(path, None, [problem])
    return data, _node_lines(node), body, body_line


def read_agent_file(path: Path) -> AgentFile:
    """Read and validate one agent file on its own (see :func:`check_team` for the rest)."""
    read = _front_matter(path)
    if isinstance(read, AgentFile):
        return read
    data, lines, body, body_line = read
    af = AgentFile(path, None, [], {str(k): v for k, v in data.items()}, lines, body_line)
    if "prompt" in af.data:
        return _with(af, None, [af.problem("the system prompt is the file's body", "prompt")])
    try:
        spec = AgentSpec.model_validate({**af.data, "prompt": body.strip()})
    except ValidationError as exc:
        return _with(af, None, [_field_problem(af, err) for err in exc.errors()])
    problems = []
    if spec.name != path.stem:
        problems.append(
            af.problem(
                f"name {spec.name!r} does not match the file name {path.stem!r}",
                "name",
                hint=f"rename the file to {spec.name}.md, or set name: {path.stem}",
            )
        )
    if not spec.prompt:
        message = "the system prompt (the body after the front matter) is empty"
        problems.append(Problem(str(path), message, line=body_line))
    return _with(af, spec, problems)


def _with(af: AgentFile, spec: AgentSpec | None, problems: list[Problem]) -> AgentFile:
    return AgentFile(af.path, spec, problems, af.data, af.lines, af.body_line)


def parse_agent_file(path: Path) -> tuple[AgentSpec | None, list[Problem]]:
    """Parse one agent file. Returns the spec (or None) and the problems found."""
    af = read_agent_file(path)
    return af.spec, af.problems


def _field_problem(af: AgentFile, err: Any) -> Problem:
    loc = [str(p) for p in err["loc"]]
    key = loc[0] if loc else ""
    index = int(loc[1]) if len(loc) > 1 and loc[1].isdigit() else None
    if err["type"] == "extra_forbidden":
        return af.problem("unknown field", key, hint=did_you_mean(key, FIELDS))
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        message = "is required"
    return Problem(str(af.path), message, ".".join(loc) or None, af.line(key, index))


# -- the team ------------------------------------------------------------------------------


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


def _model_problems(af: AgentFile, settings: Settings) -> list[Problem]:
    model = af.text("model") or (None if "model" in af.data else settings.default_model)
    if model is None or model in settings.models:
        return []
    known = ", ".join(sorted(settings.models)) or "none"
    hint = did_you_mean(model, settings.models) or f"config/harness.toml has: {known}"
    return [af.problem(f"unknown model {model!r}", "model", hint=hint)]


def _tool_problems(af: AgentFile, tool_names: Collection[str]) -> list[Problem]:
    problems = []
    known = [n for n in tool_names if n != DELEGATE]
    for i, name in af.names("tools"):
        if name == DELEGATE:
            message = f"{DELEGATE!r} is given by delegates_to, not tools"
            fix = "list the agents it may hand work to in delegates_to"
            problems.append(af.problem(message, "tools", i, hint=fix))
        elif name not in tool_names:
            hint = did_you_mean(name, known)
            problems.append(af.problem(f"unknown tool {name!r}", "tools", i, hint=hint))
    return problems


def _delegate_problems(af: AgentFile, names: Collection[str]) -> list[Problem]:
    problems = []
    me = af.text("name") or af.path.stem
    for i, target in af.names("delegates_to"):
        if target == me:
            problems.append(af.problem("an agent cannot delegate to itself", "delegates_to", i))
        elif target not in names:
            hint = did_you_mean(target, names) or f"add agents/{target}.md"
            message = f"unknown delegate target {target!r}"
            problems.append(af.problem(message, "delegates_to", i, hint=hint))
    return problems


def _file_problems(
    af: AgentFile, settings: Settings, tool_names: Collection[str], names: Collection[str]
) -> list[Problem]:
    """The checks against the config, the tools and the other agents, for any file whose
    front matter could be read (valid or not)."""
    problems = [
        *_model_problems(af, settings),
        *_tool_problems(af, tool_names),
        *_delegate_problems(af, names),
    ]
    spec = af.spec
    if spec is not None and spec.min_delegations > len(set(spec.delegates_to)):
        message = "min_delegations is larger than the number of delegates_to"
        problems.append(af.problem(message, "min_delegations"))
    return problems


def check_files(
    files: Iterable[AgentFile], settings: Settings, tool_names: Collection[str]
) -> tuple[dict[str, AgentSpec], list[Problem]]:
    """Every problem of every file (its own, and the cross-file checks: duplicate names,
    models, tools, delegate targets, cycles), in reading order, and the valid agents.

    A delegate target is known when any file would define it (by its name or file name),
    so a file that failed does not make every agent delegating to it fail too."""
    files = list(files)
    names = {af.text("name") or af.path.stem for af in files} | {af.path.stem for af in files}
    agents: dict[str, AgentSpec] = {}
    where: dict[str, AgentFile] = {}
    problems: list[Problem] = []
    for af in files:
        problems += af.problems
        if af.data or af.spec is not None:
            problems += _file_problems(af, settings, tool_names, names)
        spec = af.spec
        if spec is None:
            continue
        if spec.name in agents:
            message = f"duplicate agent name {spec.name!r} (also in {where[spec.name].path})"
            problems.append(af.problem(message, "name"))
            continue
        agents[spec.name], where[spec.name] = spec, af
    for cycle in _cycles(agents):
        if len(cycle) > 2:  # self-delegation is reported above
            message = "delegation cycle: " + " -> ".join(cycle)
            problems.append(where[cycle[0]].problem(message, "delegates_to"))
    return agents, sorted(problems, key=Problem.sort_key)


def check_team(
    specs: Iterable[tuple[Path, AgentSpec]], settings: Settings, tool_names: Collection[str]
) -> tuple[dict[str, AgentSpec], list[Problem]]:
    """Cross-file checks of specs already parsed (see :func:`check_files`)."""
    files = [AgentFile(p, s, [], s.model_dump(exclude={"prompt"})) for p, s in specs]
    return check_files(files, settings, tool_names)


def agent_files(agents_dir: Path) -> list[Path]:
    """The ``*.md`` entries of ``agents_dir``, sorted (whatever they are: reading checks)."""
    return sorted(agents_dir.glob("*.md"))


def load_team(agents_dir: Path, settings: Settings, tool_names: Collection[str]) -> Team:
    """Load and validate every ``*.md`` in ``agents_dir``. Raises ConfigError with all problems."""
    if not agents_dir.is_dir():
        raise ConfigError(Problem(str(agents_dir), "agents folder does not exist"))
    files = [read_agent_file(path) for path in agent_files(agents_dir)]
    agents, problems = check_files(files, settings, tool_names)
    if problems:
        raise ConfigError(problems)
    if not agents:
        raise ConfigError(Problem(str(agents_dir), "no agents defined (add agents/<name>.md)"))
    return Team(agents)
