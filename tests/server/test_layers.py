"""The server's layers, read from its imports: routers and web pages call the service layer,
never each other, and services know nothing of HTTP frameworks (issue 13)."""

from __future__ import annotations

import ast
from pathlib import Path

import lmvp_server

PACKAGE = Path(lmvp_server.__file__).parent


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module `path` imports, anywhere in it (functions and TYPE_CHECKING included),
    relative imports resolved against its `package`, and `from a import b` counted as both `a`
    and `a.b`."""
    if package is None:
        package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules_of(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


def offending(
    paths: list[Path], refused: tuple[str, ...], package: str | None = None
) -> dict[str, list[str]]:
    out = {}
    for path in paths:
        bad = sorted(
            name
            for name in imported_modules(path, package)
            if any(name == r or name.startswith(f"{r}.") for r in refused)
        )
        if bad:
            out[path.name] = bad
    return out


def test_the_web_console_never_imports_a_router() -> None:
    assert modules_of("web"), "no web modules found: has the package moved?"
    assert offending(modules_of("web"), ("lmvp_server.routers",)) == {}


def test_no_router_imports_another_router() -> None:
    routers = [p for p in modules_of("routers") if p.name != "__init__.py"]
    assert len(routers) >= 8
    found = {}
    for path in routers:
        others = tuple(f"lmvp_server.routers.{p.stem}" for p in routers if p != path)
        bad = sorted(
            name
            for name in imported_modules(path)
            if name in others or any(name.startswith(f"{o}.") for o in others)
        )
        if bad:
            found[path.name] = bad
    assert found == {}


def test_services_import_no_web_framework() -> None:
    services = modules_of("services")
    assert len(services) >= 8
    assert offending(services, ("fastapi", "starlette")) == {}


def test_the_check_sees_what_it_refuses(tmp_path: Path) -> None:
    """The checks above would pass on a parser that saw nothing: show that it sees each form."""
    assert "lmvp_server.services" in imported_modules(PACKAGE / "web" / "pages.py")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    from fastapi import Request\n    from .. import routers\n"
        "    from . import access\n"
    )
    found = imported_modules(probe, "lmvp_server.services")
    assert {"fastapi.Request", "lmvp_server.routers", "lmvp_server.services.access"} <= found
    assert offending([probe], ("fastapi",), "lmvp_server.services") == {
        "probe.py": ["fastapi", "fastapi.Request"]
    }
