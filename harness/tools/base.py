"""Tools: plain Python functions an agent may call, with a JSON schema derived from their signature.

A tool is a function with type hints, turned into a :class:`Tool` by ``@tool``. Its parameters
become a pydantic model: that model validates the arguments a model sends and gives the JSON
schema the model sees (closed sets as ``enum``, ``required``, ``additionalProperties: false``,
no ``title`` noise, ``$ref`` inlined) -- small local models decode against that schema with a
grammar, so it must be precise. A parameter annotated :class:`ToolContext` receives the call's
context and is not part of the schema.

:meth:`ToolRegistry.call` never raises for a tool's problem: an unknown or forbidden tool,
arguments that are not JSON or do not validate, a :class:`~harness.errors.ToolError` or any other
exception all come back as ``ToolResult(ok=False, content=<one clear message>)`` for the model
to read. Control-flow signals (:class:`~harness.errors.ControlSignal`) and cancellation propagate.

Tools may also come from a :class:`ToolSource` (an MCP server's, see ``tools/mcp.py``): the
registry accepts the names a source claims while agent files load, and
:meth:`ToolRegistry.prepare` makes them ready before a task uses them. A name ending in
``__*`` (``git__*``) stands for every tool whose name starts with what precedes the ``*``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import os
import re
import stat
import sys
import threading
import traceback
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, overload

import anyio.from_thread
import anyio.lowlevel
import pydantic_core
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .. import scrub
from ..errors import ConfigError, ControlSignal, Problem, ToolError
from ..messages import FunctionSpec, ToolSpec
from ..settings import Settings
from .schema import json_schema, parse_docstring

__all__ = [
    "ArtifactReader",
    "NotesStore",
    "Tool",
    "ToolContext",
    "ToolRegistry",
    "ToolResult",
    "ToolSource",
    "global_registry",
    "load_workspace_tools",
    "make_tool",
    "tool",
]

log = structlog.get_logger("harness.tools")


class NotesStore(Protocol):
    """An agent's persistent notes (implemented by the database store).

    ``append_note`` returns the new note's id. ``search_notes`` and ``read_notes`` return
    ``(id, text, created_at)`` rows of that agent only, most recent first.
    """

    async def append_note(self, agent: str, text: str) -> int: ...

    async def search_notes(
        self, agent: str, query: str, limit: int = 10
    ) -> list[tuple[int, str, datetime]]: ...

    async def read_notes(self, agent: str, limit: int = 20) -> list[tuple[int, str, datetime]]: ...


class ArtifactReader(Protocol):
    """The run's artifacts (implemented by the database store): ``(name, content)`` of
    artifact ``artifact_id`` of run ``run_id``, or None."""

    async def read_artifact(self, run_id: int, artifact_id: int) -> tuple[str, str] | None: ...


@dataclass(frozen=True)
class ToolContext:
    """What a tool may know about the call it serves.

    ``workdir`` is the run's folder (``<workspace>/var/runs/<run_id>/``); it may not exist yet:
    file tools call :meth:`ensure_workdir` before use.
    """

    run_id: int
    task_id: int
    agent: str
    workdir: Path
    settings: Settings
    notes: NotesStore
    artifacts: ArtifactReader | None = None  # the run's large results (read_artifact)

    def ensure_workdir(self) -> Path:
        """Create the run folder if needed; return its real (symlink-free) path.

        The folder is made and opened without following links: one planted beforehand as a
        symbolic link (run ids are sequential), or anything but a folder directly inside its
        parent (``var/runs``), is refused with a ToolError, so no file tool of the run ever
        reaches outside it.
        """
        runs = self.workdir.parent
        runs.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # an existing link is not followed
            os.mkdir(self.workdir)
        try:
            os.close(os.open(self.workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW))
        except OSError:
            raise ToolError(
                f"the run folder {self.workdir} is not a plain folder (a symbolic link?); "
                "refusing to use it"
            ) from None
        real = Path(os.path.realpath(self.workdir))
        if real.parent != Path(os.path.realpath(runs)):
            raise ToolError(f"the run folder {self.workdir} is not inside {runs}; refusing it")
        return real


@dataclass(frozen=True)
class ToolResult:
    """The text a model gets back for one tool call; ``ok`` is False for every failure."""

    ok: bool
    content: str


@dataclass(frozen=True)
class Tool:
    """A callable the model may use. ``parameters`` is the JSON schema of its arguments.

    ``fn`` is called with keyword arguments validated by ``args_model``, plus the
    :class:`ToolContext` under ``context_param`` when it declares one. ``origin`` says
    where the tool was defined, for error messages.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    args_model: type[BaseModel] | None = field(default=None, compare=False, repr=False)
    context_param: str | None = field(default=None, compare=False)
    origin: str = field(default="", compare=False)

    def spec(self) -> ToolSpec:
        """The tool as offered to a model (OpenAI ``tools`` entry)."""
        return ToolSpec(
            function=FunctionSpec(
                name=self.name, description=self.description, parameters=self.parameters
            )
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly (no validation), e.g. in tests."""
        return self.fn(*args, **kwargs)

    def arguments(self, arguments_json: str) -> dict[str, Any]:
        """The keyword arguments a model's JSON stands for, validated; ToolError (with one
        message the model can act on) when it is not JSON, not an object, or invalid."""
        try:
            args = pydantic_core.from_json((arguments_json or "").strip() or "{}")
        except ValueError as exc:
            raise ToolError(f"arguments for tool {self.name!r} are not valid JSON: {exc}") from None
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ToolError(f"arguments for tool {self.name!r} must be a JSON object")
        if self.args_model is None:
            return dict(args)
        try:
            validated = self.args_model.model_validate(args)
        except ValidationError as exc:
            expected = list(self.parameters.get("properties", {}))
            raise ToolError(_validation_message(self.name, exc, expected)) from None
        return {key: getattr(validated, key) for key in type(validated).model_fields}


# ---------------------------------------------------------------- building a Tool from a function

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


def _origin(fn: Callable[..., Any]) -> str:
    try:
        file = inspect.getsourcefile(fn) or getattr(fn, "__module__", "?")
        line = inspect.getsourcelines(fn)[1]
        return f"{file}:{line}"
    except (OSError, TypeError):
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"


def make_tool(
    fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
) -> Tool:
    """Build a :class:`Tool` from a type-hinted function (not registered anywhere).

    Raises ConfigError when the name is not a valid tool name, a parameter has no type hint
    or starts with ``_``, or the signature uses positional-only, ``*args`` or ``**kwargs``.
    """
    tool_name = name or fn.__name__
    origin = _origin(fn)
    if not _NAME_RE.match(tool_name):
        raise ConfigError(Problem(origin, f"invalid tool name {tool_name!r}"))
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception as exc:
        raise ConfigError(
            Problem(origin, f"tool {tool_name!r}: cannot resolve type hints: {exc}")
        ) from exc
    summary, arg_docs = parse_docstring(fn.__doc__)
    fields: dict[str, Any] = {}
    context_param: str | None = None
    for param in inspect.signature(fn).parameters.values():
        where = f"tool {tool_name!r}: parameter {param.name!r}"
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ConfigError(Problem(origin, f"{where}: only named parameters are supported"))
        if param.name.startswith("_"):  # pydantic would silently drop it
            raise ConfigError(Problem(origin, f"{where}: names may not start with '_'"))
        if param.name not in hints:
            raise ConfigError(Problem(origin, f"{where} needs a type hint"))
        hint = hints[param.name]
        if hint is ToolContext:
            context_param = param.name
            continue
        default = ... if param.default is param.empty else param.default
        info = Field(default, description=arg_docs.get(param.name))
        fields[param.name] = (hint, info)
    try:
        model = create_model(
            f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        parameters = json_schema(model)
    except Exception as exc:
        raise ConfigError(
            Problem(origin, f"tool {tool_name!r}: unsupported parameter types: {exc}")
        ) from exc
    return Tool(
        name=tool_name,
        description=summary if description is None else description,
        parameters=parameters,
        fn=fn,
        args_model=model,
        context_param=context_param,
        origin=origin,
    )


# ------------------------------------------------------------------------------- the registry


def _cap(text: str, max_chars: int) -> str:
    """Cut ``text`` to ``max_chars`` characters including a visible marker saying how many went."""
    if len(text) <= max_chars:
        return text
    longest_marker = f"\n[... truncated {len(text)} chars]"  # no marker is longer than this
    keep = max(max_chars - len(longest_marker), 0)
    return text[:keep] + f"\n[... truncated {len(text) - keep} chars]"


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return pydantic_core.to_json(value, fallback=str).decode()


def _validation_message(tool_name: str, exc: ValidationError, expected: Iterable[str]) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in err["loc"]) or "(arguments)"
        if err["type"] == "missing":
            lines.append(f"{loc}: missing required argument")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unexpected argument")
        else:
            got = repr(err.get("input"))
            got = got if len(got) <= 80 else got[:77] + "..."
            lines.append(f"{loc}: {err['msg']} (got {got})")
    names = ", ".join(expected) or "none"
    return (
        f"invalid arguments for tool {tool_name!r}: "
        + "; ".join(lines)
        + f". Expected arguments: {names}."
    )


WILDCARD = "__*"  # ``<group>__*``: every tool named ``<group>__...``


def _expand(pattern: str, names: Iterable[str]) -> list[str]:
    """The names ``pattern`` stands for, sorted: itself, or a group's members."""
    if not pattern.endswith(WILDCARD):
        return [pattern]
    prefix = pattern[:-1]
    return sorted(n for n in names if n.startswith(prefix))


def _allows(allowed: Collection[str], name: str) -> bool:
    if name in allowed:
        return True
    return any(p.endswith(WILDCARD) and name.startswith(p[:-1]) for p in allowed)


class ToolSource(Protocol):
    """Tools known only at run time (an MCP server's). Names are claimed without starting
    anything, so agent files validate at once; the tools are made ready on demand."""

    def claims(self, name: str) -> bool:
        """Whether ``name`` (a tool name or a ``<group>__*`` pattern) is this source's."""
        ...

    async def tools(self, names: Collection[str]) -> list[Tool]:
        """The tools ``names`` (claimed ones) stand for, ready to call; raises
        :class:`~harness.errors.ToolsUnavailable` when they cannot be made ready."""
        ...

    async def aclose(self) -> None:
        """Stop whatever the source started (processes, connections)."""
        ...


class ToolRegistry:
    """Tools by name. ``call`` runs one with validation and turns every failure into a result.

    A registry is a collection of the names it accepts in an agent's ``tools``: the tools
    it holds and the names its sources claim.
    """

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._sources: list[ToolSource] = []
        for t in tools:
            self.register(t)

    def add_source(self, source: ToolSource) -> None:
        """Take tools from ``source`` too (:meth:`prepare` registers them)."""
        self._sources.append(source)

    async def prepare(self, names: Iterable[str]) -> None:
        """Make the tools ``names`` ask for ready: a source's are fetched (its server started
        on first use) and registered, replacing an earlier listing. Raises
        :class:`~harness.errors.ToolsUnavailable` from a source that cannot serve them."""
        wanted = list(names)
        for source in self._sources:
            claimed = sorted({n for n in wanted if source.claims(n)})
            if claimed:
                for t in await source.tools(claimed):
                    self._tools[t.name] = t

    async def aclose(self) -> None:
        """Close every source (their servers stop)."""
        for source in self._sources:
            await source.aclose()

    def register(self, t: Tool, *, replace: bool = False) -> None:
        """Add ``t``. A second tool with the same name is a ConfigError naming both origins."""
        old = self._tools.get(t.name)
        if old is not None and not replace and old is not t:
            raise ConfigError(
                Problem(
                    t.origin or "<tool>",
                    f"tool {t.name!r} is defined twice: at {old.origin or '?'} "
                    f"and at {t.origin or '?'}",
                )
            )
        self._tools[t.name] = t

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> set[str]:
        return set(self._tools)

    def __contains__(self, name: object) -> bool:
        """True for a tool held, and for a name (or pattern) a source claims."""
        if not isinstance(name, str):
            return False
        return name in self._tools or any(s.claims(name) for s in self._sources)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._tools))

    def __len__(self) -> int:
        return len(self._tools)

    def specs(self, names: Iterable[str]) -> list[ToolSpec]:
        """Specs for ``names``: a sequence keeps its order, any other collection is sorted
        (a stable prompt keeps the provider's prompt cache warm); a ``<group>__*`` pattern
        becomes the group's tools held, by name. Unknown names: ConfigError."""
        given = names if isinstance(names, Sequence) else sorted(names)
        ordered = list(dict.fromkeys(n for p in given for n in _expand(p, self._tools)))
        unknown = [n for n in ordered if n not in self._tools]
        if unknown:
            raise ConfigError(f"unknown tool(s): {', '.join(unknown)}")
        return [self._tools[n].spec() for n in ordered]

    async def call(
        self,
        name: str,
        arguments_json: str,
        ctx: ToolContext,
        *,
        allowed: Collection[str],
        max_chars: int,
    ) -> ToolResult:
        """Run tool ``name`` with the model's JSON arguments; never raises for tool problems.

        Sync tools run in a worker thread. Output: a ``str`` as is, anything else as JSON;
        every content (errors included) has every known secret redacted and characters no
        database can hold replaced (:mod:`harness.scrub`), and is capped to ``max_chars``
        characters: it is stored, shown and sent back to the model.
        """
        result = await self._call(name, arguments_json, ctx, allowed)
        content = scrub.storable(scrub.redact(result.content))
        return ToolResult(ok=result.ok, content=_cap(content, max_chars))

    async def _call(
        self, name: str, arguments_json: str, ctx: ToolContext, allowed: Collection[str]
    ) -> ToolResult:
        available = ", ".join(n for p in sorted(allowed) for n in _expand(p, self._tools))
        available = available or "none"
        if not _allows(allowed, name):
            return ToolResult(
                False, f"tool {name!r} is not available to you. Available: {available}."
            )
        t = self._tools.get(name)
        if t is None:
            return ToolResult(False, f"unknown tool {name!r}. Available: {available}.")
        try:
            kwargs = t.arguments(arguments_json)
        except ToolError as exc:
            return ToolResult(False, str(exc))
        if t.context_param:
            kwargs[t.context_param] = ctx
        try:
            if inspect.iscoroutinefunction(t.fn):
                value = await t.fn(**kwargs)
            else:
                value = await run_blocking(t.fn, kwargs, name=name)
                if inspect.isawaitable(value):
                    value = await value
            return ToolResult(True, _to_text(value))
        except ControlSignal:
            raise
        except ToolError as exc:
            return ToolResult(False, f"tool {name!r} failed: {exc}")
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # a tool's own exit (argparse and click call sys.exit) is that tool's failure,
            # never the worker's; the runtime's cancellation is not caught here
            log.warning("tool_crashed", tool=name, error=type(exc).__name__, exc_info=True)
            return ToolResult(False, f"tool {name!r} crashed: {type(exc).__name__}: {exc}")


async def run_blocking(fn: Callable[..., Any], kwargs: dict[str, Any], *, name: str) -> Any:
    """Run a synchronous tool in a daemon thread of its own and wait for it. When the wait is
    cancelled (the task's wall-clock limit, a lost lease, shutdown) the thread is abandoned at
    once: it cannot hold the task, its worker slot or the process's exit. (Python cannot kill
    a thread; a tool that must be stopped hard should run its work in a subprocess.)"""
    done = anyio.Event()
    outcome: list[Any] = []
    token = anyio.lowlevel.current_token()

    def target() -> None:
        try:
            outcome.append((True, fn(**kwargs)))
        except BaseException as exc:  # handed to the waiting task, which decides
            outcome.append((False, exc))
        with contextlib.suppress(Exception):  # the loop may be gone (abandoned at exit)
            anyio.from_thread.run_sync(done.set, token=token)

    threading.Thread(target=target, name=f"tool {name}", daemon=True).start()
    await done.wait()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


# ------------------------------------------------------------------ decorator and discovery

_GLOBAL = ToolRegistry()
_collectors: list[list[Tool]] = []


def global_registry() -> ToolRegistry:
    """The process-wide registry every ``@tool`` also registers into (last definition wins)."""
    return _GLOBAL


@overload
def tool(
    fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
) -> Tool: ...


@overload
def tool(
    fn: None = None, *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function a tool: ``@tool`` or ``@tool(name=..., description=...)``.

    The description defaults to the docstring's first paragraph; an ``Args:`` section gives
    per-parameter descriptions. The tool goes into :func:`global_registry` (replacing one of
    the same name) and into the workspace being loaded, if any.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        t = make_tool(f, name=name, description=description)
        _GLOBAL.register(t, replace=True)
        if _collectors:
            _collectors[-1].append(t)
        return t

    return wrap if fn is None else wrap(fn)


def _import_error(path: Path, exc: BaseException) -> ConfigError:
    if isinstance(exc, SyntaxError):
        return ConfigError(Problem(str(path), f"syntax error: {exc.msg}", line=exc.lineno))
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename) == path:
            line = frame.lineno
    return ConfigError(
        Problem(str(path), f"could not import: {type(exc).__name__}: {exc}", line=line)
    )


def load_workspace_tools(
    tools_dir: Path, registry: ToolRegistry, problems: list[Problem] | None = None
) -> list[str]:
    """Import every ``tools_dir/*.py`` not starting with ``_`` and register its ``@tool``s.

    Each file becomes a module under a private name. Returns the registered names in load
    order. Every file is tried: one that fails to import (its line named when known; a
    ``sys.exit()`` at import too) or defines a name twice is a problem; with ``problems``
    given they are added to it, else they raise one ConfigError once every file was tried.
    A missing folder yields ``[]``.
    """
    if not tools_dir.is_dir():
        return []
    tag = hashlib.sha1(str(tools_dir.resolve()).encode()).hexdigest()[:10]
    names: list[str] = []
    found_problems: list[Problem] = []
    for path in sorted(tools_dir.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            for t in _import_tools(path, f"_harness_workspace_{tag}_{path.stem}"):
                registry.register(t)
                names.append(t.name)
        except ConfigError as exc:
            found_problems += exc.problems
    if problems is not None:
        problems += found_problems
    elif found_problems:
        raise ConfigError(found_problems)
    return names


def _import_tools(path: Path, module_name: str) -> list[Tool]:
    """The ``@tool``s defined by importing ``path``; ConfigError naming the file (one that
    is not a regular file, a FIFO say, is refused unopened: reading it could block)."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError as exc:
        raise ConfigError(Problem(str(path), f"cannot read: {exc.strerror or exc}")) from None
    if not regular:
        raise ConfigError(Problem(str(path), "is not a regular file; expected Python source"))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(Problem(str(path), "cannot be imported as a module"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # pydantic resolves forward refs through it
    found: list[Tool] = []
    _collectors.append(found)
    try:
        spec.loader.exec_module(module)
    except ConfigError:  # from @tool itself: it already names the file and line
        sys.modules.pop(module_name, None)
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # sys.exit() at import too
        sys.modules.pop(module_name, None)
        raise _import_error(path, exc) from exc
    finally:
        _collectors.pop()
    return found
