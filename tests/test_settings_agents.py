"""Settings (TOML + environment) and agent files: loading and every validation problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.agents import load_team, parse_agent_file
from harness.errors import ConfigError
from harness.runtime import load_tools
from harness.settings import Workspace, apply_env, load_settings, load_workspace


def test_default_workspace_loads(workspace_dir: Path) -> None:
    ws = load_workspace(workspace_dir)
    assert ws.settings.default_model == "local" and ws.settings.chief == "arnold"
    team = load_team(ws.agents_dir, ws.settings, load_tools(ws).names())
    assert team.names() == ["arnold", "bradlee", "gulbenkian", "simmons", "veblen"]
    assert team["arnold"].delegates_to == ["veblen", "simmons", "bradlee", "gulbenkian"]
    assert all(len(team[n].prompt) > 200 for n in team.names())
    assert ws.database_url() == f"sqlite:///{workspace_dir}/var/harness.db"


def test_settings_are_frozen(workspace_dir: Path) -> None:
    settings = load_settings(workspace_dir)
    with pytest.raises(Exception, match="frozen"):
        settings.timezone = "UTC"


def test_environment_overrides_nested_keys_and_short_forms(workspace_dir: Path) -> None:
    env = {
        "HARNESS_WORKER__CONCURRENCY": "16",
        "HARNESS_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "HARNESS_BASE_URL": "http://127.0.0.1:9999/v1",
        "HARNESS_MODEL": "qwen2.5-7b",
        "HARNESS_API_KEY": "sk-test-123456789",
        "HARNESS_LIMITS__MAX_STEPS": "5",
        "OTHER": "ignored",
    }
    s = load_settings(workspace_dir, env)
    assert s.worker.concurrency == 16 and s.limits.max_steps == 5
    assert s.database_url.startswith("postgresql+psycopg://")
    # the short forms select the hosted pair: native tools, the worker's concurrency, no
    # 384-token cap, a normal timeout; the embedded model's entries stay as they were
    assert s.default_model == "hosted"
    model, provider = s.models["hosted"], s.providers["hosted"]
    assert provider.base_url == "http://127.0.0.1:9999/v1" and provider.local is False
    assert model.id == "qwen2.5-7b" and model.tools == "native" and model.max_tokens == 4096
    assert provider.max_concurrency is None and provider.timeout_s == 120
    assert provider.api_key_env == "HARNESS_API_KEY"  # the name, never the key
    assert s.providers["local"].local and s.models["local"].tools == "json"
    assert "sk-test" not in s.model_dump_json()


def test_the_short_forms_work_without_a_hosted_pair_in_the_config(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config/harness.toml").write_text('timezone = "UTC"\n')
    env = {"HARNESS_MODEL": "gpt-4.1-mini", "HARNESS_API_KEY": "sk-test-123456789"}
    s = load_settings(tmp_path, env)
    assert s.default_model == "hosted" and s.models["hosted"].id == "gpt-4.1-mini"
    assert s.providers["hosted"].base_url == "https://api.openai.com/v1"
    explicit = load_settings(tmp_path, {**env, "HARNESS_DEFAULT_MODEL": "local"})
    assert explicit.default_model == "local"  # an explicit choice wins


def test_bad_settings_name_the_key(workspace_dir: Path) -> None:
    cfg = workspace_dir / "config/harness.toml"
    cfg.write_text(
        cfg.read_text()
        .replace('timezone = "UTC"', 'timezone = "Mars/Olympus"')
        .replace("concurrency = 4", "concurrency = 0\nspeed = 3")
        .replace('base_url = "http://127.0.0.1:8765/v1"', 'base_url = "127.0.0.1:8765"')
    )
    with pytest.raises(ConfigError) as info:
        load_settings(workspace_dir)
    text = str(info.value)
    assert "harness.toml" in text
    for field in ("timezone", "worker.concurrency", "worker.speed", "providers.local.base_url"):
        assert field in text, field
    assert "unknown key" in text and "Mars/Olympus" in text


def test_missing_api_key_variable_and_unknown_provider_are_startup_errors(
    workspace_dir: Path,
) -> None:
    cfg = workspace_dir / "config/harness.toml"
    cfg.write_text(
        cfg.read_text()
        + '\n[providers.example]\nbase_url = "https://api.example.com/v1"\n'
        + 'api_key_env = "EXAMPLE_KEY"\n'
        + '\n[models.big]\nprovider = "nowhere"\nid = "big"\nfallbacks = ["tiny"]\n'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(workspace_dir, {})
    text = str(info.value)
    assert "providers.example.api_key_env" in text and "EXAMPLE_KEY is not set" in text
    assert "models.big.provider" in text and "models.big.fallbacks" in text
    load_settings(workspace_dir.parent / "nothing-here", {})  # no file: defaults are fine


def test_malformed_toml_names_the_file(workspace_dir: Path) -> None:
    (workspace_dir / "config/harness.toml").write_text("timezone = \n")
    with pytest.raises(ConfigError, match=r"harness\.toml.*not valid TOML"):
        load_settings(workspace_dir)


def test_apply_env_parses_json_values() -> None:
    data = apply_env({}, {"HARNESS_WORKER__GRACE_S": "2.5", "HARNESS_LOCAL__AUTOSTART": "false"})
    assert data == {"worker": {"grace_s": 2.5}, "local": {"autostart": False}}


def _write(ws: Path, name: str, text: str) -> Path:
    path = ws / "agents" / f"{name}.md"
    path.write_text(text)
    return path


def test_agent_validation_reports_every_problem_with_file_field_and_line(
    workspace_dir: Path,
) -> None:
    ws = load_workspace(workspace_dir)
    _write(workspace_dir, "broken", "---\nname: broken\ndescription: [unclosed\n---\nbody\n")
    _write(
        workspace_dir, "stranger", "---\nname: stranger\ndescription: d\ncolour: blue\n---\nbody\n"
    )
    _write(workspace_dir, "wrongname", "---\nname: other\ndescription: d\n---\nbody\n")
    _write(
        workspace_dir,
        "misfit",
        "---\nname: misfit\ndescription: d\nmodel: gpt-9\ntools: [telepathy]\n"
        "delegates_to: [ghost]\n---\nbody\n",
    )
    _write(workspace_dir, "nofront", "just a prompt\n")
    with pytest.raises(ConfigError) as info:
        load_team(ws.agents_dir, ws.settings, load_tools(ws).names())
    problems = [str(p) for p in info.value.problems]
    joined = "\n".join(problems)
    assert "broken.md:3" in joined and "malformed YAML" in joined
    assert "stranger.md:4: colour: unknown field" in joined
    assert "wrongname.md:2: name: name 'other' does not match the file name 'wrongname'" in joined
    assert "misfit.md:4: model: unknown model 'gpt-9'" in joined
    assert "misfit.md:5: tools: unknown tool 'telepathy'" in joined
    assert "misfit.md:6: delegates_to: unknown delegate target 'ghost'" in joined
    assert "nofront.md:1: missing YAML front matter" in joined
    assert len(problems) == 7
    assert problems == [str(p) for p in sorted(info.value.problems, key=lambda p: p.sort_key())]


def test_delegation_cycles_and_duplicates_are_errors(workspace_dir: Path) -> None:
    ws = load_workspace(workspace_dir)
    veblen = workspace_dir / "agents/veblen.md"
    veblen.write_text(veblen.read_text().replace("tools: [", "delegates_to: [arnold]\ntools: [", 1))
    with pytest.raises(ConfigError) as info:
        load_team(ws.agents_dir, ws.settings, load_tools(ws).names())
    assert "delegation cycle: arnold -> veblen -> arnold" in str(info.value)


def test_agent_file_round_trip(workspace_dir: Path) -> None:
    spec, problems = parse_agent_file(workspace_dir / "agents/gulbenkian.md")
    assert problems == [] and spec is not None
    assert spec.name == "gulbenkian" and spec.daily_token_budget == 10_000_000
    assert spec.prompt.startswith("You are R. Gulbenkian")


def test_workspace_sqlite_path_is_resolved_inside_it(tmp_path: Path) -> None:
    ws = Workspace(
        tmp_path, load_settings(tmp_path, {"HARNESS_DATABASE_URL": "sqlite:///data/x.db"})
    )
    assert ws.database_url() == f"sqlite:///{tmp_path}/data/x.db"
    assert (tmp_path / "data").is_dir()
