"""Fine-tuning SAM's prompt encoder and mask decoder on frozen-encoder embeddings (MedSAM-style).

Each step decodes a batch of lesions (one jittered box each, from the corrected mask), then, if click
simulation is on, decodes them again with one corrective click placed in the middle of each prediction's error
region. Loss = Dice + BCE on the mask logits + MSE of the predicted IoU against the real IoU (that head feeds the
uncertainty score). Works single-process and under ``torch.distributed`` (every rank takes its shard of each
epoch; gradients are averaged across ranks with an all-reduce, as DDP does).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from radvlsm.geometry import mask_dice
from radvlsm.training.data import Item, error_click, jitter_box
from radvlsm.training.proposer import ProposerConfig
from radvlsm.versions import PARTS

logger = logging.getLogger(__name__)


#: how a fine-tuned decoder is judged before it is published (radvlsm.training.decoder_gate)
DECODER_GATES = ("auto", "cv", "holdout", "mean")


def check_decoder_gate(value: str) -> None:
    if value not in DECODER_GATES:
        raise ValueError(f"decoder_gate: must be one of {', '.join(DECODER_GATES)}, got {value!r}")


@dataclass
class TrainConfig:
    epochs: int = 5
    lr: float = 2e-5
    weight_decay: float = 0.01
    batch_size: int = 4
    #: MedSAM's box jitter: each side moves outward by up to this many pixels of a 256-pixel frame
    box_jitter: float = 5.0
    clicks: bool = True
    train_decoder: bool = True
    train_prompt_encoder: bool = True
    #: also teach the qformer_lite proposer the site (radvlsm.training.proposer): where its lesions are and, from
    #: lesion-free labels, whether there is one; published on its own cross-validated, paired-bootstrap gate
    train_proposer: bool = True
    #: > 0: also train rank-r adapters (LoRA) in the image encoder's last stage (radvlsm.training.lora); the
    #: adapted encoder then serves the mask decoder only. 0 = the encoder stays frozen (default)
    encoder_lora_rank: int = 0
    encoder_lora_lr: float = 2e-4
    proposer_epochs: int = ProposerConfig.epochs
    proposer_lr: float = ProposerConfig.lr
    #: ``qformer`` (the Q-Former and its heads: about a minute per 25 images and fold on a 2-core CPU) or
    #: ``heads`` (relevance map, box head, and the match head given lesion-free labels: seconds)
    proposer_scope: str = ProposerConfig.scope
    proposer_folds: int = ProposerConfig.folds
    #: the site's own phrases ("breast lesion"): the proposer learns them from the labels as it does the app's
    proposer_phrases: list[str] = field(default_factory=list)
    #: every other phrase keeps the served proposer's image-text match (radvlsm.training.proposer; 0: off)
    proposer_anchor_weight: float = ProposerConfig.anchor_weight
    #: also offer the gate the served proposer with the site's presence threshold alone (no new weights)
    proposer_recalibrate: bool = ProposerConfig.recalibrate
    #: the proposer and the decoder are published when their paired gain is above -tolerance with this confidence
    gate_confidence: float = ProposerConfig.confidence
    #: the decoder's gate (radvlsm.training.decoder_gate): ``auto`` (cross-validated while the held-back split
    #: holds fewer than 3 lesion images, else held back; a paired bootstrap either way), ``cv``, ``holdout``, or
    #: ``mean`` (the held-back mean Dice >= the served model's - tolerance)
    decoder_gate: str = "auto"
    decoder_folds: int = 3
    #: the gain a new version may fall short by and still be published (0: better with confidence; with
    #: ``decoder_gate`` ``mean``: never worse on the held-back mean)
    tolerance: float = 0.0
    seed: int = 0
    max_lesions: int = 3
    #: VESSA stage 2 (radvlsm.training.pseudo): the served text path's confident answers on the site's unlabelled
    #: images also train the proposer (never validation, never the decoder); off by default (see the README)
    pseudo_labels: bool = False
    #: a pseudo-label's top lesion needs at least this mask agreement
    pseudo_min_agreement: float = 0.95
    #: unlabelled images the text path runs on per run (0: all; about a second each on a 2-core CPU)
    pseudo_max_images: int = 0

    @classmethod
    def from_request(cls, request: dict[str, Any]) -> TrainConfig:
        """Fields of a ``/train`` request (unknown keys ignored, types checked), e.g. ``{"epochs": 1}``."""
        cfg = cls()
        for name, default in asdict(cfg).items():
            if name not in request:
                continue
            value = request[name]
            kind = type(default)
            if kind is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"{name}: must be true or false, got {value!r}")
            elif kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name}: must be a non-negative integer, got {value!r}")
            elif kind is str and not isinstance(value, str):
                raise ValueError(f"{name}: must be a string, got {value!r}")
            elif kind is list and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise ValueError(f"{name}: must be a list of strings, got {value!r}")
            elif kind is float:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"{name}: must be a number, got {value!r}")
                value = float(value)
            setattr(cfg, name, value)
        if cfg.batch_size < 1:
            raise ValueError("batch_size: must be at least 1")
        check_decoder_gate(cfg.decoder_gate)
        if not 0.0 <= cfg.pseudo_min_agreement <= 1.0:
            raise ValueError(f"pseudo_min_agreement: must be between 0 and 1, got {cfg.pseudo_min_agreement!r}")
        cfg.proposer_config()  # checks its fields
        return cfg

    def proposer_config(self) -> ProposerConfig:
        """The proposer fine-tune's settings (their defaults are :class:`ProposerConfig`'s)."""
        return ProposerConfig(epochs=self.proposer_epochs, lr=self.proposer_lr, scope=self.proposer_scope,
                              folds=max(self.proposer_folds, 2), confidence=self.gate_confidence,
                              tolerance=self.tolerance, seed=self.seed, phrases=tuple(self.proposer_phrases),
                              anchor_weight=self.proposer_anchor_weight, recalibrate=self.proposer_recalibrate)


@dataclass
class EpochLog:
    epoch: int
    loss: float
    dice_loss: float
    steps: int


@dataclass
class TrainOutcome:
    logs: list[EpochLog] = field(default_factory=list)


class PromptDecoder(nn.Module):
    """The trainable pair (prompt encoder + mask decoder), decoding a batch of (embedding, prompt) pairs."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, encoder_tail: nn.Module | None = None):
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.encoder_tail = encoder_tail  # radvlsm.training.lora.EncoderTail when encoder adapters train

    def embed(self, items: list[Item]) -> torch.Tensor:
        """The decoder's input for ``items``: the adapted tail on their cached features, else their embeddings."""
        if self.encoder_tail is not None:
            return self.encoder_tail(torch.cat([it.features for it in items]))
        return torch.cat([it.decoder_embedding for it in items]).float()

    def forward(self, emb: torch.Tensor, boxes: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``emb (B, C, h, w)``, ``boxes (B, 4)`` in the model frame -> logits ``(B, H, W)``, IoU ``(B,)``.

        segment-anything's ``predict_masks`` repeats one image for many prompts; here image ``i`` pairs with
        prompt ``i``, so a batch spans many images."""
        pe, dec = self.prompt_encoder, self.mask_decoder
        sparse, dense = pe(points=points, boxes=boxes, masks=None)
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse], dim=1)
        src = emb + dense
        pos = pe.get_dense_pe().expand(src.shape[0], -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = dec.transformer(src, pos, tokens)
        iou_out, mask_out = hs[:, 0, :], hs[:, 1, :]  # the single-output mask token (multimask_output=False)
        up = dec.output_upscaling(src.transpose(1, 2).view(b, c, h, w))
        hyper = dec.output_hypernetworks_mlps[0](mask_out)
        logits = (hyper[:, None, :] @ up.flatten(2)).view(b, *up.shape[2:])
        return logits, dec.iou_prediction_head(iou_out)[:, 0]


def build_model(backbone, state: dict[str, torch.Tensor] | None, cfg: TrainConfig,
                encoder_tail: nn.Module | None = None) -> PromptDecoder:
    """Copies of the backbone's prompt encoder and mask decoder (the served modules are never trained in place),
    loaded with ``state`` (the version training starts from), with only the switched-on parts trainable;
    ``encoder_tail`` (adapters on the encoder's last stage) trains with them when given."""
    model = PromptDecoder(copy.deepcopy(backbone.prompt_encoder), copy.deepcopy(backbone.mask_decoder)).cpu()
    if state is not None:
        model.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in PARTS}, strict=True)
    model.prompt_encoder.requires_grad_(cfg.train_prompt_encoder)
    model.mask_decoder.requires_grad_(cfg.train_decoder)
    model.encoder_tail = encoder_tail
    return model


def losses(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, dice part): soft Dice + BCE on the logits, plus MSE of the IoU head against the real IoU."""
    prob = logits.sigmoid()
    inter = (prob * target).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (prob.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    with torch.no_grad():
        hard = logits > 0
        t = target > 0.5
        real_iou = (hard & t).flatten(1).sum(1) / ((hard | t).flatten(1).sum(1)).clamp(min=1)
    iou_loss = (iou_pred - real_iou.float()) ** 2
    return (dice + bce + iou_loss).mean(), dice.mean()


class Prompts:
    """Every (item, lesion) pair, with targets in the decoder's low-resolution frame built once."""

    def __init__(self, items: list[Item], img_size: int, low_res: int):
        self.entries: list[tuple[Item, np.ndarray, torch.Tensor]] = []
        self.scale = low_res / img_size
        for item in items:
            frame = item.frame.check(img_size)
            for box, mask in item.lesions:
                self.entries.append((item, box, frame.mask_to_decoder(mask, low_res)))

    def __len__(self) -> int:
        return len(self.entries)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard(n: int, epoch: int, seed: int, rank: int, world: int, batch: int) -> list[list[int]]:
    """This rank's batches for an epoch: one seeded permutation shared by all ranks, dealt round-robin and
    wrapped around so that every rank takes the same number of steps (a collective would hang otherwise)."""
    order = np.random.default_rng(seed + epoch).permutation(n)
    steps = max(1, math.ceil(n / (batch * world)))
    idx = [int(order[i % n]) for i in range(steps * batch * world)]
    mine = idx[rank::world]
    return [mine[i * batch:(i + 1) * batch] for i in range(steps)]


def _allreduce_grads(params: list[nn.Parameter], world: int) -> None:
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def _mean_across(values: list[float], world: int) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return t.tolist()


def train(model: PromptDecoder, items: list[Item], img_size: int, cfg: TrainConfig,
          progress: Callable[[EpochLog], None] | None = None, should_stop: Callable[[], bool] | None = None
          ) -> TrainOutcome:
    """Fine-tune ``model`` in place for ``cfg.epochs`` epochs; returns the per-epoch mean losses."""
    rank, world = _world()
    params = [p for p in model.parameters() if p.requires_grad]
    out = TrainOutcome()
    if not params or cfg.epochs == 0:
        return out
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed * 1000 + rank)
    tail = {id(p) for p in model.encoder_tail.parameters()} if model.encoder_tail is not None else set()
    groups = [{"params": [p for p in params if id(p) not in tail], "lr": cfg.lr},
              {"params": [p for p in params if id(p) in tail], "lr": cfg.encoder_lora_lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    low_res = 4 * model.prompt_encoder.image_embedding_size[0]
    prompts = Prompts(items, img_size, low_res)
    jitter = cfg.box_jitter * img_size / 256
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        totals, dices, steps = 0.0, 0.0, 0
        for batch in _shard(len(prompts), epoch, cfg.seed, rank, world, cfg.batch_size):
            entries = [prompts.entries[i] for i in batch]
            emb = model.embed([e[0] for e in entries])
            boxes = torch.as_tensor(np.stack([jitter_box(e[1], e[0].input_size, jitter, rng) for e in entries]))
            target = torch.stack([e[2] for e in entries])
            logits, iou = model(emb, boxes)
            loss, dice = losses(logits, iou, target)
            if cfg.clicks:
                points = _clicks(logits.detach() > 0, target > 0.5, prompts.scale)
                logits2, iou2 = model(emb, boxes, points)
                loss2, dice2 = losses(logits2, iou2, target)
                loss, dice = (loss + loss2) / 2, (dice + dice2) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                _allreduce_grads(params, world)
            opt.step()
            totals, dices, steps = totals + loss.item(), dices + dice.item(), steps + 1
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt("training stopped")
        mean_loss, mean_dice = _mean_across([totals / steps, dices / steps], world)
        log = EpochLog(epoch, round(mean_loss, 5), round(mean_dice, 5), steps)
        out.logs.append(log)
        if rank == 0:
            logger.info(f"training: epoch {epoch}/{cfg.epochs} loss {log.loss:.4f} (dice loss {log.dice_loss:.4f}, "
                        f"{steps} steps x {world} rank(s))")
        if progress is not None:
            progress(log)
    model.eval()
    return out


def _clicks(pred: torch.Tensor, target: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per prompt (``not a point``, label -1, where the prediction has no error)."""
    coords = np.zeros((len(pred), 1, 2), np.float32)
    labels = np.full((len(pred), 1), -1, np.int64)
    for i in range(len(pred)):
        click = error_click(pred[i].numpy(), target[i].numpy())
        if click is not None:
            coords[i, 0], labels[i, 0] = click[0] / scale, click[1]
    return torch.as_tensor(coords), torch.as_tensor(labels)


@torch.no_grad()
def evaluate(model: PromptDecoder, items: list[Item], img_size: int) -> list[float]:
    """Per image Dice of the union of the lesions decoded from their tight boxes (what the ``sam`` task gets
    from a clinician's box), on the original pixel grid."""
    model.eval()
    scores = []
    for item in items:
        boxes = torch.as_tensor(np.stack([b for b, _ in item.lesions]))
        emb = model.embed([item]).expand(len(boxes), -1, -1, -1)
        logits, _ = model(emb, boxes)
        # mapped to the image exactly as the predictor serves it
        pred = (item.frame.check(img_size).logits_to_image(logits[:, None])[:, 0] > 0).any(0).numpy()
        scores.append(mask_dice(pred, item.mask))
    return scores
