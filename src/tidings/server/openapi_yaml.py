"""The OpenAPI document as YAML (``/api/v1/openapi.yaml``), without a YAML library.

Only what a JSON document holds is written: mappings and sequences in block style, and
every scalar as JSON text. That is YAML too: a JSON string with ASCII escapes is a YAML
double-quoted scalar (YAML 1.2 §7.3.1 has every JSON escape), and ``true``, ``false``,
``null`` and JSON numbers are YAML's core-schema scalars (§10.3). Keys are quoted the same
way, so no key is read as anything but a string.
"""

from __future__ import annotations

import json


def to_yaml(value: object) -> str:
    """``value`` (JSON data: dict, list, str, int, float, bool, None) as a YAML document."""
    return "".join(_lines(value, "")) if _is_block(value) else _scalar(value) + "\n"


def _lines(value: object, indent: str) -> list[str]:
    """The block lines of a non-empty mapping or sequence, each ending in a newline."""
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            lines += _entry(f"{indent}{_scalar(str(key))}:", item, indent + "  ")
    else:
        assert isinstance(value, list)
        for item in value:
            if _is_block(item):
                # "- " then the item's first line, its other lines indented under it.
                first, *rest = _lines(item, indent + "  ")
                lines += [f"{indent}- {first.lstrip()}", *rest]
            else:
                lines.append(f"{indent}- {_scalar(item)}\n")
    return lines


def _entry(head: str, item: object, indent: str) -> list[str]:
    if _is_block(item):
        return [head + "\n", *_lines(item, indent)]
    return [f"{head} {_scalar(item)}\n"]


def _is_block(value: object) -> bool:
    return isinstance(value, dict | list) and bool(value)


def _scalar(value: object) -> str:
    """JSON text: ``"..."`` with ASCII escapes, a number, ``true``/``false``/``null``,
    or ``{}``/``[]`` (YAML flow collections)."""
    return json.dumps(value, ensure_ascii=True)
