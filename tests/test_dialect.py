"""proxy/store/dialect.py: GLOB on PostgreSQL matches exactly what SQLite's GLOB matches."""

from __future__ import annotations

import itertools
import sqlite3

from proxy.store.dialect import POSTGRES, SQLITE, dialect_of, glob_regex
from proxy.store.reader import open_reader

PATTERNS = ["openai/*", "*sonnet*", "s?", "[ab]*", "[^ab]*", "a.b", "x+y(z)", "[*]", "50%_off", "*", "", "a[]]b", "café*", "a\\b"]
VALUES = ["openai/gpt-4o", "anthropic/claude-sonnet-4", "s1", "s12", "apple", "cherry", "a.b", "axb", "x+y(z)", "*", "?",
          "50%_off", "500_off", "", "a]b", "café au lait", "a\\b", "OPENAI/GPT", "line\nbreak"]


def test_glob_is_the_same_on_both_engines(pg_url: str) -> None:
    lite = sqlite3.connect(":memory:")
    pg = open_reader(pg_url)
    try:
        assert dialect_of(lite) is SQLITE and dialect_of(pg) is POSTGRES
        for pattern, value in itertools.product(PATTERNS, VALUES):
            want = bool(lite.execute("SELECT ? GLOB ?", (value, pattern)).fetchone()[0])
            got = bool(pg.execute("SELECT ?::text ~ ?::text", (value, glob_regex(pattern))).fetchone()[0])
            assert got == want, (pattern, value, glob_regex(pattern))
    finally:
        pg.close()
        lite.close()
