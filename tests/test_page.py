"""The page in a real headless Chromium against a proxy with known rows: numbers equal the CLI's report,
charts draw, no console errors, no request leaves 127.0.0.1, hostile values stay text, 1280 and 390 px.

Screenshots go to the test's tmp dir (and to $OPENROUTER_SPEND_SCREENSHOTS when set).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from proxy.budgets.spec import parse_budgets
from proxy.cli.main import main
from tests.cdp import Page, browser, chromium_path
from tests.test_web import KEY, XSS, insert, known_rows

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (scripts/test.sh installs it)")

BUDGETS = parse_budgets(
    [
        {"name": "daily", "limit_usd": 1, "period": "day", "scope": "total"},
        {"name": "monthly", "limit_usd": 20, "period": "month", "scope": "total", "action": "warn"},
    ]
)


def shown(value: str) -> str:
    """How the page prints an exact amount: the report's digits, trailing zeros dropped."""
    text = format(Decimal(value).normalize(), "f")
    return "$" + ("0" if text == "-0" else text)


def cli_report(db: Path, by: str, since: str, capsys: Any) -> Any:
    assert main(["report", "--db", str(db), "--by", by, "--since", since, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def keep(shot: Path) -> None:
    target = os.environ.get("OPENROUTER_SPEND_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)


async def open_page(page: Page, url: str, width: int, height: int) -> None:
    await page.size(width, height, mobile=width < 600)
    # A hash change is handled in a later task: mark the page unready first, or the old view's
    # "ready" could be read before the new one starts loading.
    await page.evaluate("document.body && (document.body.dataset.ready = '0')")
    await page.goto(url)
    await page.wait_for("document.body && document.body.dataset.ready === '1'")
    await page.wait_for("document.querySelector('#table-estimate tbody tr td:not(.empty)') !== null")


async def texts(page: Page, selector: str) -> list[str]:
    return list(await page.evaluate(f"[...document.querySelectorAll({json.dumps(selector)})].map(e => e.textContent)"))


async def test_page_shows_the_reports_numbers(start_proxy: Any, tmp_path: Path, capsys: Any) -> None:
    proxy = await start_proxy(budgets=BUDGETS)
    insert(proxy.db_path, known_rows())
    response = await proxy.client.post(
        "/api/v1/chat/completions",
        json={"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {KEY}", "X-Spend-Session": XSS, "X-Spend-Project": XSS},
    )
    assert response.status == 200
    await proxy.settle()
    base = str(proxy.server.make_url("/"))
    origin = base.rstrip("/")
    async with browser() as page:
        await open_page(page, base + "#since=7d", 1280, 900)
        report = cli_report(proxy.db_path, "model", "7d", capsys)
        assert await page.evaluate("document.getElementById('spend-range').dataset.value") == report["total"]["cost_usd"]
        assert await page.evaluate("document.getElementById('spend-range').textContent") == shown(report["total"]["cost_usd"])
        assert (await page.evaluate("document.getElementById('requests-range').textContent")).startswith(
            f"{report['total']['requests']:,} requests"
        )
        rows = await page.evaluate(
            "[...document.querySelectorAll('#table-models tbody tr')].map(tr => [tr.cells[0].textContent, tr.cells[2].textContent, tr.cells[1].dataset.value])"
        )
        assert rows == [[r["group"], f"{r['requests']:,}", r["cost_usd"]] for r in report["rows"][:15]]
        projects = cli_report(proxy.db_path, "project", "7d", capsys)
        project_rows = await page.evaluate(
            "[...document.querySelectorAll('#table-projects tbody tr')].map(tr => [tr.cells[0].textContent, tr.cells[1].dataset.value])"
        )
        assert project_rows == [[r["group"], r["cost_usd"]] for r in projects["rows"][:15]]

        # Budgets: a bar per budget, spend as the ledger has it.
        assert await page.evaluate("document.querySelectorAll('#budgets .budget .bar .fill').length") == 2
        # Charts: the canvas has drawn pixels.
        painted = await page.evaluate(
            "(() => { const c = document.getElementById('chart-spend'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })()"
        )
        assert painted > 1000
        # Recent requests, with the hostile session and project shown as text.
        assert XSS in await texts(page, "#table-recent td")
        assert XSS in await texts(page, "#table-sessions td")
        assert await page.evaluate("window.__xss === undefined && document.querySelectorAll('main img').length === 0")
        shot = await page.screenshot(tmp_path / "page-1280.png")
        keep(shot)

        # Live: a request made while the page is open shows up without a reload.
        response = await proxy.client.post(
            "/api/v1/chat/completions",
            json={"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {KEY}", "X-Spend-Session": "arrived-later"},
        )
        assert response.status == 200
        await proxy.settle()
        await page.wait_for(
            "[...document.querySelectorAll('#table-recent tr.fresh td')].some(td => td.textContent === 'arrived-later')"
        )

        # What if: the user's own traffic re-priced, through the form.
        await page.evaluate(
            "document.querySelector('#whatif-form [name=target]').value = 'openai/gpt-4o-mini';"
            "document.querySelector('#whatif-form button').click()"
        )
        await page.wait_for("document.querySelectorAll('#table-whatif tbody tr').length > 1")
        assert "openai/gpt-4o-mini" in " ".join(await texts(page, "#table-whatif td"))

        # A link reproduces the view: the filter in the hash narrows every number.
        await open_page(page, base + "#since=30d&project=acme&by=project&step=hour", 1280, 900)
        acme = await page.evaluate("document.getElementById('spend-range').dataset.value")
        everything = cli_report(proxy.db_path, "project", "30d", capsys)
        assert acme == next(r["cost_usd"] for r in everything["rows"] if r["group"] == "acme")
        assert await page.evaluate("document.querySelector('#filters [name=project]').value") == "acme"
        assert await page.evaluate("document.querySelector('#chart-options [name=step]').value") == "hour"

        # Phone width: nothing wider than the screen but the scrollable tables. Leaving the filtered
        # view while its slower answers are still in flight must not draw them over this one.
        await page.send("Fetch.enable", patterns=[{"urlPattern": "*project=acme*"}])
        await page.goto(base + "#since=90d&project=acme&by=session&step=hour")
        for _ in range(100):
            if len(page.paused) >= 8:
                break
            await asyncio.sleep(0.05)
        assert page.paused, "the filtered view sent no requests"
        await open_page(page, base + "#since=7d", 390, 844)
        for held in page.paused:  # now the old view's answers arrive, late
            await page.send("Fetch.continueRequest", requestId=held["requestId"])
        await page.send("Fetch.disable")
        await asyncio.sleep(1.0)
        overflow = await page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= 390
        report = cli_report(proxy.db_path, "model", "7d", capsys)
        rows = await page.evaluate(
            "[...document.querySelectorAll('#table-models tbody tr')].map(tr => [tr.cells[0].textContent, tr.cells[1].dataset.value])"
        )
        assert rows == [[r["group"], r["cost_usd"]] for r in report["rows"][:15]]
        legend = await page.evaluate("Chart.getChart('chart-spend').data.datasets.map(d => d.label)")
        assert set(legend) <= {r["group"] for r in report["rows"]} | {"other"}
        shot = await page.screenshot(tmp_path / "page-390.png")
        keep(shot)

        assert page.problems() == []
        outside = [url for url in page.requests if not (url.startswith(origin) or url.startswith("data:") or url == "about:blank")]
        assert outside == []


async def test_a_bad_filter_in_a_link_is_shown_not_thrown(start_proxy: Any) -> None:
    proxy = await start_proxy()
    insert(proxy.db_path, known_rows())
    base = str(proxy.server.make_url("/"))
    async with browser() as page:
        await page.size(1280, 900)
        await page.goto(base + "#since=soon")
        message = await page.wait_for("(document.getElementById('status') || {}).textContent")
        assert "since: expected" in message
        assert [p for p in page.problems() if "400" not in p] == []
