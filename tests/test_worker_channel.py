"""The one channel from a worker up (naived/tree/ipc.py `report`): it returns only once the
receiver has handled the report, and a report nobody takes ends the worker with exit status 1
and the reason as its last words, so a worker's exit 0 always means "handed over"."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import zmq

from naived.core.messages import Ack, ExchangeWaiting, encode, leader_request_decoder
from naived.tree.ipc import Unanswered, bind, report


def test_a_report_returns_once_its_receiver_has_handled_it(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path / 'receiver.sock'}"
    ctx = zmq.Context()
    rep = bind(ctx, zmq.REP, endpoint)
    handled = []

    def slow_receiver() -> None:
        time.sleep(0.3)  # a loop busy with something else first
        if rep.poll(5000):
            handled.append(leader_request_decoder.decode(rep.recv()))
            rep.send(encode(Ack()))

    receiver = threading.Thread(target=slow_receiver)
    receiver.start()
    try:
        report(endpoint, ExchangeWaiting("rate limited"))
        assert handled == [ExchangeWaiting("rate limited")]
    finally:
        receiver.join()
        rep.close()
        ctx.term()


def test_a_report_nobody_takes_is_unanswered(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(Unanswered, match="did not take ExchangeWaiting within 0.2s"):
        report(f"ipc://{tmp_path / 'nobody.sock'}", ExchangeWaiting("x"), timeout_ms=200)
    assert time.monotonic() - started < 2


WORKER = textwrap.dedent("""
    import sys
    from naived.core.config import Supervision
    from naived.core.messages import ExchangeWaiting
    from naived.tree.ipc import report
    from naived.tree.supervisor import ChildSpec, Exit, Kind, Role, Supervisor

    class Parent(Role):
        def on_exit(self, child, status):
            print(status.code, status.words)
            raise Exit("reaped", 0)

    sup = Supervisor("test", Supervision())
    sup.start(ChildSpec("filters", "filters", lambda: report(sys.argv[1], ExchangeWaiting("x"), 200) or 0, "temporary",
                        kind=Kind.FILTERS))
    sys.exit(sup.run(Parent()))
""")


def test_a_worker_whose_report_is_not_taken_fails_and_says_why(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path / 'gone.sock'}"
    result = subprocess.run([sys.executable, "-c", WORKER, endpoint], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"1 {endpoint} did not take ExchangeWaiting within 0.2s", result.stdout
