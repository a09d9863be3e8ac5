"""``/batch/infer/<task>``: pre-annotate the datastore's unlabelled images (logic in :mod:`radvlsm.batch`).

Replaces MONAI Label's default batch task: that one keeps every result JSON in memory and relabels images that
already carry a clinician's final label; this one skips them, saves as it goes (resumable) and logs images/s.
"""

from __future__ import annotations

import copy
import logging

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType, BatchInferTask

from radvlsm.batch import pending_images, run_batch
from radvlsm.service import remove_result

logger = logging.getLogger(__name__)


class PreAnnotateBatch(BatchInferTask):
    def get_images(self, request, datastore: Datastore) -> list[str]:
        images = request.get("images", BatchInferImageType.IMAGES_UNLABELED)
        if not isinstance(images, str):
            return sorted(images)
        if images != BatchInferImageType.IMAGES_UNLABELED:
            return super().get_images(request, datastore)
        tag = request.get("label_tag", DefaultLabelTag.ORIGINAL)
        return pending_images(datastore.list_images(), lambda i, t: bool(datastore.get_label_uri(i, t)), tag)

    def __call__(self, request, datastore: Datastore, infer) -> dict:
        all_ids = datastore.list_images()
        ids = self.get_images(request, datastore)
        tag = request.get("label_tag", DefaultLabelTag.ORIGINAL)
        logger.info(f"radvlsm batch: {request.get('model')} over {len(ids)} of {len(all_ids)} images "
                    f"(label tag '{tag}'; images already labelled are skipped)")

        def one(image_id: str) -> dict:
            req = {k: v for k, v in copy.deepcopy(request).items() if k not in ("images", "max_workers", "gpus")}
            req.update(image=image_id, save_label=True, label_tag=tag)
            res = infer(req, datastore) or {}
            remove_result(res.get("file") or "")  # the datastore keeps its own copy of the saved label
            return res.get("params", {}) or {}

        report = run_batch(ids, one)
        out = report.to_json(skipped=len(all_ids) - len(ids))
        logger.info(f"radvlsm batch: finished {out}")
        return out
