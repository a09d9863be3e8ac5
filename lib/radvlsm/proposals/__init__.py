"""Text-guided box proposal backends (registry in :mod:`radvlsm.proposals.base`)."""

from radvlsm.proposals.base import (
    BoxProposer,
    Candidate,
    Proposal,
    available_proposers,
    build_proposer,
    register_proposer,
)

__all__ = ["BoxProposer", "Candidate", "Proposal", "available_proposers", "build_proposer", "register_proposer"]
