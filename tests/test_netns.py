"""The network-namespace harness (tests/netns.py), checked with real sockets and real processes:
hosts reach the database by its address and nothing else, a cut is a partition until healed, a
process tree stops, continues and dies whole, and nothing of a sandbox outlives it."""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import missing_service
from harness import wait_for
from netns import CONTROLLER, Cluster, ip_command, mntns_inode, netns_inode

TESTS = Path(__file__).resolve().parent



@pytest.fixture(autouse=True)
def privileged() -> None:
    """Network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN: CI runs as root (and fails without);
    a developer's unprivileged run skips, saying why."""
    if os.geteuid() != 0:
        missing_service("network namespaces need root (CI runs these tests as root)")


def exchange(client: socket.socket, server: socket.socket, data: bytes = b"ping") -> None:
    """`data` crosses both ways between the two ends of one connection."""
    client.settimeout(2.0)
    server.settimeout(2.0)
    client.sendall(data)
    assert server.recv(100) == data
    server.sendall(data[::-1])
    assert client.recv(100) == data[::-1]


def machine_addresses() -> list[str]:
    """The machine's own IPv4 addresses, loopback aside: where a stray connection would go."""
    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")]


def holders(inodes: set[int]) -> list[str]:
    """Every process, thread or descriptor on the machine that refers to one of these network namespaces."""
    wanted = {f"net:[{inode}]" for inode in inodes}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        links = [*proc.glob("task/*/ns/net"), *proc.glob("fd/*")]
        for link in links:
            try:
                if os.readlink(link) in wanted:
                    found.append(str(link))
            except OSError:
                pass  # the process or descriptor went away while we looked
    return found


def alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def host_view() -> tuple[str, str, bool]:
    """What the machine shows of namespaces and links, to compare before and after a sandbox."""
    netns = subprocess.run([ip_command(), "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run([ip_command(), "-br", "link"], capture_output=True, text=True, check=True).stdout
    return netns, links, os.path.exists("/run/netns")


def test_every_host_reaches_the_database_by_its_address_and_nothing_leaves_the_sandbox() -> None:
    outside = socket.create_server(("127.0.0.1", 0))  # the machine's loopback, in the test's own namespace
    with outside, Cluster(hosts=3) as cluster:
        server = cluster.listen("db")
        port = server.getsockname()[1]
        for host in cluster.hosts:
            client = cluster.connect(host, cluster.addr("db"), port)
            accepted, peer = server.accept()
            assert peer[0] == cluster.addr(host)  # through its own eth0, not some other path
            exchange(client, accepted)
        back = cluster.listen("h2")
        exchange(cluster.connect("db", cluster.addr("h2"), back.getsockname()[1]), back.accept()[0])

        # Outside the /24 there is no route at all: refused at once, no packet sent.
        for address in ["192.0.2.1", "1.1.1.1", *machine_addresses()]:
            with pytest.raises(OSError) as failed:  # a local refusal: a packet sent would have timed out instead
                cluster.connect("h1", address, 80, timeout=2.0)
            assert failed.value.errno == errno.ENETUNREACH, (address, failed.value)
        datagram = cluster.open_socket("h3", kind=socket.SOCK_DGRAM)
        with pytest.raises(OSError) as failed:
            datagram.sendto(b"x", ("192.0.2.1", 53))
        assert failed.value.errno == errno.ENETUNREACH
        # 127.0.0.1 in a namespace is its own loopback: the machine's listener is not there.
        with pytest.raises(ConnectionRefusedError):
            cluster.connect("h1", "127.0.0.1", outside.getsockname()[1])


def test_a_cut_host_is_partitioned_both_ways_until_healed() -> None:
    with Cluster(hosts=2, services=("db",)) as cluster:
        db = cluster.addr("db")
        server = cluster.listen("db")
        port = server.getsockname()[1]
        steady = cluster.connect("h1", db, port)
        steady_peer = server.accept()[0]
        fragile = cluster.connect("h1", db, port)
        fragile.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1000)  # gives up on unacknowledged data after 1 s
        fragile_peer = server.accept()[0]  # kept: its close would end the connection before the cut
        exchange(steady, steady_peer)
        exchange(fragile, fragile_peer)

        cluster.cut("h1")
        steady.sendall(b"during")
        fragile.sendall(b"during")
        started = time.monotonic()
        with pytest.raises(OSError) as failed:  # silence, as a partition: no refusal, no reset
            cluster.connect("h1", db, port, timeout=1.0)
        assert isinstance(failed.value, TimeoutError) or failed.value.errno == errno.EHOSTUNREACH, failed.value
        listener = cluster.listen("h1")
        with pytest.raises(TimeoutError):  # and the other way
            cluster.connect("db", cluster.addr("h1"), listener.getsockname()[1], timeout=1.0)
        exchange(cluster.connect("h2", db, port), server.accept()[0])  # the others do not notice
        # An established connection stalls: nothing it sent arrived in those two seconds...
        assert time.monotonic() - started >= 2.0
        steady_peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            steady_peer.recv(100)
        # ...and one with a user timeout fails by it, not by an error from the network.
        fragile.settimeout(5.0)
        with pytest.raises(OSError) as failed:
            fragile.recv(100)
        assert failed.value.errno == errno.ETIMEDOUT

        cluster.heal("h1")
        exchange(cluster.connect("h1", db, port), server.accept()[0])
        steady_peer.settimeout(10.0)  # the next retransmission carries it: TCP's backoff, a few seconds at most
        assert steady_peer.recv(100) == b"during"
        exchange(steady, steady_peer)


# A server in its own process group, as naived's subtrees are: a killpg of the spawned process misses it.
SERVER = textwrap.dedent("""
    import json, os, socket, sys
    from naived.tree.process import die_with_parent
    server = socket.create_server((sys.argv[1], 0))
    child = os.fork()
    if child == 0:
        os.setpgid(0, 0)
        die_with_parent()
        while True:
            conn, _ = server.accept()
            conn.sendall(conn.recv(100))
            conn.close()
    os.setpgid(child, child)  # here too (the usual idiom): the test reads the group as soon as this prints
    print(json.dumps({"port": server.getsockname()[1], "child": child}), flush=True)
    os.waitpid(child, 0)
""")


def test_a_spawned_tree_stops_continues_and_dies_whole(short_tmp: Path) -> None:
    with Cluster(hosts=2, services=()) as cluster:
        log = short_tmp / "server.log"
        pid = cluster.spawn("h1", [sys.executable, "-c", SERVER, cluster.addr("h1")], log=log)
        started = json.loads(wait_for("the server's port", lambda: log.read_text().strip(), timeout=10))
        child = started["child"]
        assert os.getpgid(child) != os.getpgid(pid) == pid  # real PIDs, in the machine's PID namespace
        assert sorted(cluster.tree(pid)) == sorted([pid, child])

        assert sorted(cluster.kill_tree(pid, signal.SIGSTOP)) == sorted([pid, child])
        assert {psutil.Process(p).status() for p in (pid, child)} == {psutil.STATUS_STOPPED}
        client = cluster.connect("h2", cluster.addr("h1"), started["port"])  # the kernel still accepts...
        client.sendall(b"echo")
        client.settimeout(0.5)
        with pytest.raises(TimeoutError):  # ...but nobody answers
            client.recv(100)

        cluster.kill_tree(pid, signal.SIGCONT)
        client.settimeout(5.0)
        assert client.recv(100) == b"echo"

        assert sorted(cluster.kill_tree(pid)) == sorted([pid, child])
        assert alive([pid, child]) == []  # gone when kill_tree returns, the other process group too
        assert cluster.wait(pid) == -signal.SIGKILL


# Forks as fast as it can: a kill_tree that walks the tree once misses the children forked meanwhile.
FORKER = "import os, signal\nfor _ in range(2000):\n    if os.fork() == 0:\n        signal.pause()\nsignal.pause()\n"


def test_a_tree_that_keeps_forking_is_stopped_and_killed_whole() -> None:
    with Cluster(hosts=1, services=()) as cluster:
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            pid = cluster.spawn("h1", [sys.executable, "-c", FORKER])
            wait_for("the forks", lambda pid=pid: len(psutil.Process(pid).children()) >= 20, timeout=10, interval=0.001)
            reached = cluster.kill_tree(pid, sig)
            if sig == signal.SIGSTOP:
                tree = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
                assert sorted(reached) == sorted(tree)
                assert {psutil.Process(p).status() for p in tree} == {psutil.STATUS_STOPPED}
                cluster.kill_tree(pid)
            assert psutil.Process(cluster.controller_pid).children(recursive=True) == []


# Leaves a daemon behind, the way pg_ctl does: double fork, new session, no PR_SET_PDEATHSIG.
DAEMON = textwrap.dedent("""
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            print(os.getpid(), flush=True)
            time.sleep(600)
""")


def test_nothing_of_a_closed_cluster_outlives_it(short_tmp: Path) -> None:
    before = host_view()
    cluster = Cluster(hosts=2)
    sock = cluster.listen("db")
    log = short_tmp / "daemon.log"
    spawned = cluster.spawn("h1", [sys.executable, "-c", DAEMON], log=log)
    assert cluster.wait(spawned) == 0
    daemon = int(wait_for("the daemon's pid", lambda: log.read_text().strip(), timeout=10))
    # Adopted by the sandbox, not by init, once its parent has exited (it may print before that).
    wait_for("the daemon adopted by the controller",
             lambda: psutil.Process(daemon).ppid() == cluster.controller_pid, timeout=10)
    sleeper = cluster.spawn("h2", ["sleep", "600"])
    sandbox = [cluster.unshare.pid, cluster.controller_pid, daemon, sleeper]
    assert alive(sandbox) == sandbox
    assert holders(set(cluster.netns.values()))

    cluster.close()
    assert alive(sandbox) == []
    assert sock.fileno() == -1
    assert holders(set(cluster.netns.values())) == []  # every namespace is gone with its last reference
    assert host_view() == before


# Stands for a test process killed with -9: its sandbox must go along.
ABANDONED = textwrap.dedent("""
    import json, sys
    from netns import Cluster
    cluster = Cluster(hosts=1, services=())
    pid = cluster.spawn("h1", [sys.executable, "-c", sys.argv[1]])
    print(json.dumps({"pids": [cluster.unshare.pid, cluster.controller_pid, pid],
                      "netns": list(cluster.netns.values())}), flush=True)
    sys.stdin.read()
""")
SUBTREE = textwrap.dedent("""
    import os, time
    from naived.tree.process import die_with_parent
    if os.fork() == 0:
        os.setpgid(0, 0)
        die_with_parent()
    time.sleep(600)
""")


def test_a_killed_test_process_takes_its_sandbox_along() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    with subprocess.Popen([sys.executable, "-c", ABANDONED, SUBTREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True, env=env) as test:
        try:
            assert test.stdout is not None
            ready, _, _ = select.select([test.stdout], [], [], 30)
            assert ready, "the abandoned test did not start its cluster"
            started = json.loads(test.stdout.readline())
            spawned = started["pids"][-1]
            subtree = wait_for("the subtree", lambda: psutil.Process(spawned).children(), timeout=10)
            pids = [*started["pids"], *(p.pid for p in subtree)]
            assert alive(pids) == pids
        finally:
            test.kill()
    wait_for("every process of the sandbox gone", lambda: alive(pids) == [], timeout=10)
    wait_for("every namespace gone", lambda: holders(set(started["netns"])) == [], timeout=10)


def test_the_controller_refuses_to_build_outside_namespaces_of_its_own() -> None:
    """Its guard: run where its mount namespace is the caller's (only --net here, so a failing guard
    builds inside a throwaway network namespace, never on the machine), it builds nothing."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    config = {"addrs": {"h1": "10.200.0.101"}, "outer_netns": netns_inode(), "outer_mntns": mntns_inode()}
    with ours:
        with theirs:
            controller = subprocess.Popen(["unshare", "--net", sys.executable, str(CONTROLLER), "--controller",
                                           str(theirs.fileno()), json.dumps(config)], pass_fds=(theirs.fileno(),))
        try:
            ours.settimeout(10.0)
            answer = json.loads(ours.recv(1 << 16))
        finally:
            ours.close()  # a controller that did build sees the end of its requests and exits
            returncode = controller.wait(10)
    assert answer == {"ok": False, "error": "not in a namespace of its own; refusing to build"}
    assert returncode == 1
