"""The ``box_proposal`` infer task: phrase -> candidate lesion boxes (thin over ProposalService)."""

from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.infers.base import ServiceInfer
from radvlsm.defaults import LABELS
from radvlsm.proposal_service import ProposalService

DESCRIPTION = (
    "Text-guided lesion box proposals. params: text (default in config), top_k, backend "
    "(qformer_lite | template | blip2, or several), heatmap=true to get the relevance map as the label, "
    "refine=true to snap boxes to the lesion with one decoder pass (off by default). "
    "Boxes are [x0,y0,x1,y1] in pixel columns/rows; roi gives the Slicer order."
)


def box_proposal_infer(service: ProposalService) -> ServiceInfer:
    return ServiceInfer(service, InferType.DETECTION, dict(LABELS), DESCRIPTION,
                        {"text": service.default_text, "top_k": 3, "backend": service.default_backend,
                         "heatmap": False})
