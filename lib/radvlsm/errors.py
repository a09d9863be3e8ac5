"""Errors that carry the name of the offending input, so callers can answer with a clear 4xx."""

from __future__ import annotations


class RadVLSMError(Exception):
    """Base class of every error radvlsm raises on purpose."""


class InputError(RadVLSMError, ValueError):
    """A request parameter or uploaded file is invalid; ``field`` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ImageReadError(InputError):
    """An image could not be read or is not a usable 2D image."""

    def __init__(self, message: str, field: str = "image"):
        super().__init__(field, message)


class CheckpointError(RadVLSMError, FileNotFoundError):
    """A model checkpoint is missing or unreadable; the message says where to get it."""
