"""`openrouter-spend setup <agent>` as a real subprocess: what it prints, and `--write` merging into
existing agent config files with a backup, refusing invalid ones untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def setup(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_SPEND_", "XDG_"))}
    env.update(PYTHONPATH=str(ROOT), HOME=str(home))
    return subprocess.run([sys.executable, "-m", "proxy", "setup", *args], capture_output=True, text=True, timeout=60,
                          cwd=home, env=env)


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".bak-*"))


@pytest.mark.parametrize(
    ("agent", "needles"),
    [
        ("claude-code", ("export ANTHROPIC_BASE_URL=http://127.0.0.1:8787/p/acme/api", '"statusLine"', "statusline")),
        ("codex", ('base_url = "http://127.0.0.1:8787/p/acme/api/v1"', 'wire_api = "responses"', "[model_providers.openrouter-spend]")),
        ("opencode", ('"baseURL": "http://127.0.0.1:8787/p/acme/api/v1"',)),
        ("aider", ("export OPENROUTER_API_BASE=http://127.0.0.1:8787/p/acme/api/v1",)),
        ("goose", ("export OPENROUTER_HOST=http://127.0.0.1:8787/p/acme",)),
        ("cline", ("Base URL: http://127.0.0.1:8787/p/acme/api/v1", "OpenAI Compatible")),
    ],
)
def test_prints_what_to_set(tmp_path: Path, agent: str, needles: tuple[str, ...]) -> None:
    result = setup(agent, "--project", "acme", home=tmp_path)
    assert result.returncode == 0, result.stderr
    for needle in needles:
        assert needle in result.stdout, result.stdout
    assert list(tmp_path.iterdir()) == [], "printing writes nothing"


def test_base_url_from_flag_and_from_config(tmp_path: Path) -> None:
    assert "http://10.1.2.3:9000/api/v1" in setup("aider", "--base-url", "http://10.1.2.3:9000/", home=tmp_path).stdout
    config = tmp_path / "c.yaml"
    config.write_text("port: 9911\n")
    assert "http://127.0.0.1:9911/api" in setup("claude-code", "--config", str(config), home=tmp_path).stdout


def test_claude_code_write_merges_into_settings_and_keeps_a_backup(tmp_path: Path) -> None:
    path = tmp_path / ".claude" / "settings.json"
    path.parent.mkdir()
    original = {
        "permissions": {"allow": ["Bash(git diff:*)"]},
        "env": {"DISABLE_TELEMETRY": "1", "ANTHROPIC_BASE_URL": "https://old.example"},
        "model": "opus",
    }
    path.write_text(json.dumps(original, indent=4))
    before = path.read_text()

    result = setup("claude-code", "--write", home=tmp_path)  # the default place: ~/.claude/settings.json

    assert result.returncode == 0, result.stderr
    merged = json.loads(path.read_text())
    assert merged["permissions"] == original["permissions"] and merged["model"] == "opus"
    assert merged["env"] == {"DISABLE_TELEMETRY": "1", "ANTHROPIC_BASE_URL": "http://127.0.0.1:8787/api"}
    assert merged["statusLine"]["type"] == "command" and merged["statusLine"]["command"].endswith("statusline")
    [backup] = backups(path)
    assert backup.read_text() == before
    assert "ANTHROPIC_AUTH_TOKEN" in result.stdout  # what is still needed in the shell


@pytest.mark.parametrize(
    ("agent", "name", "text"),
    [
        ("claude-code", "settings.json", '{"env": {"A": "1"},}'),
        ("claude-code", "settings.json", "[1, 2]"),
        ("opencode", "opencode.json", '{\n  // a comment\n  "theme": "x"\n}'),
        ("codex", "config.toml", 'model = "o3"\n[model_providers.x\nbase_url = 1\n'),
        ("codex", "config.toml", 'model_providers = "not a table"\n'),
    ],
)
def test_invalid_files_are_refused_untouched(tmp_path: Path, agent: str, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    result = setup(agent, "--write", "--file", str(path), home=tmp_path)
    assert result.returncode == 2, result
    assert len(result.stderr.strip().splitlines()) == 1 and "left untouched" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert path.read_text() == text
    assert backups(path) == []


CODEX_CONFIG = """\
# my codex settings
model = "gpt-5-codex"
approval_policy = "on-request"

[model_providers.other]
name = "Other"
base_url = "https://other.example/v1"  # keep me

[profiles.fast]
model = "o4-mini"
"""


def test_codex_write_merges_toml_keeping_comments_and_other_tables(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CODEX_CONFIG)

    result = setup("codex", "--write", "--file", str(path), "--project", "app", home=tmp_path)

    assert result.returncode == 0, result.stderr
    text = path.read_text()
    doc = tomllib.loads(text)
    assert doc["model_provider"] == "openrouter-spend"
    assert doc["model"] == "gpt-5-codex" and doc["approval_policy"] == "on-request"
    assert doc["model_providers"]["other"] == {"name": "Other", "base_url": "https://other.example/v1"}
    assert doc["profiles"] == {"fast": {"model": "o4-mini"}}
    ours = doc["model_providers"]["openrouter-spend"]
    assert ours["base_url"] == "http://127.0.0.1:8787/p/app/api/v1" and ours["wire_api"] == "responses"
    assert ours["env_key"] == "OPENROUTER_API_KEY"
    assert "# my codex settings" in text and "# keep me" in text
    [backup] = backups(path)
    assert backup.read_text() == CODEX_CONFIG

    # Run again with another project and an earlier choice of provider: replaced, not duplicated;
    # a key the user added to our table survives.
    path.write_text(text.replace('model_provider = "openrouter-spend"', 'model_provider = "other"')
                    + 'http_headers = { "X-Team" = "blue" }\n')
    assert setup("codex", "--write", "--file", str(path), home=tmp_path).returncode == 0
    doc = tomllib.loads(path.read_text())
    assert doc["model_provider"] == "openrouter-spend"
    assert doc["model_providers"]["openrouter-spend"]["base_url"] == "http://127.0.0.1:8787/api/v1"
    assert doc["model_providers"]["openrouter-spend"]["http_headers"] == {"X-Team": "blue"}
    assert path.read_text().count("[model_providers.openrouter-spend]") == 1


def test_opencode_write_creates_the_file_when_missing(tmp_path: Path) -> None:
    result = setup("opencode", "--write", home=tmp_path)
    assert result.returncode == 0, result.stderr
    path = tmp_path / ".config/opencode/opencode.json"
    assert json.loads(path.read_text()) == {"provider": {"openrouter": {"options": {"baseURL": "http://127.0.0.1:8787/api/v1"}}}}
    assert backups(path) == []


@pytest.mark.parametrize("agent", ["aider", "goose", "cline"])
def test_write_for_agents_without_a_file_is_one_line_exit_2(tmp_path: Path, agent: str) -> None:
    result = setup(agent, "--write", home=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result
    assert list(tmp_path.iterdir()) == []
