"""Who pays: a salted key fingerprint (never the key), the project and the agent session, from headers and URL.

Nothing here reads the request body: a multi-megabyte prompt is not parsed to learn who sent it.
Values a client controls are capped and restricted to a safe alphabet before they reach logs,
SQLite or metric labels.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.config import KeyAlias

MAX_LABEL = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@/+=-]")

# First present wins: our own header, then what each agent sends by itself (see CLIENTS.md).
SESSION_HEADERS = (
    "X-Spend-Session",
    "X-Claude-Code-Session-Id",
    "session-id",
    "session_id",
    "X-Session-Id",
    "x-session-affinity",
    "agent-session-id",
    "X-Task-ID",
)
CLIENT_HEADERS = ("X-Title", "X-OpenRouter-Title", "User-Agent")


@dataclass(frozen=True, slots=True)
class Attribution:
    key_fingerprint: str | None
    key_alias: str | None
    project: str | None
    session: str | None
    client: str | None


def clean(value: str | None, limit: int = MAX_LABEL) -> str | None:
    """Cap and restrict a client-controlled value; an empty result is None."""
    if not value:
        return None
    value = _UNSAFE.sub("_", value.strip()[:limit])
    return value or None


def fingerprint(key: str, salt: bytes) -> str:
    return hashlib.sha256(salt + key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


class TwoKeys(ValueError):
    """Two different credentials in one request: the upstream may bill either, so neither is trusted."""


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The one credential a request carries, from every Authorization and x-api-key header.

    A non-Bearer Authorization value counts whole: an upstream that accepts it bills some key, and
    the budget must see which. More than one distinct credential raises TwoKeys.
    """
    found: set[str] = set()
    for value in _all(headers, "Authorization"):
        value = value.strip()
        scheme, _, token = value.partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else value
        if key and key.lower() != "bearer":
            found.add(key)
    for value in _all(headers, "x-api-key"):
        if value.strip():
            found.add(value.strip())
    if len(found) > 1:
        raise TwoKeys("the request carries two different credentials (Authorization and x-api-key, or repeated)")
    return next(iter(found), None)


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    value = headers.get(name)
    return [value] if value is not None else []


class Attributor:
    """Holds the salt and the alias table; `of()` is called once per request."""

    def __init__(
        self,
        salt: bytes,
        aliases: tuple[KeyAlias, ...] = (),
        environ: Mapping[str, str] | None = None,
        *,
        managed: bool = False,
    ) -> None:
        self._salt = salt
        # Managed mode: a proxy key's configured project is the operator's word and beats the
        # client's header or URL, so a client cannot move its spend out of a project budget.
        self._managed = managed
        # Hashing is cheap, but the same few keys come back on every request.
        self._fingerprints: dict[str, str] = {}
        env = os.environ if environ is None else environ
        self._aliases: dict[str, KeyAlias] = {}
        # Proxy keys for managed mode, by plain SHA-256: the config may name them by hash.
        self._by_sha256: dict[str, KeyAlias] = {}
        for alias in aliases:
            if alias.fingerprint:
                self._aliases[alias.fingerprint] = alias
            elif alias.key_env and env.get(alias.key_env):
                self._aliases[self.fingerprint(env[alias.key_env])] = alias
                self._by_sha256[_sha256(env[alias.key_env])] = alias
            elif alias.key_sha256:
                self._by_sha256[alias.key_sha256] = alias
        # Proxy keys made at runtime (`keys create`), by SHA-256 of salt + key, with their expiry
        # (epoch seconds): the poller swaps the whole dict, so a lookup never sees half an update.
        self._runtime: Mapping[str, tuple[KeyAlias, float | None]] = {}

    def set_runtime_keys(self, keys: Mapping[str, tuple[KeyAlias, float | None]]) -> None:
        self._runtime = keys

    def fingerprint(self, key: str) -> str:
        found = self._fingerprints.get(key)
        if found is None:
            if len(self._fingerprints) > 1024:
                self._fingerprints.clear()
            found = self._fingerprints[key] = fingerprint(key, self._salt)
        return found

    def proxy_key(self, headers: Mapping[str, str]) -> KeyAlias | None:
        """Managed mode: the configured proxy key the client presented, or None."""
        key = presented_key(headers)
        return self._proxy_alias(key) if key else None

    def _proxy_alias(self, key: str) -> KeyAlias | None:
        alias = self._by_sha256.get(_sha256(key)) if self._by_sha256 else None
        if alias is None and self._runtime:
            found = self._runtime.get(hashlib.sha256(self._salt + key.encode("utf-8", "surrogateescape")).hexdigest())
            # Expiry is checked here, not only by the poller, so a key stops at its expiry to the second.
            if found is not None and (found[1] is None or time.time() < found[1]):
                alias = found[0]
        return alias

    def of(self, headers: Mapping[str, str], path_project: str | None = None) -> Attribution:
        return self.of_key(presented_key(headers), headers, path_project)

    def of_key(self, key: str | None, headers: Mapping[str, str], path_project: str | None = None) -> Attribution:
        """of(), for a caller that has already read `presented_key(headers)`."""
        key_fingerprint = self.fingerprint(key) if key else None
        alias = self._aliases.get(key_fingerprint) if key_fingerprint else None
        if alias is None and key and (self._by_sha256 or self._runtime):
            alias = self._proxy_alias(key)
        project = clean(path_project, 64) or clean(headers.get("X-Spend-Project"), 64)
        if alias is not None and alias.project and (project is None or self._managed):
            project = alias.project
        return Attribution(
            key_fingerprint=key_fingerprint,
            key_alias=alias.alias if alias else None,
            project=project,
            session=_first(headers, SESSION_HEADERS),
            client=_first(headers, CLIENT_HEADERS, limit=64),
        )


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def _first(headers: Mapping[str, str], names: tuple[str, ...], limit: int = MAX_LABEL) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            return clean(value, limit)
    return None
