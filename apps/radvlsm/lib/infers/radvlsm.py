"""The ``radvlsm`` infer task (full pipeline) and the ``diagnosis`` task: thin over the pipeline services."""

from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from radvlsm.pipeline_service import DiagnosisService, PipelineService
from radvlsm.service import write_label

PIPELINE = (
    "Text -> lesion boxes -> fused lesion masks -> diagnosis, on one image encode. params: text (default in "
    "config), top_k, diagnose, max_lesions; optional boxes/roi override the proposals and foreground/background "
    "clicks refine the lesion they fall in. Label: lesion i = i+1 (empty when nothing is found)."
)
DIAGNOSIS = (
    "Benign/malignant from a lesion mask: an uploaded label, else the image's saved final label, else the radvlsm "
    "pipeline's own mask. Returns prediction [{idx, label, score}], P(malignant), and the radiomics/visual "
    "descriptors that drove it."
)


class RadVLSMInfer(InferTask):
    def __init__(self, service: PipelineService):
        super().__init__(type=InferType.SEGMENTATION, labels={"lesion": 1}, dimension=2, description=PIPELINE,
                         config={"text": service.default_text, "top_k": 3, "diagnose": True})
        self.service = service

    def is_valid(self) -> bool:
        return True

    def __call__(self, request):
        res = self.service.run(request)
        res.result["label_names"] = self.labels
        return write_label(res.label, res.image, request), res.result


class DiagnosisInfer(InferTask):
    def __init__(self, service: DiagnosisService):
        super().__init__(type=InferType.CLASSIFICATION, labels={"benign": 0, "malignant": 1}, dimension=2,
                         description=DIAGNOSIS, config={"text": service.default_text})
        self.service = service

    def is_valid(self) -> bool:
        return True

    def __call__(self, request):
        return None, self.service.run(request)
