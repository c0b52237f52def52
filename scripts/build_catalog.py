"""Build the embedded catalog snapshot (proxy/data/catalog.json) and the trimmed test fixtures.

    python scripts/build_catalog.py LISTING.json            # snapshot from a saved GET /models body
    python scripts/build_catalog.py --live                  # snapshot from https://openrouter.ai/api/v1/models
    python scripts/build_catalog.py --fixtures L2025 L2026  # tests/fixtures/models-{2025,2026}.json

The snapshot keeps only what pricing and lookup need (ids, names, canonical slugs, alias targets,
context lengths, created, pricing); `proxy.pricing.catalog.parse_models` reads it like any listing.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.pricing.catalog import catalog_to_json, parse_models  # noqa: E402

LIVE_URL = "https://openrouter.ai/api/v1/models"
SNAPSHOT = ROOT / "proxy" / "data" / "catalog.json"
FIXTURES = ROOT / "tests" / "fixtures"

# Each id is here for a rule the tests exercise; see tests/test_catalog.py and tests/test_pricing.py.
FIXTURE_IDS_2025 = (
    "meta-llama/llama-3.1-8b-instruct",  # the acceptance example: $0.02/$0.03
    "meta-llama/llama-3.1-8b-instruct:free",  # :free variant
    "openai/gpt-4o",  # acceptance example; cache read
    "openai/gpt-4o:extended",  # :extended variant with its own price
    "openai/gpt-4o-search-preview",  # per-request fee
    "anthropic/claude-3.7-sonnet",  # cache read + write
    "anthropic/claude-3.7-sonnet:beta",
    "anthropic/claude-3.7-sonnet:thinking",
    "perplexity/sonar-deep-research",  # internal_reasoning + web_search
    "google/gemini-2.5-pro-preview-03-25",  # image; input_cache_write "0"
    "google/gemini-flash-1.5-8b-exp",  # zero-priced without a :free suffix
    "mistral/ministral-8b",  # two vendors share the bare name
    "mistralai/ministral-8b",
    "openrouter/auto",  # "-1": variable
)
FIXTURE_IDS_2026 = (
    "meta-llama/llama-3.1-8b-instruct",
    "openai/gpt-4o",
    "anthropic/claude-sonnet-4.5",  # long-context override, dated canonical slug
    "anthropic/claude-sonnet-5",
    "anthropic/claude-sonnet-5:batch",  # :batch shares the canonical slug
    "~anthropic/claude-sonnet-latest",  # alias
    "deepseek/deepseek-v4-flash-vision-exp",  # time-of-day overrides wrapping midnight
    "thinkingmachines/inkling-small",
    "thinkingmachines/inkling-small:free",
    "qwen/qwen-plus-2025-07-28:thinking",
    "google/gemini-2.5-pro",  # override with audio keys
    "google/gemini-3-pro-image",  # image, image_output, audio, internal_reasoning, web_search
    "openai/gpt-audio",  # audio, audio_output
    "openrouter/auto",
)
# Bulky fields nothing reads; the rest of each entry stays as OpenRouter sent it.
_DROP = ("description", "architecture", "supported_parameters", "default_parameters", "benchmarks", "links")


def build_snapshot(payload: dict[str, Any], fetched_at: datetime | None) -> str:
    catalog = parse_models(payload, fetched_at)
    body = catalog_to_json(catalog.models, catalog.fetched_at)
    # One model per line keeps refresh diffs readable.
    lines = [json.dumps(m, separators=(",", ":"), ensure_ascii=False) for m in body["data"]]
    head = f'"fetchedAt":{json.dumps(body["fetchedAt"])},' if "fetchedAt" in body else ""
    return "{" + head + '"data":[\n' + ",\n".join(lines) + "\n]}\n"


def trim(payload: dict[str, Any], ids: tuple[str, ...]) -> dict[str, Any]:
    by_id = {m["id"]: m for m in payload["data"]}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SystemExit(f"not in listing: {', '.join(missing)}")
    out: dict[str, Any] = {k: v for k, v in payload.items() if k != "data"}
    if "count" in out:
        out["count"] = len(ids)
    out["data"] = [{k: v for k, v in by_id[i].items() if k not in _DROP} for i in ids]
    return out


def fetch_live() -> dict[str, Any]:
    req = urllib.request.Request(LIVE_URL, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        body: dict[str, Any] = json.load(resp)
    return body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("listing", nargs="?", type=Path, help="a saved GET /models body (either schema)")
    ap.add_argument("--live", action="store_true", help="fetch the listing from OpenRouter")
    ap.add_argument("-o", "--output", type=Path, default=SNAPSHOT)
    ap.add_argument("--fixtures", nargs=2, type=Path, metavar=("LISTING_2025", "LISTING_2026"))
    args = ap.parse_args(argv)

    if args.fixtures:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        for src, ids, name in zip(args.fixtures, (FIXTURE_IDS_2025, FIXTURE_IDS_2026), ("2025", "2026")):
            body = trim(json.loads(src.read_text(encoding="utf-8")), ids)
            dest = FIXTURES / f"models-{name}.json"
            dest.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"wrote {dest.relative_to(ROOT)}: {len(ids)} models")
        return 0

    if args.live == (args.listing is not None):
        ap.error("give exactly one of LISTING or --live")
    if args.live:
        payload, fetched_at = fetch_live(), datetime.now(timezone.utc)
    else:
        payload, fetched_at = json.loads(args.listing.read_text(encoding="utf-8")), None
    text = build_snapshot(payload, fetched_at)
    args.output.write_text(text, encoding="utf-8")
    n = text.count("\n") - 1
    print(f"wrote {args.output}: {n} models, {len(text):,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
