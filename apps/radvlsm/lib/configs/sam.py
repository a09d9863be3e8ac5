"""``sam``: box/click prompted lesion segmentation (MONAI Label type deepgrow, 2D)."""

from __future__ import annotations

from monailabel.interfaces.config import TaskConfig

from lib.infers.sam import sam_infer
from lib.models import shared_predictor


class SamConfig(TaskConfig):
    def infer(self):
        return sam_infer(shared_predictor(self.conf))

    def trainer(self):
        return None
