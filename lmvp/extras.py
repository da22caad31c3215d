"""The optional parts of the `lmvp` distribution, and the console scripts that need them.

One distribution carries the four packages, so a client-only install (`pip install .`) has the
`lmvp-server`, `lmvp-daemon` and `lmvp-desktop` scripts too, while their dependencies come only
with the extra of the same name (`pip install '.[server]'`). Those scripts start here: each
checks that its extra is installed before its package is imported, so that a client-only install
answers with the line to run instead of a `ModuleNotFoundError` traceback. The extras' contents
are read from the installed distribution's metadata, so `pyproject.toml` stays the only list.

This module imports none of the other packages: a script's own CLI is imported by name, and
only once its extra is there.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys

DISTRIBUTION = "lmvp"
EXIT_MISSING_EXTRA = 2  # a usage error, as in every LMVP command: the install is incomplete

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def missing_requirements(extra: str) -> list[str]:
    """The distributions that `extra` needs and this environment lacks, in the order the
    metadata lists them (an extra that includes another, as `desktop` includes `daemon`,
    needs that one's too). Empty when `lmvp` itself is not installed (running from a source
    tree), since there is nothing to read then."""
    try:
        requires = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    missing: list[str] = []
    _collect_missing(requires, extra, missing, seen=set())
    return missing


def install_hint(extra: str) -> str:
    """How to install `extra`: from a clone of LMVP, or from a package index that has it."""
    return (
        f"from a clone of LMVP: pip install '.[{extra}]'; where a package index has lmvp: "
        f"pip install 'lmvp[{extra}]'"
    )


def server() -> int:
    """`lmvp-server`."""
    return _launch("lmvp-server", "server", "lmvp_server.cli")


def daemon() -> int:
    """`lmvp-daemon`."""
    return _launch("lmvp-daemon", "daemon", "lmvp_daemon.cli")


def desktop() -> int:
    """`lmvp-desktop`."""
    return _launch("lmvp-desktop", "desktop", "lmvp_desktop.app")


def _launch(command: str, extra: str, module: str) -> int:
    missing = missing_requirements(extra)
    if missing:
        print(
            f"{command} needs the {extra} extra of lmvp, which is not installed here (missing: "
            f"{', '.join(missing)}).\nInstall it {install_hint(extra)}",
            file=sys.stderr,
        )
        return EXIT_MISSING_EXTRA
    return int(importlib.import_module(module).main())


def _collect_missing(requires: list[str], extra: str, missing: list[str], seen: set[str]) -> None:
    seen.add(extra)
    for requirement in requires:
        requirement_spec, _, marker = requirement.partition(";")
        if extra not in _EXTRA_MARKER.findall(marker):
            continue
        match = _NAME.match(requirement_spec)
        if match is None:
            continue
        name, extras = match.group(1), match.group(2)
        if _canonical(name) == DISTRIBUTION:  # `lmvp[daemon]`: an extra that includes another
            for included in (e.strip() for e in (extras or "").split(",")):
                if included and included not in seen:
                    _collect_missing(requires, included, missing, seen)
            continue
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            if name not in missing:
                missing.append(name)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
