"""Typed reads of request parameters: MONAI Label clients send JSON, Slicer sometimes strings ("true")."""

from __future__ import annotations

from typing import Any

from radvlsm.errors import InputError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def get_bool(params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InputError(name, f"expected true or false, got {value!r:.60}")


def get_int(params: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = params.get(name, default)
    if value is None:
        return default
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        out = int(value)
    except (TypeError, ValueError) as exc:
        raise InputError(name, f"expected an integer, got {value!r:.60}") from exc
    if not lo <= out <= hi:
        raise InputError(name, f"must be between {lo} and {hi}, got {out}")
    return out


def get_choice(params: dict[str, Any], name: str, default: str, choices: set[str] | list[str]) -> str:
    value = params.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        raise InputError(name, f"must be one of {sorted(choices)}, got {value!r:.60}")
    return value
