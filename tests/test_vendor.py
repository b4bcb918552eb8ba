"""The browser bundles the package ships under src/tidings/server/static/vendor/.

They must be the very files package-lock.json pins (so a lock bump that forgets
``./run vendor`` fails here), manifest.json must say truly what each one is, and
THIRD_PARTY_NOTICES must carry every license text. These checks read node_modules,
package-lock.json and the committed files directly; the last ones run tools/vendor_js.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tidings.server.app import VENDOR_DIR, VENDOR_FILES

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
SCRIPT = ROOT / "tools" / "vendor_js.py"


def manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VENDOR_DIR / "manifest.json").read_text())
    return data


def entries() -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = manifest()["files"]
    return files


def lock_entry(package: str) -> dict[str, Any]:
    lock = json.loads((ROOT / "package-lock.json").read_text())
    entry: dict[str, Any] = lock["packages"][f"node_modules/{package}"]
    return entry


def test_the_served_files_are_the_manifest_and_the_directory() -> None:
    listed = {entry["file"] for entry in entries()}
    on_disk = {path.name for path in VENDOR_DIR.iterdir()} - {"manifest.json"}
    assert listed == on_disk == VENDOR_FILES == {"stomp.umd.min.js", "sockjs.min.js"}


@pytest.mark.parametrize("entry", entries(), ids=lambda entry: entry["file"])
def test_vendored_file_is_the_locked_npm_release(entry: dict[str, Any]) -> None:
    committed = (VENDOR_DIR / entry["file"]).read_bytes()
    assert hashlib.sha256(committed).hexdigest() == entry["sha256"]
    locked = lock_entry(entry["package"])
    assert entry["version"] == locked["version"], "package-lock.json moved: run ./run vendor"
    assert entry["integrity"] == locked["integrity"]
    assert entry["license"] == locked["license"]
    package = NODE_MODULES / entry["package"]
    installed = json.loads((package / "package.json").read_text())
    assert installed["version"] == locked["version"], "node_modules is stale: run ./run setup"
    assert entry["source"].startswith(f"node_modules/{entry['package']}/")
    assert committed == (ROOT / entry["source"]).read_bytes(), "run ./run vendor"


def test_notices_carry_every_license_text() -> None:
    notices = (ROOT / "THIRD_PARTY_NOTICES").read_text()
    packages = [e["package"] for e in entries()]
    packages += [embedded["package"] for e in entries() for embedded in e["embeds"]]
    assert "inherits" in packages and "url-parse" in packages
    for package in packages:
        license_file = next((NODE_MODULES / package).glob("[Ll][Ii][Cc][Ee][Nn][Ss][Ee]*"))
        assert license_file.read_text().strip() in notices, package
    for entry in entries():
        assert f"{entry['package']} {entry['version']} ({entry['license']})" in notices


def test_vendor_script_agrees_with_the_committed_files() -> None:
    check = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr


def test_vendor_script_notices_a_stale_copy_and_refreshes_it(tmp_path: Path) -> None:
    """In a copy of the files the script reads and writes: tamper, --check fails, refresh."""
    vendor = tmp_path / VENDOR_DIR.relative_to(ROOT)
    shutil.copytree(VENDOR_DIR, vendor)
    (tmp_path / "tools").mkdir()
    for name in ("tools/vendor_js.py", "package-lock.json", "THIRD_PARTY_NOTICES"):
        shutil.copyfile(ROOT / name, tmp_path / name)
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    (vendor / "sockjs.min.js").write_bytes(b"/* an older release */")
    script = [sys.executable, str(tmp_path / "tools" / "vendor_js.py")]

    check = subprocess.run([*script, "--check"], capture_output=True, text=True, check=False)
    assert check.returncode == 1
    assert "static/vendor/sockjs.min.js is not what ./run vendor would write" in check.stderr
    assert "stomp.umd.min.js" not in check.stderr

    subprocess.run(script, capture_output=True, check=True)
    assert (vendor / "sockjs.min.js").read_bytes() == (VENDOR_DIR / "sockjs.min.js").read_bytes()
    recheck = subprocess.run([*script, "--check"], capture_output=True, text=True, check=False)
    assert recheck.returncode == 0, recheck.stderr

    # A package-lock.json bump that node_modules does not have yet: refused, not copied.
    lock_path = tmp_path / "package-lock.json"
    lock = json.loads(lock_path.read_text())
    lock["packages"]["node_modules/sockjs-client"]["version"] = "1.6.2"
    lock_path.write_text(json.dumps(lock))
    bumped = subprocess.run(script, capture_output=True, text=True, check=False)
    assert bumped.returncode == 1
    assert "node_modules holds sockjs-client 1.6.1, package-lock.json pins 1.6.2" in bumped.stderr
