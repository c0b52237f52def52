"""The few exception types we raise, and the one function that builds error bodies clients show."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Imported where a response is built: the config loader and `statusline` import this module,
    # and aiohttp costs ~150 ms to import.
    from aiohttp import web


class ConfigError(Exception):
    """A bad config value or CLI flag; the message names the key: `budgets[1].limit_usd: ...`."""


def shown(value: Any) -> str:
    """A bad config value as an error message quotes it: short, and never a whole section."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class CliError(Exception):
    """A command cannot do what was asked; the CLI prints the message as one line and exits 2."""


def error_body(status: int, message: str, *, anthropic: bool = False, metadata: dict[str, Any] | None = None) -> bytes:
    """OpenRouter's envelope (or Anthropic's, for /messages clients such as Claude Code)."""
    if anthropic:
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"code": status, "message": message, "metadata": metadata or {}}}
    return json.dumps(body).encode()


def error_response(
    status: int,
    message: str,
    *,
    anthropic: bool = False,
    metadata: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    from aiohttp import web

    return web.Response(
        status=status,
        body=error_body(status, message, anthropic=anthropic, metadata=metadata),
        content_type="application/json",
        headers=headers,
    )


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    426: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
