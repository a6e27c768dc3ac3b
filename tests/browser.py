"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`): no Selenium, Playwright
or websocket package, only the browser Debian ships as `chromium`.

`Browser.visit(url)` loads a page and reports what a person would see and what the page did: its title and text, the
images that failed to show, every URL it requested, what reached the console as an error, and a PNG screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Browser", "PageVisit", "find_chromium"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_SETTLE_S = 0.5  # a page has settled once this long passes without a new request (lazy images, the search index)

# Every image of the page (lazy ones made eager), once each has loaded or failed: how many, and which show nothing.
_IMAGES_JS = """(async () => {
  const images = Array.from(document.images);
  images.forEach(image => { image.loading = "eager"; });
  await Promise.all(images.map(image => image.complete ? null : new Promise(done => {
    image.addEventListener("load", done); image.addEventListener("error", done); setTimeout(done, 5000);
  })));
  const broken = images.filter(image => !image.complete || image.naturalWidth === 0)
                       .map(image => (image.currentSrc || image.src || "(no src)").slice(0, 120));
  return JSON.stringify({count: images.length, broken: broken});
})()"""


def find_chromium() -> str | None:
    """The path of a Chromium or Chrome on PATH, or None."""
    return next((path for name in _CANDIDATES if (path := shutil.which(name))), None)


@dataclass
class PageVisit:
    url: str
    title: str
    text: str  # the page's visible text (document.body.innerText)
    image_count: int
    broken_images: list[str]
    requests: list[str]  # every URL the page asked for, in order
    console_errors: list[str]  # console.error calls, uncaught exceptions, and the browser's own error log (failed loads)
    screenshot: bytes = field(repr=False)  # PNG of the first screen


class Browser:
    """One headless Chromium process; use as a context manager."""

    def __init__(self, executable: str, *, width: int = 1280, height: int = 900, timeout_s: float = 60) -> None:
        self.timeout_s = timeout_s
        self._profile = tempfile.mkdtemp(prefix="wildvision-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def pipes_at_3_and_4() -> None:  # in the child: the protocol's fixed descriptors (read 3, write 4)
            high_r, high_w = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self._process = subprocess.Popen(
            [executable, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-default-apps", "--hide-scrollbars",
             "--mute-audio", f"--window-size={width},{height}", f"--user-data-dir={self._profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=pipes_at_3_and_4, close_fds=False,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._send("Browser.close")
        except OSError:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self._profile, ignore_errors=True)

    def visit(self, url: str) -> PageVisit:
        """Open `url` in a fresh tab, wait until it has loaded and settled, and report what it showed and did."""
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Page", "Network", "Runtime", "Log"):
                self._call(f"{domain}.enable", session=session)
            self._events.clear()
            self._call("Page.navigate", {"url": url}, session=session)
            loaded = lambda event: event.get("method") == "Page.loadEventFired" and event.get("sessionId") == session
            if not any(loaded(event) for event in self._events):  # it may have come while navigate was answered
                self._wait_for(loaded)
            self._settle(session)
            images = json.loads(self._evaluate(session, _IMAGES_JS))
            self._settle(session)
            title = self._evaluate(session, "document.title")
            text = self._evaluate(session, "document.body ? document.body.innerText : ''")
            shot = self._call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
            events = [event for event in self._events if event.get("sessionId") == session]
            return PageVisit(
                url=url, title=title, text=text, image_count=images["count"], broken_images=images["broken"],
                requests=[e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"],
                console_errors=_errors(events), screenshot=base64.b64decode(shot),
            )
        finally:
            self._call("Target.closeTarget", {"targetId": target})

    def _evaluate(self, session: str, expression: str) -> object:
        result = self._call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                  "returnByValue": True}, session=session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]!r} failed in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _settle(self, session: str) -> None:
        """Wait until no request has started for _SETTLE_S."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            seen = len(self._events)
            self._pump(until=time.monotonic() + _SETTLE_S)
            if not any(e["method"] == "Network.requestWillBeSent" and e.get("sessionId") == session
                       for e in self._events[seen:]):
                return

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message: dict[str, object] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        wanted = self._send(method, params, session)
        reply = self._wait_for(lambda message: message.get("id") == wanted)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def _wait_for(self, matches) -> dict:
        deadline = time.monotonic() + self.timeout_s
        while True:
            for message in self._messages(deadline):
                if matches(message):
                    return message
            if time.monotonic() > deadline:
                raise TimeoutError(f"Chromium did not answer within {self.timeout_s} s")

    def _pump(self, until: float) -> None:
        while time.monotonic() < until:
            list(self._messages(until))

    def _messages(self, deadline: float):
        """Read what has arrived (waiting until `deadline` for something); every message is yielded, events also kept."""
        ready, _, _ = select.select([self._from_browser], [], [], max(0.0, min(deadline - time.monotonic(), 0.1)))
        if ready:
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (status {self._process.poll()})")
            self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\0")
        for raw in complete:
            message = json.loads(raw)
            if "method" in message:
                self._events.append(message)
            yield message


def _errors(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        params = event["params"]
        if event["method"] == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            found.append(" ".join(str(arg.get("value", arg.get("description", ""))) for arg in params["args"]))
        elif event["method"] == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(f"{params['entry']['text']} ({params['entry'].get('url', '')})")
    return found


def save_screenshot(visit: PageVisit, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(visit.screenshot)
    return path
