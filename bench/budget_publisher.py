"""The budget publisher's cost per tick (proxy.server.guard.BudgetGuard.publish) with many sessions.

Fills per-session budgets (one calendar, one rolling) and a total budget with N distinct session ids
through the real Budgets, then times publish(): the 5-second tick that turns budget state into
gauges on the event loop. Prints one JSON line.

    python -m bench.budget_publisher --sessions 60000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry

from proxy.budgets.alerts import Notifier
from proxy.budgets.ledger import Budgets, Who
from proxy.budgets.spec import parse_budgets
from proxy.metrics import Metrics
from proxy.server.guard import BudgetGuard
from proxy.store.recorder import Recorder
from proxy.store.sqlite import open_db

SPECS = [
    {"name": "per-session", "limit_usd": 1000, "scope": "session"},
    {"name": "burst", "limit_usd": 1000, "scope": "session", "period": "rolling:1h"},
    {"name": "daily", "limit_usd": 1000},
]


async def run(sessions: int, ticks: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory() as tmp:
        db = await open_db(Path(tmp) / "bench.db")
        try:
            budgets = Budgets(parse_budgets(SPECS), ZoneInfo("UTC"))
            now = datetime.now(UTC)
            tracemalloc.start()
            for i in range(sessions):
                d = budgets.decide(Who(session=f"session-{i:08d}"), now)
                budgets.settle(d.reservation, Decimal("0.001"), now)
            grown = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            guard = BudgetGuard(budgets, Recorder(db), Notifier((), None), Metrics(CollectorRegistry()))
            cpu = []
            published = 0
            for _ in range(ticks):
                start = time.process_time()
                published = guard.publish()
                cpu.append(time.process_time() - start)
        finally:
            await db.close()
    cpu.sort()
    return {
        "sessions": sessions,
        "state_mib": round(grown / 2**20, 2),
        "publish_cpu_ms_median": round(cpu[len(cpu) // 2] * 1000, 2),
        "publish_cpu_ms_max": round(cpu[-1] * 1000, 2),
        # The tick runs every 5 s: its share of one core.
        "publisher_cpu_share": round(cpu[len(cpu) // 2] / 5.0, 5),
        "gauges_set_per_tick": published,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=60_000)
    parser.add_argument("--ticks", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.sessions, args.ticks))))


if __name__ == "__main__":
    main()
