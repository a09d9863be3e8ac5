"""The ``sam`` infer task: thin over :class:`radvlsm.service.SamService`."""

from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.infers.base import ServiceInfer
from radvlsm.defaults import LABELS
from radvlsm.predictor import SegmentPredictor
from radvlsm.service import SamService
from radvlsm.task_specs import SAM


def sam_infer(predictor: SegmentPredictor) -> ServiceInfer:
    return ServiceInfer(SamService(predictor), InferType.DEEPGROW, dict(LABELS), SAM.summary,
                        SAM.config(backbone=predictor.backbone.name))
