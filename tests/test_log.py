"""Logging: journald priority prefixes under systemd, plain lines on a terminal; the level; the
log file every process of the tree appends to, and its rotation; the daemons' refusals.

Each case runs in a fresh interpreter (or a real daemon) so that setup_logging never touches
pytest's logging.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from harness import BIN, RESTING, Tree, open_buys, wait_for

SCRIPT = r"""
import logging
from naived.ops.log import setup_logging, rename_process_logs

setup_logging("naived", logging.DEBUG)
log = logging.getLogger("naived.test")
log.debug("debug line")
log.info("info line")
log.warning("warning line")
log.error("error line")
log.critical("critical line")
try:
    raise RuntimeError("boom")
except RuntimeError:
    log.exception("failed")
rename_process_logs("trader XRPUSDT/0")
log.info("after rename")
"""


def run(journal: bool) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal:
        env["JOURNAL_STREAM"] = "8:12345"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == ""
    return result.stderr.splitlines()


def test_journal_stream_gives_priority_prefixes():
    lines = run(journal=True)
    pid = r"\d+"
    assert re.fullmatch(rf"<7>naived\[{pid}\]: debug line", lines[0]), lines[0]
    assert re.fullmatch(rf"<6>naived\[{pid}\]: info line", lines[1]), lines[1]
    assert re.fullmatch(rf"<4>naived\[{pid}\]: warning line", lines[2]), lines[2]
    assert re.fullmatch(rf"<3>naived\[{pid}\]: error line", lines[3]), lines[3]
    assert re.fullmatch(rf"<2>naived\[{pid}\]: critical line", lines[4]), lines[4]
    assert re.fullmatch(rf"<3>naived\[{pid}\]: failed", lines[5]), lines[5]
    assert re.fullmatch(rf"<6>trader XRPUSDT/0\[{pid}\]: after rename", lines[-1]), lines[-1]
    # The traceback: every line is its own journal entry, so every line carries the error priority.
    traceback = lines[6:-1]
    assert traceback[0] == "<3>Traceback (most recent call last):"
    assert traceback[-1] == "<3>RuntimeError: boom"
    assert all(line.startswith("<3>") for line in traceback)


def test_plain_lines_without_journal():
    lines = run(journal=False)
    assert not any(line.startswith("<") for line in lines), lines
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(rf"{stamp} DEBUG naived\[\d+\] debug line", lines[0]), lines[0]
    assert re.fullmatch(rf"{stamp} INFO  naived\[\d+\] info line", lines[1]), lines[1]
    assert re.fullmatch(rf"{stamp} WARNING naived\[\d+\] warning line", lines[2]), lines[2]
    assert re.fullmatch(rf"{stamp} ERROR naived\[\d+\] error line", lines[3]), lines[3]
    assert "Traceback (most recent call last):" in lines
    assert re.fullmatch(rf"{stamp} INFO  trader XRPUSDT/0\[\d+\] after rename", lines[-1]), lines[-1]


# --- levels and the log file ---------------------------------------------------------------

def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=60)


LEVEL_SCRIPT = r"""
import logging, sys
from naived.ops.log import setup_logging

setup_logging("naived", sys.argv[1])
log = logging.getLogger("naived.test")
log.debug("debug line")
log.info("info line")
log.warning("warning line")
log.error("error line")
"""


@pytest.mark.parametrize(("level", "shown"), [("debug", 4), ("info", 3), ("warning", 2), ("error", 1)])
def test_the_level_drops_the_lines_below_it(level: str, shown: int) -> None:
    result = run_script(LEVEL_SCRIPT, level)
    assert result.returncode == 0, result.stderr
    expected = ["debug line", "info line", "warning line", "error line"][-shown:]
    assert [line.split("] ", 1)[1] for line in result.stderr.splitlines()] == expected


FILE_SCRIPT = r"""
import logging, os, sys
from naived.ops.log import setup_logging

os.umask(0)  # the file's mode is the handler's own, not what the umask leaves of 0666
fd = setup_logging("naived", "info", sys.argv[1])
log = logging.getLogger("naived.test")
log.info("root before fork")
writers, lines, width = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pids = []
for n in range(writers):
    pid = os.fork()
    if pid == 0:
        from naived.ops.log import rename_process_logs
        rename_process_logs(f"child {n}")
        for i in range(lines):
            log.info("%d %d %s", n, i, str(n) * width)
        try:
            raise RuntimeError(f"boom {n}")
        except RuntimeError:
            log.exception("child %d failed", n)
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
log.info("root after children")
print(fd)
"""


def test_the_file_gets_every_processs_lines_whole_and_stderr_nothing(tmp_path: Path) -> None:
    # Several forked processes append long lines (8 KiB and more: past a buffered stream's
    # buffer, which would write them in pieces) at once: every line arrives whole.
    path = tmp_path / "naived.log"
    writers, lines, width = 4, 300, 20_000
    result = run_script(FILE_SCRIPT, str(path), str(writers), str(lines), str(width))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text().splitlines()
    assert re.fullmatch(r".* INFO  naived\[\d+\] root before fork", text[0]), text[0]
    assert re.fullmatch(r".* INFO  naived\[\d+\] root after children", text[-1]), text[-1]
    body = [line for line in text if " INFO  child " in line]
    assert len(body) == writers * lines
    for line in body:
        match = re.fullmatch(r".* INFO  child (\d)\[\d+\] (\d) \d+ (\d+)", line)
        assert match and match[1] == match[2] and match[3] == match[1] * width, line[:200]
    # a record with a traceback is one write too: its lines stay together
    for n in range(writers):
        start = next(i for i, line in enumerate(text) if line.endswith(f"child {n} failed"))
        assert text[start + 1] == "Traceback (most recent call last):"
        end = next(i for i in range(start, len(text)) if text[i] == f"RuntimeError: boom {n}")
        assert all("INFO  child" not in line for line in text[start + 1:end]), text[start:end + 1]


ROTATE_SCRIPT = r"""
import logging, os, sys, time
from naived.ops.log import setup_logging, rename_process_logs

path = sys.argv[1]
fd = setup_logging("naived", "info", path)
log = logging.getLogger("naived.test")
log.info("first")
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:  # forked before the rotation, with the old file's descriptor
    rename_process_logs("child")
    os.read(go_r, 1)
    log.info("child after the rename")
    os.read(go_r, 1)
    log.info("child after the removal")
    os._exit(0)
log.info("root before the rename")
os.rename(path, path + ".1")
log.info("root after the rename")
os.write(go_w, b"x")
deadline = time.monotonic() + 30
while "child after the rename" not in open(path).read() and time.monotonic() < deadline:
    time.sleep(0.01)
print(open(path).read(), end="")  # the file the rotation made, before it is removed too
os.remove(path)
log.info("root after the removal")
os.write(go_w, b"x")
os.waitpid(pid, 0)
# reopened onto the descriptor number the tree keeps in every child it forks from now on
sys.exit(0 if os.fstat(fd).st_ino == os.stat(path).st_ino else 3)
"""


def test_a_renamed_or_removed_file_is_reopened_by_every_process(tmp_path: Path) -> None:
    path = tmp_path / "naived.log"
    result = run_script(ROTATE_SCRIPT, str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    def messages(text: str) -> list[str]:
        return [line.split("] ", 1)[1] for line in text.splitlines()]

    assert messages((tmp_path / "naived.log.1").read_text()) == ["first", "root before the rename"]
    assert messages(result.stdout) == ["root after the rename", "child after the rename"]
    assert messages(path.read_text()) == ["root after the removal", "child after the removal"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- the real daemons ---------------------------------------------------------------------

def test_the_tree_logs_to_one_file_follows_its_rotation_and_a_reloaded_level(tmp_path: Path) -> None:
    """naived start --log-file: the root's and its forked children's lines in the file, nothing
    on stderr; renamed (rotated) and SIGHUP: a new file, with the reload's lines of the root and a
    leader; the reloaded level (debug) reaches a leader: its debug line for a restarted trader."""
    tree_log, market_log = tmp_path / "tree.log", tmp_path / "market.log"  # harness: <name>.log is stderr
    tree = Tree(tmp_path, RESTING)
    try:
        tree.start_streamer(args=("--log-file", str(market_log)))
        tree.start_naived(args=("--log-file", str(tree_log)))
        assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
        open_buys(tree, "XRPUSDT", 2)  # the leader forked its traders: its debug line was due

        def lines() -> str:
            return tree_log.read_text()

        wait_for("the root's and the children's lines", lambda: all(
            re.search(pattern, lines(), re.M) for pattern in (
                r" INFO  naived\[\d+\] naived ready", r" INFO  paper-exchange\[\d+\] ", r" INFO  leader XRPUSDT\[\d+\] ")))
        assert " DEBUG " not in lines()  # level info: the leader's "trader pid N ready" is not there
        assert stat.S_IMODE(tree_log.stat().st_mode) == 0o600
        wait_for("streamerd's lines", lambda: "start: source=simulate" in market_log.read_text())

        tree_log.rename(tmp_path / "tree.log.1")  # logrotate's default: rename, then tell the daemon
        with tree.config_path.open("a") as config:
            config.write('\n[naived.log]\nlevel = "debug"\n')
        tree.naived.send_signal(signal.SIGHUP)
        wait_for("the reload's lines in a new file", lambda: tree_log.exists() and all(
            re.search(pattern, lines(), re.M) for pattern in (
                r" INFO  naived\[\d+\] log level debug \(was info\)",
                r" INFO  leader XRPUSDT\[\d+\] XRPUSDT: configuration reloaded")))
        trader = tree.traders("XRPUSDT")[0]["pid"]
        os.kill(trader, signal.SIGKILL)
        wait_for("the leader's debug line for the restarted trader", lambda: re.search(
            r" DEBUG leader XRPUSDT\[\d+\] XRPUSDT/0: trader pid \d+ ready", lines()))
        assert "log level" not in (tmp_path / "tree.log.1").read_text()
    finally:
        tree.stop()
    assert tree.log("naived") == "" and tree.log("streamerd") == ""  # their stderr: nothing at all
    assert re.search(r" INFO  naived\[\d+\] naived stopped", lines())


@pytest.mark.parametrize("command", ["check-config", "start"])
@pytest.mark.parametrize(("toml", "message"), [
    ('[naived.log]\nlevel = "verbose"\n',
     "naived.log.level: Invalid enum value 'verbose' (choose one of: debug, info, warning, error)"),
    ('[naived.log]\nfile = "{dir}/missing/naived.log"\n', "naived.log.file: no such directory: {dir}/missing"),
])
def test_a_bad_level_or_a_missing_directory_is_one_line_and_exit_2(tmp_path: Path, command: str, toml: str,
                                                                   message: str) -> None:
    path = tmp_path / "naive.toml"
    path.write_text(f'[paths]\nruntime_dir = "{tmp_path}/run"\nstate_dir = "{tmp_path}/state"\n'
                    + toml.format(dir=tmp_path))
    result = subprocess.run([str(BIN / "naived"), command, "--config", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message.format(dir=tmp_path) in result.stderr, result.stderr


def test_log_file_on_the_command_line_must_be_openable_too(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "x.log"
    config = tmp_path / "naive.toml"
    config.write_text(f'[paths]\nruntime_dir = "{tmp_path}/run"\nstate_dir = "{tmp_path}/state"\n'
                      f'[streamer]\nendpoint = "ipc://{tmp_path}/market.sock"\n')
    for program in ("naived", "streamerd"):
        result = subprocess.run([str(BIN / program), "start", "--config", str(config), "--log-file", str(missing)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (program, result.stderr)
        assert result.stderr.count("\n") == 1 and str(missing.parent) in result.stderr, result.stderr


def test_a_file_gets_plain_lines_under_systemd_too(tmp_path: Path) -> None:
    # Priority prefixes are for journald reading stderr; a file set under systemd is no journal.
    path = tmp_path / "naived.log"
    script = "import logging, sys\nfrom naived.ops.log import setup_logging\n" \
             "setup_logging('naived', 'info', sys.argv[1])\nlogging.getLogger('x').warning('to the file')\n"
    result = subprocess.run([sys.executable, "-c", script, str(path)], env={**os.environ, "JOURNAL_STREAM": "8:12345"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert re.fullmatch(r"\d{4}-\d\d-\d\d [\d:,]+ WARNING naived\[\d+\] to the file\n", path.read_text())
