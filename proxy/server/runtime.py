"""Runtime keys and budgets in a running proxy: poll `meta.runtime_version`, and on a change swap in
the new proxy keys (attributor) and budget specs (guard).

One small read every couple of seconds instead of a read per request: requests look keys up in a
dict the poller replaces whole. Config budgets and key aliases win over database ones of the same
name (the writers refuse such names; this covers a config changed afterwards).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from proxy.budgets.spec import BudgetSpec
from proxy.config import Config, KeyAlias
from proxy.server.attribution import Attributor
from proxy.server.guard import BudgetGuard, respec
from proxy.store.engine import Store
from proxy.store.recorder import Recorder
from proxy.store.keys import RuntimeState, key_budgets, read_state_async, read_version

log = logging.getLogger(__name__)

POLL_S = 2.0


def runtime_specs(config_specs: tuple[BudgetSpec, ...], state: RuntimeState, now: datetime) -> tuple[BudgetSpec, ...]:
    taken = {spec.name for spec in config_specs}
    specs = list(config_specs)
    for spec in (*state.budgets, *key_budgets(state.keys, now)):
        if spec.name in taken:
            continue
        taken.add(spec.name)
        specs.append(spec)
    return tuple(specs)


def runtime_keys(config: Config, state: RuntimeState) -> dict[str, tuple[KeyAlias, float | None]]:
    aliases = {alias.alias for alias in config.keys}
    return {
        key.key_hash: (KeyAlias(alias=key.name, project=key.project), key.expires_at.timestamp() if key.expires_at else None)
        for key in state.keys
        if key.revoked_at is None and key.name not in aliases
    }


class Runtime:
    def __init__(
        self, config: Config, db: Store, attributor: Attributor, guard: BudgetGuard, recorder: Recorder
    ) -> None:
        self._config = config
        self._recorder = recorder
        self._db = db
        self._attributor = attributor
        self._guard = guard
        self._version = -1
        self._applied_keys: dict[str, tuple[KeyAlias, float | None]] = {}
        self._lock = asyncio.Lock()

    async def refresh(self) -> bool:
        """Reload if the version moved; True when something was applied."""
        async with self._lock:
            version = await read_version(self._db)
            if version == self._version:
                return False
            state = await read_state_async(self._db)
            now = datetime.now(UTC)
            keys = runtime_keys(self._config, state)
            # Revoked and expired keys stop at once; a new key works only once its budget is
            # enforced, or its first requests would slip past a budget made with it.
            self._attributor.set_runtime_keys({k: v for k, v in keys.items() if k in self._applied_keys})
            specs = runtime_specs(self._config.budgets, state, now)
            if specs != self._guard.budgets.specs:
                await respec(self._db, self._guard, self._recorder, specs, now)
            self._attributor.set_runtime_keys(keys)
            self._applied_keys = keys
            if keys and not self._config.managed_key_env:
                log.warning("event=runtime_keys_unused reason=managed_key_env_not_set keys=%d", len(keys))
            clashes = sorted({k.name for k in state.keys} & {a.alias for a in self._config.keys})
            clashes += sorted({b.name for b in state.budgets} & {b.name for b in self._config.budgets})
            for name in clashes:
                log.warning("event=runtime_name_ignored name=%s reason=used_by_config", name)
            for name in state.broken:
                log.warning("event=runtime_budget_unusable budget=%s", name)
            self._version = version
            log.info("event=runtime_loaded version=%d keys=%d budgets=%d", version, len(keys), len(specs))
            return True

    async def run(self, interval_s: float = POLL_S) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - the poller must outlive a bad tick
                # A locked or busy file, say: keep what we have and try again on the next tick.
                log.warning("event=runtime_poll_failed error=%s", type(exc).__name__ if not isinstance(exc, self._db.write_errors) else exc)
