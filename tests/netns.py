"""Several hosts on one machine, each in its own network namespace, inside one sandbox nothing leaves.

    with Cluster(hosts=3) as cluster:            # namespaces db, paper, h1, h2, h3
        pid = cluster.spawn("h1", ["naived", "start", ...], env=env, log=tmp / "h1.log")
        cluster.addr("db")                        # "10.200.0.2": where h1..h3 reach the database
        cluster.cut("h1"); cluster.heal("h1")     # a network partition of h1, and its end
        cluster.kill_tree(pid, signal.SIGSTOP)    # freeze h1's whole tree (SIGCONT resumes it)
        cluster.kill_tree(pid)                    # SIGKILL h1's whole tree at once; returns when it is gone

Why a sandbox process: Python 3.11 has no `os.unshare`/`os.setns`, and the pytest process must
never change its own namespaces (the rest of the suite runs in it). So `Cluster` starts
`unshare --net --mount --fork --kill-child python tests/netns.py --controller`: a *controller* in
a fresh network namespace (the *sandbox*, which has only `lo`) and a private mount namespace. It
builds the network, then serves the test's requests, one JSON object per packet on a
SOCK_SEQPACKET socketpair, answering each with one JSON object (and, for `socket`, a descriptor).

The network: one namespace per name (services first, then h1..hN), each with `lo` up and a veth
pair whose inside end is `eth0` (one address of 10.200.0.0/24: services from .2, host hN at
.100+N) and whose outside end `v-<name>` is a port of the bridge `br0` in the sandbox's own
namespace. The subnet is fixed: the sandbox is a fresh network namespace, so nothing in it can
clash with the machine's networks. No namespace has a default route and the sandbox has no link
to anything outside it: a connection to any address outside the /24 fails at once with "network
unreachable", and 127.0.0.1 in a namespace is that namespace's own loopback.

The namespaces have no names in /run/netns: the controller creates each with unshare(2) and holds
it by an open descriptor; `ip` reaches it by `netns /proc/self/fd/N`. So nothing is ever written
under the machine's /run/netns (`ip netns add` would create files there through the bind mounts it
makes, even in a private mount namespace unless a tmpfs covers /run/netns first), and the
namespaces live exactly as long as the controller, the processes in them and the sockets handed
out. The private mount namespace is there for what runs inside: a mount made in the sandbox stays
in it. Do not run `ip netns add` inside.

Processes: `spawn` forks from the controller, enters the namespace with setns(2) and execs the
command in a new session (stdin /dev/null, stdout and stderr to `log`), so the PID it returns is
the process's real PID in the machine's PID namespace (no `ip netns exec`, no wrapper process).
The process dies with the controller (PR_SET_PDEATHSIG); the controller is a child subreaper, so
whatever a spawned tree leaves behind (orphans, daemons that double-fork) becomes its child:
`close` kills every descendant of the controller, whatever its process group, and reaps it.

`kill_tree(pid, sig)` acts on a process and all its descendants, not a process group: naived's
subtrees lead process groups of their own (`new_process_group`), so a `killpg` would miss them.
It first stops the tree (SIGSTOP, walked again until no new descendant appears and every member
is stopped, so a fork racing the walk is caught), then delivers the signal: SIGSTOP leaves the
tree stopped, SIGKILL kills every member and returns once each is reaped, any other signal is
delivered to every member and the tree is continued. SIGCONT continues every member. Signals go
only to descendants of the controller, by PID, checked at the moment of sending (the controller
reaps its children itself, so a PID it is about to signal cannot have been reused).

A partition (`cut`): the host's port leaves the bridge (`ip link set v-<name> nomaster`). Both
veth ends keep their carrier, as when a link somewhere between the host and the others fails:
frames in either direction vanish without an error. A new connection times out (or fails with
EHOSTUNREACH once ARP gives up, after ~3 s), an established one stalls: its sends are
retransmitted and its reads wait, and it fails only by its own timeouts (TCP_USER_TIMEOUT,
keepalive, the application's), exactly what a client's timeout settings must handle. `heal` puts
the port back; an established connection that has not timed out resumes with the next
retransmission (up to a few seconds later, by TCP's backoff). Taking the link down instead would
show the host a lost carrier and fail its connections faster than a real partition does.

Everything dies with the test: `close` (or leaving the `with`) kills every process of the sandbox
and waits for unshare to exit; if the test process itself is killed, unshare dies with it
(PR_SET_PDEATHSIG), the controller with unshare (--kill-child) and every spawned process with the
controller. A descendant of a spawned process that set no PR_SET_PDEATHSIG of its own survives
that hard kill only inside the sandbox's namespaces, where it reaches nothing (naived's tree sets
it in every child; start servers such as postgres in the foreground, not through pg_ctl). Create
a Cluster on a thread that outlives it: PR_SET_PDEATHSIG follows the thread that forked unshare.

Every request has a deadline; waits poll the kernel's state with a deadline, never sleep blindly.
Requests are answered one at a time: use a Cluster from one thread.
Needs root, util-linux's `unshare` and iproute2's `ip` (.ci/run installs iproute2 when missing).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from naived.tree.process import die_with_parent

SUBNET = "10.200.0"  # a /24; see the module's docstring for why a fixed one is safe
BRIDGE = "br0"
CONTROLLER = Path(__file__).resolve()
_NAME = re.compile(r"[a-z][a-z0-9-]{0,12}")  # v-<name> must fit IFNAMSIZ (15 characters)
_MAX_PACKET = 1 << 20  # a request or an answer; `run`'s outputs are cut to fit
_OUTPUT_CAP = 256 * 1024


class NetnsError(RuntimeError):
    """The controller refused or failed a request, or could not be reached."""


def ip_command() -> str:
    """iproute2's `ip`: root's PATH has it, another's may lack /usr/sbin."""
    return shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if os.path.exists(p)), "ip")


def host_names(hosts: int) -> list[str]:
    return [f"h{n}" for n in range(1, hosts + 1)]


def plan(hosts: int, services: Iterable[str]) -> dict[str, str]:
    """Every namespace's name → its address: services from .2 in order, host hN at .100+N."""
    names = list(services)
    if not 1 <= hosts <= 150 or len(names) > 90:
        raise ValueError(f"{hosts} hosts and {len(names)} services do not fit the address plan")
    addrs = {name: f"{SUBNET}.{2 + i}" for i, name in enumerate(names)}
    addrs |= {name: f"{SUBNET}.{100 + n}" for n, name in enumerate(host_names(hosts), start=1)}
    for name in addrs:
        if not _NAME.fullmatch(name):
            raise ValueError(f"namespace name {name!r}: lowercase letters, digits and '-', at most 13")
    if len(addrs) != len(names) + hosts:
        raise ValueError(f"namespace names repeat: {names}")
    return addrs


def netns_inode(pid: int | str = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def mntns_inode(pid: int | str = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


class Cluster:
    """The test's side: starts the sandbox, sends requests, holds what they hand back."""

    def __init__(self, hosts: int = 3, services: Iterable[str] = ("db", "paper"), timeout: float = 30.0) -> None:
        self.addrs = plan(hosts, services)
        self.hosts = host_names(hosts)
        self.timeout = timeout
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - the controller's log; closed by close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._control = ours
        config = {"addrs": self.addrs, "outer_netns": netns_inode(), "outer_mntns": mntns_inode()}
        try:
            self.unshare = subprocess.Popen(
                ["unshare", "--net", "--mount", "--propagation", "private", "--fork", "--kill-child",
                 sys.executable, str(CONTROLLER), "--controller", str(theirs.fileno()), json.dumps(config)],
                stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr, pass_fds=(theirs.fileno(),),
                start_new_session=True, preexec_fn=die_with_parent)
        finally:
            theirs.close()
        try:
            ready = self._answer(timeout)
        except BaseException:
            self.close()
            raise
        self.controller_pid: int = ready["pid"]
        # Every namespace of the sandbox, by its inode: the sandbox's own under "" (for checks that none outlives it).
        self.netns: dict[str, int] = ready["netns"]

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------------------

    def _request(self, request: dict[str, Any], timeout: float | None = None, fds: int = 0) -> dict[str, Any]:
        if self._closed:
            raise NetnsError("the cluster is closed")
        data = json.dumps(request).encode()
        if len(data) > _MAX_PACKET:
            raise NetnsError(f"request of {len(data)} bytes is too large")
        self._control.settimeout(self.timeout)
        self._control.send(data)
        return self._answer(timeout or self.timeout, fds)

    def _answer(self, timeout: float, fds: int = 0) -> dict[str, Any]:
        self._control.settimeout(timeout)
        try:
            data, received, _flags, _addr = socket.recv_fds(self._control, _MAX_PACKET, max(fds, 1))
        except TimeoutError:
            raise NetnsError(f"no answer from the sandbox within {timeout:.0f} s{self._log_tail()}") from None
        if not data:
            raise NetnsError(f"the sandbox exited{self._log_tail()}")
        answer: dict[str, Any] = json.loads(data)
        answer["fds"] = received
        if not answer.get("ok"):
            for fd in received:
                os.close(fd)
            raise NetnsError(str(answer.get("error")))
        return answer

    def _log_tail(self) -> str:
        self._stderr.seek(0)
        tail = self._stderr.read()[-4000:].decode(errors="replace").strip()
        return f"; its log ends:\n{tail}" if tail else ""

    def addr(self, ns: str) -> str:
        return self.addrs[ns]

    def spawn(self, ns: str, argv: list[str], env: dict[str, str] | None = None, log: Path | str | None = None,
              cwd: Path | str | None = None) -> int:
        """Start `argv` in namespace `ns` in a session of its own; its real PID. `env` is the whole
        environment (default: this process's); `log` gets stdout and stderr, appended (default: nowhere)."""
        return int(self._request({"op": "spawn", "ns": ns, "argv": [str(a) for a in argv],
                                  "env": dict(os.environ if env is None else env),
                                  "log": None if log is None else str(log),
                                  "cwd": None if cwd is None else str(cwd)})["pid"])

    def kill(self, pid: int, sig: int) -> None:
        """Send `sig` to one process of the sandbox (kill_tree: to a whole tree)."""
        self._request({"op": "signal", "pid": pid, "sig": int(sig)})

    def kill_tree(self, pid: int, sig: int = signal.SIGKILL, timeout: float = 10.0) -> list[int]:
        """`sig` to `pid` and every descendant at once (see the module's docstring); the PIDs it reached.
        With SIGKILL it returns once every one of them is gone."""
        return list(self._request({"op": "kill_tree", "pid": pid, "sig": int(sig), "timeout": timeout},
                                  timeout + self.timeout)["pids"])

    def tree(self, pid: int) -> list[int]:
        """`pid` and its descendants, now."""
        return list(self._request({"op": "tree", "pid": pid})["pids"])

    def wait(self, pid: int, timeout: float = 10.0) -> int:
        """The exit status of a spawned process (negative: the signal that ended it), waiting at most `timeout`."""
        return int(self._request({"op": "wait", "pid": pid, "timeout": timeout}, timeout + self.timeout)["returncode"])

    def cut(self, ns: str) -> None:
        """Partition `ns` from every other namespace: its frames vanish both ways, its link stays up."""
        self._request({"op": "cut", "ns": ns})

    def heal(self, ns: str) -> None:
        self._request({"op": "heal", "ns": ns})

    def run(self, ns: str, argv: list[str], timeout: float = 30.0, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in `ns` to completion (killed with its session at `timeout`: NetnsError); outputs as text."""
        answer = self._request({"op": "run", "ns": ns, "argv": [str(a) for a in argv], "timeout": timeout,
                                "env": dict(os.environ if env is None else env)}, timeout + self.timeout)
        return subprocess.CompletedProcess(argv, answer["returncode"], answer["stdout"], answer["stderr"])

    def open_socket(self, ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket of namespace `ns`, used from this process: it connects, binds and listens in `ns`.
        Closed by `close` at the latest."""
        answer = self._request({"op": "socket", "ns": ns, "family": int(family), "type": int(kind)}, fds=1)
        sock = socket.socket(family, kind, fileno=answer["fds"][0])
        self._sockets.append(sock)
        return sock

    def connect(self, ns: str, addr: str, port: int, timeout: float = 2.0) -> socket.socket:
        """A TCP connection from `ns` to `addr`:`port`, or the OSError of the attempt (TimeoutError at `timeout`)."""
        sock = self.open_socket(ns)
        sock.settimeout(timeout)
        try:
            sock.connect((addr, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def listen(self, ns: str, port: int = 0, backlog: int = 64) -> socket.socket:
        """A TCP socket listening on `ns`'s address (port 0: one the kernel picks; see getsockname())."""
        sock = self.open_socket(ns)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.addr(ns), port))
        sock.listen(backlog)
        return sock

    def close(self) -> None:
        """Kill every process of the sandbox, close every socket handed out, wait for unshare to exit."""
        if self._closed:
            return
        try:
            if self.unshare.poll() is None:
                try:
                    self._request({"op": "close"}, self.timeout)
                except (NetnsError, OSError):
                    pass  # the hard way below: unshare's death takes the controller and its children along
        finally:
            self._closed = True
            for sock in self._sockets:
                sock.close()
            self._control.close()
            try:
                self.unshare.wait(self.timeout)
            except subprocess.TimeoutExpired:
                self.unshare.kill()
                self.unshare.wait(self.timeout)
            self._stderr.close()


# -- the controller: runs inside the sandbox ------------------------------------------------------

CLONE_NEWNET = 0x40000000
PR_SET_CHILD_SUBREAPER = 36
_STOPPED = {"T", "t"}


class _Refused(Exception):
    """A request the controller answers with an error and carries on."""


class Controller:
    def __init__(self, control: socket.socket, addrs: dict[str, str]) -> None:
        import psutil

        self.psutil = psutil
        self.control = control
        self.addrs = addrs
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.ip = ip_command()
        self.me = psutil.Process()
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.cut_off: set[str] = set()
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self.ns: dict[str, int] = {}

    def setns(self, fd: int) -> None:
        if self.libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns: {os.strerror(ctypes.get_errno())}")

    def make_namespace(self) -> int:
        """A new network namespace, held by the descriptor returned; this thread stays in the sandbox's."""
        if self.libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"unshare: {os.strerror(ctypes.get_errno())}")
        try:
            return os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        finally:
            self.setns(self.home)

    def run_ip(self, *args: str, ns: str | None = None) -> None:
        fd = None if ns is None else self.ns[ns]
        done = subprocess.run([self.ip, *args], capture_output=True, text=True, timeout=10,
                              pass_fds=tuple(self.ns.values()), preexec_fn=None if fd is None else lambda: self.setns(fd))
        if done.returncode != 0:
            raise _Refused(f"ip {' '.join(args)}{'' if ns is None else f' (in {ns})'}: {done.stderr.strip()}")

    def build(self) -> None:
        self.run_ip("link", "set", "lo", "up")
        self.run_ip("link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        self.run_ip("link", "set", BRIDGE, "up")
        for name, addr in self.addrs.items():
            self.ns[name] = self.make_namespace()
            self.run_ip("link", "add", f"v-{name}", "type", "veth", "peer", "name", "eth0",
                        "netns", f"/proc/self/fd/{self.ns[name]}")
            self.run_ip("link", "set", f"v-{name}", "master", BRIDGE, "up")
            self.run_ip("link", "set", "lo", "up", ns=name)
            self.run_ip("addr", "add", f"{addr}/24", "dev", "eth0", ns=name)
            self.run_ip("link", "set", "eth0", "up", ns=name)

    # -- processes --

    def reap(self) -> None:
        """Collect every child that has ended: spawned ones keep their status, adopted orphans go."""
        for proc in self.children.values():
            proc.poll()
        for child in self.me.children():
            if child.pid not in self.children:
                try:
                    os.waitpid(child.pid, os.WNOHANG)
                except ChildProcessError:
                    pass  # reaped between the listing and here

    def descendants(self, pid: int) -> list[int]:
        try:
            return [p.pid for p in self.psutil.Process(pid).children(recursive=True)]
        except self.psutil.NoSuchProcess:
            return []

    def state(self, pid: int) -> str | None:
        """The kernel's one-letter state of `pid`, None once it is gone."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        return stat[stat.rindex(")") + 2]

    def check_ours(self, pid: int) -> None:
        self.reap()
        if pid == os.getpid() or pid not in self.descendants(os.getpid()):
            raise _Refused(f"pid {pid} is not a live process of the sandbox")

    def send(self, pids: Iterable[int], sig: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # ended (a zombie of ours is still signalable; this one was someone else's to reap)

    def freeze(self, root: int, deadline: float, include_root: bool = True) -> list[int]:
        """Stop `root` and its descendants; walks again until a walk finds no one new and all are stopped."""
        stopped: list[int] = []
        while True:
            members = ([root] if include_root else []) + self.descendants(root)
            new = [pid for pid in members if pid not in stopped]
            self.send(new, signal.SIGSTOP)
            stopped += new
            self.poll_until(lambda members=stopped: all(self.state(p) in _STOPPED | {"Z", "X", None} for p in members),
                            deadline, "stopping the tree")
            if not new:
                return [p for p in stopped if self.state(p) is not None]

    def poll_until(self, done: Any, deadline: float, what: str) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise _Refused(f"{what}: not done by the deadline")
            time.sleep(0.005)

    def gone(self, pids: list[int]) -> bool:
        self.reap()
        mine = os.getpid()
        for pid in pids:
            state = self.state(pid)
            if state is None:
                continue
            if state == "Z":  # a zombie is gone unless we are the one to reap it (reap() just tried)
                try:
                    if self.psutil.Process(pid).ppid() != mine:
                        continue
                except self.psutil.NoSuchProcess:
                    continue
            return False
        return True

    def kill_tree(self, root: int, sig: int, timeout: float, include_root: bool = True) -> list[int]:
        deadline = time.monotonic() + timeout
        if sig == signal.SIGCONT:
            pids = ([root] if include_root else []) + self.descendants(root)  # stopped processes cannot fork
            self.send(pids, signal.SIGCONT)
            return pids
        pids = self.freeze(root, deadline, include_root)
        if sig == signal.SIGSTOP:
            return pids
        self.send(pids, sig)
        if sig == signal.SIGKILL:
            self.poll_until(lambda: self.gone(pids), deadline, "killing the tree")
        else:
            self.send(pids, signal.SIGCONT)
        return pids

    def in_ns(self, ns: str) -> Any:
        if ns not in self.ns:
            raise _Refused(f"no namespace {ns!r}; there are {sorted(self.ns)}")
        fd = self.ns[ns]

        def enter() -> None:
            self.setns(fd)
            self.libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: it dies with the controller

        return enter

    # -- requests --

    def handle(self, request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        op = request.get("op")
        if op == "spawn":
            enter = self.in_ns(request["ns"])
            log = open(request["log"], "ab") if request.get("log") else open(os.devnull, "wb")  # noqa: SIM115 - closed once spawned
            with log:
                proc = subprocess.Popen(request["argv"], env=request["env"], cwd=request.get("cwd"), stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=enter)
            self.children[proc.pid] = proc
            return {"pid": proc.pid}, []
        if op == "signal":
            self.check_ours(request["pid"])
            os.kill(request["pid"], request["sig"])
            return {}, []
        if op == "kill_tree":
            self.check_ours(request["pid"])
            return {"pids": self.kill_tree(request["pid"], request["sig"], float(request["timeout"]))}, []
        if op == "tree":
            self.check_ours(request["pid"])
            return {"pids": [request["pid"], *self.descendants(request["pid"])]}, []
        if op == "wait":
            waited = self.children.get(request["pid"])
            if waited is None:
                raise _Refused(f"pid {request['pid']} was not spawned here")
            try:
                return {"returncode": waited.wait(float(request["timeout"]))}, []
            except subprocess.TimeoutExpired:
                raise _Refused(f"pid {waited.pid} still runs after {request['timeout']} s") from None
        if op in ("cut", "heal"):
            ns = request["ns"]
            self.in_ns(ns)
            if op == "cut":
                self.run_ip("link", "set", f"v-{ns}", "nomaster")
                self.cut_off.add(ns)
            else:
                self.run_ip("link", "set", f"v-{ns}", "master", BRIDGE)
                self.cut_off.discard(ns)
            return {}, []
        if op == "run":
            with subprocess.Popen(request["argv"], env=request["env"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, start_new_session=True, preexec_fn=self.in_ns(request["ns"])) as proc:
                try:
                    out, err = proc.communicate(timeout=float(request["timeout"]))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
                    raise _Refused(f"{request['argv']} ran past {request['timeout']} s; killed") from None
            return {"returncode": proc.returncode, "stdout": out[-_OUTPUT_CAP:].decode(errors="replace"),
                    "stderr": err[-_OUTPUT_CAP:].decode(errors="replace")}, []
        if op == "socket":
            self.in_ns(request["ns"])
            self.setns(self.ns[request["ns"]])
            try:
                sock = socket.socket(request["family"], request["type"])  # a socket stays in the namespace it was made in
            finally:
                self.setns(self.home)
            return {}, [sock.detach()]
        raise _Refused(f"unknown request {op!r}")

    def shut_down(self) -> list[int]:
        """Kill every descendant of the controller, whatever its session, and reap them all."""
        self.reap()
        return self.kill_tree(os.getpid(), signal.SIGKILL, 20.0, include_root=False)

    def serve(self) -> None:
        while True:
            data = self.control.recv(_MAX_PACKET)
            if not data:  # the test closed its end or died: nothing of ours may outlive it
                self.shut_down()
                return
            fds: list[int] = []
            request: dict[str, Any] = {}
            try:
                request = json.loads(data)
                if request.get("op") == "close":
                    answer: dict[str, Any] = {"pids": self.shut_down()}
                else:
                    answer, fds = self.handle(request)
                answer["ok"] = True
            except (_Refused, OSError, subprocess.SubprocessError, KeyError, TypeError, ValueError) as exc:
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            try:
                socket.send_fds(self.control, [json.dumps(answer).encode()], fds)
            finally:
                for fd in fds:
                    os.close(fd)
            if request.get("op") == "close" and answer["ok"]:
                return


def controller_main(fd: int, config: dict[str, Any]) -> int:
    control = socket.socket(fileno=fd)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # The one guard that matters: never touch the machine's own network or mounts.
    if netns_inode() == config["outer_netns"] or mntns_inode() == config["outer_mntns"]:
        control.send(json.dumps({"ok": False, "error": "not in a namespace of its own; refusing to build"}).encode())
        return 1
    controller = Controller(control, config["addrs"])
    try:
        controller.build()
    except (_Refused, OSError, subprocess.SubprocessError) as exc:
        control.send(json.dumps({"ok": False, "error": f"building the network: {exc}"}).encode())
        return 1
    netns = {name: os.fstat(fd).st_ino for name, fd in controller.ns.items()} | {"": netns_inode()}
    control.send(json.dumps({"ok": True, "pid": os.getpid(), "netns": netns}).encode())
    controller.serve()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--controller":
        sys.exit("usage: netns.py --controller FD CONFIG_JSON (started by netns.Cluster, inside unshare)")
    sys.exit(controller_main(int(sys.argv[2]), json.loads(sys.argv[3])))
