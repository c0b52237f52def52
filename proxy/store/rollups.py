"""The rollups: per hour (and per UTC day) and attribution, the counts, tokens and exact money of `requests`.

SQLite triggers keep it, so every writer (the /generation back-fill's UPDATEs, an import, a user's
own sqlite3 shell) updates it in the same transaction as the row. The recorder, which writes nearly
every row, does it per batch instead of per row: inside its own transaction it sets the
`rollups_batched` row of `meta` (no other connection ever sees it), which the insert trigger
stands aside for, and adds the batch's rows with one upsert per rollup (`batch_statements()`: the
trigger's counters, summed per key). Deleting a row leaves its totals in place: that is what lets
retention drop old raw rows while every report over any range stays exact.

Money is summed as integers: each decimal TEXT amount is cut, in SQL, into whole pico-dollars
(10^-12) and the next 12 digits (yocto-dollars, 10^-24), so sums are exact to 24 decimal places.
An amount with more digits than that (or not in fixed-point form) is counted in `<money>_inexact`.

Cutting text in SQL costs more than the rest of a row's counters, so the recorder writes the parts
itself (`<money>_pico`/`<money>_yocto` columns of `requests`, see `parts()`): its batch upserts
(and the insert trigger) read them when present and cut the text only for rows written by others.
Only inserts read them: an UPDATE (the back-fill) may leave them stale, so everything else reads the text.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Context, Decimal

from proxy.store.dialect import SQLITE, Dialect

# Attribution kept per hour. NULL is stored as '' so the primary key (and upserts) can match it.
DIMENSIONS = ("model", "provider", "project", "session", "key_fingerprint", "key_alias", "client", "endpoint")
# Summed money columns of `requests`, reported as-is by name. Adding one (e.g. a BYOK upstream cost)
# is one entry here, plus a migration that adds the column and calls `create(db)` again (it rebuilds
# the tables and triggers and re-sums every hour; hours retention already pruned get 0 for it).
MONEY = ("cost_usd", "upstream_cost_usd")
# Billed (reported) and catalog cost summed over only the rows that have both, for the page's price
# drift (migration 14), in the hourly rollup only: name -> (the column summed, the column it needs too).
COMPARED = {"billed_compared_usd": ("cost_reported_usd", "cost_catalog_usd"), "catalog_compared_usd": ("cost_catalog_usd", "cost_reported_usd")}
TOKENS = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")

PICO = 10**12


def _blocked(r: str) -> str:
    return f"({r}.outcome = 'blocked' OR {r}.status = 402)"


def counters(
    r: str, money_columns: tuple[str, ...] = MONEY, dialect: Dialect = SQLITE, hinted: bool = False
) -> dict[str, str]:
    """Per counted column of the rollup, its value for one `requests` row named `r` in SQL (in
    `dialect`: a PostgreSQL reader sums raw rows the same way, for the same numbers).

    `hinted`: use the row's precomputed money parts where the writer gave them (insert trigger only).
    """
    values = {
        "requests": "1",
        # A refusal (a budget's 402) is not an error: it has its own column.
        "errors": dialect.flag(f"{r}.outcome != 'ok' AND NOT {_blocked(r)}"),
        "blocked": _blocked(r) if dialect is SQLITE else dialect.flag(_blocked(r)),
        "free_requests": f"COALESCE({r}.is_free, 0)" if dialect is SQLITE else f"COALESCE({r}.is_free::int, 0)",
        **{name: f"COALESCE({r}.{name}, 0)" for name in TOKENS},
        "cost_unknown": dialect.flag(f"{r}.cost_usd IS NULL"),
    }
    if any(money in COMPARED for money in money_columns):
        values["compared_requests"] = dialect.flag(f"{r}.cost_reported_usd IS NOT NULL AND {r}.cost_catalog_usd IS NOT NULL")
    for money in money_columns:
        column, needed = COMPARED.get(money, (money, None))
        pico, yocto, inexact = dialect.money_parts(f"{r}.{column}") or _money_parts(f"{r}.{column}")
        if hinted and column in HINTED:
            # CASE (and COALESCE) evaluate lazily: the text is cut only when the hint is NULL.
            given = f"{r}.{column}_pico IS NOT NULL"
            pico = f"COALESCE({r}.{column}_pico, {pico})"
            yocto = f"(CASE WHEN {given} THEN {r}.{column}_yocto ELSE {yocto} END)"
            inexact = f"(CASE WHEN {given} THEN 0 ELSE {inexact} END)"
        if needed is not None:
            pico, yocto, inexact = (f"(CASE WHEN {r}.{needed} IS NULL THEN 0 ELSE {part} END)" for part in (pico, yocto, inexact))
        values[f"{money}_pico"] = pico
        values[f"{money}_yocto"] = yocto
        values[f"{money}_inexact"] = inexact
    return values


def _money_parts(x: str) -> tuple[str, str, str]:
    """SQL for the exact integer parts of a fixed-point decimal TEXT `x` (0 for NULL)."""
    odd = f"({x} GLOB '*[^0-9.]*' OR {x} GLOB '*.*.*')"
    frac = f"(CASE WHEN instr({x}, '.') > 0 THEN substr({x}, instr({x}, '.') + 1) ELSE '' END)"
    whole = f"(CASE WHEN instr({x}, '.') > 0 THEN substr({x}, 1, instr({x}, '.') - 1) ELSE {x} END)"
    pico = (
        f"(CASE WHEN {x} IS NULL OR {odd} THEN 0 ELSE CAST({whole} AS INTEGER) * {PICO}"
        f" + CAST(substr({frac} || '000000000000', 1, 12) AS INTEGER) END)"
    )
    yocto = f"(CASE WHEN {x} IS NULL OR {odd} THEN 0 ELSE CAST(substr({frac} || '000000000000', 13, 12) AS INTEGER) END)"
    inexact = f"(CASE WHEN {x} IS NULL THEN 0 WHEN {odd} OR length({frac}) > 24 THEN 1 ELSE 0 END)"
    return pico, yocto, inexact


# The money columns whose parts the recorder writes beside the text (migration 14), and the
# `requests` columns that hold them. Not upstream_cost_usd: it is NULL but for BYOK, and SQL
# reads a NULL for less than the hint would cost (measured in instructions per row).
HINTED = ("cost_usd", "cost_reported_usd", "cost_catalog_usd")
HINT_COLUMNS = tuple(f"{money}_{part}" for money in HINTED for part in ("pico", "yocto"))
# 10^(12 - n): what n decimals of a fraction are worth in pico-dollars (or in yocto past the 12th).
_SCALE = tuple(10 ** (12 - n) for n in range(13))


def parts(text: str | None) -> tuple[int | None, int | None]:
    """(pico, yocto) of an amount's fixed-point text (as the recorder stores it) exactly as
    `_money_parts` cuts it in SQL, or (None, None) to leave it to SQL: NULL, negative, not a
    number, more than 24 decimals or a million dollars and more. Cheap: the recorder calls it for
    every row, and it must cost less than the SQL it saves."""
    if text is None or text[0] in "-NIs":  # negative, NaN, Infinity, sNaN
        return None, None
    whole, _, frac = text.partition(".")
    if len(whole) > 6:
        return None, None
    places = len(frac)
    if places <= 12:
        return int(whole) * PICO + (int(frac) * _SCALE[places] if places else 0), 0
    if places > 24:
        return None, None
    return int(whole) * PICO + int(frac[:12]), int(frac[12:]) * _SCALE[places - 12]


# Wide enough that no sum of 64-bit pico and yocto parts is ever rounded.
_WIDE = Context(prec=80)


def money_value(pico: int | None, yocto: int | None) -> Decimal:
    """The exact Decimal of summed parts, without trailing zeros."""
    return _WIDE.normalize(Decimal((pico or 0) * PICO + (yocto or 0)).scaleb(-24, _WIDE))


_YOCTO_PER_DOLLAR = 10**24


def money_text(pico: int | None, yocto: int | None) -> str:
    """`format(money_value(pico, yocto), "f")`, the same text, from integers (no Decimal): a report
    of 30,000 sessions formats 60,000 of these."""
    if not yocto and pico is not None and pico >= 0:
        # The common case (at most 12 decimals): smaller integers, the same text.
        whole, frac = divmod(pico, PICO)
        return f"{whole}.{frac:012d}".rstrip("0") if frac else str(whole)
    total = (pico or 0) * PICO + (yocto or 0)
    sign = "-" if total < 0 else ""
    whole, frac = divmod(-total if sign else total, _YOCTO_PER_DOLLAR)
    if not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:024d}".rstrip("0")


def dimension(r: str, name: str) -> str:
    return f"COALESCE({r}.{name}, '')"


@dataclass(frozen=True, slots=True)
class Rollup:
    """One summary table: per `period` (the first `width` characters of started_at) and `dims`."""

    table: str
    width: int
    dims: tuple[str, ...]
    # Sums the COMPARED money too (when the migration that made the table asked for it).
    compared: bool = False
    # Integer keys computed from the row, after the dims: (column, SQL with {r} for the row).
    computed: tuple[tuple[str, str], ...] = ()
    # Its own counted columns instead of `counters()`: (row name, hinted) -> column -> SQL.
    counted: Callable[[str, bool], dict[str, str]] | None = None

    def money(self, money: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m for m in money if m not in COMPARED or self.compared)

    def counters(self, r: str, money: tuple[str, ...] = MONEY, hinted: bool = False) -> dict[str, str]:
        """Per counted column, its value for one `requests` row named `r` (SQLite)."""
        if self.counted is not None:
            return self.counted(r, hinted)
        return counters(r, self.money(money), hinted=hinted)

    def period_of(self, r: str) -> str:
        # started_at is ISO-8601 UTC text ('2026-11-20T13:04:05.000000Z'): its first 13 characters
        # are the hour, its first 10 the day.
        return f"substr({r}.started_at, 1, {self.width})"

    @property
    def keys(self) -> tuple[str, ...]:
        named = (*self.dims, *(name for name, _ in self.computed))
        return ("period", *named) if self.width else named

    def key_values(self, r: str) -> list[str]:
        values = [dimension(r, d) for d in self.dims] + [sql.format(r=r) for _, sql in self.computed]
        return [self.period_of(r), *values] if self.width else values


# Hourly, with every attribution: the edges of a range, sessions, time zones other than UTC.
HOURLY = Rollup("spend_hourly", 13, DIMENSIONS, compared=True)
# Daily (UTC days), without sessions: about half the rows (far fewer with real traffic), so the
# common reports over months read little.
DAILY = Rollup("spend_daily", 10, tuple(d for d in DIMENSIONS if d != "session"))
# Per session (and attribution) over all time, no period: sessions are short, so a report by
# session reads this for every session wholly inside its range, and the hourly rollup only for
# the few that straddle an end of the range.
SESSIONS = Rollup("spend_sessions", 0, ("session", *(d for d in DIMENSIONS if d != "session")))
# The long-context tiers' prompt thresholds (`min_prompt_tokens`) of the embedded catalog
# (proxy/data/catalog.json): the what-if rollup keeps a request's band, how many of them its prompt
# exceeds, so every target whose thresholds are among these prices a band alike. A target with
# another threshold is re-priced from raw rows (proxy/web/whatif.py).
TIERS = (32_000, 128_000, 200_000, 256_000, 272_000)


def band_of(r: str) -> str:
    return " + ".join(f"(COALESCE({r}.input_tokens, 0) > {t})" for t in TIERS)


def band_prompt(band: int) -> int:
    """A prompt size inside `band`: prices alike with every prompt of the band at these thresholds."""
    return 0 if band == 0 else TIERS[band - 1] + 1


# Which of its cost columns the what-if rollup sums (logged cost, and at catalog prices).
WHATIF_MONEY = ("cost_usd", "cost_catalog_usd")


def whatif_counters(r: str, hinted: bool = False) -> dict[str, str]:
    """The what-if rollup's counted columns: the token sums TokenSums takes, with price()'s
    per-request clamps applied to each row first, and the logged money (SQLite)."""
    values = {
        "requests": "1",
        "cost_unknown": f"({r}.cost_usd IS NULL)",
        "catalog_unknown": f"({r}.cost_catalog_usd IS NULL)",
        "uncached": f"MAX(0, COALESCE({r}.input_tokens, 0) - COALESCE({r}.cached_tokens, 0) - COALESCE({r}.cache_write_tokens, 0))",
        "cached": f"COALESCE({r}.cached_tokens, 0)",
        "written": f"COALESCE({r}.cache_write_tokens, 0)",
        "written_1h": f"MIN(COALESCE({r}.cache_write_1h_tokens, 0), COALESCE({r}.cache_write_tokens, 0))",
        "output": f"COALESCE({r}.output_tokens, 0)",
        "reasoning": f"MIN(COALESCE({r}.reasoning_tokens, 0), COALESCE({r}.output_tokens, 0))",
        "web_search": f"COALESCE({r}.web_search_requests, 0)",
    }
    money = counters(r, WHATIF_MONEY, hinted=hinted)
    values.update((name, sql) for name, sql in money.items() if name.startswith(WHATIF_MONEY) and name not in values)
    return values


_PRICED = "({r}.input_tokens IS NOT NULL OR {r}.output_tokens IS NOT NULL)"
# Per UTC hour, the attribution the page's filters use but sessions (a session's raw rows are few
# and indexed), the tier band and whether the row has token counts at all: what /-/whatif re-prices.
WHATIF = Rollup(
    "spend_whatif", 13, ("model", "project", "key_fingerprint", "key_alias", "client"),
    computed=(("band", band_of("{r}")), ("priced", _PRICED)), counted=whatif_counters,
)
# The same without attribution, for /-/whatif unfiltered: at most 12 rows an hour, where the one
# above has one per attribution (summing 90 days of it took 0.5 s on a million rows).
WHATIF_TOTAL = Rollup("spend_whatif_total", 13, (), computed=WHATIF.computed, counted=whatif_counters)
ROLLUPS = (HOURLY, DAILY, SESSIONS, WHATIF, WHATIF_TOTAL)
# The rollups migrations 9 and 14 made (they call create() with these, whatever is added later).
FIRST_ROLLUPS = (HOURLY, DAILY, SESSIONS)


def hour_of(r: str) -> str:
    return HOURLY.period_of(r)


def _schema(rollup: Rollup, money: tuple[str, ...]) -> str:
    counted = ",\n    ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in rollup.counters("r", money))
    dims = ",\n    ".join(
        [*(f"{name} TEXT NOT NULL DEFAULT ''" for name in rollup.dims), *(f"{name} INTEGER NOT NULL" for name, _ in rollup.computed)]
    )
    period = "period TEXT NOT NULL,\n    " if rollup.width else ""
    return f"""
CREATE TABLE {rollup.table} (
    {period}{dims},
    {counted},
    first_at TEXT,
    last_at TEXT,
    PRIMARY KEY ({", ".join(rollup.keys)})
) WITHOUT ROWID
"""


# The `meta` key the recorder sets (and clears) inside its own write transaction, so no other
# connection ever sees it: while it is there the insert trigger leaves the rows to the recorder's
# per-batch upserts. A flag row, not a TEMP table or a connection's function: the main schema's
# triggers cannot see those, and a user's sqlite3 shell has neither.
BATCHED_KEY = "rollups_batched"


def create_insert_trigger(db: sqlite3.Connection, money: tuple[str, ...] = MONEY, tables: tuple[Rollup, ...] = ROLLUPS) -> None:
    """(Re)create the insert trigger; it reads the recorder's money parts when `requests` has them."""
    have = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    hinted = all(column in have for column in HINT_COLUMNS)
    db.execute("DROP TRIGGER IF EXISTS spend_rollups_insert")
    db.execute(
        "CREATE TRIGGER spend_rollups_insert AFTER INSERT ON requests "
        f"WHEN NOT EXISTS (SELECT 1 FROM meta WHERE key = '{BATCHED_KEY}') BEGIN "
        + " ".join(_upsert(rollup, "NEW", "+", money, hinted) for rollup in tables)
        + " END"
    )


def _counted_columns(rollup: Rollup, money: tuple[str, ...]) -> list[str]:
    return list(rollup.counters("r", money))


def _names(rollup: Rollup, money: tuple[str, ...]) -> str:
    return ", ".join([*rollup.keys, *_counted_columns(rollup, money), "first_at", "last_at"])


def _on_conflict(rollup: Rollup, money: tuple[str, ...]) -> str:
    sets = [f"{c} = {c} + excluded.{c}" for c in _counted_columns(rollup, money)]
    sets += ["first_at = min(first_at, excluded.first_at)", "last_at = max(last_at, excluded.last_at)"]
    return f" ON CONFLICT ({', '.join(rollup.keys)}) DO UPDATE SET {', '.join(sets)}"


def _upsert(rollup: Rollup, r: str, sign: str, money: tuple[str, ...], hinted: bool = False) -> str:
    """Add (sign '+') or take away (sign '-') row `r` in its period's rollup row."""
    values = [*rollup.key_values(r), *(f"{sign}{v}" for v in rollup.counters(r, money, hinted).values())]
    values += [f"{r}.started_at", f"{r}.started_at"]
    return f"INSERT INTO {rollup.table} ({_names(rollup, money)}) VALUES ({', '.join(values)}){_on_conflict(rollup, money)};"


# The recorder's own TEMP table (its connection only): one batch's sums per key of all the rollups at once.
BATCH_TABLE = "spend_batch"


def _agreed(found: dict[str, str], name: str, sql: str) -> None:
    # One column of the batch sums per name: two rollups may share it only if they count alike.
    if found.setdefault(name, sql) != sql:
        raise ValueError(f"rollups count {name!r} in two ways; the batch sums cannot share it")


def batch_statements(money: tuple[str, ...] = (*MONEY, *COMPARED), tables: tuple[Rollup, ...] = ROLLUPS) -> tuple[str, ...]:
    """The recorder's statements, in order, that add every `requests` row after rowid `:after`
    (the rows its batch inserted) to every rollup: the insert trigger's upserts, summed per key.

    Reading and sorting the raw rows is most of the cost, so they are read once: summed into a TEMP
    table per key of all the rollups at once (the finest period, every dimension and computed key,
    every counted column), and each rollup is summed from those few sums. One pass instead of one
    per kind of rollup took the writer's sums from 6.4 to 4.4 us a row (issue 15). `money`: every money column there is
    now (a migration passes create() the columns of its time; the recorder runs after the last).
    """
    width = max(rollup.width for rollup in tables)
    dims = list(dict.fromkeys(d for rollup in tables for d in rollup.dims))
    computed: dict[str, str] = {}
    counted: dict[str, str] = {}
    for rollup in tables:
        for name, sql in rollup.computed:
            _agreed(computed, name, sql.format(r="r"))
        for name, sql in rollup.counters("r", money, hinted=True).items():
            _agreed(counted, name, sql)
    temp = BATCH_TABLE
    period = ["period"] if width else []
    columns = [*period, *dims, *computed, *counted, "first_at", "last_at"]
    types = {**dict.fromkeys([*period, *dims, "first_at", "last_at"], "TEXT"), **dict.fromkeys([*computed, *counted], "INTEGER")}
    keys = [*([f"substr(r.started_at, 1, {width})"] if width else []), *(dimension("r", d) for d in dims), *computed.values()]
    sums = [*(f"SUM({sql})" for sql in counted.values()), "min(r.started_at)", "max(r.started_at)"]
    statements = [
        f"CREATE TEMP TABLE IF NOT EXISTS {temp} ({', '.join(f'{c} {types[c]}' for c in columns)})",
        f"INSERT INTO temp.{temp} ({', '.join(columns)}) " + _summed(keys, sums, "requests AS r WHERE r.rowid > :after"),
    ]
    for rollup in tables:
        rollup_period = [f"substr(period, 1, {rollup.width})"] if rollup.width else []
        rollup_computed = [name for name, _ in rollup.computed]
        rollup_sums = [*(f"SUM({c})" for c in _counted_columns(rollup, money)), "min(first_at)", "max(last_at)"]
        select = _summed([*rollup_period, *rollup.dims, *rollup_computed], rollup_sums, f"temp.{temp} WHERE true")
        statements.append(f"INSERT INTO {rollup.table} ({_names(rollup, money)}) {select}{_on_conflict(rollup, money)}")
    statements.append(f"DELETE FROM temp.{temp}")
    return tuple(statements)


def _summed(keys: list[str], sums: list[str], source: str) -> str:
    # `WHERE`: an upsert's SELECT needs one before ON CONFLICT, which would otherwise parse as a join's ON.
    return f"SELECT {', '.join([*keys, *sums])} FROM {source} GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}"


def _watched(money: tuple[str, ...], tables: tuple[Rollup, ...]) -> list[str]:
    sources = [name for m in money for name in COMPARED.get(m, (m,))]
    columns = {"started_at", "outcome", "status", "is_free", "cost_usd", *DIMENSIONS, *TOKENS, *sources}
    if any(rollup.counted is whatif_counters for rollup in tables):
        columns |= {"cache_write_1h_tokens", "web_search_requests", *WHATIF_MONEY}
    return sorted(columns)


def create(db: sqlite3.Connection, money: tuple[str, ...] = MONEY, tables: tuple[Rollup, ...] = ROLLUPS) -> None:
    """(Re)build the rollups `tables` and the triggers from every row in `requests`; run inside a migration.

    A migration passes the money columns `requests` has at that point (migration 9: cost_usd, upstream_cost_usd),
    and the rollups there were then, so a later one that adds a column and calls create() again still
    finds the database as it expects.

    Rows already deleted by retention are gone from `requests`, so a rebuild keeps the totals of
    periods older than the oldest raw row and re-sums the rest.
    """
    kept_before = db.execute("SELECT min(started_at) FROM requests").fetchone()[0]
    for trigger in ("insert", "update"):
        db.execute(f"DROP TRIGGER IF EXISTS spend_rollups_{trigger}")
    for rollup in tables:
        if rollup in (DAILY, SESSIONS):
            _rebuild_from_hourly(db, rollup, money)
        else:
            _rebuild_from_raw(db, rollup, kept_before, money)
    create_triggers(db, money, tables)


def add(db: sqlite3.Connection, new: tuple[Rollup, ...], money: tuple[str, ...], tables: tuple[Rollup, ...] = ROLLUPS) -> None:
    """Build new rollups from the raw rows and re-create the triggers to keep `tables` (a migration)."""
    for rollup in new:
        _rebuild_from_raw(db, rollup, None, money)
    create_triggers(db, money, tables)


def create_triggers(db: sqlite3.Connection, money: tuple[str, ...], tables: tuple[Rollup, ...] = ROLLUPS) -> None:
    create_insert_trigger(db, money, tables)
    # An update (a back-filled cost, an upsert of a row written twice) moves the row's old values
    # out of its old group and its new values into the new one.
    body = []
    for rollup in tables:
        key = " AND ".join(f"{k} = {v}" for k, v in zip(rollup.keys, rollup.key_values("OLD")))
        body += [_upsert(rollup, "OLD", "-", money), _upsert(rollup, "NEW", "+", money), f"DELETE FROM {rollup.table} WHERE {key} AND requests = 0;"]
    db.execute("DROP TRIGGER IF EXISTS spend_rollups_update")
    db.execute(f"CREATE TRIGGER spend_rollups_update AFTER UPDATE OF {', '.join(_watched(money, tables))} ON requests BEGIN {' '.join(body)} END")


def _rebuild_from_raw(db: sqlite3.Connection, rollup: Rollup, kept_before: str | None, money: tuple[str, ...]) -> None:
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (rollup.table,)).fetchone()
    if exists:
        db.execute(f"ALTER TABLE {rollup.table} RENAME TO {rollup.table}_old")
    db.execute(_schema(rollup, money))
    counted = rollup.counters("r", money)
    columns = list(counted)
    keys = rollup.key_values("r")
    select = [*keys, *(f"SUM({v})" for v in counted.values()), "min(r.started_at)", "max(r.started_at)"]
    db.execute(
        f"INSERT INTO {rollup.table} ({', '.join(rollup.keys)}, {', '.join(columns)}, first_at, last_at) "
        f"SELECT {', '.join(select)} FROM requests AS r GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}"
    )
    if exists:
        # Hours whose raw rows retention already dropped (it drops whole hours) keep their old
        # totals; a column added since starts at 0 there.
        old = {row[1] for row in db.execute(f"PRAGMA table_info({rollup.table}_old)")}
        shared = [*rollup.keys, *(c for c in columns if c in old), "first_at", "last_at"]
        where, params = ("", ()) if kept_before is None else (" WHERE period < ?", (kept_before[: rollup.width],))
        db.execute(f"INSERT INTO {rollup.table} ({', '.join(shared)}) SELECT {', '.join(shared)} FROM {rollup.table}_old{where}", params)
        db.execute(f"DROP TABLE {rollup.table}_old")


def _rebuild_from_hourly(db: sqlite3.Connection, rollup: Rollup, money: tuple[str, ...]) -> None:
    # From the hourly rollup, not the raw rows: it still holds the hours retention pruned.
    db.execute(f"DROP TABLE IF EXISTS {rollup.table}")
    db.execute(_schema(rollup, money))
    columns = list(rollup.counters("r", money))
    period = [f"substr(period, 1, {rollup.width})"] if rollup.width else []
    db.execute(
        f"INSERT INTO {rollup.table} ({', '.join(rollup.keys)}, {', '.join(columns)}, first_at, last_at) "
        f"SELECT {', '.join([*period, *rollup.dims])}, {', '.join(f'SUM({c})' for c in columns)}, "
        f"min(first_at), max(last_at) FROM {HOURLY.table} GROUP BY {', '.join(str(i + 1) for i in range(len(rollup.keys)))}"
    )
