"""A real PostgreSQL server for the tests: `initdb` in a temporary directory, `pg_ctl start` on
127.0.0.1 (a free port) and a Unix socket in that directory, a database `naive` owned by a
password-authenticated (SCRAM) role `naive` that is not a superuser, as naive would be given.

The server runs as an unprivileged user when the tests run as root (they do here and in CI;
PostgreSQL refuses to run as root): `nobody`, through `setpriv`, with the directory handed to it.
Passwords never go on a command line: initdb reads the superuser's from a file (removed once read),
the roles' are sent over the connection. A server that cannot start fails the test with the tail of
its log, never skips: `.ci/run` installs the binaries on a fresh machine.

A watchdog process holds a pipe from the test run: if the run dies without stopping the server
(a killed pytest), the pipe's end wakes it and it kills the server's process group and removes
the directory, so no server outlives its tests.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from naived.ops.listen import free_ports

UNPRIVILEGED = "nobody"

# Run in its own process: waits for the test run's word ("done": the server was stopped) or for
# the pipe to close without it (the run died), then cleans up after it.
_WATCHDOG = """
import os, shutil, signal, sys
word = sys.stdin.read()
if word != "done":
    base, bindir = sys.argv[1], sys.argv[2]
    try:
        pid = int(open(base + "/data/postmaster.pid").readline())
        if os.readlink(f"/proc/{pid}/exe").startswith(bindir):  # still our server, not a reused pid
            os.killpg(pid, signal.SIGKILL)  # pg_ctl made the postmaster a session (and group) leader
    except (OSError, ValueError):
        pass
    shutil.rmtree(base, ignore_errors=True)
"""


def server_bin_dir() -> Path | None:
    """Where PostgreSQL's server programs are: `initdb` on PATH, else Debian's newest
    /usr/lib/postgresql/<version>/bin (Debian puts only the client programs on PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(versions[-1]).parent if versions else None


class PgServer:
    """One running server; `dsn()` for the role naive, `admin()` for a superuser connection."""

    def __init__(self, base: Path, port: int, bindir: Path, superuser_password: str, password: str,
                 listen: str = "127.0.0.1") -> None:
        self.base = base
        self.port = port
        self.listen = listen  # the one TCP address it listens on
        self.bindir = bindir
        self.superuser_password = superuser_password
        self.password = password
        self.startup_seconds = 0.0  # initdb + start + role and database, measured
        # naive holds one connection per leader and per host's keeper (and a worker's, briefly): a
        # cluster of many symbols needs more than the tests' default
        self.max_connections = 60

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def dsn(self, *, password: str | None = None, options: str | None = None) -> str:
        """The role naive's connection string over TCP (password authentication, as a remote host has)."""
        parts = {"host": self.listen, "port": str(self.port), "dbname": "naive", "user": "naive",
                 "password": self.password if password is None else password, "connect_timeout": "5"}
        if options:
            parts["options"] = options
        return psycopg.conninfo.make_conninfo(**parts)

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection over the Unix socket, in autocommit."""
        return psycopg.connect(host=str(self.socket_dir), port=self.port, dbname=dbname, user="postgres",
                               password=self.superuser_password, autocommit=True)

    def options(self) -> list[str]:
        """The server's command-line settings (the same for pg_ctl's -o and a foreground postgres)."""
        return ["-p", str(self.port), "-c", f"listen_addresses={self.listen}", "-k", str(self.socket_dir),
                "-c", f"max_connections={self.max_connections}", "-c", "shared_buffers=32MB"]

    def foreground_argv(self) -> list[str]:
        """`postgres` itself in the foreground as the unprivileged user, dying with its parent: for a
        process that spawns it and outlives it (tests/netns.py's controller), not pg_ctl's daemon."""
        return _as_server_user([str(self.bindir / "postgres"), "-D", str(self.data), *self.options()], keep_pdeathsig=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"


# Drops root's privileges, then asks to die with the parent (a change of user clears that request,
# so setpriv cannot keep one made before it) and execs the command.
_DEMOTE = """
import ctypes, os, signal, sys
uid, gid, parent = int(sys.argv[1]), int(sys.argv[2]), os.getppid()
os.setgroups([]); os.setgid(gid); os.setuid(uid)
ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != parent:
    sys.exit("the parent died before the server started")
os.execv(sys.argv[3], sys.argv[3:])
"""


def _as_server_user(argv: list[str], keep_pdeathsig: bool = False) -> list[str]:
    if os.geteuid() != 0:
        return argv
    user = pwd.getpwnam(UNPRIVILEGED)
    if keep_pdeathsig:
        return [sys.executable, "-c", _DEMOTE, str(user.pw_uid), str(user.pw_gid), *argv]
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--", *argv]


def _run(argv: list[str], base: Path, what: str, server: PgServer | None = None) -> None:
    done = subprocess.run(_as_server_user(argv), cwd=base, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LC_ALL": "C", "TZ": "UTC"})
    if done.returncode != 0:
        tail = f"\n--- server log ---\n{server.log_tail()}" if server else ""
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}{tail}")


@contextlib.contextmanager
def initialized_server(listen: str = "127.0.0.1", port: int | None = None) -> Iterator[PgServer]:
    """`initdb` done in a new temporary directory, the server not started: `running_server` starts it
    with pg_ctl; tests/cluster_net.py runs `foreground_argv` in a network namespace. `listen`: the
    address it will listen on (another than loopback: password connections from its subnet allowed).
    The server is stopped and the directory removed at the end, whoever started it."""
    bindir = server_bin_dir()
    if bindir is None:
        raise RuntimeError("PostgreSQL's server programs (initdb, pg_ctl) are not installed: "
                           "`apt-get install postgresql` (.ci/run does it on a fresh machine)")
    base = Path(tempfile.mkdtemp(prefix="nd-pg-"))
    server = PgServer(base, port or free_ports(1)[0], bindir, secrets.token_urlsafe(18), secrets.token_urlsafe(18),
                      listen)
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(base), str(bindir)], stdin=subprocess.PIPE, text=True,
                                start_new_session=True)  # not in the test run's group: a Ctrl-C must not kill it first
    try:
        server.socket_dir.mkdir()
        pwfile = base / "pw"
        pwfile.write_text(server.superuser_password + "\n")
        pwfile.chmod(0o600)
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED)
            for path in (base, server.socket_dir, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
        # --no-sync: the new files need not reach the disk (a crashed machine loses a test server);
        # the server itself runs with fsync on, as a real one does.
        _run([str(bindir / "initdb"), "-D", str(server.data), "-U", "postgres", f"--pwfile={pwfile}",
              "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
             base, "initdb")
        pwfile.unlink()
        if listen != "127.0.0.1":
            with open(server.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet scram-sha-256\n")
        yield server
    finally:
        _stop(server)
        shutil.rmtree(base, ignore_errors=True)
        if watchdog.stdin is not None:
            watchdog.stdin.write("done")
            watchdog.stdin.close()
        watchdog.wait(10)


def create_database(server: PgServer) -> None:
    """The role naive (its password over the connection) and its database, on a server that runs."""
    with server.admin() as admin:
        admin.execute(sql.SQL("CREATE ROLE naive LOGIN PASSWORD {}").format(sql.Literal(server.password)))
        admin.execute("CREATE DATABASE naive OWNER naive")


@contextlib.contextmanager
def running_server(max_connections: int = 60) -> Iterator[PgServer]:
    """Start a server in a new temporary directory; stop it and remove the directory at the end.
    Raises RuntimeError (with the server's log tail) if it cannot start."""
    started = time.monotonic()
    with initialized_server() as server:
        server.max_connections = max_connections
        _run([str(server.bindir / "pg_ctl"), "-D", str(server.data), "-l", str(server.log), "-o",
              " ".join(server.options()), "-w", "-t", "30", "start"], server.base, "pg_ctl start", server)
        create_database(server)
        server.startup_seconds = time.monotonic() - started
        yield server


def _stop(server: PgServer) -> None:
    """pg_ctl stop (immediate: nothing of a test server needs a checkpoint); the process group
    killed if anything of it survives."""
    try:
        pid = int((server.data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return  # never started
    try:
        _run([str(server.bindir / "pg_ctl"), "-D", str(server.data), "-m", "immediate", "-w", "-t", "10", "stop"],
             server.base, "pg_ctl stop")
    except (RuntimeError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(OSError):
        if os.readlink(f"/proc/{pid}/exe").startswith(str(server.bindir)):  # it survived, and the pid is still its
            os.killpg(pid, signal.SIGKILL)  # pg_ctl made the postmaster a session (and group) leader
