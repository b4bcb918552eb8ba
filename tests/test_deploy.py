"""deploy/tidings.service: a unit systemd accepts, running a `tidings serve` that parses.

`systemd-analyze verify` (Debian's systemd package, ./run's DEBIAN_PACKAGES) loads the
unit as systemd would and reports unknown keys, bad values and a missing ExecStart binary.
The unit names the binary of its install (/opt/tidings/bin/tidings); the test verifies a
copy whose ExecStart points at an executable it creates, and nothing else changed.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from tidings.cli import build_parser

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "tidings.service"
INSTALLED_BINARY = "/opt/tidings/bin/tidings"


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of ``unit_text`` with ExecStart's binary made to exist."""
    binary = tmp_path / "bin" / "tidings"
    binary.parent.mkdir(exist_ok=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    assert unit_text.count(INSTALLED_BINARY) == 1
    unit = tmp_path / "tidings.service"
    unit.write_text(unit_text.replace(INSTALLED_BINARY, str(binary)))
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_systemd_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    result = verify(UNIT.read_text(), tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_verification_catches_a_mistake(tmp_path: Path) -> None:
    """What the test above relies on: a typo or a bad value is reported."""
    text = UNIT.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    text = text.replace("ProtectSystem=strict", "ProtectSystem=stricter")
    result = verify(text, tmp_path)
    assert "Unknown key 'NoNewPrivilege'" in result.stderr
    assert "stricter" in result.stderr


def test_the_unit_runs_tidings_serve_as_its_own_user_hardened_and_restarted() -> None:
    found = directives(UNIT.read_text())
    command = shlex.split(found["ExecStart"][0])
    assert command[:2] == [INSTALLED_BINARY, "serve"]
    args = build_parser().parse_args(command[1:])  # every option exists and parses
    assert (args.host, args.port) == ("127.0.0.1", 9908)
    assert found["User"] == ["tidings"] and found["Group"] == ["tidings"]
    assert found["EnvironmentFile"] == ["/etc/tidings/tidings.env"]
    assert found["Restart"] == ["on-failure"]
    assert int(found["LimitNOFILE"][0]) >= 65536
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert found[key] == [value], key
