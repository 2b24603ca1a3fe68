"""Open the report in headless Chromium: no console errors, no network, charts decoded, filters work.

Chromium is driven through the DevTools protocol over `--remote-debugging-pipe` (JSON messages
separated by NUL bytes on file descriptors 3 and 4): no websocket library and no port to race
for. Skips when no Chromium is installed (Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from echochamber.report.page import build_report

CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)"
)
TIMEOUT = 60.0
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--remote-debugging-pipe",
    "--window-size=1400,1000",
]  # fmt: skip


class DevTools:
    """A minimal DevTools-protocol client over Chromium's pipe transport."""

    def __init__(self, profile: Path) -> None:
        commands_read, self._write = os.pipe()  # we write commands -> Chromium reads fd 3
        self._read, replies_write = os.pipe()  # Chromium writes fd 4 -> we read replies and events

        def wire_pipes() -> None:  # in the child, before exec: the pipe transport expects fds 3 and 4
            high = [
                fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, replies_write)
            ]  # never clobbered
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        assert CHROMIUM is not None
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=wire_pipes, pass_fds=(3, 4),  # kept open when the other descriptors are closed
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._receive()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer within the timeout")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._write)
        os.close(self._read)


@pytest.fixture
def browser(tmp_path: Path):
    tools = DevTools(tmp_path / "profile")
    yield tools
    tools.close()


def _open(tools: DevTools, url: str) -> str:
    """A fresh page with console, log and network events on; returns its session id."""
    target = tools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = tools.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        tools.call(f"{domain}.enable", session=session)
    tools.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
        session,
    )
    tools.call("Page.navigate", {"url": url}, session)
    tools.wait_for("Page.loadEventFired")
    return session


def _evaluate(tools: DevTools, session: str, expression: str) -> Any:
    result = tools.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
    assert "exceptionDetails" not in result, result["exceptionDetails"]
    return result["result"].get("value")


def _problems(tools: DevTools) -> list[str]:
    """Console errors/warnings, uncaught exceptions, browser log errors, and any non-local request."""
    found = []
    for event in tools.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            found.append(f"console {params['type']}: {[arg.get('value') for arg in params.get('args', [])]}")
        elif method == "Runtime.exceptionThrown":
            found.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(f"log error: {params['entry'].get('text')}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(("file:", "data:", "about:")):
                found.append(f"network request: {url}")
    return found


@pytest.fixture
def report(tmp_path: Path, synthetic) -> Path:
    """A two-cell sweep (so the run filter has choices) with both evaluations present."""
    spec = synthetic.RunSpec
    cells = [
        ("ppo", {"algo": "ppo"}, spec(name="ppo", steps=20, samples=4)),
        ("grpo", {"algo": "grpo"}, spec(name="grpo", algo="grpo", steps=20, samples=4, dip=True)),
    ]
    return build_report(synthetic.write_sweep(tmp_path / "sweep", cells, {"algo": ["ppo", "grpo"]}))


def test_report_renders_without_errors_and_filters(browser: DevTools, report: Path, tmp_path: Path) -> None:
    session = _open(browser, report.resolve().as_uri())

    images = _evaluate(
        browser, session, "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])"
    )
    pngs = len(list(report.parent.glob("*.png")))
    assert len(images) == pngs > 0  # every chart written beside the page is also embedded in it
    assert all(complete and width > 0 for complete, width, _ in images), images

    total = _evaluate(browser, session, "document.querySelectorAll('#browser-list .card').length")
    assert total > 0
    # Each generation's longest verbatim span is highlighted, and again inside its training document.
    spans = _evaluate(browser, session, "Array.from(document.querySelectorAll('#browser-list .card .pair > div'))"
                      ".map(c => Array.from(c.querySelectorAll('mark')).map(m => m.textContent))")  # fmt: skip
    assert len(spans) == 2 * total and all(len(marks) == 2 and marks[0] == marks[1] != "" for marks in spans)
    assert (
        _evaluate(browser, session, "document.getElementById('browser-count').textContent")
        == f"{total} of {total} prompts"
    )

    def choose(**values: str) -> list[dict[str, str]]:
        script = "".join(
            f"(s => {{ s.value = {json.dumps(value)}; s.dispatchEvent(new Event('change')); }})"
            f"(document.querySelector('#browser-controls select[name={name}]'));"
            for name, value in values.items()
        )
        _evaluate(browser, session, script)
        return _evaluate(
            browser,
            session,
            "Array.from(document.querySelectorAll('#browser-list .card')).map(c => ({...c.dataset}))",
        )

    wrong_then_right = choose(run="ppo", before_correct="false", after_correct="true", after_format="tinygsm")
    assert 0 < len(wrong_then_right) < total
    assert all(
        c["run"] == "ppo"
        and c["beforeCorrect"] == "false"
        and c["afterCorrect"] == "true"
        and c["afterFormat"] == "tinygsm"
        for c in wrong_then_right
    )
    assert choose(after_format="other", after_correct="true") == []  # "other" generations are never correct
    assert len(choose(run="any", before_correct="any", after_correct="any", after_format="any")) == total

    shot = browser.call("Page.captureScreenshot", {"format": "png"}, session)
    (tmp_path / "report.png").write_bytes(base64.b64decode(shot["data"]))
    assert (tmp_path / "report.png").stat().st_size > 10_000

    assert _problems(browser) == []
