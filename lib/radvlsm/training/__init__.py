"""Learning from clinicians' corrections: fine-tune SAM's prompt encoder + mask decoder on frozen-encoder
embeddings, validate on a held-back split, publish atomically only if not worse, and serve it live."""

from radvlsm.training.data import TrainSample, split
from radvlsm.training.loop import TrainConfig
from radvlsm.training.trainer import RunResult, fine_tune
from radvlsm.versions import SHIPPED, DecoderStore, DecoderWatcher, TrainingBusy

__all__ = ["SHIPPED", "DecoderStore", "DecoderWatcher", "RunResult", "TrainConfig", "TrainSample",
           "TrainingBusy", "fine_tune", "split"]
