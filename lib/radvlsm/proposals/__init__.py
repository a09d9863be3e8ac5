"""Text-guided box proposal backends (registry in :mod:`radvlsm.proposals.base`).

Importing the package registers the built-in backends (as timm's ``timm.models`` registers its models): the
registry in :mod:`radvlsm.proposals.base` is a leaf and the backends import it, never the other way round. Each
backend imports its heavy libraries (transformers, ...) only when it is built.
"""

import importlib

from radvlsm.proposals.base import (
    BoxProposer,
    Candidate,
    Proposal,
    available_proposers,
    build_proposer,
    register_proposer,
)

#: modules of this package whose import registers a backend
BUILTIN_BACKENDS = ("qformer_lite", "blip2", "template")


def _register_builtin() -> None:
    for module in BUILTIN_BACKENDS:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:  # a backend still being written must not break the others
            if exc.name != f"{__name__}.{module}":
                raise


_register_builtin()

__all__ = ["BoxProposer", "Candidate", "Proposal", "available_proposers", "build_proposer", "register_proposer"]
