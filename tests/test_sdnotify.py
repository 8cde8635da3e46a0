"""sd_notify by hand: real AF_UNIX datagram sockets, path and abstract namespace."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from naived.ops import sdnotify


@pytest.fixture(autouse=True)
def _fresh_module_socket(monkeypatch):
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)
    sdnotify.reset_after_fork()
    yield
    sdnotify.reset_after_fork()


def _receiver(address) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)  # a failure, not a synchronisation: the datagram is queued before recv
    return sock


@pytest.fixture
def path_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = _receiver(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_unset_returns_false():
    assert sdnotify.notify("READY=1") is False
    assert sdnotify._sock is None  # nothing created when there is nowhere to send


def test_path_socket_exact_datagram(path_socket):
    assert sdnotify.notify("READY=1", "STATUS=2 symbols trading") is True
    assert path_socket.recv(4096) == b"READY=1\nSTATUS=2 symbols trading"


def test_abstract_namespace(monkeypatch):
    name = f"naive-test-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("WATCHDOG=1") is True
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_one_socket_per_process_reused(path_socket):
    assert sdnotify.notify("STATUS=one")
    first = sdnotify._sock
    assert sdnotify.notify("STATUS=two")
    assert sdnotify._sock is first
    assert path_socket.recv(4096) == b"STATUS=one"
    assert path_socket.recv(4096) == b"STATUS=two"


def test_newline_inside_a_field_cannot_inject_an_assignment(path_socket):
    assert sdnotify.notify("STATUS=bad\nREADY=1")
    assert path_socket.recv(4096) == b"STATUS=bad READY=1"


def test_no_fields_sends_nothing(path_socket):
    assert sdnotify.notify() is False


def test_send_failure_is_false_not_raised(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level("DEBUG", logger="naived.ops.sdnotify"):
        assert sdnotify.notify("READY=1") is False
    assert "sd_notify" in caplog.text


def test_forked_child_uses_its_own_socket(path_socket):
    assert sdnotify.notify("STATUS=parent")
    parent_sock = sdnotify._sock
    parent_fd = parent_sock.fileno()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery, report through the exit status only
        code = 1
        try:
            # As the supervisor does after fork: close inherited descriptors, then reuse the
            # number for something else. The child must neither use nor close that number.
            os.close(parent_fd)
            r, w = os.pipe()
            if parent_fd in (r, w):
                ok = sdnotify.notify("STATUS=child") and sdnotify._sock is not parent_sock
                os.write(w, b"x")  # the reused descriptor is still open and ours
                ok = ok and os.read(r, 1) == b"x"
            else:
                ok = sdnotify.notify("STATUS=child") and sdnotify._sock is not parent_sock
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert path_socket.recv(4096) == b"STATUS=parent"
    assert path_socket.recv(4096) == b"STATUS=child"
    # The parent's socket survived the child.
    assert sdnotify._sock is parent_sock
    assert sdnotify.notify("STATUS=parent again")
    assert path_socket.recv(4096) == b"STATUS=parent again"


def test_reset_after_fork_in_owner_closes_and_reopens(path_socket):
    assert sdnotify.notify("STATUS=a")
    old = sdnotify._sock
    sdnotify.reset_after_fork()
    assert old.fileno() == -1 and sdnotify._sock is None
    assert sdnotify.notify("STATUS=b")
    assert path_socket.recv(4096) == b"STATUS=a"
    assert path_socket.recv(4096) == b"STATUS=b"


# --- watchdog -----------------------------------------------------------------------------


def test_watchdog_unset():
    assert sdnotify.watchdog_interval() is None


def test_watchdog_half_interval(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 15.0


def test_watchdog_pid_ours(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 0.5


def test_watchdog_pid_mismatch(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None


@pytest.mark.parametrize("usec", ["0", "-5", "abc", "1.5", ""])
def test_watchdog_invalid_usec(monkeypatch, usec):
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    assert sdnotify.watchdog_interval() is None


def test_watchdog_invalid_pid(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", "not-a-pid")
    assert sdnotify.watchdog_interval() is None


# --- Watchdog: the pacer both daemons' loops use -------------------------------------------


def test_watchdog_pacer_without_a_watchdog_never_wakes_or_sends(path_socket):
    dog = sdnotify.Watchdog()
    assert dog.deadline() is None and dog.timeout_ms() is None
    assert dog.tick() is False


def test_watchdog_pacer_pings_once_per_interval(path_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "600000000")  # 5 min: the second tick is never due in this test
    dog = sdnotify.Watchdog()
    assert dog.timeout_ms() == 0  # due at once
    assert dog.tick(status=lambda: "fine") is True
    assert path_socket.recv(4096) == b"WATCHDOG=1\nSTATUS=fine"
    assert dog.tick() is False
    assert 299_000 <= dog.timeout_ms() <= 300_000


def test_watchdog_pacer_unhealthy_skips_the_ping_but_not_the_deadline(path_socket):
    dog = sdnotify.Watchdog(interval=300.0)
    assert dog.tick(healthy=False) is False
    assert dog.timeout_ms() > 0  # no busy loop while systemd's watchdog runs out
    path_socket.settimeout(0)
    with pytest.raises(BlockingIOError):
        path_socket.recv(4096)
