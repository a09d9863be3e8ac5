"""``sam``: box/click prompted lesion segmentation (MONAI Label type deepgrow, 2D)."""

from __future__ import annotations

from monailabel.interfaces.config import TaskConfig

from lib.infers.sam import sam_infer
from lib.models import shared_stack


class SamConfig(TaskConfig):
    def infer(self):
        return sam_infer(shared_stack(self.conf, self.model_dir).predictor)

    def trainer(self):
        return None
