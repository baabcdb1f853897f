"""The HTML report in a real headless browser (Debian's chromium), with networking off.

Driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ending in
NUL on file descriptors 3 and 4), with a small stdlib client: no websocket library, no ports.
The page must make no network request, log no error, load every image, and show the verdict
and the failed rules on the first laptop-sized screen. Skipped only when chromium is absent.
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prunegate.report.gallery import Gallery, png
from prunegate.report.render import html

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SCREEN = {"width": 1366, "height": 768}  # a common laptop screen


def find_browser() -> str | None:
    override = os.environ.get("PRUNEGATE_CHROMIUM")
    if override:
        return override
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe."""

    def __init__(self, binary: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:  # in the child: the browser reads fd 3 and writes fd 4
            import fcntl

            read_end = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--mute-audio",
            "--hide-scrollbars",
            # networking off: no proxy reachable, no name resolves (the page is also offline below)
            "--proxy-server=http://127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--window-size={SCREEN['width']},{SCREEN['height']}",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            close_fds=False,
            preexec_fn=wire,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(self.process.stderr), daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                self._messages.put(None)
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._take(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def open_offline(self, page: Path, screen: dict | None = None, media: str | None = None) -> str:
        """Open `page` in a new tab with networking off (`media`: 'print' lays it out as printed);
        returns the session once it has loaded."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
            session=session,
        )
        if screen:
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {**screen, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
        if media:
            self.call("Emulation.setEmulatedMedia", {"media": media}, session=session)
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]  # this tab's, below
        self.call("Page.navigate", {"url": page.as_uri()}, session=session)
        self.wait_for("Page.loadEventFired")
        return session

    def wait_for(self, event: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for seen in self.events:
            if seen.get("method") == event:
                return seen
        while True:
            reply = self._take(deadline, event)
            self.events.append(reply)
            if reply.get("method") == event:
                return reply

    def _take(self, deadline: float, what: str) -> dict:
        try:
            reply = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"chromium did not answer {what} in time") from None
        if reply is None:
            raise RuntimeError("chromium closed the pipe: " + b"".join(self._stderr).decode(errors="replace")[-2000:])
        return reply

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)


def browser_or_skip() -> str:
    binary = find_browser()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return binary


def write_page(folder: Path, report, gallery: Gallery) -> Path:
    page = folder / "report.html"
    page.write_text(html.render(report, gallery=gallery), encoding="utf-8")
    return page


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory):
    """Render the failing sample report, load it in chromium; returns what the page showed."""
    binary = browser_or_skip()
    from conftest import _sample_report

    folder = tmp_path_factory.mktemp("browser")
    report = _sample_report(failing=True)
    thumbnail = png(np.full((8, 8, 3), 180, np.uint8))
    gallery = Gallery(
        images={("noise/uniform/0.3", 0, 0): thumbnail, ("noise/uniform/0.3", 4, 0): thumbnail},
        originals={("test", 0): thumbnail},
    )
    page = write_page(folder, report, gallery)
    tools = DevTools(binary, folder / "profile")
    try:
        session = tools.open_offline(page, SCREEN)
        layout = tools.call("Runtime.evaluate", {"expression": LAYOUT_SCRIPT, "returnByValue": True}, session=session)[
            "result"
        ]["value"]
        screenshot = base64.b64decode(tools.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
        pdf = base64.b64decode(tools.call("Page.printToPDF", {"printBackground": True}, session=session)["data"])
        time.sleep(0.2)  # let late log events arrive
        tools.call("Runtime.evaluate", {"expression": "1"}, session=session)
    finally:
        tools.close()
    (folder / "screen.png").write_bytes(screenshot)
    (folder / "print.pdf").write_bytes(pdf)
    return {
        "report": report,
        "events": tools.events,
        "layout": json.loads(layout),
        "screenshot": screenshot,
        "pdf": pdf,
        "folder": folder,
    }


LAYOUT_SCRIPT = """JSON.stringify({
  banner: (() => { const b = document.querySelector('#verdict'); const r = b.getBoundingClientRect();
                   return {top: r.top, bottom: r.bottom, text: b.innerText,
                           colour: getComputedStyle(b).backgroundColor}; })(),
  cards: [...document.querySelectorAll('#failed-rules article')].map(a => {
            const r = a.getBoundingClientRect();
            return {rule: a.dataset.rule, top: r.top, bottom: r.bottom, left: r.left}; }),
  images: [...document.images].map(i => ({ok: i.complete && i.naturalWidth > 0,
                                          width: i.getBoundingClientRect().width})),
  viewport: {width: innerWidth, height: innerHeight},
  overflow: document.documentElement.scrollWidth > innerWidth,
  scrolling: [...document.querySelectorAll('.scroll')].filter(e => e.scrollWidth > e.clientWidth).length,
})"""


def test_no_network_requests_and_no_errors(browser_run) -> None:
    events = browser_run["events"]
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    assert requests and all(url.startswith(("file:", "data:")) for url in requests), requests
    assert not [e for e in events if e.get("method") == "Network.loadingFailed"]
    errors = [
        e["params"]
        for e in events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert errors == []


def test_every_image_loads_and_the_page_fits_the_screen(browser_run) -> None:
    layout = browser_run["layout"]
    assert layout["viewport"] == SCREEN
    # 3 figures; one card per image (samples 0 and 4): both thumbnails, and the clean original of 0
    assert len(layout["images"]) == 3 + 2 + 1 and all(i["ok"] for i in layout["images"])
    assert not layout["overflow"] and layout["scrolling"] == 0  # no horizontal scrolling on a laptop screen


def test_verdict_and_failed_rules_on_the_first_screen(browser_run) -> None:
    layout, report = browser_run["layout"], browser_run["report"]
    banner = layout["banner"]
    assert banner["top"] == 0 and banner["bottom"] < 200 and banner["text"].startswith("FAIL")
    assert banner["colour"] == "rgb(207, 34, 46)"  # html.COLOURS["fail"]
    failed = [r.name for r in report.failed_rules()]
    assert [c["rule"] for c in layout["cards"]] == failed
    assert all(c["top"] < SCREEN["height"] - 60 for c in layout["cards"])  # each card starts on screen
    picture = np.asarray(Image.open(io.BytesIO(browser_run["screenshot"])).convert("RGB"))
    assert picture.shape == (SCREEN["height"], SCREEN["width"], 3)
    red = np.all(picture == (207, 34, 46), axis=-1)
    assert red[: int(banner["bottom"])].mean() > 0.5  # the banner is drawn, in the verdict's colour
    assert red[int(banner["bottom"]) + 5 :].mean() < 0.05
    for card in layout["cards"]:  # each failed rule's card has its coloured left edge on screen
        top, left = int(card["top"]), int(card["left"])
        edge = picture[top + 5 : min(SCREEN["height"], top + 40), left + 1 : left + 5]
        assert (
            edge.size
            and (np.abs(edge.astype(int) - (207, 34, 46)).sum(-1) < 60).mean() > 0.8
            or (np.abs(edge.astype(int) - (154, 103, 0)).sum(-1) < 60).mean() > 0.8
        )  # fail red / undecided amber


def test_it_prints(browser_run) -> None:
    pdf = browser_run["pdf"]
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page") >= 2


# --- the layout at a laptop's width and as printed (issue 20) ------------------------------------

LAYOUTS = {
    "laptop-1280": ({"width": 1280, "height": 800}, "screen"),
    "print": ({"width": 720, "height": 1000}, "print"),  # A4 or Letter less the page's 12 mm margins, at 96 px/in
}

PLACEMENT_SCRIPT = """JSON.stringify({
  viewport: {width: innerWidth, height: innerHeight},
  print: matchMedia('print').matches,
  page_width: document.documentElement.scrollWidth,
  widest: Math.max(...[...document.querySelectorAll('body *')].map(e => e.getBoundingClientRect().right)),
  banner: (() => { const r = document.querySelector('#verdict').getBoundingClientRect();
                   return {top: r.top, bottom: r.bottom}; })(),
  verdict: document.querySelector('#verdict .verdict-word').innerText,
  failed: [...document.querySelectorAll('#failed-rules article')].map(a => {
            const r = a.getBoundingClientRect(); return {top: r.top, bottom: r.bottom}; }),
  sections: [...document.querySelectorAll('main > section')].map(s => {
              const r = s.getBoundingClientRect(); return {id: s.id, top: r.top, bottom: r.bottom}; }),
  gallery_cards: [...document.querySelectorAll('#gallery-section .example')].map(c => {
                   const r = c.getBoundingClientRect(); return {top: r.top, left: r.left, right: r.right}; }),
})"""


def many_images(report):
    """The report with three distinct images recorded on every task: a full gallery."""
    from prunegate.report.schema import Example

    tasks = [
        t.model_copy(
            update={"examples": [Example(index=10 * k + j, label=j, dense=j, pruned=(j + 1) % 3) for j in range(3)]}
        )
        for k, t in enumerate(report.tasks)
    ]
    return report.model_copy(update={"tasks": tasks})


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """A failing report with a full gallery, laid out at 1280 px and as printed: {name: what it showed}."""
    from conftest import _sample_report
    from prunegate.report.gallery import select_cards

    binary = browser_or_skip()
    folder = tmp_path_factory.mktemp("layouts")
    report = many_images(_sample_report(failing=True))
    thumbnail = png(np.full((32, 32, 3), 120, np.uint8))
    cards = select_cards(report)
    gallery = Gallery(
        images={(c.shown[0].name, c.index, c.shown[1].draw): thumbnail for c in cards},
        originals={(c.source, c.index): thumbnail for c in cards},
        names={(c.source, c.index): f"class_{c.index % 3}/ILSVRC2012_val_{c.index:08d}.JPEG" for c in cards},
    )
    page = write_page(folder, report, gallery)
    tools = DevTools(binary, folder / "profile")
    seen = {}
    try:
        for name, (screen, media) in LAYOUTS.items():
            session = tools.open_offline(page, screen, media)
            placement = tools.call(
                "Runtime.evaluate", {"expression": PLACEMENT_SCRIPT, "returnByValue": True}, session=session
            )["result"]["value"]
            shot = tools.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
            seen[name] = {"placement": json.loads(placement), "screenshot": base64.b64decode(shot), "screen": screen}
            (folder / f"{name}.png").write_bytes(seen[name]["screenshot"])
    finally:
        tools.close()
    return {"report": report, "cards": len(cards), **seen}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_first_screen_and_width(layouts, name) -> None:
    shown, screen = layouts[name]["placement"], layouts[name]["screen"]
    assert shown["viewport"] == screen and shown["print"] == (name == "print")
    picture = Image.open(io.BytesIO(layouts[name]["screenshot"]))
    assert picture.format == "PNG" and picture.size == (screen["width"], screen["height"])
    assert np.asarray(picture.convert("RGB")).std() > 5  # something is drawn, not a blank page
    # the verdict and every failed rule's card start on the first screen
    assert shown["banner"]["top"] == 0 and shown["banner"]["bottom"] < 200 and shown["verdict"] == "FAIL"
    failed = layouts["report"].failed_rules()
    assert len(shown["failed"]) == len(failed) and all(c["top"] < screen["height"] - 60 for c in shown["failed"])
    # nothing wider than the page: no horizontal scrolling, nothing cut off at the right
    assert shown["page_width"] <= screen["width"] and shown["widest"] <= screen["width"] + 0.5


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_gallery_after_the_rules_and_figures(layouts, name) -> None:
    shown = layouts[name]["placement"]
    place = {s["id"]: s for s in shown["sections"]}
    gallery = place["gallery-section"]["top"]
    for above in ("failed-rules", "rules", "figures", "corruption-summary", "tasks"):
        assert place[above]["bottom"] <= gallery, above
    cards = shown["gallery_cards"]
    assert len(cards) == layouts["cards"] == 24  # one card per image, at most MAX_CARDS
    assert all(c["right"] <= layouts[name]["screen"]["width"] for c in cards)
    columns = len({round(c["left"]) for c in cards})
    assert columns >= 4  # a grid, not a column of 24 cards
