"""The same fine-tuning run under ``torch.distributed``: one process per GPU (NCCL), or per CPU worker (gloo).

The launching process encodes every image once into a disk embedding cache and holds the store's training
lock; each rank loads the embeddings from disk, trains its shard of every epoch (gradients all-reduced), and
rank 0 validates and publishes, so exactly one checkpoint comes out of a run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from radvlsm.predictor import SegmentPredictor
from radvlsm.training.data import TrainSample
from radvlsm.training.loop import TrainConfig
from radvlsm.training.trainer import fine_tune
from radvlsm.versions import DecoderStore, DecoderWatcher

logger = logging.getLogger(__name__)


@dataclass
class DistJob:
    backbone: str
    checkpoint: str | None
    samples: list[TrainSample]
    store_root: str
    config: dict
    disk_cache: str
    backend: str  # "nccl" (one GPU per rank) or "gloo" (CPU)
    workdir: str


def _worker(rank: int, world: int, job: DistJob) -> None:
    from radvlsm.models import build_backbone

    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    if job.backend == "gloo":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    device = f"cuda:{rank}" if job.backend == "nccl" else "cpu"
    dist.init_process_group(job.backend, init_method=f"file://{job.workdir}/rendezvous", rank=rank,
                            world_size=world)
    try:
        predictor = SegmentPredictor(build_backbone(job.backbone, checkpoint=job.checkpoint, device=device),
                                     disk_cache=job.disk_cache)
        store = DecoderStore(job.store_root)
        # serve the store's version (an adapted encoder included), as the launching server does
        predictor.decoder_watcher = DecoderWatcher(store, predictor.backbone, predictor.lock)
        predictor.decoder_watcher.refresh()
        result = fine_tune(predictor, job.samples, store, TrainConfig(**job.config))
        if rank == 0:
            Path(job.workdir, "result.json").write_text(json.dumps(result.to_json()))
    finally:
        dist.destroy_process_group()


def launch(predictor, samples: list[TrainSample], store: DecoderStore, cfg: TrainConfig, world_size: int,
           backend: str | None = None, disk_cache: str | None = None) -> dict:
    """Run :func:`fine_tune` on ``world_size`` processes; returns rank 0's result JSON."""
    backend = backend or ("nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo")
    with store.training_lock(), tempfile.TemporaryDirectory(prefix="radvlsm-ddp-") as work:
        cache = disk_cache or os.path.join(work, "embeddings")
        writer = SegmentPredictor(predictor.backbone, disk_cache=cache)
        for s in samples:  # every embedding computed (or taken from memory) once, written to the shared cache
            image = s.load()[0]
            writer.persist(image, predictor.encode(image))
        job = DistJob(predictor.backbone.name, predictor.backbone.checkpoint, samples, str(store.root), asdict(cfg),
                      cache, backend, work)
        logger.info(f"training: {world_size} processes on {backend}")
        mp.spawn(_worker, args=(world_size, job), nprocs=world_size, join=True)
        return json.loads(Path(work, "result.json").read_text())
