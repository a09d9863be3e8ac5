"""Start-up warm-up: the first user click must not pay for an export, a session build or lazy kernel set-up."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from radvlsm.predictor import SegmentPredictor

logger = logging.getLogger(__name__)


def warm_up(predictor: SegmentPredictor) -> float:
    """Run the encoder and one box decode on a synthetic image (never cached); returns the seconds it took."""
    from radvlsm.predictor import Encoded

    start = time.perf_counter()
    size = predictor.backbone.img_size
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with predictor.encoder_lock:
        emb = predictor.runtime.encode(x).to(predictor.device)
    enc = Encoded(emb, (size, size), (size, size), runtime=predictor.runtime.name)
    predictor.decode(enc, np.array([size * 0.25, size * 0.25, size * 0.75, size * 0.75], np.float32))
    seconds = time.perf_counter() - start
    logger.info(f"radvlsm: encoder runtime '{predictor.runtime.name}' ready ({predictor.runtime.describe()}); "
                f"warm-up {seconds:.1f} s")
    return seconds
