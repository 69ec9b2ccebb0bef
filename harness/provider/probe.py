"""Asking a provider's server what it serves, before any model call: reachable or not, the key
accepted or not, which models it lists, and the context windows it reports.

``GET {base_url}/models`` answers on every OpenAI-compatible server (vLLM adds each model's
``max_model_len``); llama.cpp's own server also answers ``GET /props`` with its ``n_ctx``.
A probe never raises: it returns what it found, with a sentence for what went wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from ..errors import Problem
from ..settings import CONFIG_FILE, HOSTED, ProviderConfig, Settings
from .transport import default_transport, plain_http_text

#: A provider's pooled HTTP client by provider name (the one its model calls use).
Clients = Callable[[str], httpx.AsyncClient]

__all__ = [
    "Clients",
    "Probe",
    "complaints",
    "config_key",
    "probe",
    "probe_models",
    "reported_windows",
    "where",
]

PROBE_TIMEOUT_S = 5.0


@dataclass
class Probe:
    """What one provider's server said (``problem`` is None when it answered)."""

    provider: str
    url: str
    status: int | None = None
    problem: str | None = None
    kind: str | None = None  # "connect", "auth", "not_found", "http"
    model_ids: list[str] = field(default_factory=list)
    windows: dict[str, int] = field(default_factory=dict)  # wire id -> window
    server_window: int | None = None  # one window for every model (llama.cpp's n_ctx)


async def probe(
    name: str,
    config: ProviderConfig,
    timeout_s: float = PROBE_TIMEOUT_S,
    client: httpx.AsyncClient | None = None,
) -> Probe:
    """Probe one provider; never raises. With ``client`` (the provider's own, which carries
    its headers and key), the probe's connection stays in its pool for the first model call;
    without, a client of the same transport is made for the probe and closed."""
    found = Probe(provider=name, url=config.base_url)
    try:
        with anyio.fail_after(timeout_s + 1):
            if client is not None:
                await _ask(found, client, config.base_url, timeout_s)
            else:
                async with _own_client(config) as own:
                    await _ask(found, own, config.base_url, timeout_s)
    except (httpx.HTTPError, OSError, TimeoutError) as exc:
        found.kind = "connect"
        found.problem = f"cannot reach {config.base_url}: {_describe(exc, config.base_url)}"
    return found


def _own_client(config: ProviderConfig) -> httpx.AsyncClient:
    headers = {"user-agent": "harness", **config.headers}
    key = config.api_key()
    if key:
        headers["authorization"] = f"Bearer {key}"
    # the calls' transport: aiohttp, no CA bundle loaded for a plain-HTTP URL
    transport = default_transport(config)
    return httpx.AsyncClient(transport=transport, trust_env=True, headers=headers)


async def _ask(found: Probe, client: httpx.AsyncClient, base_url: str, timeout_s: float) -> None:
    response = await client.get(base_url + "/models", timeout=timeout_s)
    _read_models(found, response)
    if found.problem is None:
        await _read_props(found, client, base_url, timeout_s)


def _describe(exc: BaseException, base_url: str) -> str:
    text = str(exc).strip()
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "no answer in time"
    return plain_http_text(text, base_url) or type(exc).__name__


def _read_models(found: Probe, response: httpx.Response) -> None:
    found.status = response.status_code
    if response.status_code in (401, 403):
        found.kind = "auth"
        found.problem = f"the API key was refused (HTTP {response.status_code})"
        return
    if response.status_code == 404:
        found.kind = "not_found"
        found.problem = (
            f"no OpenAI-compatible API at {found.url} (GET /models: HTTP 404; "
            "does the URL end in /v1?)"
        )
        return
    if response.status_code >= 400:
        found.kind = "http"
        found.problem = f"GET {found.url}/models answered HTTP {response.status_code}"
        return
    try:
        data = response.json().get("data") or []
    except (ValueError, AttributeError):
        return  # not a listing: the endpoint may still answer chat completions
    for item in data if isinstance(data, list) else []:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            found.model_ids.append(item["id"])
            window = item.get("max_model_len")  # vLLM
            if isinstance(window, int) and window > 0:
                found.windows[item["id"]] = window


async def _read_props(
    found: Probe, client: httpx.AsyncClient, base_url: str, timeout_s: float
) -> None:
    """llama.cpp's server: ``GET /props`` (beside ``/v1``) reports its ``n_ctx``."""
    root = base_url.removesuffix("/v1")
    try:
        response = await client.get(root + "/props", timeout=timeout_s)
        props: Any = response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return
    settings = props.get("default_generation_settings") if isinstance(props, dict) else None
    n_ctx = (settings or {}).get("n_ctx") if isinstance(settings, dict) else None
    n_ctx = n_ctx or (props.get("n_ctx") if isinstance(props, dict) else None)
    if isinstance(n_ctx, int) and n_ctx > 0:
        found.server_window = n_ctx


async def probe_models(
    settings: Settings, models: set[str], clients: Clients | None = None
) -> dict[str, Probe]:
    """Probe the providers of ``models`` (not the embedded one: harness started it), side by
    side; by provider name. ``clients``: each provider's own client, to probe through."""
    names = {settings.models[m].provider for m in models if m in settings.models}
    wanted = {n: settings.providers[n] for n in names if not settings.providers[n].local}
    found: dict[str, Probe] = {}

    async def one(name: str, config: ProviderConfig) -> None:
        client = clients(name) if clients is not None else None
        found[name] = await probe(name, config, client=client)

    async with anyio.create_task_group() as tg:
        for name, config in wanted.items():
            tg.start_soon(one, name, config)
    return found


def reported_windows(settings: Settings, probes: dict[str, Probe]) -> dict[str, tuple[int, str]]:
    """Model name -> (window, source) from what the servers reported."""
    out: dict[str, tuple[int, str]] = {}
    for name, cfg in settings.models.items():
        found = probes.get(cfg.provider)
        if found is None:
            continue
        if cfg.id in found.windows:
            out[name] = (found.windows[cfg.id], "server (GET /models max_model_len)")
        elif found.server_window:
            out[name] = (found.server_window, "server (GET /props n_ctx)")
    return out


def where(settings: Settings, model: str) -> str:
    """``model 'hosted' (gpt-4.1-mini) at https://...``: what a message about a model says."""
    cfg = settings.models[model]
    provider = settings.providers[cfg.provider]
    return f"model {model!r} ({cfg.id}) at {provider.base_url}"


def config_key(settings: Settings, model: str, kind: str | None) -> str:
    """The setting to change for a problem of ``kind`` with ``model`` (and its short form)."""
    cfg = settings.models[model]
    provider = settings.providers[cfg.provider]
    if kind == "auth":
        env = provider.api_key_env or "HARNESS_API_KEY"
        return f"providers.{cfg.provider}.api_key_env (the key in ${env})"
    if kind == "model":
        short = " or HARNESS_MODEL" if model == HOSTED else ""
        return f"models.{model}.id{short}"
    short = " or HARNESS_BASE_URL" if cfg.provider == HOSTED else ""
    return f"providers.{cfg.provider}.base_url{short}"


def complaints(settings: Settings, models: set[str], probes: dict[str, Probe]) -> list[Problem]:
    """What the probes of ``models``' providers found wrong, one problem per model, naming
    the model, the endpoint and the setting to change."""
    out = []
    for model in sorted(models):
        found = probes.get(settings.models[model].provider)
        if found is not None and found.problem is not None:
            key = config_key(settings, model, found.kind)
            out.append(Problem(CONFIG_FILE, f"{where(settings, model)}: {found.problem}", key))
    return out
