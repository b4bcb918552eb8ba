"""The built package on its own: what the wheel and sdist hold, and that an installed wheel
serves the demo page and the browser bundles from itself.

The browser side (every SockJS transport and the demo page in Chromium against the
installed wheel) is tests/test_sockjs_browser.py's ``wheel`` half; the build and install
are tests/wheel_support.py's ``installed_wheel``.
"""

from __future__ import annotations

import re
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tidings.server.app import STATIC_DIR, VENDOR_DIR, VENDOR_FILES

from .sockjs_support import Node, running_node
from .wheel_support import ROOT, InstalledWheel

SHIPPED = sorted(
    path.relative_to(STATIC_DIR.parent.parent).as_posix()
    for path in STATIC_DIR.rglob("*")
    if path.is_file()
)


def test_wheel_holds_the_static_files_and_the_licenses(installed_wheel: InstalledWheel) -> None:
    with zipfile.ZipFile(installed_wheel.wheel) as wheel:
        names = set(wheel.namelist())
        for relative in SHIPPED:
            assert (
                wheel.read(f"tidings/{relative}")
                == (STATIC_DIR.parent.parent / relative).read_bytes()
            )
        licenses = {n.split("/licenses/", 1)[1] for n in names if "/licenses/" in n}
        assert licenses == {"LICENSE", "THIRD_PARTY_NOTICES"}
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        text = wheel.read(metadata).decode()
    assert "tidings/server/static/vendor/sockjs.min.js" in names
    assert "tidings/server/static/vendor/stomp.umd.min.js" in names
    assert "tidings/inbox/pg_migrations/0001_inbox.sql" in names  # tidings migrate reads it
    assert "License-Expression: MIT" in text
    assert "License-File: THIRD_PARTY_NOTICES" in text


def test_sdist_holds_them_too(installed_wheel: InstalledWheel) -> None:
    with tarfile.open(installed_wheel.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"LICENSE", "THIRD_PARTY_NOTICES", "pyproject.toml"} <= names
    assert {f"src/tidings/{relative}" for relative in SHIPPED} <= names


@pytest.fixture(scope="module")
def wheel_node(
    installed_wheel: InstalledWheel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    log_dir = tmp_path_factory.mktemp("wheel-node")
    with running_node(log_dir, "--log-level", "debug", program=installed_wheel.program) as node:
        yield node


async def test_installed_wheel_serves_the_page_and_bundles(wheel_node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(wheel_node.url("/")) as reply:
            assert reply.status == 200
            assert 'from "/tidings.js"' in await reply.text()
        async with http.get(wheel_node.url("/tidings.js")) as reply:
            assert reply.status == 200
            assert await reply.read() == (STATIC_DIR / "tidings.js").read_bytes()
        for name in sorted(VENDOR_FILES):
            async with http.get(wheel_node.url(f"/vendor/{name}")) as reply:
                assert reply.status == 200, name
                assert await reply.read() == (VENDOR_DIR / name).read_bytes()
        async with http.get(wheel_node.url("/stomp/iframe.html")) as reply:
            assert reply.status == 200
            assert '<script src="/vendor/sockjs.min.js"></script>' in await reply.text()


def test_the_server_runs_the_installed_wheel(
    wheel_node: Node, installed_wheel: InstalledWheel
) -> None:
    """The process is the virtualenv's, in a directory outside the checkout, and the
    package it imported is the installed one (the start-up debug line says where from)."""
    venv = installed_wheel.venv.resolve()
    pid = wheel_node.proc.pid
    assert Path(f"/proc/{pid}/cwd").resolve() == installed_wheel.workdir.resolve()
    assert not installed_wheel.workdir.resolve().is_relative_to(ROOT)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert Path(cmdline[1].decode()).resolve() == venv / "bin" / "tidings"
    match = re.search(r"tidings \S+ from (\S+)", wheel_node.log())
    assert match is not None, wheel_node.log()
    package = Path(match[1])
    assert package.is_relative_to(venv) and package.parent.name == "site-packages", package
    # The compiled dependencies come from the virtualenv too, none from the checkout's .venv.
    mapped = Path(f"/proc/{pid}/maps").read_text()
    libraries = set(re.findall(r"(/\S+\.so)\b", mapped))
    assert any(lib.startswith(str(venv)) and "orjson" in lib for lib in libraries), libraries
    assert not any(lib.startswith(str(ROOT)) for lib in libraries), libraries
