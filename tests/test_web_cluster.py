"""The web observer of a cluster host (the PostgreSQL store) in a real browser: its Cluster panel shows
every host, alive or not, and the symbols whose lease each holds, live: a host killed is shown not
seen once its lease time passed, and its symbols under the host that adopted them."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from browser import open_page
from harness import RESTING, wait_for
from hosts import Hosts

SYMBOLS = ["XRPUSDT", "BTCUSDT", "ETHUSDT", "ADAUSDT"]


def host_row(host: str, **data: str) -> str:
    return f'#cluster tr[data-host="{host}"]' + "".join(f'[data-{k}="{v}"]' for k, v in data.items())


def test_the_cluster_panel_shows_each_host_and_the_symbols_it_holds_live(short_tmp: Path, pg_dsn: str) -> None:
    hosts = Hosts(short_tmp, pg_dsn, RESTING)
    with ExitStack() as stack:
        stack.callback(hosts.stop)
        hosts.start_services()
        h1 = hosts.add("h1", web="")
        hosts.add("h2")
        for symbol in SYMBOLS:
            assert h1.ctl("start-trading", symbol).returncode == 0
        held = wait_for("both hosts trading", lambda: (h := hosts.held()) and sorted(h) == sorted(SYMBOLS)
                        and set(h.values()) == {"h1", "h2"} and h, timeout=60)
        by_host = {host: " ".join(sorted(s for s, h in held.items() if h == host)) for host in ("h1", "h2")}
        with open_page(f"{h1.web_url}/", "observer-cluster") as watched:
            page = watched.page
            for host, symbols in by_host.items():
                page.wait_for_selector(host_row(host, alive="true", held=symbols))
            hosts.kill("h2")
            page.wait_for_selector(host_row("h2", alive="false"), timeout=20_000)
            page.wait_for_selector(host_row("h1", held=" ".join(sorted(SYMBOLS))), timeout=30_000)
            assert "(this host)" in page.inner_text(host_row("h1"))
            page.wait_for_timeout(300)  # a Playwright call: the events of the last moments are delivered
            assert watched.problems == [], watched.problems
