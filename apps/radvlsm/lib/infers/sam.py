"""The ``sam`` infer task: thin over :class:`radvlsm.service.SamService`."""

from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.infers.base import ServiceInfer
from radvlsm.defaults import LABELS
from radvlsm.predictor import SegmentPredictor
from radvlsm.service import SamService

DESCRIPTION = (
    "Box/click prompted lesion segmentation (LiteMedSAM by default). Prompts: Slicer/OHIF roi=[x0,x1,y0,y1,z0,z1] "
    "and foreground/background=[[x,y,z],...] in IJK, or REST boxes=[[x0,y0,x1,y1],...] in pixel columns/rows. "
    "One lesion per box; multilabel=true labels them 1..N, otherwise all are 1. On a volume: the slice given by "
    "slice (or the clicks'/roi's z); propagate=true carries each lesion through the volume (slices=[first, last])."
)


def sam_infer(predictor: SegmentPredictor) -> ServiceInfer:
    return ServiceInfer(SamService(predictor), InferType.DEEPGROW, dict(LABELS), DESCRIPTION,
                        {"multilabel": False, "propagate": False, "backbone": predictor.backbone.name})
