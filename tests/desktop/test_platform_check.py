"""The messages for native binaries that cannot start: they name the missing shared library and
the Debian package, where Qt and Playwright would hide the cause."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lmvp_desktop.platform_check import describe_missing, missing_libraries, xcb_problem


def binary_needing(tmp_path: Path, soname: str) -> Path:
    """A copy of /usr/bin/true whose libc dependency is renamed to `soname` (same length), so
    the dynamic loader really cannot find it."""
    original = Path(shutil.which("true") or "/usr/bin/true").read_bytes()
    assert len(soname) == len("libc.so.6")
    patched = original.replace(b"libc.so.6\0", soname.encode() + b"\0")
    assert patched != original, "this machine's `true` does not name libc.so.6"
    path = tmp_path / "needs-lib"
    path.write_bytes(patched)
    path.chmod(0o755)
    return path


@pytest.mark.skipif(shutil.which("ldd") is None, reason="ldd is not installed")
def test_names_the_shared_library_the_loader_cannot_find(tmp_path: Path) -> None:
    assert missing_libraries(binary_needing(tmp_path, "libq.so.6")) == ["libq.so.6"]
    assert missing_libraries(Path(shutil.which("true") or "/usr/bin/true")) == []
    assert missing_libraries(tmp_path / "no-such-binary") == []


def test_message_names_the_debian_package_for_a_known_library() -> None:
    text = describe_missing("Playwright's browser driver (/x/node)", ["libatomic.so.1"])
    assert "libatomic.so.1" in text
    assert "apt-get install libatomic1" in text
    assert text.startswith("Playwright's browser driver (/x/node) cannot start")


def test_message_says_how_to_find_the_package_of_an_unknown_library() -> None:
    text = describe_missing("The window", ["libxcb-icccm.so.4", "libq.so.6"])
    assert "apt-get install libxcb-icccm4" in text
    assert "apt-file search libq.so.6" in text


def test_xcb_is_only_checked_when_qt_would_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert xcb_problem() is None
    monkeypatch.delenv("QT_QPA_PLATFORM")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert xcb_problem() is None


def test_xcb_plugin_loads_here_once_make_setup_installed_its_libraries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `make setup` installs every library the plugin needs (APT_PACKAGES): nothing is missing.
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    assert xcb_problem() is None
