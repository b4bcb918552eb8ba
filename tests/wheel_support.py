"""The package as a user gets it: built, installed into a virtualenv outside the checkout.

The session fixture ``installed_wheel`` copies the files git would commit (tracked and
untracked, not ignored: no stale build/ or *.egg-info, whose SOURCES.txt setuptools would
reuse) to a temporary directory, builds there the sdist and, from it, the wheel (so both
are checked) with the repository's pinned uv (.tools/uv, bootstrapped by ./run), creates
a virtualenv in a temporary directory, installs the runtime dependencies exactly as
uv.lock pins them (``uv export --no-dev --no-emit-project``, hashes required) and then the
wheel alone (``--no-deps``). Its ``program`` starts that virtualenv's ``tidings`` script
from a directory outside the checkout, with no PYTHONPATH, VIRTUAL_ENV or TIDINGS_*
variable, so nothing of the checkout (src/, node_modules/) can leak in.

    def test_x(installed_wheel):
        with running_node(log_dir, program=installed_wheel.program) as node: ...
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from .sockjs_support import Program

ROOT = Path(__file__).resolve().parent.parent
UV = ROOT / ".tools" / "uv" / "bin" / "uv"
STEP_TIMEOUT = 300.0
LEAKY_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")


@dataclass(frozen=True)
class InstalledWheel:
    wheel: Path
    sdist: Path
    venv: Path
    workdir: Path  # outside the checkout: the server's cwd
    timings: dict[str, float]  # seconds per step, for the test report

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def program(self) -> Program:
        env = {
            name: value
            for name, value in os.environ.items()
            if name not in LEAKY_VARIABLES and not name.startswith("TIDINGS_")
        }
        return Program(command=(str(self.venv / "bin" / "tidings"),), cwd=self.workdir, env=env)


def _copy_sources(dest: Path) -> None:
    """Copy what ``git add -A`` would take (tracked and new files, not ignored ones)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for relative in filter(None, listed.split("\0")):
        source = ROOT / relative
        if source.is_file():  # a deleted, not yet committed file is still listed
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / relative)


def _run(command: Sequence[str | Path], *, cwd: Path) -> None:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"},
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}")


def install_wheel(base: Path) -> InstalledWheel:
    """Build, create the virtualenv and install, under ``base`` (outside the checkout)."""
    if not UV.exists():
        pytest.fail(f"{UV} missing: run ./run setup")
    if base.resolve().is_relative_to(ROOT):
        pytest.fail(f"{base} is inside the checkout; the wheel must be tried outside it")
    dist, venv, workdir, sources = base / "dist", base / "venv", base / "cwd", base / "src"
    workdir.mkdir()
    timings: dict[str, float] = {}
    started = time.monotonic()
    _copy_sources(sources)
    timings["copy"] = time.monotonic() - started
    steps: list[tuple[str, list[str | Path], Path]] = [
        # Without --sdist/--wheel: the sdist first, then the wheel built from the sdist.
        ("build", [UV, "build", "--quiet", "--out-dir", dist], sources),
        ("venv", [UV, "venv", "--quiet", "--python", "python3", venv], workdir),
        (
            "export",
            [
                *(UV, "export", "--quiet", "--frozen", "--no-dev", "--no-emit-project"),
                *("--format", "requirements-txt", "--output-file", base / "requirements.txt"),
            ],
            ROOT,
        ),
    ]
    for name, command, cwd in steps:
        started = time.monotonic()
        _run(command, cwd=cwd)
        timings[name] = time.monotonic() - started
    (wheel,) = dist.glob("tidings-*.whl")
    (sdist,) = dist.glob("tidings-*.tar.gz")
    python = venv / "bin" / "python"
    started = time.monotonic()
    pip = [UV, "pip", "install", "--quiet", "--python", python]
    _run([*pip, "--require-hashes", "-r", base / "requirements.txt"], cwd=workdir)
    _run([*pip, "--no-deps", wheel], cwd=workdir)
    timings["install"] = time.monotonic() - started
    return InstalledWheel(wheel, sdist, venv, workdir, timings)


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    return install_wheel(tmp_path_factory.mktemp("wheel"))
