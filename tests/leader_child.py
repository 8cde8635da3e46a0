"""A leader under a supervisor of its own, with fake traders, for tests/test_leader_pg.py.

    python tests/leader_child.py <config> <symbol> <lease token or "none">

The leader is naive's own (`leader.run`, forked by a `Supervisor` as its symbol supervisor forks
it); only its traders are fakes: each tells the test the state it was started with, then reports
every state the test hands it to the leader (`StateUpdated`, REQ as a trader does) and tells the
test whether the leader acked it. When the leader exits, this prints one line, `<exit status>
<last words>`, and exits 0.

The test binds two sockets in the runtime directory: `test-events.sock` (PULL: what the traders
say, two frames: b"started"/b"acked"/b"unacked" and the state's JSON) and `test-go.sock` (PUSH:
a state's JSON to report).
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import zmq

from naived.core.config import Config, parse_config
from naived.core.messages import StateUpdated, TraderState, encode
from naived.ops.log import setup_logging
from naived.tree import leader, trader
from naived.tree.supervisor import Child, ChildSpec, Decision, Exit, ExitStatus, Kind, Role, Supervisor

ACK_WAIT_MS = 10_000  # a leader that stores and acks answers in milliseconds


def fake_trader(config: Config, state: TraderState) -> int:
    ctx = zmq.Context()
    events = ctx.socket(zmq.PUSH)
    events.connect(f"ipc://{config.runtime_dir / 'test-events.sock'}")
    go = ctx.socket(zmq.PULL)
    go.connect(f"ipc://{config.runtime_dir / 'test-go.sock'}")
    to_leader = ctx.socket(zmq.REQ)
    to_leader.connect(config.leader_endpoint(state.symbol))
    events.send_multipart([b"started", msgspec.json.encode(state)])
    while True:
        new = msgspec.json.decode(go.recv(), type=TraderState)
        to_leader.send(encode(StateUpdated(new)))
        acked = to_leader.poll(ACK_WAIT_MS) != 0
        if acked:
            to_leader.recv()
        events.send_multipart([b"acked" if acked else b"unacked", msgspec.json.encode(new)])
        if not acked:
            return 1


class Parent(Role):
    def on_exit(self, child: Child, status: ExitStatus) -> Decision | None:
        print(status.code, status.words, flush=True)
        raise Exit("the leader exited", 0)


def main() -> int:
    config_path, symbol, token = sys.argv[1:4]
    config = parse_config(Path(config_path).read_bytes())
    setup_logging("test", "info")
    trader.run = fake_trader  # the leader forks its traders with trader.run: they inherit this
    lease_token = None if token == "none" else int(token)
    supervisor = Supervisor("test", config.naived.supervision)
    supervisor.start(ChildSpec(symbol, f"leader {symbol}", lambda: leader.run(config, symbol, lease_token=lease_token),
                               "temporary", kind=Kind.LEADER))
    return supervisor.run(Parent())


if __name__ == "__main__":
    sys.exit(main())
