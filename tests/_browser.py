"""Headless Chromium driven over the Chrome DevTools Protocol, for the browser tests.

Debian's Chromium and a websocket (`websocket-client`): no Playwright or Selenium browser
download. `browser_or_skip` skips when Chromium is missing, unless `GLOCAL_REQUIRE_BROWSER=1`
(CI), where it fails instead.

The browser is offline: every host name resolves to nothing and every http(s)/ws request is
blocked before it leaves, and every request the page makes is recorded, so a test can assert
that a page needs nothing but its own files.
"""

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

INSTALL = "apt-get install chromium"
# Requests that would leave the machine; blocked, and still recorded as requested.
NETWORK_PATTERNS = ["http://*", "https://*", "ws://*", "wss://*", "ftp://*"]


def browser_or_skip() -> str:
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                  "google-chrome"))), None)
    try:
        import websocket  # noqa: F401
    except ImportError:
        binary, why = None, "websocket-client is not installed (the `test` extra)"
    else:
        why = f"headless Chromium not found: {INSTALL}"
    if binary is None:
        if os.environ.get("GLOCAL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"GLOCAL_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    return binary


class Chromium:
    """A headless, offline Chromium and one page."""

    def __init__(self, binary: str, profile: Path, *, width: int = 1100, height: int = 900):
        import websocket

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND",
             f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        targets = json.load(opener.open(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = next(t for t in targets if t["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60,
                                                  suppress_origin=True)
        self.calls, self.events = 0, []
        for domain in ("Runtime", "Page", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Network.setBlockedURLs", urls=NETWORK_PATTERNS)

    def send(self, method, **params):
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression, *, await_promise=False):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, path: Path):
        """Load a file and wait for its load event (its scripts, styles and images);
        forget the events of earlier pages."""
        self.events = []
        self.send("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired", what=str(path))

    def wait_for(self, method: str, *, what: str = "the page", timeout: float = 60):
        if any(e.get("method") == method for e in self.events):
            return
        self.socket.settimeout(timeout)
        while True:
            try:
                message = json.loads(self.socket.recv())
            except Exception as err:  # websocket's timeout: name what did not happen
                raise AssertionError(f"{what}: no {method} within {timeout} s") from err
            self.events.append(message)
            if message.get("method") == method:
                return

    def errors(self):
        """Uncaught exceptions, console.error calls and errors the browser logged (a failed
        request, a blocked script, a syntax error in an inline script)."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description")
                             or details.get("text"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(" ".join(str(a.get("value", a.get("description")))
                                      for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"{entry['text']} {entry.get('url', '')}".strip())
        return found

    def requests(self):
        """Every URL the page asked for, in order."""
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, *, full_page=False):
        params = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True, clip=dict(
                x=0, y=0, width=size["width"], height=size["height"], scale=1))
        data = self.send("Page.captureScreenshot", **params)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self):
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def screenshot_dir() -> Path | None:
    """`GLOCAL_SCREENSHOT_DIR`, created, or `None` when screenshots are not wanted."""
    directory = os.environ.get("GLOCAL_SCREENSHOT_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
    return Path(directory) if directory else None
