"""Task configs, one per task, registered by name (``--conf models sam,box_proposal,radvlsm,diagnosis``)."""

from lib.configs.box_proposal import BoxProposalConfig
from lib.configs.radvlsm import DiagnosisConfig, RadVLSMConfig
from lib.configs.sam import SamConfig

TASK_CONFIGS = {"sam": SamConfig, "box_proposal": BoxProposalConfig, "radvlsm": RadVLSMConfig,
                "diagnosis": DiagnosisConfig}

__all__ = ["TASK_CONFIGS"]
