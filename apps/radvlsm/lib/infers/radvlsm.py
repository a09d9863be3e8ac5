"""The ``radvlsm`` infer task (full pipeline) and the ``diagnosis`` task: thin over the pipeline services."""

from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.infers.base import ServiceInfer
from radvlsm.defaults import LABELS
from radvlsm.pipeline_service import DiagnosisService, PipelineService

PIPELINE = (
    "Text -> lesion boxes -> fused lesion masks -> diagnosis, on one image encode. params: text (default in "
    "config), top_k, diagnose, max_lesions; optional boxes/roi override the proposals and foreground/background "
    "clicks refine the lesion they fall in. Label: lesion i = i+1 (empty when nothing is found). On a volume: every "
    "slice (or slices=[first, last]; slice= or prompts for one), lesions kept where neighbouring slices agree."
)
DIAGNOSIS = (
    "Benign/malignant from a lesion mask: an uploaded label, else the image's saved final label, else the radvlsm "
    "pipeline's own mask. Returns prediction [{idx, label, score}], P(malignant), and the radiomics/visual "
    "descriptors that drove it."
)


def radvlsm_infer(service: PipelineService) -> ServiceInfer:
    return ServiceInfer(service, InferType.SEGMENTATION, dict(LABELS), PIPELINE,
                        {"text": service.default_text, "top_k": 3, "diagnose": True})


def diagnosis_infer(service: DiagnosisService) -> ServiceInfer:
    return ServiceInfer(service, InferType.CLASSIFICATION, {"benign": 0, "malignant": 1}, DIAGNOSIS,
                        {"text": service.default_text})
