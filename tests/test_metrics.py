"""Prometheus text metrics, scraped over real HTTP from naived and streamerd."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import requests
from harness import Tree, free_port, wait_for

from naived.core.config import load_config
from naived.exchange import budget
from naived.ops.metrics import Metrics


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a text exposition, or None."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z_]+)(\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return None


def test_the_text_format() -> None:
    m = Metrics()
    m.add("naive_x_total", "counter", "an example", 3, symbol="XRPUSDT", level="trader")
    m.add("naive_x_total", "counter", "an example", 4, symbol='we"ird')
    assert m.render() == (
        "# HELP naive_x_total an example\n"
        "# TYPE naive_x_total counter\n"
        'naive_x_total{level="trader",symbol="XRPUSDT"} 3\n'
        'naive_x_total{symbol="we\\"ird"} 4\n'
    )


def test_scrape_naived_and_streamerd(tmp_path: Path) -> None:
    naived_port, streamer_port = free_port(), free_port()
    tree = Tree(
        tmp_path,
        f"""
[naived]
metrics_port = {naived_port}

[trading.defaults]
chunks = 2
buy_down_interval = "0.5"
""",
    )
    # streamerd's port goes into its section, which the harness already wrote: append a flag instead
    tree.config_path.write_text(
        tree.config_path.read_text().replace("[streamer]\n", f"[streamer]\nmetrics_port = {streamer_port}\n", 1))
    http = requests.Session()
    http.trust_env = False
    try:
        tree.start_streamer()
        tree.start_naived()
        tree.ctl("start-trading", "XRPUSDT")
        naived_url = f"http://127.0.0.1:{naived_port}/metrics"

        def two_placed() -> str | None:
            text = http.get(naived_url, timeout=5).text
            return text if sample(text, "naive_orders_placed_total", symbol="XRPUSDT") == 2 else None

        text = wait_for("two orders placed in the metrics", two_placed)
        assert sample(text, "naive_up") == 1
        assert sample(text, "naive_traders", symbol="XRPUSDT", status="buying") == 2
        assert sample(text, "naive_restarts_total", level="trader", symbol="XRPUSDT") == 0
        assert "# TYPE naive_fees_quote_total counter" in text and "# TYPE naive_realised_pnl_quote gauge" in text
        assert sample(text, "naive_fees_quote_total", symbol="XRPUSDT") == 0  # no cycle finished yet

        trader = tree.traders("XRPUSDT")[0]
        os.kill(trader["pid"], signal.SIGKILL)
        wait_for(
            "the trader restart to be counted",
            lambda: sample(http.get(naived_url, timeout=5).text, "naive_restarts_total", level="trader", symbol="XRPUSDT") == 1,
        )

        streamer = http.get(f"http://127.0.0.1:{streamer_port}/metrics", timeout=5)
        assert streamer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert sample(streamer.text, "naive_streamer_events_out_total") > 0
        assert sample(streamer.text, "naive_streamer_streaming", symbol="XRPUSDT") == 1
        assert sample(streamer.text, "naive_streamer_seconds_since_last_trade", symbol="XRPUSDT") < 5
        assert http.get(f"http://127.0.0.1:{naived_port}/other", timeout=5).status_code == 404

        # The host's rate budget: what every process of it wrote, read by the root.
        text = http.get(naived_url, timeout=5).text
        assert sample(text, "naive_budget_weight_limit") == 4800
        assert sample(text, "naive_budget_orders_day") >= 2  # the traders' buys (and any restarted trader's)
        assert sample(text, "naive_budget_ban_status") == 0
        path = load_config(str(tree.config_path)).budget_path
        budget.SharedBudget(path).record(time.time(), None, None, None, limited=418, retry_after=30)  # as a trader does
        text = http.get(naived_url, timeout=5).text
        assert sample(text, "naive_budget_ban_status") == 418 and 29 < sample(text, "naive_budget_banned_seconds") <= 30
        assert sample(text, "naive_budget_limited_total") == 1
        path.write_bytes(b"not a budget")  # a bad file costs the gauges, never the root
        text = http.get(naived_url, timeout=5).text
        assert sample(text, "naive_up") == 1 and sample(text, "naive_budget_ban_status") is None
    finally:
        tree.stop()
