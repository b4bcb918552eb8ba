"""The API document for people: as YAML, and rendered by /api/v1/docs in Chromium."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
import yaml

from tidings.server.openapi import openapi_document
from tidings.server.openapi_yaml import to_yaml

from .browser import Browser
from .sockjs_support import Node, node_fixture

node = node_fixture("api-docs")


@pytest.mark.parametrize(
    "value",
    [
        {},
        [],
        "text",
        None,
        {"a": [], "b": {}, "c": [[1, [2, {}]], {"x": {"y": [{"z": True, "w": []}]}}]},
        {"\u2028key": 'line\nbreak\u2028, NUL\x00, tab\t, é, "quote" and \\', "n": -3},
        [{"a": 1, "b": 2}, {"c": {"d": None}}, "- not a list", "key: not a map", "#no comment"],
    ],
)
def test_yaml_reads_back_as_the_same_data(value: object) -> None:
    assert yaml.safe_load(to_yaml(value)) == value


async def test_the_yaml_document_is_the_json_one(node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(node.url("/api/v1/openapi.yaml")) as answer:
            assert answer.status == 200
            assert answer.content_type == "application/yaml"
            from_yaml = yaml.safe_load(await answer.text())
        async with http.get(node.url("/api/v1/openapi.json")) as answer:
            from_json = await answer.json()
    assert from_yaml == from_json == openapi_document(version=from_json["info"]["version"])


async def test_the_docs_page_renders_every_operation(node: Node, tmp_path: Path) -> None:
    browser = await Browser.start(tmp_path / "profile")
    try:
        await browser.goto(node.url("/api/v1/docs"))
        await browser.wait("document.body.dataset.rendered === 'true'")
        rendered = await browser.eval(
            "[...document.querySelectorAll('section.operation')].map((s) => s.id)"
        )
        error_shown = await browser.eval("!document.getElementById('error').hidden")
        statuses = await browser.eval(
            "document.querySelectorAll('#publishToUser tr.response').length"
        )
    finally:
        await browser.close()
    doc = openapi_document(version="0")
    operation_ids = [
        op["operationId"] for methods in doc["paths"].values() for op in methods.values()
    ]
    assert sorted(rendered) == sorted(operation_ids)
    assert not error_shown
    assert statuses == len(doc["paths"]["/api/v1/users/{user}/messages"]["post"]["responses"])
