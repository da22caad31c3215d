"""Shared libraries a native binary needs and this machine lacks, named with the Debian package
that provides them.

Qt's xcb platform plugin and Playwright's browser driver fail on a bare Debian with messages
that hide the cause: Qt blames `libxcb-cursor0` for any missing library and aborts, and the
driver's node exits before Playwright can say more than "Connection closed while reading from
the driver". `ldd` names the libraries that are not found; this module turns that into a
sentence a user can act on. `lmvp-desktop` checks the xcb plugin before it creates its
QApplication; the web tests check the driver when it does not start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# Sonames the project's set-up has been seen to miss on a minimal Debian 12, and the package
# that provides each (the Makefile's APT_PACKAGES installs them all).
DEBIAN_PACKAGES = {
    "libatomic.so.1": "libatomic1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libdbus-1.so.3": "libdbus-1-3",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libwayland-client.so.0": "libwayland-client0",
    "libwayland-cursor.so.0": "libwayland-cursor0",
    "libwayland-egl.so.1": "libwayland-egl1",
}


def missing_libraries(binary: Path) -> list[str]:
    """The sonames `ldd` reports as "not found" for `binary`, in ldd's order.

    Returns an empty list when nothing is missing, and also when `ldd` itself is not there or
    cannot read the file (then there is nothing better to say than the original error).
    """
    ldd = shutil.which("ldd")
    if ldd is None or not binary.exists():
        return []
    try:
        result = subprocess.run(
            [ldd, str(binary)], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    missing: list[str] = []
    for line in result.stdout.splitlines():
        name, _, where = line.strip().partition("=>")
        if where.strip() == "not found" and name.strip() not in missing:
            missing.append(name.strip())
    return missing


def describe_missing(what: str, missing: list[str]) -> str:
    """A sentence naming the missing libraries of `what` and how to install them on Debian."""
    known = [DEBIAN_PACKAGES[name] for name in missing if name in DEBIAN_PACKAGES]
    unknown = [name for name in missing if name not in DEBIAN_PACKAGES]
    text = f"{what} cannot start: shared libraries not found: {', '.join(missing)}."
    if known:
        text += f" On Debian/Ubuntu: `apt-get install {' '.join(known)}`"
        text += " (`make setup` installs them)." if not unknown else ";"
    if unknown:
        text += f" `apt-file search {unknown[0]}` names the package that provides " + (
            "it." if len(unknown) == 1 else "each."
        )
    return text


def xcb_problem() -> str | None:
    """Why Qt's xcb platform plugin (a window on an X display) cannot load here, or None.

    Only looks when Qt would use xcb: QT_QPA_PLATFORM is unset with DISPLAY set, or names xcb.
    """
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform and not platform.startswith("xcb"):
        return None
    if not platform and (not os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return None
    import PySide6

    qt = Path(PySide6.__file__).parent / "Qt"
    missing: list[str] = []
    for binary in (qt / "plugins/platforms/libqxcb.so", qt / "lib/libQt6XcbQpa.so.6"):
        missing += [name for name in missing_libraries(binary) if name not in missing]
    if not missing:
        return None
    return describe_missing("The window (Qt's xcb platform plugin)", missing)
