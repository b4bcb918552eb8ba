"""User-facing text names Spring's contract, never "the seed" (an internal name a user
cannot know): the CLI help, the OpenAPI document, the demo page, README and docs/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tidings.cli import build_parser
from tidings.server.app import STATIC_DIR
from tidings.server.openapi import openapi_document

ROOT = Path(__file__).resolve().parent.parent
SEED = re.compile(r"\bseed", re.IGNORECASE)


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = capsys.readouterr().out
    assert "--legacy-channel" in help_text and "Spring Boot service" in help_text
    assert not SEED.search(help_text)


def test_openapi_document() -> None:
    text = json.dumps(openapi_document(version="1"), ensure_ascii=False)
    assert "Spring's contract" in text
    assert not SEED.search(text)


@pytest.mark.parametrize(
    "path",
    [ROOT / "README.md", STATIC_DIR / "index.html", *sorted((ROOT / "docs").glob("*.md"))],
    ids=lambda path: path.name,
)
def test_documents(path: Path) -> None:
    assert not SEED.search(path.read_text()), path
