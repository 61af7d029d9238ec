"""Open pages in headless Chromium (Debian's ``chromium``, driven by Playwright) and check what a
reader would see: console errors, uncaught exceptions, images that did not render, and
same-origin links and assets that do not resolve (a missing file, or an anchor with no target).

Pages are served from a directory over HTTP on 127.0.0.1 (:func:`serve_directory`). Requests to
any other origin are aborted and reported: the pages must work offline. External links
(``<a href="https://...">``) are only collected, never fetched.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urlsplit

CHROMIUM_NAMES = ("chromium", "chromium-browser")

# Runs in the page once it has loaded: lazy images are made eager and decoded, then every
# image, every inline SVG figure and every href/src of the document is returned.
_COLLECT = """async () => {
  const images = [...document.images];
  for (const img of images) img.loading = 'eager';
  await Promise.all(images.map((img) => img.decode().catch(() => null)));
  const absolute = (value) => {
    try { return new URL(value, document.baseURI).href; } catch (e) { return 'invalid:' + value; }
  };
  const refs = [];
  for (const el of document.querySelectorAll('[href], [src]')) {
    for (const name of ['href', 'src']) {
      const value = el.getAttribute(name);
      if (value !== null) refs.push({tag: el.tagName.toLowerCase(), url: absolute(value)});
    }
  }
  return {
    images: images.map((img) => ({src: img.getAttribute('src') || '', width: img.naturalWidth})),
    figures: [...document.querySelectorAll('figure svg')].map((svg) => {
      const box = svg.getBoundingClientRect();
      return {width: box.width, height: box.height};
    }),
    refs,
  };
}"""


def chromium_path() -> str | None:
    """The Chromium binary on PATH (Debian's package installs ``/usr/bin/chromium``)."""
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    return None


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        """A folder without index.html is a broken link, as on a static host: no listing."""
        self.send_error(404, "no index.html")


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (a free port) in a thread; yields the base URL (``/`` end)."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class PageCheck:
    """What one page showed in the browser; :attr:`problems` is empty for a good page."""

    url: str
    problems: list[str] = field(default_factory=list)
    images: int = 0  # <img> elements that rendered
    internal_refs: set[str] = field(default_factory=set)  # same-origin href/src, with anchors
    external_links: set[str] = field(default_factory=set)  # other origins: collected only


def open_pages(context: Any, urls: list[str], *, at_once: int = 8) -> list[PageCheck]:
    """Load each URL in its own page of a Playwright browser context and check what rendered.

    ``at_once`` pages load side by side: each waits for the network to be idle for 500 ms
    (late requests, such as the search index, can fail too), and those waits overlap."""
    checks = []
    for first in range(0, len(urls), at_once):
        batch = [_start(context, url) for url in urls[first : first + at_once]]
        checks += [_finish(check, page, response) for check, page, response in batch]
    return checks


def _start(context: Any, url: str) -> tuple[PageCheck, Any, Any]:
    check = PageCheck(url)
    origin = _origin(url)
    page = context.new_page()
    page.on("console", lambda m: _console(check, m))
    page.on("pageerror", lambda e: check.problems.append(f"uncaught exception: {e}"))
    page.on("requestfailed", lambda r: _failed(check, r, origin))
    page.on("response", lambda r: _response(check, r))
    return check, page, page.goto(url, wait_until="commit")


def _finish(check: PageCheck, page: Any, response: Any) -> PageCheck:
    origin = _origin(check.url)
    try:
        if response is None or response.status != 200:
            status = None if response is None else response.status
            check.problems.append(f"page itself: HTTP {status}")
        page.wait_for_load_state("networkidle")
        found = page.evaluate(_COLLECT)
    finally:
        page.close()
    for image in found["images"]:
        if image["width"] > 0:
            check.images += 1
        else:
            check.problems.append(f"image not rendered: {image['src'][:120]}")
    for figure in found["figures"]:
        if not (figure["width"] > 0 and figure["height"] > 0):
            check.problems.append(f"SVG figure of size {figure['width']}x{figure['height']}")
    for ref in found["refs"]:
        target: str = ref["url"]
        if target.startswith("data:"):
            continue
        if _origin(target) == origin:
            check.internal_refs.add(target)
        elif ref["tag"] == "a":
            check.external_links.add(target)
        else:  # an asset from elsewhere: the request was aborted (see block_other_origins)
            check.problems.append(f"<{ref['tag']}> asset from another origin: {target}")
    return check


def block_other_origins(context: Any, origin: str) -> None:
    """Abort every request of ``context`` that leaves ``origin`` (data: URLs never route). It
    replaces what an earlier call set up: a context shared by tests serves other origins."""

    def handle(route: Any) -> None:
        if _origin(route.request.url) == origin:
            route.continue_()
        else:
            route.abort("blockedbyclient")

    context.unroute("**/*")
    context.route("**/*", handle)


def unresolved(refs: set[str]) -> list[str]:
    """Same-origin URLs that do not answer HTTP 200, or whose ``#anchor`` names no element."""
    pages: dict[str, tuple[int, set[str]]] = {}
    out = []
    for ref in sorted(refs):
        address, anchor = urldefrag(ref)
        if address not in pages:
            pages[address] = _fetch_ids(address)
        status, ids = pages[address]
        if status != 200:
            out.append(f"{ref}: HTTP {status}")
        elif anchor and anchor not in ids:
            out.append(f"{ref}: no element with id {anchor!r}")
    return out


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _console(check: PageCheck, message: Any) -> None:
    if message.type == "error":
        check.problems.append(f"console error: {message.text} ({message.location.get('url')})")


def _failed(check: PageCheck, request: Any, origin: str) -> None:
    where = "blocked, another origin" if _origin(request.url) != origin else request.failure
    check.problems.append(f"request failed ({where}): {request.url}")


def _response(check: PageCheck, response: Any) -> None:
    if response.status >= 400:
        check.problems.append(f"HTTP {response.status}: {response.url}")


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name == "id" or (tag == "a" and name == "name")):
                self.ids.add(value)


def _fetch_ids(url: str) -> tuple[int, set[str]]:
    """HTTP status of ``url`` and, for an HTML page, the ids its anchors may name."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status, kind, body = (
                response.status,
                response.headers.get_content_type(),
                response.read(),
            )
    except urllib.error.HTTPError as error:
        return error.code, set()
    if kind != "text/html":
        return status, set()
    parser = _Ids()
    parser.feed(body.decode("utf-8", errors="replace"))
    return status, parser.ids
