"""One shape for every radvlsm infer task: a request-level service in, (label file or None, JSON) out."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask

from lib.server.workers import QUEUE_MS
from radvlsm.service import write_label, write_markups


class ServiceInfer(InferTask):
    """``service.run(request)`` returns a :class:`radvlsm.service.LabelResult`; its label (if any) is written
    with the image's geometry in the format the client asked (``result_extension``/``result_dtype``)."""

    def __init__(self, service: Any, type: str, labels: dict[str, int], description: str, config: dict[str, Any]):
        super().__init__(type=type, labels=labels, dimension=2, description=description, config=config)
        self.service = service

    def is_valid(self) -> bool:
        return True

    def __call__(self, request):
        res = self.service.run(request)
        res.result.setdefault("label_names", self.labels)
        predictor = getattr(self.service, "predictor", None) or getattr(getattr(self.service, "pipeline", None),
                                                                        "predictor", None)
        if predictor is not None:  # which (possibly fine-tuned) decoder made this result
            res.result.setdefault("decoder_version", predictor.decoder_version)
        queue = QUEUE_MS.get()  # set by the server's worker pool (lib/server/workers.py); None outside it
        if queue is not None:
            res.result.setdefault("latencies_ms", {})["queue"] = round(queue, 1)
        if res.label is not None:
            return write_label(res.label, res.image, request), res.result
        # a detection answers with its boxes as markups: Slicer's plugin loads a .json result as ROI nodes
        return (write_markups(res.markups) if res.markups is not None else None), res.result
