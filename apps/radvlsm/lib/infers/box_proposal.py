"""The ``box_proposal`` infer task: phrase -> candidate lesion boxes (thin over ProposalService)."""

from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.infers.base import ServiceInfer
from radvlsm.defaults import LABELS
from radvlsm.proposal_service import ProposalService
from radvlsm.task_specs import BOX_PROPOSAL


def box_proposal_infer(service: ProposalService) -> ServiceInfer:
    return ServiceInfer(service, InferType.DETECTION, dict(LABELS), BOX_PROPOSAL.summary,
                        BOX_PROPOSAL.config(text=service.default_text, backend=service.default_backend))
