"""Task configs, one per task, registered by name (``--conf models sam,...``)."""

from lib.configs.sam import SamConfig

TASK_CONFIGS = {"sam": SamConfig}

__all__ = ["TASK_CONFIGS"]
