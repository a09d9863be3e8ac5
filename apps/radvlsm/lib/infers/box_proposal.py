"""The ``box_proposal`` infer task: phrase -> candidate lesion boxes (thin over ProposalService)."""

from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from radvlsm.proposal_service import ProposalService
from radvlsm.service import write_label

DESCRIPTION = (
    "Text-guided lesion box proposals. params: text (default in config), top_k, backend "
    "(qformer_lite | template | blip2, or several), heatmap=true to get the relevance map as the label, "
    "refine=true/false to snap boxes to the lesion with one decoder pass (default per backend: qformer_lite yes). "
    "Boxes are [x0,y0,x1,y1] in pixel columns/rows; roi gives the Slicer order."
)


class BoxProposalInfer(InferTask):
    def __init__(self, service: ProposalService):
        super().__init__(type=InferType.DETECTION, labels={"lesion": 1}, dimension=2, description=DESCRIPTION,
                         config={"text": service.default_text, "top_k": 3, "backend": service.default_backend,
                                 "heatmap": False})
        self.service = service

    def is_valid(self) -> bool:
        return True

    def __call__(self, request):
        res = self.service.run(request)
        for c in res.result["candidates"]:
            x0, y0, x1, y1 = c["box"]
            c["roi"] = [x0, x1, y0, y1, 0, 0]
        path = write_label(res.label, res.image, request) if res.label is not None else None
        return path, res.result
