"""What naivectl prints, from the replies naived sends (no daemon needed)."""

from __future__ import annotations

from naived.core.messages import History
from naived.ctl import history_lines


def test_history_says_so_before_the_first_finished_cycle() -> None:
    assert history_lines(History("XRPUSDT", [])) == [
        "XRPUSDT: no finished cycle yet (a cycle finishes when its sell fills; naivectl status XRPUSDT shows the open ones)"]
