"""What is known about each configured model: its context window and its prices, and where
each figure came from.

The window comes from the server where it says (a server probe: llama.cpp's ``/props``
``n_ctx``, vLLM's ``max_model_len``; the embedded server's ``local.n_ctx``), else from the
config, else from the model catalogue, else :data:`~harness.settings.DEFAULT_WINDOW`. Prices
come from the config where set, else from the catalogue, else they are 0 (the ledger then
counts the model's calls as free: ``harness models`` says so). The catalogue is pydantic's
``genai-prices`` (offline data kept up to date by its maintainers), imported only when a
figure is missing from the config: it takes 100-200 ms to load. So a runtime keeps what it
found for its models in the workspace (``var/catalogue.json``, :class:`Kept`): the next
process reads its few entries in a millisecond instead, for as long as the same genai-prices
version is installed, on the same UTC day (a catalogue price may change on a date; a worker
that runs for days keeps its first answer all the same).

:func:`resolve` returns the settings with every figure filled in (what the runtime, the
ledger and the budgets use) and the :class:`Facts` that ``harness models`` shows.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..settings import DEFAULT_WINDOW, ModelConfig, Settings

__all__ = ["KEPT_FILE", "Entry", "Facts", "Kept", "lookup", "resolve"]

KEPT_FILE = "catalogue.json"  # in a workspace's var/ folder


@dataclass(frozen=True)
class Entry:
    """The catalogue's figures for one model (None where it has none)."""

    window: int | None
    price_input: float | None
    price_cached_input: float | None
    price_output: float | None
    source: str  # e.g. "genai-prices 0.2.3: openai/gpt-4.1-mini"


@dataclass(frozen=True)
class Facts:
    """One model as harness uses it, each figure with its source."""

    name: str
    provider: str
    endpoint: str
    wire_id: str
    window: int
    window_source: str
    price_input: float
    price_cached_input: float
    price_output: float
    price_source: str
    tools: str
    max_tokens: int


@functools.cache
def lookup(model_id: str, base_url: str | None = None) -> Entry | None:
    """The catalogue's entry for ``model_id`` (served at ``base_url``), or None."""
    try:
        from genai_prices import data_snapshot
    except ImportError:  # not installed: no catalogue
        return None
    snapshot = data_snapshot.get_snapshot()
    try:
        provider, model = snapshot.find_provider_model(model_id, None, None, base_url)
    except LookupError:
        if base_url is None:
            return None
        return lookup(model_id, None)  # a gateway serving a known model under its own URL
    prices = model.get_prices(datetime.now(UTC))
    version = importlib.metadata.version("genai-prices")
    return Entry(
        window=model.context_window,
        price_input=_per_million(getattr(prices, "input_mtok", None)),
        price_cached_input=_per_million(getattr(prices, "cache_read_mtok", None)),
        price_output=_per_million(getattr(prices, "output_mtok", None)),
        source=f"genai-prices {version}: {provider.id}/{model.id}",
    )


def _catalogue_version() -> str:
    try:
        return importlib.metadata.version("genai-prices")
    except importlib.metadata.PackageNotFoundError:
        return "none"


@dataclass
class Kept:
    """The catalogue's answers for a workspace's models, kept in a JSON file between
    processes; valid for one genai-prices version and one UTC day, else found again. An
    unreadable, damaged or foreign file is as good as none; one that cannot be written is
    left as it is."""

    path: Path
    stamp: str
    entries: dict[str, Any] = field(default_factory=dict)
    changed: bool = False

    @classmethod
    def open(cls, path: Path) -> Kept:
        stamp = f"genai-prices {_catalogue_version()}, {datetime.now(UTC).date().isoformat()}"
        kept = cls(path, stamp)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return kept
        if isinstance(data, dict) and data.get("stamp") == stamp:
            entries = data.get("entries")
            kept.entries = entries if isinstance(entries, dict) else {}
        return kept

    def lookup(self, model_id: str, base_url: str | None) -> Entry | None:
        """:func:`lookup`, answered from the file when it has the answer."""
        key = f"{model_id} at {base_url or ''}"
        if key in self.entries:
            raw = self.entries[key]
            if raw is None:
                return None
            entry = _entry_from(raw)
            if entry is not None:
                return entry
        found = lookup(model_id, base_url)
        self.entries[key] = None if found is None else asdict(found)
        self.changed = True
        return found

    def save(self) -> None:
        """Write the file if anything was added (atomically: a reader sees the old or the
        new one)."""
        if not self.changed:
            return
        text = json.dumps({"stamp": self.stamp, "entries": self.entries}, indent=1)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        except OSError:
            return
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
        self.changed = False


def _entry_from(raw: Any) -> Entry | None:
    """An Entry from its JSON form, or None when any field is missing or of the wrong type."""
    if not isinstance(raw, dict) or set(raw) != {f.name for f in fields(Entry)}:
        return None
    if not isinstance(raw["source"], str):
        return None
    window = raw["window"]
    if window is not None and (type(window) is not int or window <= 0):
        return None
    prices = {k: raw[k] for k in ("price_input", "price_cached_input", "price_output")}
    for price in prices.values():
        if price is not None and (type(price) not in (int, float) or not 0 <= price < math.inf):
            return None
    return Entry(
        window=window,
        **{k: None if p is None else float(p) for k, p in prices.items()},
        source=raw["source"],
    )


def _per_million(value: Any) -> float | None:
    """A price as USD per million tokens (a tiered price: its base tier)."""
    if value is None:
        return None
    base = getattr(value, "base", value)
    try:
        return float(base)
    except (TypeError, ValueError):
        return None


def resolve(
    settings: Settings,
    reported: Mapping[str, tuple[int, str]] | None = None,
    *,
    kept: Path | None = None,
) -> tuple[Settings, dict[str, Facts]]:
    """Settings with every model's window and prices filled in, and each model's facts.
    ``reported``: model name -> (window, source) that servers reported. ``kept``: the file
    of :class:`Kept` answers to read the catalogue's from (and add to)."""
    reported = reported or {}
    book = Kept.open(kept) if kept is not None else None
    models: dict[str, ModelConfig] = {}
    facts: dict[str, Facts] = {}
    for name, cfg in settings.models.items():
        provider = settings.providers.get(cfg.provider)
        base_url = provider.base_url if provider else ""
        entry = _catalogue(settings, cfg, base_url, book)
        window, window_source = _window(settings, name, cfg, entry, reported)
        filled, price_source = _prices(cfg, entry)
        models[name] = filled.model_copy(update={"context_window": window})
        facts[name] = Facts(
            name=name,
            provider=cfg.provider,
            endpoint=base_url,
            wire_id=cfg.id,
            window=window,
            window_source=window_source,
            price_input=filled.price_input or 0.0,
            price_cached_input=filled.price_cached_input
            if filled.price_cached_input is not None
            else filled.price_input or 0.0,
            price_output=filled.price_output or 0.0,
            price_source=price_source,
            tools=cfg.tools,
            max_tokens=cfg.max_tokens,
        )
    if book is not None:
        book.save()
    return settings.model_copy(update={"models": models}), facts


def _is_local(settings: Settings, cfg: ModelConfig) -> bool:
    provider = settings.providers.get(cfg.provider)
    return provider is not None and provider.local


def _catalogue(
    settings: Settings, cfg: ModelConfig, base_url: str, book: Kept | None
) -> Entry | None:
    needed = cfg.context_window is None or None in (cfg.price_input, cfg.price_output)
    if not needed or _is_local(settings, cfg):  # the embedded model is in no catalogue
        return None
    if book is not None:
        return book.lookup(cfg.id, base_url or None)
    return lookup(cfg.id, base_url or None)


def _window(
    settings: Settings,
    name: str,
    cfg: ModelConfig,
    entry: Entry | None,
    reported: Mapping[str, tuple[int, str]],
) -> tuple[int, str]:
    if name in reported:
        return reported[name]
    if _is_local(settings, cfg):  # harness starts that server: it knows its n_ctx
        return settings.local.n_ctx, "server (the embedded llama.cpp's local.n_ctx)"
    if cfg.context_window is not None:
        return cfg.context_window, f"config (models.{name}.context_window)"
    if entry is not None and entry.window:
        return entry.window, entry.source
    return DEFAULT_WINDOW, f"default ({DEFAULT_WINDOW}: no server, config or catalogue says)"


def _prices(cfg: ModelConfig, entry: Entry | None) -> tuple[ModelConfig, str]:
    configured = cfg.price_input is not None or cfg.price_output is not None
    if configured:
        return cfg, "config"
    if entry is None or (entry.price_input is None and entry.price_output is None):
        free = cfg.model_copy(update={"price_input": 0.0, "price_output": 0.0})
        return free, "none (calls counted as $0: set price_input/price_output)"
    filled = cfg.model_copy(
        update={
            "price_input": entry.price_input or 0.0,
            "price_cached_input": entry.price_cached_input,
            "price_output": entry.price_output or 0.0,
        }
    )
    return filled, entry.source
