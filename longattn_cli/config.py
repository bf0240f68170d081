"""Parsing of ``key=value`` overrides shared by the commands."""

from __future__ import annotations

from typing import Any

import yaml

from longattn_cli.errors import UserError


def parse_value(text: str) -> Any:
    """A YAML scalar: ``8`` → 8, ``false`` → False, ``1e-4`` → 0.0001, ``null`` → None, else the string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _is_float(value):  # YAML 1.1 reads "1e-4" as a string
        return float(value)
    return value


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` → ``{"a": 1, "b.c": "x"}``; a malformed item is a :class:`UserError`."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = parse_value(value.strip())
    return out
