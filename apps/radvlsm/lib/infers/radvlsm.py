"""The ``radvlsm`` infer task (full pipeline) and the ``diagnosis`` task: thin over the pipeline services."""

from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.infers.base import ServiceInfer
from radvlsm.defaults import LABELS
from radvlsm.pipeline_service import DiagnosisService, PipelineService
from radvlsm.task_specs import DIAGNOSIS, RADVLSM


def radvlsm_infer(service: PipelineService) -> ServiceInfer:
    return ServiceInfer(service, InferType.SEGMENTATION, dict(LABELS), RADVLSM.summary,
                        RADVLSM.config(text=service.default_text))


def diagnosis_infer(service: DiagnosisService) -> ServiceInfer:
    return ServiceInfer(service, InferType.CLASSIFICATION, {"benign": 0, "malignant": 1}, DIAGNOSIS.summary,
                        DIAGNOSIS.config(text=service.default_text))
