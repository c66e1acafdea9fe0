"""A tiny headless-Chromium driver over the DevTools protocol (CDP).

Only what the browser tests need: open a page, wait for it to load, evaluate
JavaScript, fill and submit forms through JavaScript, take PNG screenshots.
It speaks CDP over a WebSocket with aiohttp (already a dependency), so the
only thing to install is the ``chromium`` package itself.

    async with Browser.launch(tmp_path) as browser:
        page = await browser.new_page()
        await page.goto("http://127.0.0.1:8001/")
        await page.wait_for("document.querySelector('#role').textContent === 'leader'")
        await page.screenshot(Path("artifacts/screenshots/status.png"))
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(Exception):
    pass


class Page:
    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id)

    async def goto(self, url: str, timeout: float = 15.0) -> None:
        loaded = self.browser.expect("Page.loadEventFired", self.session_id)
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CDPError(f"navigating to {url}: {result['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll until ``expression`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still falsy after {timeout}s: {expression}")
            await asyncio.sleep(0.1)

    async def text(self, selector: str) -> str:
        value = await self.evaluate(
            f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''"
        )
        return str(value)

    async def submit_form(
        self, selector: str, fields: dict[str, str], timeout: float = 15.0
    ) -> None:
        """Fill the form's fields by name and submit it; wait for the next page."""
        loaded = self.browser.expect("Page.loadEventFired", self.session_id)
        await self.evaluate(
            f"""(() => {{
              const form = document.querySelector({json.dumps(selector)});
              const fields = {json.dumps(fields)};
              for (const [name, value] of Object.entries(fields)) form.elements[name].value = value;
              form.requestSubmit();
            }})()"""
        )
        await asyncio.wait_for(loaded, timeout)

    async def screenshot(self, path: Path) -> Path:
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(result["data"]))
        return path


class Browser:
    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        ws: aiohttp.ClientWebSocketResponse,
        session: aiohttp.ClientSession,
    ) -> None:
        self.proc = proc
        self.ws = ws
        self.session = session
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(
        cls, profile_dir: Path, width: int = 1366, height: int = 860
    ) -> AsyncIterator[Browser]:
        binary = find_chromium()
        if binary is None:
            raise FileNotFoundError("chromium is not installed")
        profile_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={profile_dir}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        session = aiohttp.ClientSession()
        try:
            port_file = profile_dir / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
                if proc.poll() is not None:
                    raise CDPError(f"chromium exited with {proc.returncode} at start")
                if time.monotonic() > deadline:
                    raise CDPError("chromium did not open its DevTools port in 30 s")
                await asyncio.sleep(0.05)
            port, path = port_file.read_text().splitlines()[:2]
            ws = await session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
            browser = cls(proc, ws, session)
            browser.size = (width, height)
            try:
                yield browser
            finally:
                await browser.close()
        finally:
            await session.close()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    size: tuple[int, int]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close", {}), 5)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self.ws.close()

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(CDPError(str(data["error"])))
                    else:
                        fut.set_result(data.get("result", {}))
                continue
            method, session_id = data.get("method"), data.get("sessionId")
            for waiter in list(self._waiters):
                name, sid, fut = waiter
                if name == method and (sid is None or sid == session_id) and not fut.done():
                    fut.set_result(data.get("params", {}))
                    self._waiters.remove(waiter)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CDPError("the browser connection closed"))

    def expect(self, method: str, session_id: str | None = None) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, session_id, fut))
        return fut

    async def send(
        self, method: str, params: dict[str, Any], session_id: str | None = None
    ) -> dict[str, Any]:
        message_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = fut
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session_id is not None:
            message["sessionId"] = session_id
        await self.ws.send_str(json.dumps(message))
        return await asyncio.wait_for(fut, 30)

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        width, height = self.size
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return page
