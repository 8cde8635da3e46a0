"""One owner per state directory (issue 20, item 4): a second naived on the same state directory
refuses to start and names the holder, the first never notices; naivectl tells "not running"
from "running without a usable control socket"; the lock lives as long as the tree's last process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from harness import BIN, RESTING, Tree, die_with_test, free_port, open_buys, wait_for

from naived.store.ownership import Held, StateDirLock


def second_config(tree: Tree, runtime_dir: Path) -> Path:
    """The same state directory, its own runtime directory and ports: nothing but the state
    directory is shared, so only an owner check can stop it."""
    text = tree.config_path.read_text()
    text = text.replace(f'runtime_dir = "{tree.dir / "run"}"', f'runtime_dir = "{runtime_dir}"')
    text = text.replace(f"port = {tree.paper_port}", f"port = {free_port()}")
    text = text.replace(f"ws_port = {tree.paper_ws_port}", f"ws_port = {free_port()}")
    assert str(runtime_dir) in text
    path = tree.dir / "second.toml"
    path.write_text(text)
    return path


def start_second(config: Path, log: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`naived start` that must refuse at once; if it starts instead, it is killed (by its
    process group) and the test fails on what it logged."""
    proc = subprocess.Popen([str(BIN / "naived"), "start", "--config", str(config)], stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        log.write_text(err)
        raise AssertionError(f"a second naived started on the same state directory:\n{err[-2000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


def test_a_second_naived_on_the_same_state_dir_refuses_and_the_first_never_notices(tmp_path: Path) -> None:
    tree = Tree(tmp_path, RESTING)
    try:
        tree.start_streamer()
        tree.start_naived()
        assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
        before = open_buys(tree, "XRPUSDT", 2)
        orders = sorted(o["clientOrderId"] for o in tree.paper_orders())
        socket_path = tmp_path / "run" / "naived.sock"

        result = start_second(second_config(tree, tmp_path / "run2"), tmp_path / "second.log", tree.env())
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, result.stderr
        assert len(lines) == 1, result.stderr
        assert f"held by naived pid {tree.naived.pid}" in lines[0] and str(tmp_path / "state" / "naived.lock") in lines[0]

        # The first tree: same processes, same socket, answering, no order twice.
        assert tree.naived.poll() is None and socket_path.exists()
        after = tree.traders("XRPUSDT")
        assert {i: t["pid"] for i, t in after.items()} == {i: t["pid"] for i, t in before.items()}
        assert sorted(o["clientOrderId"] for o in tree.paper_orders()) == orders
        assert not (tmp_path / "run2").exists()  # the second touched nothing, not even its runtime dir
        assert "naived pid" in tree.log("naived") and "(token 1)" in tree.log("naived")
    finally:
        tree.stop()


def test_naivectl_tells_a_running_naived_without_its_socket_and_no_second_start_follows(tmp_path: Path) -> None:
    tree = Tree(tmp_path, RESTING)
    try:
        tree.start_streamer()
        tree.start_naived()
        pid = tree.naived.pid
        # Stopped: it holds the lock and does not answer.
        os.kill(pid, signal.SIGSTOP)
        try:
            hung = tree.ctl("--timeout", "0.3", "status")
        finally:
            os.kill(pid, signal.SIGCONT)
        assert hung.returncode == 1
        assert f"naived (pid {pid}) holds {tmp_path / 'state'}" in hung.stderr and "did not answer" in hung.stderr, hung.stderr
        assert "not running" not in hung.stderr

        (tmp_path / "run" / "naived.sock").unlink()
        gone = tree.ctl("status")
        assert gone.returncode == 1
        assert f"naived (pid {pid}) holds {tmp_path / 'state'}" in gone.stderr, gone.stderr
        assert "control socket" in gone.stderr and "is gone" in gone.stderr and "not running" not in gone.stderr
        assert len(gone.stderr.strip().splitlines()) == 1

        # What that message used to invite: a second start, on the same configuration.
        again = start_second(tree.config_path, tmp_path / "second.log", tree.env())
        assert again.returncode == 1 and f"naived pid {pid}" in again.stderr, again.stderr
        assert tree.naived.poll() is None
    finally:
        tree.stop()
    # And once it is stopped, naivectl says so plainly.
    stopped = tree.ctl("status")
    assert stopped.returncode == 1 and "naived is not running" in stopped.stderr, stopped.stderr


CHILD_OUTLIVES_ROOT = textwrap.dedent("""
    import ctypes, os, sys, time
    from pathlib import Path
    from naived.tree import process, supervisor
    from naived.core.config import Supervision
    from naived.store.ownership import StateDirLock

    lock = StateDirLock(Path(sys.argv[1]))
    lock.acquire()
    process.inherit_in_tree(lock.fd)

    def linger():
        ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # no PR_SET_PDEATHSIG: a child that has not died yet
        Path(sys.argv[2]).touch()
        time.sleep(60)
        return 0

    child = supervisor.Supervisor("root", Supervision()).start(
        supervisor.ChildSpec("linger", "linger", linger, "temporary", kind=supervisor.Kind.TRADER))
    while not Path(sys.argv[2]).exists():
        time.sleep(0.01)
    print(child.pid, flush=True)
    os._exit(0)  # the root dies; its child lives on
""")


def test_the_lock_lives_until_the_trees_last_process_is_gone(tmp_path: Path) -> None:
    """A root killed with -9 leaves children that die a moment later (PR_SET_PDEATHSIG); one may
    still be sending an order. A new root must not start before the last of them is gone."""
    state = tmp_path / "state"
    out = tmp_path / "root.out"  # a file, not a pipe: the lingering child keeps the root's stdout
    with open(out, "w") as stdout:
        root = subprocess.run([sys.executable, "-c", CHILD_OUTLIVES_ROOT, str(state), str(tmp_path / "ready")],
                              stdout=stdout, stderr=stdout, stdin=subprocess.DEVNULL, timeout=30, preexec_fn=die_with_test)
    assert root.returncode == 0, out.read_text()
    child = int(out.read_text().split()[0])
    try:
        lock = StateDirLock(state)
        with pytest.raises(Held) as held:
            lock.acquire(wait_for_dead_tree=0.5)
        assert "which is gone" in str(held.value) and str(child) in str(held.value), held.value
        assert lock.holder() is not None
    finally:
        os.kill(child, signal.SIGKILL)
    wait_for("the last process of the tree to die", lambda: not os.path.exists(f"/proc/{child}") or
             Path(f"/proc/{child}/stat").read_text().split()[2] == "Z")
    me = lock.acquire(wait_for_dead_tree=5.0)
    assert me.pid == os.getpid() and me.token == 2  # the token only grows
    assert lock.holder() == me  # a probe on its own open file sees our exclusive lock
    lock.release()
    assert lock.holder() is None
