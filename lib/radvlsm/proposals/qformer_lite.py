"""The default proposer: ``qformer_lite`` over the shared LiteMedSAM embedding (no second image encode).

Candidates come from the text-conditioned relevance map (connected components at two thresholds, NMS) plus the
box head; the checkpoint's held-back validation chose which ranks first and the relevance threshold. Nothing is
proposed when the image-text match is below the checkpoint's threshold. (The proposal service can snap boxes to
the lesion with :mod:`radvlsm.proposals.refine` on request; it is off by default, see ``refine_by_default``.)
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radvlsm.errors import CheckpointError
from radvlsm.io import Image2D
from radvlsm.models.registry import file_version
from radvlsm.predictor import Encoded, SegmentPredictor
from radvlsm.proposals.base import DEFAULT_TOP_K, Candidate, Proposal, register_proposer
from radvlsm.proposals.boxes import heatmap_boxes, nms
from radvlsm.proposals.qformer_model import QFormerLite, QFormerLiteConfig
from radvlsm.text import TextEncoder, shared_text_encoder, validate_text
from radvlsm.versions.watcher import ModuleWatcher

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[3] / "model" / "qformer_lite" / "qformer_lite.pt"


def load_qformer(path: str | Path, device: str = "cpu") -> tuple[QFormerLite, dict]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"qformer_lite checkpoint not found: {path}. It ships in the repository's "
                              "model/qformer_lite/; retrain with scripts/proposer_train.py")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = QFormerLite(QFormerLiteConfig(**ckpt["config"]))
        model.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    except Exception as exc:  # corrupt or truncated files raise many types (UnpicklingError, RuntimeError, ...)
        raise CheckpointError(f"qformer_lite checkpoint {path} could not be loaded "
                              f"({type(exc).__name__}: {exc})") from exc
    return model.to(device).eval(), ckpt


class Calibration(torch.nn.Module):
    """The presence and relevance thresholds as buffers, so a site fine-tune publishes them with its weights
    and the store's watcher swaps both at once (a version without them keeps the checkpoint's)."""

    def __init__(self, match_threshold: float, heat_threshold: float):
        super().__init__()
        self.register_buffer("match_threshold", torch.tensor(float(match_threshold)))
        self.register_buffer("heat_threshold", torch.tensor(float(heat_threshold)))

    def values(self) -> dict[str, float]:
        return {"match_threshold": float(self.match_threshold), "heat_threshold": float(self.heat_threshold)}


class QFormerLiteProposer:
    name = "qformer_lite"
    # Snapping (one decoder pass) left the top-1 hit rate unchanged and lowered the mask Dice from the box on
    # training images (scripts/tune_aggregation.py), and costs ~0.2 s: off unless asked (refine=true).
    refine_by_default = False

    def __init__(self, predictor: SegmentPredictor, checkpoint: str | Path | None = None,
                 text_encoder: TextEncoder | None = None, store: Any = None, site_phrases: tuple[str, ...] = ()):
        if predictor.backbone.name != "litemedsam":
            raise ValueError("qformer_lite was trained on LiteMedSAM embeddings; serve it with backbone litemedsam")
        self.predictor = predictor
        self.checkpoint = Path(checkpoint or DEFAULT_CHECKPOINT)
        self.model, meta = load_qformer(self.checkpoint, str(predictor.device))
        self.rank = meta.get("rank", "heatmap")
        self.calibration = Calibration(meta.get("match_threshold", 0.5), meta.get("heat_threshold", 0.5))
        # Presence from the class-agnostic phrase (checkpoints calibrated for it carry both values): an organ
        # phrase ("breast lesion") matches a new site's images less than "lesion" does, so a lesion that "lesion"
        # finds is kept unless the phrase is a clear mismatch (below the floor, as "colon polyp" on a breast scan)
        self.presence_phrase = meta.get("presence_phrase")
        self.mismatch_floor = meta.get("mismatch_floor")
        # the phrases the site names its lesions by (--conf site_phrases) borrow the presence phrase's decision
        # whatever their own match: the floor guards against another organ's phrase, and at a new site every match
        # is lower (BUS-UCLM: "breast lesion" fell below the floor on most lesion images, benchmarks/
        # bench_site_adaptation.py), so the floor learned at other sites would refuse the site's own words
        self.site_phrases = frozenset(p.strip().lower() for p in site_phrases)
        self._weights: dict[str, str] = {}  # version -> the version whose weights it serves (weights_of)
        self.text_encoder = text_encoder or shared_text_encoder()
        self.base_id = file_version(self.checkpoint)  # fine-tunes are served only over the checkpoint they left
        self._lock = threading.Lock()
        self.watcher = None
        if store is not None:
            self.follow(store)

    def follow(self, store: Any) -> None:
        """Serve the fine-tunes the radvlsm train task publishes into ``store`` (a ProposerStore), live; the
        weights loaded now are what ``restore("shipped")`` returns to."""
        self.watcher = ModuleWatcher(store, {"qformer": self.model, "calibration": self.calibration}, self._lock,
                                     ("proposer_base", self.base_id), optional=("calibration",))
        self.watcher.refresh()

    def weights_of(self, version: str) -> str:
        """The version whose weights ``version`` serves: a version that only recalibrated the presence threshold
        (``candidate`` ``recalibrated`` in its metadata) serves its base's weights. What the site's exemplar record
        keys its scores by (:mod:`radvlsm.proposals.site_exemplars`): it judges where the proposer looks, which
        a new threshold does not change. Published versions never change, so an answer read in full is kept (this
        runs on every exemplar-assisted request)."""
        store = self.watcher.store if self.watcher is not None else None
        if store is None or version == "shipped":
            return version
        if version in self._weights:
            return self._weights[version]
        resolved, seen, complete = version, set(), True
        while resolved != "shipped" and resolved not in seen:
            seen.add(resolved)
            meta = store.metadata(resolved)
            complete = complete and bool(meta)  # an unreadable file is not remembered
            if meta.get("candidate") != "recalibrated" or not meta.get("base_version"):
                break
            resolved = str(meta["base_version"])
        if complete:
            self._weights[version] = resolved
        return resolved

    def locate(self, image: Image2D, text: str, top_k: int = DEFAULT_TOP_K,
               encoded: Encoded | None = None) -> Proposal:
        """Where the proposer would look if the lesion were present (``propose`` with the presence decision off):
        how the site's exemplar record scores it."""
        return self.propose(image, text, top_k, encoded, threshold=0.0)

    @property
    def threshold(self) -> float:
        """Image-text match at or above which the phrase counts as present (the served version's)."""
        return float(self.calibration.match_threshold)

    @property
    def heat_threshold(self) -> float:
        return float(self.calibration.heat_threshold)

    @property
    def version(self) -> str:
        """``shipped`` (the checkpoint file) or the served fine-tune's version (``v0001``, ...)."""
        return self.watcher.refresh() if self.watcher is not None else "shipped"

    def with_model(self, model: QFormerLite, calibration: Calibration | None = None) -> QFormerLiteProposer:
        """The same proposer (ranking, text encoder; thresholds unless ``calibration`` is given) over another
        model: what validation of a fine-tune runs, so it is measured by exactly the inference code."""
        clone = object.__new__(QFormerLiteProposer)
        clone.__dict__.update(self.__dict__, model=model, watcher=None, _lock=threading.Lock(),
                              calibration=calibration or copy.deepcopy(self.calibration))
        return clone

    @torch.inference_mode()
    def score(self, enc: Encoded, text: str) -> tuple[float, np.ndarray, np.ndarray]:
        """Match probability, the relevance heatmap on the original grid, and the box head's box (pixels)."""
        feats = self.text_encoder.encode(text)
        dev = self.predictor.device
        frame = enc.frame.check(self.predictor.backbone.img_size)
        valid = frame.grid_valid_mask(self.model.cfg.grid)[None].to(dev)
        if self.watcher is not None:
            self.watcher.refresh()
        with self._lock:
            out = self.model(enc.embedding.to(dev), valid, feats.tokens[None].to(dev), feats.mask[None].to(dev))
        heat = frame.logits_to_image(out["heat"][:, None]).sigmoid()[0, 0]  # as the predictor's masks
        rows, cols = enc.original_size
        cx, cy, w, h = out["box"][0].float().cpu().tolist()
        box = np.array([(cx - w / 2) * cols, (cy - h / 2) * rows, (cx + w / 2) * cols - 1, (cy + h / 2) * rows - 1])
        box = np.clip(box, 0, [cols - 1, rows - 1, cols - 1, rows - 1]).astype(np.float32)
        return float(out["itm"].sigmoid()[0]), heat.cpu().numpy().astype(np.float32), box

    def _borrowed_presence(self, text: str, match: float) -> str | None:
        """Why ``text``, below the threshold, takes the presence phrase's decision (None: it does not): a site
        phrase always, any other phrase above the mismatch floor (checkpoints calibrated for the rule carry both
        values)."""
        phrase = text.strip().lower()
        if not self.presence_phrase or self.mismatch_floor is None or phrase == self.presence_phrase:
            return None
        if phrase in self.site_phrases:
            return "a site phrase"
        floor = float(self.mismatch_floor)
        return f"above its mismatch floor {floor:.3f}" if match >= floor else None

    def propose(self, image: Image2D, text: str, top_k: int = DEFAULT_TOP_K,
                encoded: Encoded | None = None, threshold: float | None = None) -> Proposal:
        """Candidate boxes for ``text``; ``threshold`` (None: the served one) is the presence threshold."""
        text = validate_text(text)
        threshold = self.threshold if threshold is None else float(threshold)
        t0 = time.perf_counter()
        enc = encoded or self.predictor.encode(image)
        t1 = time.perf_counter()
        match, heat, head_box = self.score(enc, text)
        candidates: list[Candidate] = []
        notes: list[str] = []
        present = match >= threshold
        why = None if present else self._borrowed_presence(text, match)
        if why is not None:
            presence = self.score(enc, self.presence_phrase)[0]
            present = presence >= threshold
            if present:
                notes.append(f"presence from '{self.presence_phrase}' ({presence:.2f}); '{text}' matched "
                             f"{match:.2f}, {why}")
        if present:
            low = max(0.1, self.heat_threshold - 0.15)
            boxes, scores = heatmap_boxes(heat, thresholds=(self.heat_threshold, low))
            head_score = (scores.max() if len(scores) else 1.0) * (1.01 if self.rank == "box_head" else 0.99)
            boxes = np.concatenate([boxes, head_box[None]])
            scores = np.concatenate([scores, [head_score]]).astype(np.float32)
            sources = ["heatmap"] * (len(boxes) - 1) + ["box_head"]
            keep = nms(boxes, scores, 0.5)[:top_k]
            for i in keep:
                extra = {"source": sources[i], "relevance": round(float(scores[i]), 4)}
                candidates.append(Candidate(boxes[i].tolist(), float(np.sqrt(match * scores[i])), self.name, extra))
            candidates.sort(key=lambda c: -c.score)
        t2 = time.perf_counter()
        return Proposal(candidates, match, heat, self.name,
                        {"encode": enc.encode_ms, "propose": (t2 - t1) * 1e3, "total": (t2 - t0) * 1e3},
                        notes=notes, version=self.watcher.version if self.watcher is not None else "shipped")


@register_proposer("qformer_lite")
def build_qformer_lite(predictor: SegmentPredictor, checkpoint: str | None = None, **kwargs) -> QFormerLiteProposer:
    return QFormerLiteProposer(predictor, checkpoint=checkpoint, **kwargs)
