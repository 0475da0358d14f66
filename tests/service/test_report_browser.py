"""The HTML report in a real browser: headless Chromium opens report.html from disk, the way a person would.

Chromium is driven over the DevTools protocol through `--remote-debugging-pipe` (JSON messages separated by NUL
bytes on file descriptors 3 and 4), so the test needs no Python package beyond the standard library; the page
itself carries no test hooks.
"""

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import pytest

from sweep_commands import DEFAULT_STRATEGIES
from sweep.report import main

CHROMIUM = shutil.which("chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe", "--window-size=1280,2000")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                reason="needs Chromium (Debian: apt-get install chromium); CI installs it")


class Browser:
    """A headless Chromium and one page, spoken to over the DevTools pipe."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None, "Chromium is not installed; .ci/run installs Debian's chromium package"
        # Our pipe ends move above fd 10 first, so placing them at 3 and 4 in the child cannot clobber one another.
        commands_read, self._commands, self._events, events_write = (
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (*os.pipe(), *os.pipe()))

        def at_3_and_4() -> None:
            os.dup2(commands_read, 3)
            os.dup2(events_write, 4)

        self.process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        preexec_fn=at_3_and_4, close_fds=False, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_read)
        os.close(events_write)
        self._buffer = b""
        self._next_id = 0
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]

    def _read_message(self) -> dict:
        while b"\0" not in self._buffer:
            readable, _, _ = select.select([self._events], [], [], TIMEOUT_S)
            assert readable, f"Chromium did not answer in {TIMEOUT_S} s"
            chunk = os.read(self._events, 1 << 16)
            assert chunk, "Chromium closed the DevTools pipe"
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def page(self, method: str, **params) -> dict:
        return self.send(method, self.session, **params)

    def evaluate(self, expression: str) -> object:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"]["value"]

    def open(self, url: str) -> None:
        """Navigate and wait until the document and every image in it have finished loading (or failed)."""
        self.page("Page.navigate", url=url)
        deadline = time.monotonic() + TIMEOUT_S
        done = "document.readyState === 'complete' && [...document.images].every(i => i.complete)"
        while not self.evaluate(done):
            assert time.monotonic() < deadline, f"{url} did not finish loading in {TIMEOUT_S} s"
            time.sleep(0.1)

    def close(self) -> None:
        self.send("Browser.close")
        self.process.wait(timeout=TIMEOUT_S)
        os.close(self._commands)
        os.close(self._events)


@pytest.fixture(scope="module")
def report_dir(tiny_sweep, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("browser") / "tiny-in-browser"
    main(["experiment=tiny", f"results_dir={tiny_sweep.results_dir}", f"report.out_dir={out_dir}"])
    return out_dir


@pytest.fixture(scope="module")
def browser(report_dir, tmp_path_factory) -> Iterator[Browser]:
    chromium = Browser(tmp_path_factory.mktemp("chromium-profile"))
    chromium.open((report_dir / "report.html").as_uri())
    yield chromium
    chromium.close()


def test_every_image_in_the_report_loaded(browser):
    widths = browser.evaluate("[...document.images].map(i => i.naturalWidth)")
    assert len(widths) >= 4, "the report should embed its plots"
    assert all(width > 0 for width in widths), widths


def test_the_summary_table_has_one_row_per_strategy(browser):
    rows = browser.evaluate("[...document.querySelectorAll('#summary tbody tr')]"
                            ".map(tr => tr.cells[0].textContent.trim())")
    assert rows == DEFAULT_STRATEGIES


def test_the_report_needs_no_network(browser):
    external = browser.evaluate("performance.getEntriesByType('resource').map(e => e.name)"
                                ".filter(n => !n.startsWith('data:') && !n.startsWith('file:'))")
    assert external == []


def test_a_screenshot_of_the_report_is_a_non_blank_png(browser, tmp_path):
    shot = base64.b64decode(browser.page("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])
    assert shot.startswith(PNG_MAGIC)
    path = tmp_path / "report.png"
    path.write_bytes(shot)
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500
    assert pixels.std() > 0.01, "the screenshot is blank"
