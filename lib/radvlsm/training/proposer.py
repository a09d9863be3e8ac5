"""Fine-tuning the ``qformer_lite`` proposer from corrected masks: its relevance-map and box heads, on the
frozen-encoder embeddings the decoder training already cached.

Only :attr:`QFormerLite.HEADS` train; the Q-Former's outputs are computed once per image, so an epoch is a few
small matrix products per image (seconds on CPU). The image-text match head is frozen on purpose: corrected
masks are all positives, and training it on them alone would teach "there is always a lesion".

Validated by the inference code itself (:meth:`QFormerLiteProposer.with_model`): the key metric is the mean IoU
of the top-ranked candidate box with the nearest corrected lesion (0 when nothing is proposed) on the held-back
split; the fine-tune is published into its own :class:`ProposerStore` only if that is not worse than the served
proposer's minus ``tolerance``. A published fine-tune is served live by every proposer that follows the store.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from radvlsm.geometry import mask_to_box
from radvlsm.predictor import Encoded
from radvlsm.proposals.boxes import box_iou
from radvlsm.proposals.qformer_model import QFormerLite, losses, valid_grid
from radvlsm.training.data import Item, model_frame_target
from radvlsm.training.store import ProposerStore

logger = logging.getLogger(__name__)


@dataclass
class ProposerRun:
    published: bool
    version: str  # served after the run
    base_version: str
    iou_before: float  # mean top-1 box IoU on the held-back split
    iou_after: float
    hit_before: float  # share of held-back images whose top-1 box has IoU >= 0.5
    hit_after: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def box_target(mask: np.ndarray) -> torch.Tensor:
    """The box head's target: the label's tight box as continuous edges, ``(cx, cy, w, h)`` as fractions of the
    image (the shipped training's targets too: ``scripts/proposer_pack.py`` calls this)."""
    x0, y0, x1, y1 = mask_to_box(mask)
    rows, cols = mask.shape
    x0, x1, y0, y1 = x0 / cols, (x1 + 1) / cols, y0 / rows, (y1 + 1) / rows
    return torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dtype=torch.float32)


def heat_target(item: Item, img_size: int, grid: int) -> torch.Tensor:
    """The relevance map's target: the share of each patch of the padded model frame covered by the lesion."""
    frame = model_frame_target(item.mask, item.input_size, img_size)
    return F.avg_pool2d(frame[None, None], img_size // grid)[0, 0]


def top1_iou(proposer, item: Item, text: str) -> float:
    """IoU of the proposer's top candidate with the nearest lesion box of the label (each lesion or all of it)."""
    enc = Encoded(item.embedding, item.original_size, item.input_size)
    proposal = proposer.propose(None, text, top_k=1, encoded=enc)
    if not proposal.candidates:
        return 0.0
    truth = np.array([mask_to_box(m) for _, m in item.lesions] + [mask_to_box(item.mask)], np.float32)
    return float(box_iou(np.array(proposal.candidates[0].box, np.float32), truth).max())


def validate(proposer, items: list[Item], text: str) -> tuple[float, float]:
    """``(mean top-1 IoU, hit rate at IoU 0.5)`` on ``items``; NaN when there are none."""
    ious = np.array([top1_iou(proposer, it, text) for it in items])
    if not len(ious):
        return float("nan"), float("nan")
    return float(ious.mean()), float((ious >= 0.5).mean())


class HeadData:
    """The frozen Q-Former outputs and the targets of every training image, computed once."""

    def __init__(self, model: QFormerLite, items: list[Item], tokens: torch.Tensor, token_mask: torch.Tensor,
                 img_size: int):
        grid = model.cfg.grid
        self.device = dev = next(model.parameters()).device
        self.z: list[dict[str, torch.Tensor]] = []
        self.valid, self.heat, self.box = [], [], []
        with torch.no_grad():
            for it in items:
                valid = valid_grid(it.input_size, img_size, grid)[None].to(dev)
                z = model.encode(it.embedding.to(dev), valid, tokens[None].to(dev), token_mask[None].to(dev))
                self.z.append({k: v.to(torch.float16 if k == "feats" else torch.float32) for k, v in z.items()})
                self.valid.append(valid[0])
                self.heat.append(heat_target(it, img_size, grid).to(dev))
                self.box.append(box_target(it.mask).to(dev))

    def __len__(self) -> int:
        return len(self.z)

    def batch(self, idx: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        z = {k: torch.cat([self.z[i][k] for i in idx]).float() for k in self.z[0]}
        valid = torch.stack([self.valid[i] for i in idx])
        n = len(idx)  # domain -1: no contrastive term (those heads are frozen)
        target = {"match": torch.ones(n, device=self.device), "mask": torch.stack([self.heat[i] for i in idx]),
                  "box": torch.stack([self.box[i] for i in idx]), "valid": valid,
                  "domain": torch.full((n,), -1, device=self.device)}
        return z, target


def fine_tune_proposer(proposer, train_items: list[Item], val_items: list[Item], store: ProposerStore,
                       epochs: int, lr: float, batch_size: int = 8, tolerance: float = 0.0, seed: int = 0,
                       text: str = "lesion") -> ProposerRun:
    """Train the heads of a copy of the served proposer on ``train_items``; publish if validation is not worse."""
    started = time.time()
    base_version = proposer.version
    model = copy.deepcopy(proposer.model)
    img_size = proposer.predictor.backbone.img_size
    before = validate(proposer, val_items, text)
    run = ProposerRun(False, base_version, base_version, before[0], float("nan"), before[1], float("nan"))
    if epochs == 0 or not train_items:  # nothing changes: the served proposer's scores are the answer
        run.iou_after, run.hit_after = before
        run.reason = "proposer not trained (no epochs or no training image)"
        run.seconds = round(time.time() - started, 2)
        logger.info(f"training: {run.reason}")
        return run
    feats = proposer.text_encoder.encode(text)
    data = HeadData(model, train_items, feats.tokens, feats.mask, img_size)
    model.requires_grad_(False)
    params = []
    for name in QFormerLite.HEADS:
        part = getattr(model, name)
        part.requires_grad_(True)
        params += [part] if isinstance(part, torch.nn.Parameter) else list(part.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    weights = {"itm": 0.0, "itc": 0.0}
    model.train()
    for _ in range(epochs):
        order, total = rng.permutation(len(data)), 0.0
        for s in range(0, len(order), batch_size):
            idx = [int(i) for i in order[s: s + batch_size]]
            z, target = data.batch(idx)
            out = model.heads(z, target["valid"])
            loss = losses(out, target, model, weights)["total"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        run.losses.append(round(total / max(len(data), 1), 5))
    model.eval().requires_grad_(False)
    run.iou_after, run.hit_after = validate(proposer.with_model(model), val_items, text)
    if not run.iou_after >= run.iou_before - tolerance:  # also refuses NaN (no validation image)
        run.reason = (f"proposer not published: validation top-1 box IoU {run.iou_after:.4f} < served "
                      f"{run.iou_before:.4f} - tolerance {tolerance}")
    else:
        state = {f"qformer.{k}": v for k, v in model.state_dict().items()}
        meta = {"base_version": base_version, "iou_before": run.iou_before, "iou_after": run.iou_after,
                "hit_before": run.hit_before, "hit_after": run.hit_after, "train_images": len(data),
                "epochs": epochs, "lr": lr, "text": text, "losses": run.losses}
        run.version = store.publish_state(state, {"proposer_base": proposer.base_id}, meta)
        run.published = True
        run.reason = (f"published proposer {run.version}: validation top-1 box IoU {run.iou_before:.4f} -> "
                      f"{run.iou_after:.4f}, hit rate {run.hit_before:.3f} -> {run.hit_after:.3f}")
    run.seconds = round(time.time() - started, 2)
    logger.info(f"training: {run.reason} ({run.seconds:.1f} s)")
    return run
