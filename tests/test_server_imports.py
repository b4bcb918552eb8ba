"""The modules under tidings/server/ are handed what they need, never the ``Server``.

Only app.py, which builds the ``Server``, may import tidings.server.app: a module that
imports it (even under TYPE_CHECKING, to call back into the server) makes an import cycle
and a dependency on everything the server holds (issue 14 item 1; STYLE.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import tidings.server

SERVER_DIR = Path(tidings.server.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (TYPE_CHECKING blocks, functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_under_server_but_app_imports_the_server() -> None:
    modules = sorted(SERVER_DIR.glob("*.py"))
    assert len(modules) > 5  # the directory was found
    importers = [
        path.name
        for path in modules
        if path.name != "app.py" and "tidings.server.app" in imported_modules(path)
    ]
    assert importers == []


def test_the_trust_module_does_no_io() -> None:
    """tidings.trust is sans-I/O: it answers from values, so it imports neither."""
    imported = imported_modules(SERVER_DIR.parent / "trust.py")
    assert not {name.split(".")[0] for name in imported} & {"aiohttp", "asyncio"}
