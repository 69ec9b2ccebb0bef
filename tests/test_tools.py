"""The tool registry: schemas from signatures, validation, failures as results, discovery."""

from __future__ import annotations

import enum
import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from harness.errors import BudgetExceeded, ConfigError, ToolError
from harness.settings import Settings
from harness.tools import (
    BUILTIN_TOOL_NAMES,
    Tool,
    ToolContext,
    ToolRegistry,
    default_registry,
    delegate_spec,
    global_registry,
    load_workspace_tools,
    make_tool,
    tool,
)
from harness.tools.schema import parse_docstring

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent


class NoNotes:
    async def append_note(self, agent: str, text: str) -> int:
        raise AssertionError("not used")

    async def search_notes(
        self, agent: str, query: str, limit: int = 10
    ) -> list[tuple[int, str, datetime]]:
        raise AssertionError("not used")

    async def read_notes(self, agent: str, limit: int = 20) -> list[tuple[int, str, datetime]]:
        raise AssertionError("not used")


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(
        run_id=1,
        task_id=2,
        agent="veblen",
        workdir=tmp_path / "run",
        settings=Settings(),
        notes=NoNotes(),
    )


def has_key(node: Any, key: str) -> bool:
    if isinstance(node, dict):
        return any(k == key or has_key(v, key) for k, v in node.items())
    if isinstance(node, list):
        return any(has_key(v, key) for v in node)
    return False


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: int
    title: str = "origin"


def sample(
    count: int,
    mode: Literal["fast", "slow"],
    tags: list[str],
    color: Color = Color.RED,
    where: Point | None = None,
    limit: Annotated[int, Field(ge=1, le=5)] = 3,
    note: str | None = None,
) -> str:
    """Do a sample thing.

    More detail that is not part of the description.

    Args:
        count: How many times,
            spread over two lines.
        mode (str): The speed.
        tags: Labels to attach.

    Returns:
        Nothing useful.
    """
    return "ok"


# ------------------------------------------------------------------------------ schemas


def test_schema_is_precise() -> None:
    t = make_tool(sample)
    p = t.parameters
    assert t.description == "Do a sample thing."
    assert p["type"] == "object"
    assert p["additionalProperties"] is False
    assert p["required"] == ["count", "mode", "tags"]
    props = p["properties"]
    assert props["count"] == {
        "type": "integer",
        "description": "How many times, spread over two lines.",
    }
    assert props["mode"] == {
        "type": "string",
        "enum": ["fast", "slow"],
        "description": "The speed.",
    }
    assert props["tags"] == {
        "type": "array",
        "items": {"type": "string"},
        "description": "Labels to attach.",
    }
    assert props["color"] == {"type": "string", "enum": ["red", "blue"], "default": "red"}
    assert props["limit"] == {"type": "integer", "minimum": 1, "maximum": 5, "default": 3}
    assert props["note"] == {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
    point = props["where"]["anyOf"][0]
    assert point["type"] == "object"
    assert point["additionalProperties"] is False
    assert point["required"] == ["x"]
    assert set(point["properties"]) == {"x", "title"}  # a property named "title" survives
    assert not has_key(p, "$ref") and not has_key(p, "$defs")
    assert "title" not in p and "title" not in props["count"]
    json.dumps(t.spec().model_dump())  # wire-serialisable


def test_spec_and_name_override() -> None:
    @tool(name="renamed", description="Custom words.")
    def original(a: int) -> int:
        return a

    assert isinstance(original, Tool)
    spec = original.spec()
    assert spec.function.name == "renamed"
    assert spec.function.description == "Custom words."
    assert global_registry().get("renamed") is original


def test_bare_decorator_no_params_and_direct_call() -> None:
    @tool
    def ping() -> str:
        return "pong"

    assert ping.parameters == {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": False,
    }
    assert ping() == "pong"


def test_context_parameter_is_hidden() -> None:
    def f(ctx: ToolContext, q: str) -> str:
        return q

    t = make_tool(f)
    assert list(t.parameters["properties"]) == ["q"]
    assert t.context_param == "ctx"


class Tree(BaseModel):
    value: int
    children: list[Tree] = []


def test_recursive_model_keeps_defs() -> None:
    def f(tree: Tree) -> int:
        return tree.value

    p = make_tool(f).parameters
    tree = p["properties"]["tree"]
    assert tree["properties"]["value"] == {"type": "integer"}
    assert tree["properties"]["children"]["items"] == {"$ref": "#/$defs/Tree"}
    assert p["$defs"]["Tree"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Tree"}
    assert p["$defs"]["Tree"]["additionalProperties"] is False


def test_bad_signatures_are_config_errors() -> None:
    def untyped(a) -> str:  # type: ignore[no-untyped-def]
        return ""

    def star(*args: int) -> str:
        return ""

    with pytest.raises(ConfigError, match="'a' needs a type hint"):
        make_tool(untyped)
    with pytest.raises(ConfigError, match="only named parameters"):
        make_tool(star)

    def private(_x: int) -> str:
        return ""

    with pytest.raises(ConfigError, match="may not start with '_'"):
        make_tool(private)
    with pytest.raises(ConfigError, match="invalid tool name"):
        make_tool(lambda: None, name="has space")


def test_parse_docstring_variants() -> None:
    assert parse_docstring(None) == ("", {})
    summary, args = parse_docstring(
        """Line one
        continues here.

        Arguments:
            x: the x.
        """
    )
    assert summary == "Line one continues here."
    assert args == {"x": "the x."}


# ------------------------------------------------------------------------------ calling


async def add(a: int, b: int = 1) -> int:
    """Add two numbers."""
    return a + b


def sync_echo(ctx: ToolContext, text: str) -> dict[str, Any]:
    return {"text": text, "agent": ctx.agent, "thread": threading.get_ident()}


def fails() -> str:
    raise ToolError("the thing is broken")


def crashes() -> str:
    raise KeyError("boom")


def signals() -> str:
    raise BudgetExceeded("a", "tokens", 1, 1, 1, "2024-01-01")


def shout(text: str) -> str:
    return text * 1000


def takes_point(p: Point, c: Color) -> str:
    return f"{type(p).__name__}:{p.x}:{c.value}"


@pytest.fixture
def reg() -> ToolRegistry:
    return ToolRegistry(
        make_tool(f) for f in (add, sync_echo, fails, crashes, signals, shout, takes_point)
    )


ALL = ("add", "sync_echo", "fails", "crashes", "signals", "shout", "takes_point", "ghost")


async def test_async_tool_validates_and_coerces(reg: ToolRegistry, ctx: ToolContext) -> None:
    r = await reg.call("add", '{"a": 2, "b": "3"}', ctx, allowed=ALL, max_chars=1000)
    assert r.ok and r.content == "5"
    r = await reg.call("add", '{"a": 2}', ctx, allowed=ALL, max_chars=1000)
    assert r.ok and r.content == "3"


async def test_sync_tool_gets_context_and_runs_in_a_thread(
    reg: ToolRegistry, ctx: ToolContext
) -> None:
    r = await reg.call("sync_echo", '{"text": "hi"}', ctx, allowed=ALL, max_chars=1000)
    assert r.ok
    out = json.loads(r.content)
    assert out["text"] == "hi" and out["agent"] == "veblen"
    assert out["thread"] != threading.get_ident()


async def test_models_and_enums_arrive_as_objects(reg: ToolRegistry, ctx: ToolContext) -> None:
    r = await reg.call(
        "takes_point", '{"p": {"x": 4}, "c": "blue"}', ctx, allowed=ALL, max_chars=1000
    )
    assert r.ok and r.content == "Point:4:blue"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ('{"a": "many"}', "a: Input should be a valid integer"),
        ('{"b": 2}', "a: missing required argument"),
        ('{"a": 1, "zzz": 2}', "zzz: unexpected argument"),
        ('{"a": 1', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
async def test_bad_arguments_become_results(
    reg: ToolRegistry, ctx: ToolContext, args: str, expected: str
) -> None:
    r = await reg.call("add", args, ctx, allowed=ALL, max_chars=1000)
    assert not r.ok
    assert "'add'" in r.content
    assert expected in r.content


async def test_nested_validation_error_names_the_path(reg: ToolRegistry, ctx: ToolContext) -> None:
    r = await reg.call(
        "takes_point", '{"p": {"x": "no"}, "c": "green"}', ctx, allowed=ALL, max_chars=1000
    )
    assert not r.ok
    assert "p.x:" in r.content and "c:" in r.content and "'red' or 'blue'" in r.content


async def test_empty_arguments_mean_no_arguments(ctx: ToolContext) -> None:
    reg = ToolRegistry([make_tool(lambda: "done", name="noargs")])
    for raw in ("", "  ", "null", "{}"):
        r = await reg.call("noargs", raw, ctx, allowed={"noargs"}, max_chars=100)
        assert r == r.__class__(True, "done")


async def test_tool_error_becomes_result(reg: ToolRegistry, ctx: ToolContext) -> None:
    r = await reg.call("fails", "{}", ctx, allowed=ALL, max_chars=1000)
    assert not r.ok
    assert r.content == "tool 'fails' failed: the thing is broken"


async def test_unexpected_exception_names_its_type(reg: ToolRegistry, ctx: ToolContext) -> None:
    r = await reg.call("crashes", "{}", ctx, allowed=ALL, max_chars=1000)
    assert not r.ok
    assert "KeyError" in r.content and "boom" in r.content


async def test_control_signals_propagate(reg: ToolRegistry, ctx: ToolContext) -> None:
    with pytest.raises(BudgetExceeded):
        await reg.call("signals", "{}", ctx, allowed=ALL, max_chars=1000)


async def test_not_allowed_and_unknown(reg: ToolRegistry, ctx: ToolContext) -> None:
    r = await reg.call("add", '{"a": 1}', ctx, allowed={"shout"}, max_chars=1000)
    assert not r.ok
    assert "'add' is not available" in r.content and "shout" in r.content
    r = await reg.call("ghost", "{}", ctx, allowed=ALL, max_chars=1000)
    assert not r.ok
    assert "unknown tool 'ghost'" in r.content


async def test_output_is_capped_with_a_marker(reg: ToolRegistry, ctx: ToolContext) -> None:
    r = await reg.call("shout", '{"text": "abcde"}', ctx, allowed=ALL, max_chars=300)
    assert r.ok
    assert len(r.content) <= 300
    head, marker = r.content.rsplit("\n", 1)
    assert marker == f"[... truncated {5000 - len(head)} chars]"
    assert head == ("abcde" * 1000)[: len(head)]
    r = await reg.call("shout", '{"text": "a"}', ctx, allowed=ALL, max_chars=1000)
    assert r.content == "a" * 1000  # exactly at the cap: untouched


def test_duplicate_registration_names_both_origins() -> None:
    def add(x: int) -> int:  # same name as the module-level one
        return x

    reg = ToolRegistry([make_tool(globals()["add"])])
    with pytest.raises(ConfigError) as info:
        reg.register(make_tool(add))
    message = str(info.value)
    assert "'add' is defined twice" in message
    assert message.count("test_tools.py:") >= 2


def test_specs_order_and_unknown(reg: ToolRegistry) -> None:
    assert [s.function.name for s in reg.specs(["shout", "add"])] == ["shout", "add"]
    assert [s.function.name for s in reg.specs({"shout", "add"})] == ["add", "shout"]
    with pytest.raises(ConfigError, match="ghost"):
        reg.specs(["add", "ghost"])


# ----------------------------------------------------------------- built-ins and delegate


async def test_default_registry_and_delegate(ctx: ToolContext) -> None:
    reg = default_registry()
    assert reg.names() == BUILTIN_TOOL_NAMES
    assert "delegate" in BUILTIN_TOOL_NAMES
    r = await reg.call(
        "delegate", '{"agent": "a", "task": "t"}', ctx, allowed={"delegate"}, max_chars=500
    )
    assert not r.ok and "agent loop" in r.content


def test_delegate_spec() -> None:
    spec = delegate_spec(["veblen", "simmons"], {"veblen": "Economist.\n  Reads a lot."})
    params = spec.function.parameters
    assert spec.function.name == "delegate"
    assert params["properties"]["agent"]["enum"] == ["veblen", "simmons"]
    assert params["required"] == ["agent", "task"]
    assert params["additionalProperties"] is False
    assert "- veblen: Economist. Reads a lot." in spec.function.description
    assert "- simmons: (no description)" in spec.function.description
    with pytest.raises(ConfigError):
        delegate_spec([], {})


# ------------------------------------------------------------------------ workspace discovery


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


GOOD = '''
from __future__ import annotations
from typing import Literal
from harness.tools import ToolContext, tool

@tool
def greet(ctx: ToolContext, who: str, tone: Literal["warm", "dry"] = "warm") -> str:
    """Greet someone."""
    return f"{tone} hello {who} from {ctx.agent}"

@tool(name="shout_it")
def _shout(text: str) -> str:
    return text.upper()

not_a_tool = 3
'''


async def test_load_workspace_tools(tmp_path: Path, ctx: ToolContext) -> None:
    tools_dir = tmp_path / "tools"
    write(tools_dir, "greeting.py", GOOD)
    write(tools_dir, "_private.py", "raise RuntimeError('must not be imported')\n")
    write(tools_dir, "notes.txt", "not python")
    reg = default_registry()
    names = load_workspace_tools(tools_dir, reg)
    assert names == ["greet", "shout_it"]
    spec = reg.specs(["greet"])[0].function
    assert spec.description == "Greet someone."
    assert spec.parameters["properties"]["tone"]["enum"] == ["warm", "dry"]
    r = await reg.call("greet", '{"who": "Ann"}', ctx, allowed=names, max_chars=100)
    assert r.content == "warm hello Ann from veblen"
    assert load_workspace_tools(tmp_path / "missing", reg) == []


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "tools", "broken.py", "x = 1\ndef oops(:\n")
    with pytest.raises(ConfigError) as info:
        load_workspace_tools(tmp_path / "tools", ToolRegistry())
    problem = info.value.problems[0]
    assert problem.file == str(path) and problem.line == 2
    assert "broken.py:2" in str(info.value)


def test_import_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "tools", "bad.py", "import os\n\nimport no_such_module_xyz\n")
    with pytest.raises(ConfigError) as info:
        load_workspace_tools(tmp_path / "tools", ToolRegistry())
    problem = info.value.problems[0]
    assert problem.file == str(path) and problem.line == 3
    assert "ModuleNotFoundError" in problem.message


def test_untyped_workspace_tool_names_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "tools",
        "untyped.py",
        "from harness.tools import tool\n\n@tool\ndef f(x):\n    return x\n",
    )
    with pytest.raises(ConfigError, match=f"{path}:3.*'x' needs a type hint"):
        load_workspace_tools(tmp_path / "tools", ToolRegistry())


def test_workspace_tool_clashing_with_a_builtin(tmp_path: Path) -> None:
    src = (
        "from harness.tools import tool\n\n@tool\ndef read_file(path: str) -> str:\n    return ''\n"
    )
    path = write(tmp_path / "tools", "mine.py", src)
    with pytest.raises(ConfigError) as info:
        load_workspace_tools(tmp_path / "tools", default_registry())
    message = str(info.value)
    assert "tools/builtin.py" in message and f"{path}:3" in message


async def test_repository_example_tool(ctx: ToolContext) -> None:
    reg = ToolRegistry()
    names = load_workspace_tools(REPO / "tools", reg)
    assert "current_time" in names
    r = await reg.call("current_time", "{}", ctx, allowed=names, max_chars=500)
    assert r.ok and "ISO week" in r.content and "UTC" in r.content
    r = await reg.call(
        "current_time", '{"timezone": "Mars/Olympus"}', ctx, allowed=names, max_chars=500
    )
    assert not r.ok and "unknown time zone" in r.content
