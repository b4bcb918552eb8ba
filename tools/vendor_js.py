"""Copy the browser bundles the server serves from node_modules into the package.

    ./run vendor                          (npm ci if needed, then this script)
    python3 tools/vendor_js.py [--check]

Tidings serves ``/vendor/stomp.umd.min.js`` (the demo page) and ``/vendor/sockjs.min.js``
(the SockJS ``iframe-*`` transports' page) from ``src/tidings/server/static/vendor/``, so a
wheel works without node_modules. This script copies both files byte for byte from the
npm packages that package-lock.json pins, and rewrites beside them ``manifest.json`` (each
file's npm package, version, license, sha256 and the packages its bundle embeds) and the
repository's ``THIRD_PARTY_NOTICES`` (their license texts, shipped in the wheel).

``--check`` writes nothing and exits 1 naming what differs: tests/test_vendor.py runs it,
so a package-lock.json bump without ``./run vendor`` fails the suite. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR_DIR = ROOT / "src" / "tidings" / "server" / "static" / "vendor"
MANIFEST = VENDOR_DIR / "manifest.json"
NOTICES = ROOT / "THIRD_PARTY_NOTICES"
LICENSE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "license", "license.md")


@dataclass(frozen=True)
class Bundle:
    file: str  # its name under static/vendor/ and /vendor/
    package: str  # the npm package it comes from
    path: str  # its path inside that package
    # npm packages the bundle itself contains (sockjs-client's dist is a browserify bundle;
    # the list is its source map's node_modules/ entries).
    embeds: tuple[str, ...] = ()


BUNDLES = (
    Bundle("stomp.umd.min.js", "@stomp/stompjs", "bundles/stomp.umd.min.js"),
    Bundle(
        "sockjs.min.js",
        "sockjs-client",
        "dist/sockjs.min.js",
        embeds=("inherits", "querystringify", "requires-port", "url-parse"),
    ),
)

# browserify's module loader, also in sockjs.min.js; browser-pack is not in node_modules.
BROWSER_PACK_NOTE = """\
sockjs.min.js also begins with browserify's module loader prelude, from browser-pack
(https://github.com/browserify/browser-pack), by James Halliday, released under the MIT
license (the same terms as the MIT license texts above)."""


class VendorError(Exception):
    """node_modules does not hold what package-lock.json pins."""


def package_dir(package: str) -> Path:
    return ROOT / "node_modules" / package


def locked(package: str) -> dict[str, str]:
    """package-lock.json's entry for ``package``: version, integrity, license."""
    lock = json.loads((ROOT / "package-lock.json").read_text())
    entry: dict[str, str] | None = lock["packages"].get(f"node_modules/{package}")
    if entry is None:
        raise VendorError(f"package-lock.json does not pin {package}")
    return entry


def installed(package: str) -> dict[str, str]:
    """node_modules/<package>/package.json, checked against package-lock.json's pin."""
    manifest_path = package_dir(package) / "package.json"
    if not manifest_path.is_file():
        raise VendorError(f"{manifest_path} missing: run ./run setup")
    meta: dict[str, str] = json.loads(manifest_path.read_text())
    pinned = locked(package)["version"]
    if meta["version"] != pinned:
        raise VendorError(
            f"node_modules holds {package} {meta['version']}, package-lock.json pins {pinned}:"
            " run ./run setup"
        )
    return meta


def license_text(package: str) -> str:
    for name in LICENSE_NAMES:
        path = package_dir(package) / name
        if path.is_file():
            return path.read_text().strip()
    raise VendorError(f"no license file in node_modules/{package}")


def manifest() -> dict[str, object]:
    files = []
    for bundle in BUNDLES:
        meta = installed(bundle.package)
        data = (package_dir(bundle.package) / bundle.path).read_bytes()
        files.append(
            {
                "file": bundle.file,
                "package": bundle.package,
                "version": meta["version"],
                "license": meta["license"],
                "source": f"node_modules/{bundle.package}/{bundle.path}",
                "sha256": hashlib.sha256(data).hexdigest(),
                "integrity": locked(bundle.package)["integrity"],
                "embeds": [
                    {"package": name, "license": installed_license(name)} for name in bundle.embeds
                ],
            }
        )
    return {
        "about": "Browser bundles served under /vendor/, copied from node_modules by"
        " tools/vendor_js.py (./run vendor); license texts in THIRD_PARTY_NOTICES.",
        "files": files,
    }


def installed_license(package: str) -> str:
    meta: dict[str, str] = json.loads((package_dir(package) / "package.json").read_text())
    return meta["license"]


def notices() -> str:
    parts = [
        "Third-party software shipped with Tidings",
        "",
        "The Tidings package serves these JavaScript bundles to browsers, from",
        "src/tidings/server/static/vendor/ (manifest.json there records their versions and",
        "sha256). Written by tools/vendor_js.py; do not edit by hand.",
    ]
    for bundle in BUNDLES:
        meta = installed(bundle.package)
        parts += [
            "",
            "=" * 78,
            f"{bundle.package} {meta['version']} ({meta['license']})",
            f"shipped as vendor/{bundle.file} ({bundle.path} of the npm package)",
            "=" * 78,
            "",
            license_text(bundle.package),
        ]
        for name in bundle.embeds:
            parts += [
                "",
                "-" * 78,
                f"{name} ({installed_license(name)}), embedded in vendor/{bundle.file};"
                f" license text from the npm package {name}",
                "-" * 78,
                "",
                license_text(name),
            ]
    parts += ["", "-" * 78, BROWSER_PACK_NOTE]
    return "\n".join(parts) + "\n"


def wanted() -> dict[Path, bytes]:
    """Every file this script owns, with the content it should have."""
    files = {VENDOR_DIR / b.file: (package_dir(b.package) / b.path).read_bytes() for b in BUNDLES}
    files[MANIFEST] = (json.dumps(manifest(), indent=2) + "\n").encode()
    files[NOTICES] = notices().encode()
    return files


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print("usage: tools/vendor_js.py [--check]", file=sys.stderr)
        return 2
    try:
        files = wanted()
    except VendorError as error:
        print(f"vendor_js: {error}", file=sys.stderr)
        return 1
    stale = [p for p, data in files.items() if not p.is_file() or p.read_bytes() != data]
    extra = sorted(set(VENDOR_DIR.iterdir()) - set(files)) if VENDOR_DIR.is_dir() else []
    if check:
        for path in [*stale, *extra]:
            print(
                f"vendor_js: {path.relative_to(ROOT)} is not what ./run vendor would write",
                file=sys.stderr,
            )
        return 1 if stale or extra else 0
    VENDOR_DIR.mkdir(parents=True, exist_ok=True)
    for path in extra:
        path.unlink()
    for path in stale:
        path.write_bytes(files[path])
        print(f"vendor_js: wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
