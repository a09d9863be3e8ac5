"""Promptable segmentation with the heavy/cheap split of segment-anything's ``SamPredictor``.

``encode`` (heavy: the image encoder) runs once per image content and backbone version and is cached;
``decode`` (cheap: prompt encoder + mask decoder) runs per prompt against the cached embedding.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from radvlsm.cache import EmbeddingCache
from radvlsm.encoder_process import niced
from radvlsm.frame import Frame
from radvlsm.geometry import Prompts
from radvlsm.io import Image2D, atomic_write
from radvlsm.models.registry import Backbone
from radvlsm.runtimes import EncoderRuntime, build_runtime
from radvlsm.versions.watcher import DecoderWatcher

logger = logging.getLogger(__name__)


@dataclass
class Encoded:
    """An image embedding with the sizes needed to map masks back to the original grid."""

    embedding: torch.Tensor  # (1, C, h, w)
    original_size: tuple[int, int]  # (rows, cols)
    input_size: tuple[int, int]  # resized (rows, cols) before padding
    cache_hit: bool = False
    encode_ms: float = 0.0
    runtime: str = "eager"  # the encoder runtime that computed the embedding
    #: the embedding of a fine-tuned (low-rank adapted) segmentation encoder, when one is served; the mask decoder
    #: reads it, while the proposer and the diagnosis head keep reading ``embedding`` (what they were trained on)
    seg_embedding: torch.Tensor | None = None
    #: the image's embedding-cache key, joined (what a runtime that decodes in another process knows it by)
    key: str | None = None

    @property
    def for_decoder(self) -> torch.Tensor:
        return self.seg_embedding if self.seg_embedding is not None else self.embedding

    @property
    def frame(self) -> Frame:
        """The image's coordinate frame (original <-> model input <-> grids), which ``original_size`` and
        ``input_size`` determine: every conversion of this encoding's prompts and outputs goes through it."""
        return Frame.of(self.original_size, self.input_size)


@dataclass
class LesionMask:
    mask: np.ndarray  # (rows, cols) bool
    score: float  # predicted IoU of the chosen mask
    box: list[float] | None  # the prompt box [x0, y0, x1, y1], if any
    n_points: int = 0


@dataclass
class Segmentation:
    lesions: list[LesionMask]
    timings_ms: dict[str, float] = field(default_factory=dict)
    cache_hit: bool = False
    runtime: str = "eager"  # encoder runtime of the embedding

    def label_map(self, multilabel: bool = False) -> np.ndarray:
        """``(rows, cols)`` uint8: lesion ``i`` labelled ``i+1`` if ``multilabel``, else every lesion 1."""
        if not self.lesions:
            raise ValueError("no lesions")
        out = np.zeros(self.lesions[0].mask.shape, np.uint8)
        for i, lesion in enumerate(self.lesions):
            out[lesion.mask] = (i + 1) if multilabel else 1
        return out


def _joined(key: tuple[str, ...]) -> str:
    return "|".join(key)


def preprocess(backbone: Backbone, rgb: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 ``(rows, cols, 3)`` -> normalised, padded ``(1, 3, S, S)`` tensor and the unpadded input size."""
    frame = Frame(rgb.shape[:2], backbone.img_size)
    x = frame.resize(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())
    if backbone.normalize == "unit":
        lo, hi = x.amin(), x.amax()
        x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
    else:
        mean = torch.tensor(backbone.pixel_mean).view(1, 3, 1, 1)
        std = torch.tensor(backbone.pixel_std).view(1, 3, 1, 1)
        x = (x - mean) / std
    return frame.pad(x), frame.input_size


def assign_points_to_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Index of the box each click refines: the containing box (smallest if several), else the nearest."""
    if len(boxes) == 0:
        return np.zeros(len(points), int)
    out = np.zeros(len(points), int)
    for i, (x, y) in enumerate(points):
        inside = (boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3])
        if inside.any():
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            out[i] = int(np.argmin(np.where(inside, areas, np.inf)))
        else:
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            out[i] = int(np.argmin((cx - x) ** 2 + (cy - y) ** 2))
    return out


class SegmentPredictor:
    """Box/point prompted segmentation over a cached embedding."""

    def __init__(self, backbone: Backbone, cache: EmbeddingCache | None = None, disk_cache: str | None = None,
                 runtime: str | EncoderRuntime = "eager", runtime_dir: str | None = None, encoder_nice: int = 0):
        self.backbone = backbone
        # How the image encoder runs (radvlsm.runtimes): "eager", "onnx", "onnx_int8", "auto", ...
        self.runtime = build_runtime(runtime, backbone, runtime_dir) if isinstance(runtime, str) else runtime
        # encoder_nice > 0: its encodes in a child process at that lower CPU priority (radvlsm.encoder_process)
        self.runtime = niced(self.runtime, encoder_nice)
        self.cache = cache if cache is not None else EmbeddingCache()
        # Optional persistent store (benchmarks and training reuse embeddings across runs); same key as memory.
        self.disk_cache = Path(disk_cache).expanduser() if disk_cache else None
        self._lock = threading.Lock()  # torch modules are shared; serialise forward passes
        # The image encoder has its own lock: a cached prompt (a decode) is answered while another request's new
        # image encodes, one encode and one in-process decode at a time per device (a batch's decodes may run in
        # the niced encoder process meanwhile: radvlsm.encoder_process). Nothing swaps the encoder's weights (an
        # adapted segmentation encoder is the watcher's copy and runs under the decoder's lock).
        self._encoder_lock = threading.Lock()
        # A batch of prompts (a pipeline's candidates) is decoded one prompt at a time, and before each it lets a
        # single prompt that is waiting (a user's click or box) go first: a decode costs about the same per prompt
        # batched or not (LiteMedSAM, this CPU), so a user waits one prompt's decode, not another user's batch.
        self._urgent = 0
        self._urgent_gate = threading.Condition()
        # Live decoder updates (radvlsm.versions.DecoderWatcher): checked before every decode, one stat() call.
        self.decoder_watcher = None

    def follow(self, store) -> str:
        """Serve the decoder versions the radvlsm train task publishes into ``store`` (a DecoderStore), live: its
        ``current`` is checked before every encode and decode; returns the version served now."""
        self.decoder_watcher = DecoderWatcher(store, self.backbone, self._lock)
        return self.decoder_watcher.refresh()

    @property
    def lock(self) -> threading.Lock:
        """The lock every forward pass of the prompt encoder and mask decoder (and an adapted segmentation
        encoder) holds; a watcher swapping their weights takes it too."""
        return self._lock

    @property
    def encoder_lock(self) -> threading.Lock:
        """The lock every pass of the runtime's image encoder holds (a warm-up's too)."""
        return self._encoder_lock

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def decoder_version(self) -> str:
        """The prompt encoder + mask decoder version in use (``shipped`` = the backbone's own weights)."""
        return self.decoder_watcher.version if self.decoder_watcher is not None else "shipped"

    def cache_key(self, image: Image2D) -> tuple[str, str, str, str]:
        return image.digest, self.backbone.name, self.backbone.version, self.runtime.name

    def _disk_path(self, image: Image2D, root: Path | None = None) -> Path | None:
        root = root if root is not None else self.disk_cache
        if root is None:
            return None
        suffix = "" if self.runtime.name == "eager" else f"-{self.runtime.name}"
        return root / f"{self.backbone.name}-{self.backbone.version}{suffix}" / f"{image.digest}.pt"

    @contextmanager
    def using_disk_cache(self, root: str | Path | None) -> Iterator[None]:
        """Read and fill the disk cache under ``root`` for a while (a training run: the labelled images' embeddings
        the server kept, :meth:`persist`), unless one is configured already. Not for a predictor other threads
        encode with meanwhile: they would write there too."""
        if self.disk_cache is not None or root is None:
            yield
            return
        self.disk_cache = Path(root).expanduser()
        try:
            yield
        finally:
            self.disk_cache = None

    def _encode_now(self, image: Image2D) -> Encoded:
        path = self._disk_path(image)
        if path is not None and path.exists():
            try:
                d = torch.load(path, map_location=self.device, weights_only=True)
                return Encoded(d["embedding"].float(), tuple(d["original_size"]), tuple(d["input_size"]),
                               encode_ms=0.0, runtime=self.runtime.name)
            except Exception as exc:  # derived data: an unreadable file is encoded again, not a failed run
                logger.warning(f"radvlsm: unreadable cached embedding {path} ({exc}); encoding the image again")
                path.unlink(missing_ok=True)
        enc = self._encode_compute(image)
        self.persist(image, enc)
        return enc

    def persist(self, image: Image2D, enc: Encoded, root: str | Path | None = None) -> None:
        """Store an embedding in the disk cache (fp16, atomic write), if one is configured, or under ``root``."""
        path = self._disk_path(image, Path(root).expanduser() if root is not None else None)
        if path is None or path.exists():
            return
        payload = {"embedding": enc.embedding.half().cpu(), "original_size": enc.original_size,
                   "input_size": enc.input_size}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))

    def _encode_compute(self, image: Image2D, module: torch.nn.Module | None = None) -> Encoded:
        """The runtime's encode, or ``module``'s (eager) when given (the adapted segmentation encoder)."""
        start = time.perf_counter()
        x, input_size = preprocess(self.backbone, image.rgb_uint8())
        with self._encoder_lock if module is None else self._lock, torch.inference_mode():
            if module is not None:
                emb = module(x.to(self.device)).to(self.device)
            elif hasattr(self.runtime, "decode_background"):  # the child keeps it by key for later decodes
                emb = self.runtime.encode(x, key=_joined(self.cache_key(image))).to(self.device)
            else:
                emb = self.runtime.encode(x).to(self.device)
        return Encoded(emb, image.shape, input_size, encode_ms=(time.perf_counter() - start) * 1e3,
                       runtime=self.runtime.name if module is None else "eager")

    def encode(self, image: Image2D) -> Encoded:
        if self.decoder_watcher is not None:
            self.decoder_watcher.refresh()
        cache_key = self.cache_key(image)
        enc, hit = self.cache.get_or_compute(cache_key, lambda: self._encode_now(image))
        seg_embedding, ms = None, 0.0 if hit else enc.encode_ms
        adapted = self.decoder_watcher.segmentation_encoder if self.decoder_watcher is not None else None
        if adapted is not None:  # (version, module): a second, eager encode for the mask decoder, cached too
            version, module = adapted
            key = (image.digest, self.backbone.name, self.backbone.version, f"segmentation-{version}")
            seg, seg_hit = self.cache.get_or_compute(key, lambda: self._encode_compute(image, module))
            seg_embedding, hit, ms = seg.embedding, hit and seg_hit, ms + (0.0 if seg_hit else seg.encode_ms)
        return Encoded(enc.embedding, enc.original_size, enc.input_size, cache_hit=hit, encode_ms=ms,
                       runtime=enc.runtime, seg_embedding=seg_embedding, key=_joined(cache_key))

    def decode(self, enc: Encoded, box: np.ndarray | None = None, points: np.ndarray | None = None,
               labels: np.ndarray | None = None, multimask: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Masks ``(K, rows, cols)`` bool and predicted IoUs ``(K,)`` for one prompt (K = 3 if multimask)."""
        logits, iou = self.decode_logits(enc, box, points, labels, multimask)
        return (logits > 0).numpy(), iou

    def decode_logits(self, enc: Encoded, box: np.ndarray | None = None, points: np.ndarray | None = None,
                      labels: np.ndarray | None = None, multimask: bool = False) -> tuple[torch.Tensor, np.ndarray]:
        """Mask logits ``(K, rows, cols)`` at the original resolution and predicted IoUs ``(K,)``."""
        frame = self._frame(enc)
        box_t = pts = None
        if box is not None:
            box_t = torch.as_tensor(frame.boxes_to_model(np.asarray(box)[None]), device=self.device)
        if points is not None and len(points):
            coords = torch.as_tensor(frame.points_to_model(points), device=self.device)[None]
            lab = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None]
            pts = (coords, lab)
        low_res, iou = self._run_decoder(enc, pts, box_t, multimask)
        return self.postprocess(low_res, enc), iou[0].float().cpu().numpy()

    @contextmanager
    def _decoder_turn(self, urgent: bool) -> Iterator[None]:
        """The decoder's lock; a batch's next prompt (``urgent`` False) first waits until no urgent one waits."""
        if urgent:
            with self._urgent_gate:
                self._urgent += 1
            try:
                self._lock.acquire()
            finally:
                with self._urgent_gate:
                    self._urgent -= 1
                    self._urgent_gate.notify_all()
        else:
            with self._urgent_gate:
                self._urgent_gate.wait_for(lambda: self._urgent == 0)
            self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    def _run_decoder(self, enc: Encoded, points, boxes: torch.Tensor | None, multimask: bool | None,
                     urgent: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder on the cached embedding: low-res logits ``(N, K, 256, 256)`` and IoUs.

        ``multimask``: False -> SAM's single mask (K=1), True -> its three multimask outputs (K=3), None -> all
        four (K=4: the decoder computes them all anyway, so extra candidates cost nothing).
        """
        if self.decoder_watcher is not None:
            self.decoder_watcher.refresh()
        onnx_decoder = getattr(self.runtime, "decoder", None) if self.decoder_version == "shipped" else None
        background = getattr(self.runtime, "decode_background", None) if onnx_decoder is not None else None
        if not urgent and background is not None and enc.key is not None and enc.seg_embedding is None:
            # a batch's prompt, decoded at the encoder process's lower priority: a user's prompt, decoded here
            # meanwhile, gets the cores first (radvlsm.encoder_process)
            with self._decoder_turn(False), torch.inference_mode():
                sparse, _ = self.backbone.prompt_encoder(points=points, boxes=boxes, masks=None)
            masks, iou = background(enc.key, enc.embedding, sparse)
            keep = slice(None) if multimask is None else slice(1, None) if multimask else slice(0, 1)
            return masks[:, keep].to(self.device), iou[:, keep].to(self.device)
        with self._decoder_turn(urgent), torch.inference_mode():
            sparse, dense = self.backbone.prompt_encoder(points=points, boxes=boxes, masks=None)
            if onnx_decoder is not None:  # the runtime's exported decoder: all four outputs, sliced as SAM does
                masks, iou = onnx_decoder.run(enc.for_decoder, sparse)
                keep = slice(None) if multimask is None else slice(1, None) if multimask else slice(0, 1)
                return masks[:, keep].to(self.device), iou[:, keep].to(self.device)
            kwargs = dict(image_embeddings=enc.for_decoder, image_pe=self.backbone.prompt_encoder.get_dense_pe(),
                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
            if multimask is None:
                return self.backbone.mask_decoder.predict_masks(**kwargs)
            return self.backbone.mask_decoder(**kwargs, multimask_output=multimask)

    def decode_boxes_lowres(self, enc: Encoded, boxes: np.ndarray, multimask: bool | None = None
                            ) -> tuple[torch.Tensor, np.ndarray]:
        """Many box prompts, logits left on the decoder's grid: ``(N, K, g, g)`` and IoUs (``multimask`` as in
        ``_run_decoder``; default all four masks per box). One prompt per decoder pass: a waiting single prompt
        goes between two of them (see ``_urgent``).

        Work that combines many masks (aggregation) is done on this grid and upsampled once (``lowres_to_image``).
        """
        box_t = torch.as_tensor(self._frame(enc).boxes_to_model(np.asarray(boxes, np.float32)), device=self.device)
        parts = [self._run_decoder(enc, None, box_t[i:i + 1], multimask, urgent=False) for i in range(len(box_t))]
        low_res, iou = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return low_res.float().cpu(), iou.float().cpu().numpy()

    def lowres_valid(self, enc: Encoded, grid: int) -> tuple[int, int]:
        """Rows and columns of a ``grid x grid`` decoder map that cover the image (the rest is padding)."""
        return self._frame(enc).decoder_valid(grid)

    def lowres_to_image(self, maps: torch.Tensor, enc: Encoded) -> torch.Tensor:
        """Cropped decoder-grid maps ``(K, h, w)`` -> ``(K, rows, cols)`` on the original grid (bilinear)."""
        return enc.frame.cropped_to_image(maps)

    def postprocess(self, low_res: torch.Tensor, enc: Encoded) -> torch.Tensor:
        """Low-res logits ``(1, K, 256, 256)`` -> ``(K, rows, cols)`` on the original grid."""
        # LiteMedSAM's decoder grid is already 256: the resampling to the model input is skipped (a no-op)
        return self._frame(enc).logits_to_image(low_res)[0].cpu()

    def _frame(self, enc: Encoded) -> Frame:
        return enc.frame.check(self.backbone.img_size)

    def segment(self, image: Image2D, prompts: Prompts, multimask: bool = False) -> Segmentation:
        """One lesion per box (clicks go to the box they fall in); clicks without boxes make one lesion."""
        if prompts.empty:
            raise ValueError("no prompt: give at least one box or point")
        t0 = time.perf_counter()
        enc = self.encode(image)
        t1 = time.perf_counter()
        lesions = []
        owner = assign_points_to_boxes(prompts.points, prompts.boxes)
        boxes = list(prompts.boxes) if len(prompts.boxes) else [None]
        for i, box in enumerate(boxes):
            sel = owner == i
            pts, lab = prompts.points[sel], prompts.point_labels[sel]
            masks, iou = self.decode(enc, box, pts if len(pts) else None, lab, multimask=multimask)
            best = int(np.argmax(iou))
            lesions.append(LesionMask(masks[best], float(iou[best]),
                                      None if box is None else [float(v) for v in box], int(sel.sum())))
        t2 = time.perf_counter()
        timings = {"encode": enc.encode_ms, "decode": (t2 - t1) * 1e3, "total": (t2 - t0) * 1e3}
        return Segmentation(lesions, timings, enc.cache_hit, enc.runtime)
