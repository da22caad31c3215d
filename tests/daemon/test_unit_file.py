"""resources/lmvp-daemon.service: a systemd user unit that starts `lmvp-daemon run` from the
user's ~/.local/bin, restarts it on failure and reads LMVP_SERVER from an optional file."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "resources" / "lmvp-daemon.service"


def read_unit() -> configparser.ConfigParser:
    # systemd keys are case-sensitive and may repeat (ExecStart= resets); strict=False keeps
    # the last, which is what systemd uses too.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_runs_the_daemon_as_a_user_service_restarted_on_failure() -> None:
    unit = read_unit()
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["ExecStart"] == "%h/.local/bin/lmvp-daemon run"
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"] == "-%h/.config/lmvp/daemon.env"  # optional file
    # A user unit: started with the user's session (or lingering), not multi-user.target.
    assert unit["Install"]["WantedBy"] == "default.target"
    assert "User" not in service
    assert "venv" in UNIT.read_text()  # how to point it at a virtualenv is documented


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: give it a home with ~/.local/bin/lmvp-daemon.
    home = tmp_path / "home"
    script = home / ".local" / "bin" / "lmvp-daemon"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    runtime = tmp_path / "runtime"  # a user manager needs XDG_RUNTIME_DIR, even to verify
    runtime.mkdir(mode=0o700)
    unit = tmp_path / "lmvp-daemon.service"
    shutil.copy(UNIT, unit)
    result = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(unit)],
        env=dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(runtime)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "lmvp-daemon.service" in line
    ]
    if result.returncode != 0 and not problems:
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr.strip()[:300]}")
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
