"""systemd/*.service: `systemd-analyze verify` clean, and the settings the daemons rely on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNITS = ("streamerd.service", "naived.service")
INSTALLED_BIN = "/opt/naive/.venv/bin/"


def parse_unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value given (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in (UNITS_DIR / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{name}: {raw!r} outside a section"
        assert not line.endswith("\\"), f"{name}: keep each setting on one line"
        key, sep, value = line.partition("=")
        assert sep, f"{name}: not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values is not None, f"{key}= missing from [{section}]"
    assert len(values) == 1, f"{key}= given {len(values)} times"
    return values[0]


@pytest.fixture(params=UNITS)
def unit(request):
    return request.param, parse_unit(request.param)


def test_service_type_watchdog_and_stop(unit):
    name, u = unit
    daemon = name.removesuffix(".service")
    assert one(u, "Service", "Type") == "notify"
    assert one(u, "Service", "NotifyAccess") == "main"
    assert one(u, "Service", "WatchdogSec") == "30"
    assert one(u, "Service", "Restart") == "on-failure"
    assert one(u, "Service", "KillMode") == "mixed"
    assert one(u, "Service", "TimeoutStopSec") == "20"
    assert one(u, "Service", "ExecStart") == f"{INSTALLED_BIN}{daemon} start"


def test_directories_environment_and_user(unit):
    name, u = unit
    s = u["Service"]
    runtime = one(u, "Service", "RuntimeDirectory")
    # Never shared between the two units: systemd deletes it when *this* unit stops.
    assert runtime == ("naive" if name == "naived.service" else "naive-streamerd")
    assert one(u, "Service", "RuntimeDirectoryPreserve") == "no"
    assert one(u, "Service", "RuntimeDirectoryMode") == "0700"
    assert one(u, "Service", "StateDirectory") == "naive"
    assert one(u, "Service", "StateDirectoryMode") == "0700"
    if name == "naived.service":
        assert one(u, "Service", "EnvironmentFile") == "-/etc/naive/keys.env"
    assert "NAIVE_CONFIG=/etc/naive/naive.toml" in s["Environment"]
    assert one(u, "Service", "User") == "naive"
    assert "DynamicUser" not in s
    assert "ReadWritePaths" not in s  # Runtime/StateDirectory are writable already


def test_streamerd_never_gets_the_api_keys() -> None:
    """streamerd reads public market data and signs nothing: the keys file must not put the API
    secret into its environment (nor may any other setting name it)."""
    u = parse_unit("streamerd.service")
    assert "EnvironmentFile" not in u["Service"]
    assert not [v for values in u["Service"].values() for v in values if "keys" in v or "BINANCE_API" in v]


def test_hardening(unit):
    # What the settings do to the daemons is tested for real in test_systemd_sandbox.py
    # (address families, syscall filter, W^X) and by the exposure score below.
    _, u = unit
    expected = {
        "CapabilityBoundingSet": "",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectProc": "invisible",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
    }
    for key, value in expected.items():
        assert one(u, "Service", key) == value, key
    assert u["Service"]["SystemCallFilter"][0] == "@system-service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_security_exposure_stays_low(unit):
    name, _ = unit
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNITS_DIR / name)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) < 2.5, result.stdout


def test_ordering():
    naived = parse_unit("naived.service")["Unit"]
    assert one({"Unit": naived}, "Unit", "After").split() == ["network-online.target", "streamerd.service"]
    assert one({"Unit": naived}, "Unit", "Wants").split() == ["network-online.target", "streamerd.service"]
    streamerd = parse_unit("streamerd.service")["Unit"]
    assert "naived.service" not in " ".join(sum(streamerd.values(), []))


def _venv_script(name: str) -> Path:
    return Path(sys.executable).parent / name


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    for name in UNITS:
        script = _venv_script(name.removesuffix(".service"))
        if not script.exists():
            pytest.skip(f"{script} not installed (pip install -e . in this venv)")
        text = (UNITS_DIR / name).read_text()
        assert f"{INSTALLED_BIN}{script.name} " in text
        (tmp_path / name).write_text(text.replace(f"{INSTALLED_BIN}{script.name} ", f"{script} "))
    paths = [str(tmp_path / name) for name in UNITS]  # together, so After=/Wants= resolve
    result = subprocess.run(
        ["systemd-analyze", "verify", *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    ours = re.compile("|".join(re.escape(x) for x in (str(tmp_path), *UNITS)))
    complaints = [line for line in output.splitlines() if ours.search(line)]
    assert result.returncode == 0, output
    assert complaints == [], "\n".join(complaints)
