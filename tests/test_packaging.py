"""The project's shape: the package boundaries of DESIGN.md and the console scripts."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> top-level modules it must never import (DESIGN.md, "The four packages").
FORBIDDEN = {
    "lmvp": {"lmvp_server", "lmvp_daemon", "lmvp_desktop", "PySide6", "watchdog", "fastapi"},
    "lmvp_server": {"lmvp", "lmvp_daemon", "lmvp_desktop", "PySide6"},
    "lmvp_daemon": {"lmvp_server", "lmvp_desktop", "PySide6"},
    "lmvp_desktop": {"lmvp_server"},
}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_boundary_allows(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_roots(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


# What lmvp offers the daemon and the desktop (and anyone): the names of `lmvp.__all__`, and
# these modules, whose names without a leading underscore (those of their `__all__`, if they
# have one) are public too. The list is the one in lmvp's package docstring.
PUBLIC_LMVP_MODULES = {
    "lmvp",
    "lmvp.cli",
    "lmvp.credentials",
    "lmvp.errors",
    "lmvp.history",
    "lmvp.private_files",
    "lmvp.refs",
    "lmvp.types",
}


def _lmvp_imports(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line, module, name) of each import of lmvp in `path`; name is None for `import x`."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lmvp":
                    yield node.lineno, alias.name, None
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == "lmvp"
        ):
            for alias in node.names:
                yield node.lineno, node.module, alias.name


def _private_use(module: str, name: str | None) -> str | None:
    """Why importing `name` from `module` reaches into lmvp's private parts (None: it does not)."""
    if name is not None and f"{module}.{name}" in PUBLIC_LMVP_MODULES:
        return None  # `from lmvp import errors`
    if module not in PUBLIC_LMVP_MODULES:
        return f"{module} is not a public module of lmvp"
    if name is None:
        return None
    exported = getattr(importlib.import_module(module), "__all__", None)
    if name.startswith("_") or (exported is not None and name not in exported):
        return f"{module}.{name} is not public (not in {module}.__all__)"
    return None


@pytest.mark.parametrize("package", ["lmvp_daemon", "lmvp_desktop"])
def test_daemon_and_desktop_use_only_the_public_api_of_lmvp(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        where = path.relative_to(ROOT)
        for line, module, name in _lmvp_imports(path):
            why = _private_use(module, name)
            if why:
                offenders.append(f"{where}:{line}: {why}")
        # A client's HTTP session is its own: `client.token`, `client.throttle` and the
        # client's methods are what others use.
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "http":
                offenders.append(f"{where}:{node.lineno}: reaches into a client's .http")
    assert not offenders, "\n".join(offenders)


def test_the_public_api_check_catches_private_names_and_modules() -> None:
    assert _private_use("lmvp", "Client") is None
    assert _private_use("lmvp", "errors") is None
    assert _private_use("lmvp.errors", "LMVPError") is None
    assert _private_use("lmvp.transfer", "upload_files") == (
        "lmvp.transfer is not a public module of lmvp"
    )
    assert _private_use("lmvp", "transfer") is not None
    assert _private_use("lmvp._http", None) == "lmvp._http is not a public module of lmvp"
    assert _private_use("lmvp.types", "_time") is not None
    assert _private_use("lmvp", "api") is not None  # a module, but not a public one


def test_importing_every_lmvp_module_loads_no_qt_watchdog_or_server_code() -> None:
    """What the parse above cannot see: a dependency that pulls one of them in. Every module
    of lmvp is imported in a fresh interpreter, which must then hold none of them."""
    forbidden = sorted(
        FORBIDDEN["lmvp"] | {"sqlalchemy", "alembic", "uvicorn", "starlette", "pyqtgraph"}
    )
    modules = sorted(
        "lmvp" if p.stem == "__init__" else f"lmvp.{p.stem}" for p in (ROOT / "lmvp").glob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(" + repr(forbidden) + ")))"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"importing lmvp loaded {result.stdout.strip()}"


def _lmvp_module_graph() -> dict[str, set[str]]:
    """Each module of lmvp and the lmvp modules it imports anywhere in it: inside functions
    and under TYPE_CHECKING too (a cycle hidden there is a cycle still). A package's own
    `__init__`, which Python runs before any of its modules, is not counted as imported by them."""
    paths = {
        ("lmvp" if p.stem == "__init__" else f"lmvp.{p.stem}"): p
        for p in sorted((ROOT / "lmvp").glob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in paths)
            elif isinstance(node, ast.ImportFrom):
                base = node.module if node.level == 0 else ".".join(["lmvp", node.module or ""])
                if not base or base.split(".")[0] != "lmvp":
                    continue
                for alias in node.names:
                    sub = f"{base.rstrip('.')}.{alias.name}"
                    deps.add(sub if sub in paths else base.rstrip("."))
        graph[name] = deps - {name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for dep in sorted(graph.get(node, ())):
            cycle = visit(dep, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_lmvp_modules_import_each_other_without_a_cycle() -> None:
    graph = _lmvp_module_graph()
    assert "lmvp.client" in graph["lmvp"] and "lmvp.fetch" in graph["lmvp.client"]

    cycle = _find_cycle(graph)

    assert cycle is None, "lmvp imports in a circle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("script", ["lmvp", "lmvp-server", "lmvp-daemon", "lmvp-desktop"])
def test_console_script_is_installed_and_runs(script: str) -> None:
    exe = shutil.which(script, path=str(Path(sys.executable).parent))
    assert exe, f"{script} is not installed next to {sys.executable}"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    # With every extra installed (as here), no script's check of its extra stands in the way.
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script}"), result.stdout


@pytest.fixture(scope="module")
def client_only_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with `pip install <this tree>`: the client alone, no extra, as the
    README's first install line does (pip takes the dependencies from its configured index)."""
    venv = tmp_path_factory.mktemp("client-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    install = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", ROOT],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    return venv


def test_a_client_only_install_has_the_client_and_none_of_the_extras(
    client_only_venv: Path,
) -> None:
    lmvp = subprocess.run(
        [client_only_venv / "bin" / "lmvp", "--help"], capture_output=True, text=True, timeout=60
    )
    assert lmvp.returncode == 0 and lmvp.stdout.startswith("usage: lmvp"), lmvp.stderr
    for module in ("fastapi", "sqlalchemy", "watchdog", "PySide6"):
        found = subprocess.run(
            [client_only_venv / "bin" / "python", "-c", f"import {module}"], capture_output=True
        )
        assert found.returncode != 0, f"{module} came with the client alone"


@pytest.mark.parametrize(
    ("script", "extra", "missing"),
    [
        ("lmvp-server", "server", "fastapi"),
        ("lmvp-daemon", "daemon", "watchdog"),
        ("lmvp-desktop", "desktop", "PySide6-Essentials"),
    ],
)
def test_a_script_whose_extra_is_missing_says_how_to_install_it(
    client_only_venv: Path, script: str, extra: str, missing: str
) -> None:
    result = subprocess.run(
        [client_only_venv / "bin" / script, "--help"], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"{script} needs the {extra} extra of lmvp"), result.stderr
    assert f"pip install '.[{extra}]'" in result.stderr
    assert missing.lower() in result.stderr.lower()  # as the metadata spells it
    if script == "lmvp-desktop":  # the app embeds the daemon: its extra comes along
        assert "watchdog" in result.stderr


def test_server_listens_on_loopback_unless_told_otherwise() -> None:
    from lmvp_server.settings import Settings

    assert Settings(_env_file=None).host == "127.0.0.1"
