"""What a `/-/` request asks for: its query string checked into a frozen Query, or BadQuery with a message.

Pure (pass `now` in). Every endpoint names the parameters it takes; anything else is an error, so a
typo in a shared link says so instead of silently showing everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from proxy.store.reports import parse_range
from proxy.errors import CliError

FILTERS = ("project", "session", "model", "key", "client")
GROUPS = ("day", "model", "provider", "project", "session", "key", "client", "endpoint")
MAX_TEXT = 256


class BadQuery(ValueError):
    """The request's query string cannot be answered; the message says which parameter and why."""


@dataclass(frozen=True, slots=True)
class Query:
    since: datetime | None = None
    until: datetime | None = None
    tz: ZoneInfo = ZoneInfo("UTC")
    # (column, value) pairs, every one must match: ("key", v) matches the alias or the fingerprint.
    filters: tuple[tuple[str, str], ...] = ()
    by: str = "model"
    step: str = "day"
    limit: int = 50
    text: Mapping[str, tuple[str, ...]] | None = None

    def first(self, name: str) -> str | None:
        values = (self.text or {}).get(name, ())
        return values[0] if values else None

    def all(self, name: str) -> tuple[str, ...]:
        return (self.text or {}).get(name, ())


def parse_query(
    pairs: Iterable[tuple[str, str]],
    allowed: Iterable[str],
    now: datetime,
    *,
    default_tz: str = "UTC",
    groups: tuple[str, ...] = GROUPS,
    default_by: str = "model",
    max_limit: int = 500,
) -> Query:
    """`pairs` is the raw query string; `allowed` the parameter names this endpoint takes."""
    known = set(allowed)
    text: dict[str, tuple[str, ...]] = {}
    for name, value in pairs:
        if name not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise BadQuery(f"unknown parameter {name!r} (this endpoint takes: {listed})")
        if len(value) > MAX_TEXT:
            raise BadQuery(f"{name}: longer than {MAX_TEXT} characters")
        text[name] = (*text.get(name, ()), value)
    single = {name: values[-1] for name, values in text.items()}
    tz_name = single.get("tz") or default_tz
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadQuery(f"tz: unknown time zone {tz_name!r}") from None
    # The CLI's own range parsing (calendar words included: `since=yesterday` is yesterday only).
    try:
        since, until = parse_range(single.get("since"), single.get("until"), now, tz)
    except CliError as exc:
        raise BadQuery(str(exc).replace("--since", "since").replace("--until", "until")) from None
    since = None if since is None else since.astimezone(UTC)
    until = None if until is None else until.astimezone(UTC)
    if since is not None and until is not None and since >= until:
        raise BadQuery("since: must be before until")
    if since is not None and since > now:
        raise BadQuery("since: is in the future")
    by = single.get("by") or default_by
    if by not in groups:
        raise BadQuery(f"by: expected one of {', '.join(groups)}, got {by!r}")
    step = single.get("step") or "day"
    if step not in ("hour", "day"):
        raise BadQuery(f"step: expected hour or day, got {step!r}")
    limit = 50
    if single.get("limit"):
        try:
            limit = int(single["limit"])
        except ValueError:
            raise BadQuery(f"limit: expected a whole number, got {single['limit']!r}") from None
        if not 1 <= limit <= max_limit:
            raise BadQuery(f"limit: expected 1 to {max_limit}, got {limit}")
    filters = tuple((name, single[name]) for name in FILTERS if single.get(name))
    return Query(since, until, tz, filters, by, step, limit, text)

