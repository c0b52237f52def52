"""A headless Chromium driven over the DevTools protocol with aiohttp's websocket client (no new dependency).

`browser()` starts Debian's `chromium` with a fresh profile and no background networking, and
yields a Page on about:blank. Page keeps every console message, uncaught exception and network
request the page makes, so a test can assert there were none it did not expect.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--remote-debugging-port=0",
)


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._next = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.console: list[dict[str, Any]] = []
        self.exceptions: list[dict[str, Any]] = []
        self.log_entries: list[dict[str, Any]] = []
        self.requests: list[str] = []
        # Requests held by Fetch.enable patterns, until a test continues them.
        self.paused: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(RuntimeError(f"CDP error: {data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.consoleAPICalled":
                self.console.append(params)
            elif method == "Runtime.exceptionThrown":
                self.exceptions.append(params)
            elif method == "Log.entryAdded":
                self.log_entries.append(params["entry"])
            elif method == "Fetch.requestPaused":
                self.paused.append(params)
            elif method == "Network.requestWillBeSent":
                self.requests.append(params["request"]["url"])

    async def send(self, method: str, **params: Any) -> Any:
        self._next += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = future
        await self._ws.send_json({"id": self._next, "method": method, "params": params})
        return await asyncio.wait_for(future, 30)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, attempts: int = 150, delay_s: float = 0.1) -> Any:
        for _ in range(attempts):
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(delay_s)
        raise AssertionError(f"page never satisfied: {expression}")

    async def size(self, width: int, height: int, mobile: bool = False) -> None:
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def screenshot(self, path: Path) -> Path:
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, and browser log errors (CSP, 404s)."""
        found = [f"console.{c['type']}: {c.get('args')}" for c in self.console if c["type"] in ("error", "warning", "assert")]
        found += [f"exception: {e['exceptionDetails']}" for e in self.exceptions]
        found += [f"log {e['level']}: {e.get('text')} {e.get('url', '')}" for e in self.log_entries if e["level"] in ("error", "warning")]
        return found

    async def close(self) -> None:
        self._reader.cancel()
        try:
            await self._reader
        except (asyncio.CancelledError, Exception):
            pass


@asynccontextmanager
async def browser() -> AsyncIterator[Page]:
    path = chromium_path()
    assert path is not None, "chromium is not installed (apt-get install chromium)"
    profile = tempfile.mkdtemp(prefix="cdp-profile-")
    process = await asyncio.create_subprocess_exec(
        path, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TZ": os.environ.get("TZ", "UTC")},
    )
    try:
        assert process.stderr is not None
        endpoint = None
        for _ in range(200):
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            if not line:
                break
            match = re.search(rb"DevTools listening on (ws://\S+)", line)
            if match:
                endpoint = match.group(1).decode()
                break
        assert endpoint is not None, "chromium did not print its DevTools address"
        http_base = "http://" + endpoint.split("/")[2]
        async with aiohttp.ClientSession() as session:
            targets = []
            for _ in range(50):
                async with session.get(f"{http_base}/json/list") as response:
                    targets = [t for t in await response.json() if t["type"] == "page"]
                if targets:
                    break
                await asyncio.sleep(0.1)
            assert targets, "chromium opened no page"
            async with session.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                try:
                    for domain in ("Page", "Runtime", "Log", "Network"):
                        await page.send(f"{domain}.enable")
                    yield page
                finally:
                    await page.close()
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        # chromium's stderr pipe: drain what is left so the transport closes cleanly
        shutil.rmtree(profile, ignore_errors=True)
