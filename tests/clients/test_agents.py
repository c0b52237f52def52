"""Claude Code, Codex CLI, OpenCode and Aider, unmodified, through the `serve` subprocess to the fake upstream.

Each test checks what the user sees (the agent printed the fake's reply; Codex exits 0 printing nothing
when its event stream is reshaped) and what the proxy kept: one row per billed call that reached the
upstream, with its endpoint, tokens, reported cost and the session id from the agent's own header,
and the key nowhere in SQLite or the proxy's log. When an agent fails through the proxy, the same run
straight against the fake says whether the proxy is to blame.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.clients.conftest import KEY, AgentRun, Stack, agent_binary, base_env, run_agent
from tests.fake_openrouter import CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS, REASONING_TOKENS, fake_cost

pytestmark = pytest.mark.timeout(200)  # two agent runs of up to AGENT_TIMEOUT_S each, plus the stack

BILLED = re.compile(r"^/api/v1/(messages|responses|chat/completions|completions)(?:\?.*)?$")

# base URL (the proxy's or the fake's root, no path) and a scratch dir -> argv, env, cwd
Launcher = Callable[[str, Path], tuple[list[str | Path], dict[str, str], Path]]


def _header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def _billed(stack: Stack) -> list[dict[str, Any]]:
    return [r for r in stack.received() if r["method"] == "POST" and BILLED.match(r["path"])]


async def _run_through_proxy(stack: Stack, launch: Launcher, tmp_path: Path, expect: str, project: str | None = None) -> AgentRun:
    """`project`: reach the proxy at `/p/<project>/...`, the per-project base URL the README offers."""
    root = stack.proxy_root + (f"/p/{project}" if project else "")
    argv, env, cwd = launch(root, tmp_path / "via-proxy")
    run = await run_agent(argv, env, cwd)
    if run.returncode == 0 and expect in run.stdout:
        return run
    # Same agent, same settings, straight to the fake: tells a proxy bug from an agent that cannot run here.
    argv, env, cwd = launch(str(stack.fake.make_url("")).rstrip("/"), tmp_path / "direct")
    direct = await run_agent(argv, env, cwd)
    verdict = ("PROXY BUG: it works straight against the fake" if direct.returncode == 0 and expect in direct.stdout
               else "the agent fails straight against the fake too")
    raise AssertionError(f"{verdict}; expected {expect!r} in stdout\nthrough the proxy: {run.explain()}\ndirect: {direct.explain()}")


def _assert_rows(stack: Stack, session_header: str | None, project: str | None = None) -> list[dict[str, Any]]:
    """One row per billed call the fake saw, each with the fake's numbers, the agent's session, and no key."""
    billed = _billed(stack)
    assert billed, f"no billed call reached the fake: {[r['path'] for r in stack.received()]}"
    rows = stack.rows()
    expected: Counter[tuple[str, str, str | None]] = Counter()
    for call in billed:
        endpoint = BILLED.match(call["path"]).group(1)  # type: ignore[union-attr]
        model = json.loads(call["body"])["model"]
        session = _header(call["headers"], session_header) if session_header else None
        if session_header:
            assert session, f"{session_header} missing from the agent's call to {call['path']}"
        expected[(endpoint, model, session)] += 1
    assert Counter((r["endpoint"], r["model"], r["session"]) for r in rows) == expected
    for row in rows:
        assert row["outcome"] == "ok" and row["status"] == 200, row
        assert row["project"] == project, row
        assert row["streamed"] == 1, row
        assert row["model_requested"] == row["model"], row
        assert row["input_tokens"] == PROMPT_TOKENS and row["cached_tokens"] == CACHED_TOKENS, row
        assert row["output_tokens"] == COMPLETION_TOKENS, row
        assert row["reasoning_tokens"] == (None if row["endpoint"] == "messages" else REASONING_TOKENS), row
        assert Decimal(row["cost_reported_usd"]) == Decimal(str(float(fake_cost(row["model"])))), row
        assert row["generation_id"].startswith("gen-"), row
        assert row["key_fingerprint"] and KEY not in json.dumps(row), row
    assert KEY.encode() not in stack.db_bytes()
    assert KEY not in stack.log.read_text(errors="replace")
    return rows


# "preflight": as users run it, Claude Code first sends `HEAD <base>` (`HEAD /api`) to the proxy; the
# proxy must answer it without a row. Telemetry, error reports and updates stay off either way.
@pytest.mark.parametrize("traffic", ["essential-only", "preflight"])
async def test_claude_code(stack: Stack, tmp_path: Path, traffic: str) -> None:
    claude = agent_binary("claude")

    def launch(root: str, scratch: Path) -> tuple[list[str | Path], dict[str, str], Path]:
        env = base_env(scratch / "home") | {
            "ANTHROPIC_BASE_URL": root + "/api",
            "ANTHROPIC_AUTH_TOKEN": KEY,
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
        if traffic == "essential-only":
            env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
        return [claude, "-p", "say hello", "--model", "anthropic/claude-sonnet-4.5"], env, scratch / "work"

    project = "claude-proj" if traffic == "preflight" else None
    run = await _run_through_proxy(stack, launch, tmp_path, "w0 w1 w2 w3 w4", project)
    await stack.stop_proxy()
    rows = _assert_rows(stack, "X-Claude-Code-Session-Id", project)
    assert {r["endpoint"] for r in rows} == {"messages"}
    assert all(r["client"].startswith("claude-cli/") for r in rows), rows
    # The query string and Anthropic's version headers reach the upstream as Claude Code sent them.
    call = _billed(stack)[0]
    assert call["path"].endswith("?beta=true") and _header(call["headers"], "anthropic-version"), call["path"]
    assert run.stdout.strip()


async def test_codex(stack: Stack, tmp_path: Path) -> None:
    codex = agent_binary("codex")

    def launch(root: str, scratch: Path) -> tuple[list[str | Path], dict[str, str], Path]:
        codex_home = scratch / "codex-home"
        codex_home.mkdir(parents=True, exist_ok=True)
        (codex_home / "config.toml").write_text(
            'model = "openai/gpt-4o"\n'
            'model_provider = "spend"\n'
            "[features]\n"
            "plugins = false\n"
            "[model_providers.spend]\n"
            'name = "OpenRouter via openrouter-spend"\n'
            f'base_url = "{root}/api/v1"\n'
            'wire_api = "responses"\n'
            'env_key = "SPEND_TEST_KEY"\n'
        )
        env = base_env(scratch / "home") | {"CODEX_HOME": str(codex_home), "SPEND_TEST_KEY": KEY}
        return [codex, "exec", "--skip-git-repo-check", "say hello"], env, scratch / "work"

    run = await _run_through_proxy(stack, launch, tmp_path, "hello there", "codex-proj")
    await stack.stop_proxy()
    rows = _assert_rows(stack, "session-id", "codex-proj")
    assert {r["endpoint"] for r in rows} == {"responses"}
    assert run.stdout.strip() == "hello there"


async def test_opencode(stack: Stack, tmp_path: Path) -> None:
    opencode = agent_binary("opencode")

    def launch(root: str, scratch: Path) -> tuple[list[str | Path], dict[str, str], Path]:
        work = scratch / "work"
        work.mkdir(parents=True, exist_ok=True)
        config = {
            "provider": {"openrouter": {"options": {"baseURL": f"{root}/api/v1", "apiKey": "{env:SPEND_TEST_KEY}"}}},
            "autoupdate": False,
            "share": "disabled",
        }
        (work / "opencode.json").write_text(json.dumps(config))
        env = base_env(scratch / "home") | {
            "SPEND_TEST_KEY": KEY,
            "OPENCODE_DISABLE_MODELS_FETCH": "true",
            "OPENCODE_DISABLE_AUTOUPDATE": "true",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "true",
            "OPENCODE_DISABLE_SHARE": "true",
            "OPENCODE_DISABLE_DEFAULT_PLUGINS": "true",
        }
        return [opencode, "run", "-m", "openrouter/openai/gpt-4o", "say hello"], env, work

    await _run_through_proxy(stack, launch, tmp_path, "word0 word1 word2 word3 word4", "opencode-proj")
    await stack.stop_proxy()
    rows = _assert_rows(stack, "X-Session-Id", "opencode-proj")
    assert {r["endpoint"] for r in rows} == {"chat/completions"}
    # The reply and, on a first prompt, a title from a small model: one session, two rows.
    assert "openai/gpt-4o" in {r["model"] for r in rows}
    assert len({r["session"] for r in rows}) == 1 and rows[0]["session"].startswith("ses_"), rows


async def test_aider(stack: Stack, tmp_path: Path) -> None:
    aider = agent_binary("aider")

    def launch(root: str, scratch: Path) -> tuple[list[str | Path], dict[str, str], Path]:
        env = base_env(scratch / "home") | {
            "OPENROUTER_API_BASE": f"{root}/api/v1",
            "OPENROUTER_API_KEY": KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        argv: list[str | Path] = [
            aider, "--model", "openrouter/openai/gpt-4o", "--message", "say hello", "--no-git", "--yes-always",
            "--no-check-update", "--no-show-model-warnings", "--analytics-disable", "--no-show-release-notes", "--no-pretty",
        ]
        return argv, env, scratch / "work"

    await _run_through_proxy(stack, launch, tmp_path, "word0 word1 word2 word3 word4")
    await stack.stop_proxy()
    rows = _assert_rows(stack, None)  # Aider sends no session header
    assert {r["endpoint"] for r in rows} == {"chat/completions"}
    assert {r["client"] for r in rows} == {"Aider"}
