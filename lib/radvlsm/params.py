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


def get_float(params: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = params.get(name, default)
    if value is None:
        return default
    try:
        if isinstance(value, bool):
            raise ValueError
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(name, f"expected a number, got {value!r:.60}") from exc
    if not lo <= out <= hi:  # also refuses NaN
        raise InputError(name, f"must be between {lo:g} and {hi:g}, got {out:g}")
    return out


def get_choice(params: dict[str, Any], name: str, default: str, choices: set[str] | list[str]) -> str:
    value = params.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        raise InputError(name, f"must be one of {sorted(choices)}, got {value!r:.60}")
    return value


def check_known(params: dict[str, Any], known: Any, what: str = "option", ignore: tuple[str, ...] = ()) -> None:
    """Refuse a key that is neither in ``known`` nor in ``ignore``: a misspelt option ("epoch") must not run
    with the default silently."""
    unknown = sorted(set(params) - set(known) - set(ignore))
    if unknown:
        raise InputError(unknown[0], f"unknown {what}; available: {', '.join(sorted(known))}")


#: Characters allowed in a label tag (a directory name under ``labels/``).
_TAG_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def check_id(value: Any, name: str = "image", max_len: int = 255) -> str:
    """An image/label/session id names one file or folder *inside* a store: no path separators, no ``..``,
    not absolute, no NUL, at most ``max_len`` characters. Anything else is an :class:`InputError`."""
    if not isinstance(value, str) or not value:
        raise InputError(name, f"expected a non-empty id string, got {value!r:.60}")
    if len(value) > max_len:
        raise InputError(name, f"id is {len(value)} characters long; at most {max_len} are allowed")
    if "/" in value or "\\" in value or "\0" in value:
        raise InputError(name, f"id {value!r:.80} contains a path separator; give an id, not a path")
    if ".." in value or value.strip() in (".", ""):
        raise InputError(name, f"id {value!r:.80} contains '..' or is not a name")
    return value


def check_tag(value: Any, name: str = "tag") -> str:
    """A label tag (``final``, ``original``, ...): letters, digits, ``_``, ``-`` and ``.``, no ``..``."""
    tag = check_id(value, name, max_len=64)
    if not set(tag) <= _TAG_CHARS or tag.startswith("."):
        raise InputError(name, f"tag {tag!r:.80} may hold only letters, digits, '_', '-' and '.'")
    return tag
