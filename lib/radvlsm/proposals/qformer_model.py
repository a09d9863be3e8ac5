"""``qformer_lite``: a CPU-sized BLIP-2 over the frozen LiteMedSAM image embedding.

Learned query tokens and the phrase's MiniLM tokens (projected) go through transformers' ``Blip2QFormerModel``
together; every token cross-attends to the image embedding's 64x64 patches (padding masked out). Heads:

* image-text match (ITM) from the pooled query outputs: is the phrase's object in this image?
* patch relevance map: the text tokens' outputs (which have looked at the image) dotted with each patch;
* box: ``(cx, cy, w, h)`` normalised to the unpadded input area, from the first query.
* optional context head (``context_channels`` > 0): dilated convolutions over the text-modulated patches add to
  the relevance logits, so whether a dark patch is a lesion or shadowing/fat/text can depend on its surroundings
  (the linear map sees one 4x4-pixel patch at a time). Its last layer starts at zero: a checkpoint fine-tuned
  with it starts exactly where the linear map was.

Losses (LSMS-style): relevance BCE + Dice against the mask, box L1 + GIoU, ITM BCE with wrong-domain and
lesion-free negatives, and an image-text contrastive term between pooled queries and sentence embeddings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from radvlsm.frame import Frame


@dataclass
class QFormerLiteConfig:
    image_dim: int = 256
    text_dim: int = 384
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    queries: int = 8
    grid: int = 64
    embed_dim: int = 128  # contrastive space
    context_channels: int = 0  # 0: the linear relevance map only (the shipped default's architecture)
    context_dilations: tuple[int, ...] = (1, 2, 4, 8)

    def to_dict(self) -> dict:
        return asdict(self)


class QFormerLite(nn.Module):
    def __init__(self, cfg: QFormerLiteConfig | None = None):
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        cfg = cfg or QFormerLiteConfig()
        self.cfg = cfg
        h = cfg.hidden
        self.image_proj = nn.Conv2d(cfg.image_dim, h, 1)
        self.pos = nn.Parameter(torch.zeros(1, h, cfg.grid, cfg.grid))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.text_proj = nn.Linear(cfg.text_dim, h)
        self.queries = nn.Parameter(torch.randn(1, cfg.queries, h) * 0.02)
        self.token_type = nn.Embedding(2, h)  # 0 query, 1 text
        qcfg = Blip2QFormerConfig(hidden_size=h, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                                  intermediate_size=4 * h, encoder_hidden_size=h, cross_attention_frequency=1,
                                  vocab_size=2, max_position_embeddings=cfg.queries + 64)
        self.qformer = Blip2QFormerModel(qcfg)
        self.itm_head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, 1))
        self.box_head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, 4))
        self.map_text = nn.Linear(h, h)
        self.map_patch = nn.Conv2d(h, h, 1)
        self.map_bias = nn.Parameter(torch.tensor(-2.0))
        self.image_global = nn.Linear(h, cfg.embed_dim)
        self.text_global = nn.Linear(cfg.text_dim, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.context = ContextHead(h, cfg.context_channels, cfg.context_dilations) if cfg.context_channels else None

    def forward(self, embedding: torch.Tensor, valid: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``embedding`` (B, C, G, G); ``valid`` (B, G, G) 1 inside the unpadded image; ``tokens`` (B, L, D)."""
        return self.heads(self.encode(embedding, valid, tokens, token_mask), valid)

    def project(self, embedding: torch.Tensor) -> torch.Tensor:
        """The projected patches with their positions: what every phrase's pass reads of an image."""
        return self.image_proj(embedding.float()) + self.pos

    def encode(self, embedding: torch.Tensor, valid: torch.Tensor, tokens: torch.Tensor,
               token_mask: torch.Tensor, feats: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The Q-Former part: projected patches, query outputs and the pooled text output (what the heads read;
        fine-tuning only the heads computes this once per image). ``feats``: :meth:`project`'s output, when one
        image is read with several phrases."""
        b, q = tokens.shape[0], self.cfg.queries
        feats = self.project(embedding) if feats is None else feats
        enc = feats.flatten(2).transpose(1, 2)
        x = torch.cat([self.queries.expand(b, -1, -1) + self.token_type.weight[0],
                       self.text_proj(tokens.float()) + self.token_type.weight[1]], 1)
        attn = torch.cat([torch.ones(b, q, dtype=token_mask.dtype, device=token_mask.device), token_mask], 1)
        out = self.qformer(query_embeds=x, attention_mask=attn, encoder_hidden_states=enc,
                           encoder_attention_mask=valid.flatten(1).long()).last_hidden_state
        qo, to = out[:, :q], out[:, q:]
        m = token_mask.unsqueeze(-1).float()
        return {"feats": feats, "queries": qo, "text": (to * m).sum(1) / m.sum(1).clamp(min=1)}

    def match(self, z: dict[str, torch.Tensor]) -> torch.Tensor:
        """The image-text match logit (B,) from :meth:`encode`'s query outputs alone."""
        return self.itm_head(z["queries"].mean(1)).squeeze(-1)

    def heads(self, z: dict[str, torch.Tensor], valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """ITM, box and relevance map from :meth:`encode`'s outputs."""
        qo = z["queries"]
        pooled = qo.mean(1)
        text_vec = self.map_text(z["text"])
        patches = self.map_patch(z["feats"])
        heat = torch.einsum("bh,bhxy->bxy", text_vec, patches) / math.sqrt(self.cfg.hidden) + self.map_bias
        if self.context is not None:
            heat = heat + self.context(patches, text_vec, valid)
        heat = heat.masked_fill(valid <= 0, -20.0)
        return {
            "itm": self.match(z),
            "box": self.box_head(qo[:, 0]).sigmoid(),
            "heat": heat,
            "image_global": F.normalize(self.image_global(pooled), dim=-1),
        }

    #: what fine-tuning from corrected masks trains (the relevance map and the box; the context head where the
    #: checkpoint has one); the Q-Former, the image-text match and the contrastive heads stay frozen, so "is there
    #: a lesion at all" keeps its shipped calibration
    HEADS = ("map_text", "map_patch", "map_bias", "box_head", "context")

    def text_global_embedding(self, sentence: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_global(sentence.float()), dim=-1)


class ContextHead(nn.Module):
    """Relevance logits from a patch's neighbourhood: the patches modulated by the phrase (FiLM), then 3x3
    convolutions at growing dilation (receptive field ~ 2 * sum(dilations) + 1 patches), padding zeroed."""

    def __init__(self, hidden: int, channels: int, dilations: tuple[int, ...]):
        super().__init__()
        self.film = nn.Linear(hidden, 2 * hidden)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.reduce = nn.Conv2d(hidden, channels, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=d, dilation=d), nn.GroupNorm(8, channels), nn.GELU())
            for d in dilations)
        self.out = nn.Conv2d(channels, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, patches: torch.Tensor, text_vec: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(text_vec)[..., None, None].chunk(2, 1)
        keep = valid[:, None].to(patches.dtype)
        x = self.reduce((patches * (1 + gamma) + beta) * keep)
        for block in self.blocks:
            x = x + block(x) * keep
        return self.out(x)[:, 0]


def valid_grid(input_size: tuple[int, int], img_size: int = 256, grid: int = 64) -> torch.Tensor:
    """``(grid, grid)`` 1 where a patch covers the unpadded image (any part of it): :meth:`Frame.grid_valid_mask`
    of the model input ``input_size`` (its own frame: the resized image resizes to itself)."""
    if max(input_size) != img_size:
        raise ValueError(f"input size {list(input_size)} is not a {img_size}-pixel model input")
    return Frame(input_size, img_size).grid_valid_mask(grid)


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - generalised IoU of ``xyxy`` boxes, element-wise."""
    x0, y0 = torch.max(pred[:, 0], target[:, 0]), torch.max(pred[:, 1], target[:, 1])
    x1, y1 = torch.min(pred[:, 2], target[:, 2]), torch.min(pred[:, 3], target[:, 3])
    inter = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    area = lambda b: (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)  # noqa: E731
    union = area(pred) + area(target) - inter
    iou = inter / union.clamp(min=1e-6)
    ex0, ey0 = torch.min(pred[:, 0], target[:, 0]), torch.min(pred[:, 1], target[:, 1])
    ex1, ey1 = torch.max(pred[:, 2], target[:, 2]), torch.max(pred[:, 3], target[:, 3])
    enclose = ((ex1 - ex0) * (ey1 - ey0)).clamp(min=1e-6)
    return 1 - (iou - (enclose - union) / enclose)


def losses(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], model: QFormerLite,
           weights: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """``batch``: ``match`` (B,) 1/0, ``mask`` (B, G, G) soft target, ``box`` (B, 4) cxcywh, ``valid``,
    ``sentence`` (B, D), ``domain`` (B,) int, -1 for lesion-free images (left out of the contrastive term)."""
    w = {"itm": 1.0, "heat": 2.0, "box_l1": 2.0, "giou": 1.0, "itc": 0.5, **(weights or {})}
    match = batch["match"].float()
    out_l = {"itm": F.binary_cross_entropy_with_logits(out["itm"], match)}
    pos = match > 0
    if pos.any():
        heat, target, valid = out["heat"][pos], batch["mask"][pos], batch["valid"][pos]
        bce = F.binary_cross_entropy_with_logits(heat, target, reduction="none")
        out_l["heat"] = (bce * valid).sum() / valid.sum()
        p = heat.sigmoid() * valid
        dice = 1 - (2 * (p * target).sum((1, 2)) + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
        out_l["heat"] = out_l["heat"] + dice.mean()
        out_l["box_l1"] = F.l1_loss(out["box"][pos], batch["box"][pos])
        out_l["giou"] = giou_loss(cxcywh_to_xyxy(out["box"][pos]), cxcywh_to_xyxy(batch["box"][pos])).mean()
    keep = (batch["domain"] >= 0) & pos
    if keep.sum() > 1:
        img = out["image_global"][keep]
        txt = model.text_global_embedding(batch["sentence"][keep])
        logits = img @ txt.t() * model.logit_scale.exp().clamp(max=100)
        dom = batch["domain"][keep]
        same = (dom[:, None] == dom[None, :]).float()
        targets = same / same.sum(1, keepdim=True)
        out_l["itc"] = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets.t())) / 2
    out_l["total"] = sum(w[k] * v for k, v in out_l.items())
    return out_l
