"""tests/browser.py against a tiny real site served over HTTP from a thread: open_page reports what went
wrong on a page (console errors, uncaught exceptions, HTTP errors, failed requests) and nothing on a clean
one, keeps a PNG screenshot, and leaves no Chromium process behind."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest
from browser import REPO, artifacts_dir, open_page

# The page does what its query asks: ?error=console logs an error, ?error=throw throws one uncaught,
# ?image=missing shows an image the server does not have, ?image=refused one from a port nobody listens on.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>browser self-test</title><link rel="icon" href="data:,"></head>
<body><h1>naive browser self-test</h1><p id="state">loading</p>{image}
<script>
const query = new URLSearchParams(location.search);
if (query.get("error") === "console") console.error("boom from the page");
if (query.get("error") === "throw") throw new Error("uncaught from the page");
document.getElementById("state").textContent = "ready";
</script></body></html>
"""


class Site(BaseHTTPRequestHandler):
    refused_port = 0  # set by the fixture: a port with no listener

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/page.html":
            self.send_error(404)
            return
        image = parse_qs(parts.query).get("image", [""])[0]
        tag = {
            "missing": '<img src="/missing.png" alt="missing">',
            "refused": f'<img src="http://127.0.0.1:{self.refused_port}/gone.png" alt="refused">',
        }.get(image, "")
        body = PAGE.format(image=tag).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test's output stays the test's


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    # A port bound but never listening: a connection to it is refused, and nobody else can take it meanwhile.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    Site.refused_port = closed.getsockname()[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Site)
    thread = threading.Thread(target=server.serve_forever, name="site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/page.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        closed.close()


@pytest.fixture
def artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NAIVE_ARTIFACTS", str(tmp_path / "shots"))
    return tmp_path / "shots"


def test_a_clean_page_has_no_problems_and_leaves_a_screenshot_and_no_process(site: str, artifacts: Path) -> None:
    with open_page(site, "clean") as watched:
        watched.page.wait_for_function("document.getElementById('state').textContent === 'ready'")
        assert watched.page.title() == "browser self-test"
        assert watched.problems == []
        root = psutil.Process(watched.browser_pid)
        assert "chromium" in root.exe()  # the PID is the browser's, not something else's
        tree = [root, *root.children(recursive=True)]
    shot = artifacts / "clean.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.pid for p in tree if alive(p)] == []


def alive(proc: psutil.Process) -> bool:
    try:
        # is_running() compares start times too: a PID reused since is not the browser's
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(
    "query, expected",
    [
        ("error=console", "console error: boom from the page (http://127.0.0.1:*/page.html?error=console:*)"),
        ("error=throw", "uncaught exception: *uncaught from the page*"),
        ("image=missing", "HTTP 404: GET http://127.0.0.1:*/missing.png"),
        ("image=refused", "request failed: GET http://127.0.0.1:*/gone.png: net::ERR_CONNECTION_REFUSED"),
    ],
)
def test_each_kind_of_problem_is_reported(site: str, artifacts: Path, query: str, expected: str) -> None:
    name = query.replace("=", "-")
    with open_page(f"{site}?{query}", name) as watched:
        watched.page.wait_for_function("document.readyState === 'complete'")
        assert any(fnmatch(problem, expected) for problem in watched.problems), watched.problems
    assert (artifacts / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_the_screenshot_is_kept_when_the_test_fails(site: str, artifacts: Path) -> None:
    with pytest.raises(AssertionError, match="on purpose"), open_page(site, "failed"):
        raise AssertionError("on purpose")
    assert (artifacts / "failed.png").is_file()


def test_screenshots_go_to_test_artifacts_unless_told(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NAIVE_ARTIFACTS", raising=False)
    assert artifacts_dir() == REPO / "test-artifacts"
    monkeypatch.setenv("NAIVE_ARTIFACTS", str(tmp_path / "elsewhere"))
    assert artifacts_dir() == tmp_path / "elsewhere" and (tmp_path / "elsewhere").is_dir()
