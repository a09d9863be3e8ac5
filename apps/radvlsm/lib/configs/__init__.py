"""Task configs, one per task, registered by name (``--conf models sam,box_proposal``)."""

from lib.configs.box_proposal import BoxProposalConfig
from lib.configs.sam import SamConfig

TASK_CONFIGS = {"sam": SamConfig, "box_proposal": BoxProposalConfig}

__all__ = ["TASK_CONFIGS"]
