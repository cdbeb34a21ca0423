"""Drive the built book in headless Chromium: serve it on 127.0.0.1, find each explorer, move its sliders.

Shared by the browser tests and the benchmark (scripts/bench.py).
"""

import contextlib
import functools
import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
CHROMIUM = "/usr/bin/chromium"
# Chromium as root in a container, with no network beyond this machine (see the README).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FRAME_TIMEOUT_MS = 5000

# In the page: remember when a key goes down, and when a new frame (an <img>) is shown in an explorer.
INSTALL_TIMERS = """
() => {
  window.__pimKey = null; window.__pimFrame = null;
  document.addEventListener('keydown', () => { window.__pimKey = performance.now(); window.__pimFrame = null; },
                            true);
  new MutationObserver((mutations) => {
    if (window.__pimKey !== null && window.__pimFrame === null &&
        mutations.some(m => [...m.addedNodes].some(n => n.nodeType === 1 &&
                                                   (n.matches('img') || n.querySelector('img'))))) {
      window.__pimFrame = performance.now();
    }
  }).observe(document.body, {childList: true, subtree: true});
}
"""

# In the page: the pixels of the frame an explorer shows (as a data URL), or null while it has none.
SHOWN_FRAME = """
(explorer) => {
  const img = [...explorer.querySelectorAll('img.widget-image')].find(i => i.offsetParent !== null);
  if (!img || !img.complete || img.naturalWidth === 0) return null;
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  canvas.getContext('2d').drawImage(img, 0, 0);
  return canvas.toDataURL();
}
"""

EXPLORERS = "div.widget-vbox:has(> .widget-slider):has(img.widget-image)"


def chapter_pages(toc_path: Path = ROOT / "_toc.yml") -> list[str]:
    """The HTML paths of the chapters listed in the table of contents."""
    toc = yaml.safe_load(toc_path.read_text())
    files = [entry["file"] for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    return [f"{name}.html" for name in files if name.startswith("chapters/")]


@contextlib.contextmanager
def serve(directory: Path = HTML) -> Iterator[str]:
    """Serve the built book on 127.0.0.1 (a free port) and yield its base URL."""
    if not (directory / "index.html").exists():
        raise FileNotFoundError(f"no built book in {directory}: run `make book` first")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """Launch Debian's headless Chromium through Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageReport:
    """What happened on one page: problems seen by the browser, and each slider's response."""

    url: str
    errors: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    n_explorers: int = 0
    slider_ms: list[float] = field(default_factory=list)
    unchanged_sliders: list[str] = field(default_factory=list)


def _watch(page, base: str, report: PageReport) -> None:
    def on_console(message):
        if message.type == "error":
            report.errors.append(f"console error: {message.text} ({message.location.get('url', '')})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: report.errors.append(f"uncaught error: {error}"))

    def on_request(request):
        if not request.url.startswith((base, "data:", "blob:")):
            report.outside_requests.append(request.url)

    page.on("request", on_request)


def _wait_for_frame(page, explorer, timeout_ms: int = FRAME_TIMEOUT_MS) -> str:
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        frame = explorer.evaluate(SHOWN_FRAME)
        if frame is not None:
            return frame
        page.wait_for_timeout(20)
    raise TimeoutError("the explorer shows no frame")


def _move_slider(page, explorer, slider, key: str) -> tuple[bool, float]:
    """Press `key` on a slider's handle; return whether the shown frame changed and the response in ms."""
    before = _wait_for_frame(page, explorer)
    slider.locator(".noUi-handle").press(key)
    deadline = time.monotonic() + FRAME_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        after = explorer.evaluate(SHOWN_FRAME)
        if after is not None and after != before:
            return True, page.evaluate("() => window.__pimFrame - window.__pimKey")
        page.wait_for_timeout(20)
    return False, float("nan")


def check_page(browser, base: str, path: str) -> PageReport:
    """Open one page, move every slider of every explorer one step each way, and report what happened."""
    report = PageReport(url=f"{base}/{path}")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    _watch(page, base, report)
    page.goto(report.url, wait_until="load")
    page.evaluate(INSTALL_TIMERS)
    explorers = page.locator(EXPLORERS)
    with contextlib.suppress(Exception):
        explorers.first.wait_for(timeout=FRAME_TIMEOUT_MS)
    report.n_explorers = explorers.count()
    for i in range(report.n_explorers):
        explorer = explorers.nth(i)
        explorer.scroll_into_view_if_needed()
        sliders = explorer.locator(":scope > .widget-slider")
        for j in range(sliders.count()):
            slider = sliders.nth(j)
            name = slider.locator(".widget-label").inner_text()
            for key in ("ArrowRight", "ArrowLeft"):
                changed, ms = _move_slider(page, explorer, slider, key)
                if changed:
                    report.slider_ms.append(ms)
                else:
                    report.unchanged_sliders.append(f"explorer {i + 1}, slider {name!r}, {key}")
    page.close()
    return report
