"""A real browser for tests: headless Chromium (Debian's `chromium` package) driven by Playwright through
`executable_path`, so no browser is ever downloaded. `open_page` opens a page, collects everything that
went wrong on it (console errors, uncaught exceptions, failed requests, HTTP errors) and keeps a full-page
screenshot for a person to look at: `<repo>/test-artifacts/<name>.png` (or `$NAIVE_ARTIFACTS/<name>.png`).

Playwright's sync API hands events over only while the test is inside one of its calls (a goto, a
wait_for_function, an expect): look at `problems` after such a call, never after a bare sleep. Chromium
asks for /favicon.ico by itself: a page that has none shows a console error (404) here."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from conftest import missing_service
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, sync_playwright
from playwright.sync_api import Error as PlaywrightError

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Watched:
    """An open page and what went wrong on it so far, one line per problem."""

    page: Page
    browser_pid: int  # Chromium's browser process, as the browser itself reports it
    problems: list[str] = field(default_factory=list)

    def watch(self) -> None:
        page = self.page
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"uncaught exception: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)
        page.on("crash", lambda _: self.problems.append("the page crashed"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location
            self.problems.append(f"console error: {message.text} ({where.get('url')}:{where.get('lineNumber')})")

    def _failed(self, request: Request) -> None:
        self.problems.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.request.method} {response.url}")


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found is None and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    return found


def artifacts_dir() -> Path:
    """Where screenshots are kept for a person: $NAIVE_ARTIFACTS, else test-artifacts/ (git ignores it)."""
    directory = Path(os.environ.get("NAIVE_ARTIFACTS") or REPO / "test-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def launch_args() -> list[str]:
    # Chromium refuses to start its sandbox as root (CI runs as root); a user's run keeps the sandbox.
    return ["--no-sandbox"] if os.geteuid() == 0 else []


@contextmanager
def open_page(url: str, name: str, timeout: float = 15.0) -> Iterator[Watched]:
    """Headless Chromium on `url` (loaded: the `load` event fired), watched for problems from before the
    first request. On exit, also when the test failed: a full-page screenshot `<name>.png` in
    artifacts_dir(), then the browser closed and every process of it gone."""
    if "/" in name or name.startswith("."):
        raise ValueError(f"a screenshot's name is a plain file name, got {name!r}")
    executable = chromium_path()
    if executable is None:
        missing_service("Chromium is not installed: apt-get install --no-install-recommends chromium")
        raise AssertionError("missing_service fails or skips the test")
    shot = artifacts_dir() / f"{name}.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=launch_args(), timeout=timeout * 1000
        )
        root = psutil.Process(browser_pid(browser))
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout * 1000)
            watched = Watched(page, root.pid)
            watched.watch()
            try:
                page.goto(url)
                yield watched
            except BaseException:
                # The picture matters most when the test failed; a page too broken to draw must not hide why.
                try:
                    page.screenshot(path=shot, full_page=True, timeout=timeout * 1000)
                except PlaywrightError:
                    pass
                raise
            page.screenshot(path=shot, full_page=True, timeout=timeout * 1000)
        finally:
            end_browser(browser, root)


def browser_pid(browser: Browser) -> int:
    """The browser process's PID, from Chromium itself over the DevTools protocol (Playwright's Python API
    does not expose the process it launched)."""
    session = browser.new_browser_cdp_session()
    try:
        info = session.send("SystemInfo.getProcessInfo")
    finally:
        session.detach()
    return next(int(p["id"]) for p in info["processInfo"] if p["type"] == "browser")


def end_browser(browser: Browser, root: psutil.Process) -> None:
    """Close the browser, then make sure it and every process it started are gone: the tree is taken
    before the close (renderers and the zygote are its descendants; once it dies they would be orphans)
    and whatever outlives the close by 5 s is killed by PID (psutil checks each one's start time, so a
    reused PID is never hit)."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    try:
        browser.close()
    except PlaywrightError:
        pass  # a browser that crashed or was killed has nothing left to close: the PIDs below say
    alive = wait_gone(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    alive = wait_gone(alive, timeout=5)
    if alive:
        raise RuntimeError(f"Chromium processes survived SIGKILL: {[p.pid for p in alive]}")


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes still alive after waiting up to `timeout` s. A zombie counts as gone: it is dead and
    waits for a parent to collect it, and the browser's zygotes are reparented to an init that may never
    do so (psutil.wait_procs would wait the whole timeout on them)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if not is_gone(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def is_gone(proc: psutil.Process) -> bool:
    try:
        # is_running() compares start times: a PID the kernel gave to another process since is gone too.
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
