"""`openrouter-spend setup <agent>`: what to set so an agent talks through the proxy, and `--write`
to merge it into the agent's own config file (formats and places as CLIENTS.md and the agents'
docs give them).

`--write` never drops a setting it did not name, keeps a timestamped backup of the file it changes,
and refuses, leaving the file untouched, when the file is not valid JSON/TOML. Keys are never
written anywhere: the agent reads them from the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy.errors import CliError

AGENTS = ("claude-code", "codex", "opencode", "aider", "goose", "cline")
PROVIDER_ID = "openrouter-spend"
KEY_NOTE = "Your OpenRouter key stays in OPENROUTER_API_KEY in the environment, as before."


def statusline_command() -> str:
    """`openrouter-spend statusline`, by full path when the command is not on PATH (a venv install)."""
    if shutil.which("openrouter-spend"):
        return "openrouter-spend statusline"
    script = Path(sys.argv[0])
    if script.name == "openrouter-spend" and script.exists():
        return f"{script.resolve()} statusline"
    return "openrouter-spend statusline"


@dataclass(frozen=True)
class Plan:
    agent: str
    env: tuple[tuple[str, str], ...]
    file_kind: str | None = None  # "json" | "toml"; None: nothing to write
    default_file: str | None = None  # with ~, as the agent's docs name it
    fragment: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def add_commands(commands: Any) -> None:
    setup = commands.add_parser("setup", help="point an agent at the proxy: print (or --write) its settings")
    setup.add_argument("agent", choices=AGENTS)
    setup.add_argument("--base-url", help="the proxy's address (default: from the config's host/port, else http://127.0.0.1:8787)")
    setup.add_argument("--project", help="attribute the agent's spend to this project (puts /p/NAME in the base URL)")
    setup.add_argument("--write", action="store_true", help="merge into the agent's config file (a backup is kept)")
    setup.add_argument("--file", type=Path, help="the config file to merge into (default: the agent's own)")
    setup.add_argument("--config", type=Path, help="openrouter-spend's YAML config (for the default base URL)")
    setup.set_defaults(func=run)


def base_of(args_base: str | None, config_path: Path | None) -> str:
    if args_base:
        if not re.match(r"https?://[^/]+", args_base):
            raise CliError(f"--base-url: expected http://host:port, got {args_base!r}")
        return args_base.rstrip("/")
    host, port = "127.0.0.1", 8787
    if config_path is not None:
        from proxy.config import load_config

        config = load_config(config_path)
        host, port = config.host, config.port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def plan(agent: str, base: str, project: str | None) -> Plan:
    if project is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", project):
        raise CliError(f"--project: expected letters, digits, '.', '_' or '-' (at most 64), got {project!r}")
    root = f"{base}/p/{project}" if project else base
    api, v1 = f"{root}/api", f"{root}/api/v1"
    if agent == "claude-code":
        return Plan(
            agent,
            (("ANTHROPIC_BASE_URL", api), ("ANTHROPIC_AUTH_TOKEN", "$OPENROUTER_API_KEY"), ("ANTHROPIC_API_KEY", "")),
            "json",
            "~/.claude/settings.json",
            {"env": {"ANTHROPIC_BASE_URL": api}, "statusLine": {"type": "command", "command": statusline_command(), "padding": 0}},
            ("The key stays in your environment (ANTHROPIC_AUTH_TOKEN); settings.json gets the base URL and the status line.",
             "The status line shows what OpenRouter billed; Claude Code's own cost is an estimate at list prices."),
        )
    if agent == "codex":
        return Plan(
            agent,
            (),
            "toml",
            "~/.codex/config.toml",
            {
                "model_provider": PROVIDER_ID,
                "model_providers": {
                    PROVIDER_ID: {"name": "OpenRouter via openrouter-spend", "base_url": v1,
                                  "env_key": "OPENROUTER_API_KEY", "wire_api": "responses"},
                },
            },
            (KEY_NOTE, "Pick an OpenRouter model id, e.g. `codex -m anthropic/claude-sonnet-4.5`."),
        )
    if agent == "opencode":
        return Plan(
            agent,
            (),
            "json",
            "~/.config/opencode/opencode.json",
            {"provider": {"openrouter": {"options": {"baseURL": v1}}}},
            (KEY_NOTE, "Use openrouter/<model> models, e.g. `opencode -m openrouter/anthropic/claude-sonnet-4.5`.",),
        )
    if agent == "aider":
        return Plan(
            agent,
            (("OPENROUTER_API_BASE", v1),),
            notes=(KEY_NOTE, "Run with an openrouter/ model, e.g. `aider --model openrouter/anthropic/claude-sonnet-4.5`.",),
        )
    if agent == "goose":
        return Plan(
            agent,
            (("GOOSE_PROVIDER", "openrouter"), ("OPENROUTER_HOST", root)),
            notes=(KEY_NOTE, "Goose appends /api/v1/... to OPENROUTER_HOST itself.",),
        )
    return Plan(
        agent,
        (),
        notes=(
            "In Cline's settings choose the provider \"OpenAI Compatible\" (its OpenRouter provider has the host built in):",
            f"  Base URL: {v1}",
            "  API Key:  your OpenRouter key",
            "  Model ID: an OpenRouter model id, e.g. anthropic/claude-sonnet-4.5",
        ),
    )


def _env_line(name: str, value: str) -> str:
    # A reference to another variable stays unquoted-expandable; literal values are quoted.
    return f'export {name}="{value}"' if value.startswith("$") or value == "" else f"export {name}={value}"


def render(p: Plan) -> str:
    lines: list[str] = []
    if p.env:
        lines.append(f"# {p.agent}: in your shell profile")
        lines.extend(_env_line(k, v) for k, v in p.env)
    if p.file_kind is not None:
        lines.append("")
        lines.append(f"# and in {p.default_file} (`openrouter-spend setup {p.agent} --write` merges it, with a backup):")
        lines.append(json.dumps(p.fragment, indent=2) if p.file_kind == "json" else toml_fragment(p.fragment))
    if p.notes:
        if lines:
            lines.append("")
        lines.extend(p.notes if not p.env and p.file_kind is None else (f"# {n}" for n in p.notes))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from proxy.cli.locate import resolve_config

    p = plan(args.agent, base_of(args.base_url, resolve_config(args.config)), args.project)
    if not args.write:
        print(render(p))
        return 0
    if p.file_kind is None or p.default_file is None:
        raise CliError(f"--write: {args.agent} has no config file to merge into; set what `openrouter-spend setup {args.agent}` prints")
    path = args.file or Path(os.path.expanduser(p.default_file))
    backup = write(path, p)
    print(f"{path}: updated for openrouter-spend" + (f" (backup: {backup})" if backup else " (new file)"))
    for name, value in p.env:
        if name not in p.fragment.get("env", {}):
            print(_env_line(name, value) + "   # still needed in your shell")
    return 0


def write(path: Path, p: Plan) -> Path | None:
    """Merge the plan's fragment into `path`; return the backup's path (None for a new file)."""
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--file: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if p.file_kind == "json":
        new = merge_json(text, p.fragment, path)
    else:
        new = merge_toml(text, p.fragment, path)
    backup = None
    if text is not None:
        backup = path.with_name(f"{path.name}.bak-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, backup)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".openrouter-spend.tmp")
    tmp.write_text(new, encoding="utf-8")
    if text is not None:
        shutil.copymode(path, tmp)
    os.replace(tmp, path)
    return backup


def _deep_merge(into: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    for key, value in fragment.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def merge_json(text: str | None, fragment: dict[str, Any], path: Path) -> str:
    data: Any = {}
    if text is not None and text.strip():
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CliError(f"--file: {path} is not valid JSON ({exc}); left untouched") from None
    if not isinstance(data, dict):
        raise CliError(f"--file: {path} does not hold a JSON object; left untouched")
    for key, value in fragment.items():
        if isinstance(value, dict) and key in data and not isinstance(data[key], dict):
            raise CliError(f"--file: {path}: {key} is not an object; left untouched")
    return json.dumps(_deep_merge(data, json.loads(json.dumps(fragment))), indent=2) + "\n"


# ---------------------------------------------------------------- TOML (Codex)
# tomllib reads TOML but the standard library cannot write it, and a rewrite would lose the user's
# comments and layout. So the text is edited in place: our provider's table is replaced or appended,
# the top-level `model_provider` key replaced or put first (top-level keys must precede any table),
# and the result is parsed again before it is written.

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def toml_fragment(fragment: dict[str, Any]) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in fragment.items() if not isinstance(v, dict)]
    for table, entries in fragment.items():
        if isinstance(entries, dict):
            for name, body in entries.items():
                lines.append("")
                lines.append(f"[{table}.{name}]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in body.items())
    return "\n".join(lines)


def merge_toml(text: str | None, fragment: dict[str, Any], path: Path) -> str:
    text = text or ""
    try:
        before = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"--file: {path} is not valid TOML ({exc}); left untouched") from None
    lines = text.splitlines()
    for table, entries in fragment.items():
        if not isinstance(entries, dict):
            continue
        if table in before and not isinstance(before[table], dict):
            raise CliError(f"--file: {path}: {table} is not a table; left untouched")
        for name, body in entries.items():
            header = f"{table}.{name}"
            block = [f"[{header}]", *(f"{k} = {_toml_value(v)}" for k, v in body.items())]
            start = next((i for i, line in enumerate(lines) if (m := _HEADER.match(line)) and _norm(m.group(1)) == header), None)
            if start is None:
                if lines and lines[-1].strip():
                    lines.append("")
                lines.extend(block)
                continue
            end = next((i for i in range(start + 1, len(lines)) if _HEADER.match(lines[i])), len(lines))
            # Keep any of the user's own keys in that table that we don't set (e.g. http_headers).
            ours = {k for k in body}
            kept = [ln for ln in lines[start + 1 : end] if ln.strip() and ln.split("=", 1)[0].strip() not in ours]
            lines[start:end] = [*block, *kept, ""]
    first_table = next((i for i, line in enumerate(lines) if _HEADER.match(line)), len(lines))
    for key, value in fragment.items():
        if isinstance(value, dict):
            continue
        line = f"{key} = {_toml_value(value)}"
        at = next((i for i in range(first_table) if re.match(rf"^\s*{re.escape(key)}\s*=", lines[i])), None)
        if at is not None:
            lines[at] = line
        else:
            lines.insert(0, line)
            first_table += 1
    new = "\n".join(lines).rstrip("\n") + "\n"
    try:
        after = tomllib.loads(new)
    except tomllib.TOMLDecodeError as exc:  # e.g. the table was also written inline elsewhere
        raise CliError(f"--file: {path}: cannot merge safely ({exc}); left untouched, add the fragment by hand") from None
    if not _contains(after, fragment) or not _kept(before, after, fragment):
        raise CliError(f"--file: {path}: cannot merge safely; left untouched, add the fragment by hand")
    return new


def _norm(header: str) -> str:
    return ".".join(part.strip().strip('"').strip("'") for part in header.split("."))


def _contains(doc: dict[str, Any], fragment: dict[str, Any]) -> bool:
    for key, value in fragment.items():
        if isinstance(value, dict):
            if not isinstance(doc.get(key), dict) or not _contains(doc[key], value):
                return False
        elif doc.get(key) != value:
            return False
    return True


def _kept(before: dict[str, Any], after: dict[str, Any], fragment: dict[str, Any]) -> bool:
    """Every setting the fragment does not name survived."""
    for key, value in before.items():
        if key not in fragment:
            if after.get(key) != value:
                return False
        elif isinstance(value, dict) and isinstance(fragment[key], dict):
            if not isinstance(after.get(key), dict) or not _kept(value, after[key], fragment[key]):
                return False
    return True
