"""The ``sam`` infer task: thin over :class:`radvlsm.service.SamService`."""

from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from radvlsm.predictor import SegmentPredictor
from radvlsm.service import SamService, write_label

DESCRIPTION = (
    "Box/click prompted lesion segmentation (LiteMedSAM by default). Prompts: Slicer/OHIF roi=[x0,x1,y0,y1,z0,z1] "
    "and foreground/background=[[x,y,z],...] in IJK, or REST boxes=[[x0,y0,x1,y1],...] in pixel columns/rows. "
    "One lesion per box; multilabel=true labels them 1..N, otherwise all are 1."
)


class SamInfer(InferTask):
    def __init__(self, predictor: SegmentPredictor):
        super().__init__(type=InferType.DEEPGROW, labels={"lesion": 1}, dimension=2, description=DESCRIPTION,
                         config={"multilabel": False, "backbone": predictor.backbone.name})
        self.service = SamService(predictor)

    def is_valid(self) -> bool:
        return True

    def __call__(self, request):
        res = self.service.run(request)
        res.result["label_names"] = self.labels
        return write_label(res.label, res.image, request), res.result
