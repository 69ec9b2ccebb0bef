"""docker-compose.yml is consistent with the settings (Docker itself is not on this machine)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from harness.settings import Settings, apply_env, load_settings
from tests.conftest import REPO


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def _resolve(value: str) -> str:
    """Expand ``${NAME:-default}`` the way compose does when NAME is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_services_and_build() -> None:
    compose = _compose()
    assert set(compose["services"]) == {"harness", "llm", "postgres"}
    assert compose["services"]["harness"]["build"] == "."
    assert (REPO / "Dockerfile").is_file()
    assert "harness" in (REPO / "Dockerfile").read_text()


def test_worker_environment_is_valid_settings(tmp_path: Path) -> None:
    env = {k: _resolve(str(v)) for k, v in _compose()["services"]["harness"]["environment"].items()}
    assert all(k.startswith("HARNESS_") for k in env)
    toml = (REPO / "config/harness.toml").read_text()
    (tmp_path / "config").mkdir()
    (tmp_path / "config/harness.toml").write_text(toml)
    settings = load_settings(tmp_path, env)
    assert settings.database_url.startswith("postgresql+psycopg://postgres:")
    assert "@postgres:5432/" in settings.database_url
    provider = settings.provider_for(settings.default_model)
    assert provider.base_url == "http://llm:8080/v1" and provider.local is False
    assert settings.local.autostart is False
    # every variable names a real settings key (a typo would silently do nothing)
    data = apply_env({}, env)
    Settings.model_validate({k: v for k, v in data.items() if k not in ("providers", "models")})


def test_llm_service_port_matches_the_worker_url() -> None:
    services = _compose()["services"]
    assert "8080:8080" in services["llm"]["ports"]
    assert "--port" in services["llm"]["command"]
    assert services["harness"]["depends_on"]["postgres"]["condition"] == "service_healthy"
