"""Training data: (image, corrected mask) pairs, the held-back split rule, and cached frozen-encoder embeddings.

Split rule (:mod:`radvlsm.holdout`, re-exported here; stable as labels accumulate, so an image never moves between
train and validation as more are saved): an image is held back for validation when ``sha1(image_id) mod 5 == 0``
(~20 %). If that leaves no validation image and there are at least two, the image with the smallest hash is held
back, so every run is validated on at least one image. Fewer than two labelled images cannot be trained (nothing
to validate on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from radvlsm.frame import Frame
from radvlsm.geometry import mask_to_box
from radvlsm.holdout import HOLD_OUT_MODULUS as HOLD_OUT_MODULUS
from radvlsm.holdout import MIN_LABELLED as MIN_LABELLED
from radvlsm.holdout import id_hash as id_hash
from radvlsm.holdout import split as split
from radvlsm.io import Image2D, load_image, load_mask

logger = logging.getLogger(__name__)
#: connected components smaller than this many pixels are not prompted as lesions of their own
MIN_COMPONENT_PX = 16
PATHOLOGIES = ("benign", "malignant")


@dataclass
class TrainSample:
    """One corrected label; ``pathology`` (benign/malignant) travels in the label's info JSON when given.

    ``slice``: one slice of a volume's label (:func:`volume_samples`), trained on as a 2D image; every slice of a
    volume keeps the volume's ``image_id``, so the held-back split and the folds keep a volume (a patient) whole."""

    image_id: str
    image_path: str | Path
    mask_path: str | Path
    pathology: str | None = None
    slice: int | None = None

    @property
    def sample_id(self) -> str:
        """Unique per sample: the image id, with ``[k]`` for slice k of a volume."""
        return self.image_id if self.slice is None else f"{self.image_id}[{self.slice}]"

    def load(self) -> tuple[Image2D, np.ndarray]:
        """The image and its label (bool), checked to match; slice ``slice`` of a volume when set."""
        if self.slice is None:
            image = load_image(self.image_path)
            return image, load_mask(self.mask_path, image.shape) > 0
        from radvlsm.volume import load_input, load_volume_label

        volume = load_input(self.image_path)
        if isinstance(volume, Image2D) or not 0 <= self.slice < volume.n_slices:
            raise ValueError(f"{self.image_id}: slice {self.slice} is not a slice of this image")
        return volume.slice_image(self.slice), load_volume_label(self.mask_path, volume)[self.slice] > 0


#: of a volume's lesion-free slices, at most this many per lesion slice train (spread over the volume): they teach
#: presence ("no lesion here") without drowning the lesion slices
EMPTY_SLICES_PER_LESION_SLICE = 1.0


def volume_samples(sample: TrainSample) -> list[TrainSample]:
    """A 2D sample as it is; a volume's label as its slices: every slice with a lesion, and lesion-free slices
    (evenly spread, :data:`EMPTY_SLICES_PER_LESION_SLICE`) when the label marks some lesion."""
    from radvlsm.volume import Volume, load_input, load_volume_label, slice_areas

    volume = load_input(sample.image_path)
    if not isinstance(volume, Volume):
        return [sample]
    on = slice_areas(load_volume_label(sample.mask_path, volume)) > 0
    lesion, empty = np.nonzero(on)[0], np.nonzero(~on)[0]
    keep = min(len(empty), int(round(EMPTY_SLICES_PER_LESION_SLICE * len(lesion))))
    chosen = empty[np.linspace(0, len(empty) - 1, keep).round().astype(int)] if keep else empty[:0]
    return [TrainSample(sample.image_id, sample.image_path, sample.mask_path, sample.pathology, int(k))
            for k in sorted({*lesion.tolist(), *chosen.tolist()})]


@dataclass
class Item:
    """A sample ready for the decoder: the frozen embedding and the masks in the model's padded frame."""

    image_id: str  # the sample's id (TrainSample.sample_id)
    embedding: torch.Tensor  # (1, C, h, w) fp16, CPU
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    mask: np.ndarray  # (rows, cols) bool, the whole corrected label
    lesions: list[tuple[np.ndarray, np.ndarray]]  # per lesion: tight box in the model frame, mask (rows, cols)
    pathology: str | None = None
    seg_embedding: torch.Tensor | None = None  # the served adapted segmentation encoder's embedding, if any
    features: torch.Tensor | None = None  # input of the encoder's last stage, for training encoder adapters
    group: str = ""  # the image (volume) it comes from; folds keep a group whole ("" = its own)

    @property
    def group_id(self) -> str:
        return self.group or self.image_id

    @property
    def decoder_embedding(self) -> torch.Tensor:
        """What the mask decoder reads (the adapted encoder's embedding when one is served)."""
        return self.seg_embedding if self.seg_embedding is not None else self.embedding

    @property
    def frame(self) -> Frame:
        """The coordinate frame of the encoding this item was prepared from (:attr:`Encoded.frame`): its targets
        and boxes are built in it, as the served masks are mapped back through it."""
        return Frame.of(self.original_size, self.input_size)


def lesion_components(mask: np.ndarray) -> list[np.ndarray]:
    """Each connected lesion of a label (8-connected, at least ``MIN_COMPONENT_PX``), largest first."""
    from scipy import ndimage

    labels, n = ndimage.label(mask > 0, structure=np.ones((3, 3)))
    comps = [labels == i for i in range(1, n + 1)]
    comps = [c for c in comps if c.sum() >= MIN_COMPONENT_PX] or ([mask > 0] if mask.any() else [])
    return sorted(comps, key=lambda c: -int(c.sum()))


def prepare(samples: list[TrainSample], predictor, max_lesions: int = 3,
            features: Callable[[torch.Tensor], torch.Tensor] | None = None, keep_empty: bool = False) -> list[Item]:
    """Load each pair, encode the image with the frozen encoder (memory/disk cached), skip empty masks unless
    ``keep_empty`` (a lesion-free image: an :class:`Item` with no ``lesions``, what the proposer learns presence
    from).

    ``features``: the frozen part of the encoder (:func:`radvlsm.training.lora.split_encoder`), run on each
    preprocessed image when encoder adapters are trained."""
    from radvlsm.predictor import preprocess

    items, encoded, from_disk = [], 0, 0
    for s in samples:
        image, mask = s.load()
        comps = lesion_components(mask)[:max_lesions]
        if not comps and not keep_empty:
            logger.warning(f"training: {s.sample_id} has an empty label; skipped")
            continue
        enc = predictor.encode(image)
        if not enc.cache_hit:  # a disk-cache read reports no encode time
            encoded, from_disk = encoded + (enc.encode_ms > 0), from_disk + (enc.encode_ms == 0)
        frame = enc.frame  # the served frame: the boxes and targets of training are built in it
        lesions = [(frame.boxes_to_model(np.array(mask_to_box(c), np.float32))[0], c) for c in comps]
        item = Item(s.sample_id, enc.embedding.detach().to("cpu", torch.float16), enc.original_size,
                    enc.input_size, mask, lesions, s.pathology, group=s.image_id)
        if enc.seg_embedding is not None:
            item.seg_embedding = enc.seg_embedding.detach().to("cpu", torch.float16)
        if features is not None:
            x, _ = preprocess(predictor.backbone, image.rgb_uint8())
            with torch.inference_mode():
                item.features = features(x.to(predictor.device)).to("cpu", torch.float16)
        items.append(item)
    if encoded or from_disk:
        logger.info(f"training: {encoded} images encoded, {from_disk} embeddings read from the disk cache")
    return items


def model_frame_target(mask: np.ndarray, input_size: tuple[int, int], img_size: int) -> torch.Tensor:
    """A label resized to the model's input (longest side ``img_size``), zero padded: ``(img_size, img_size)``
    (:meth:`Frame.mask_to_model` of the label's frame; ``input_size`` must be that frame's)."""
    return Frame.of(np.shape(mask), input_size).check(img_size).mask_to_model(mask)


def jitter_box(box: np.ndarray, input_size: tuple[int, int], max_shift: float, rng: np.random.Generator
               ) -> np.ndarray:
    """MedSAM's box augmentation: each side moves outward by a random 0..``max_shift`` pixels (model frame)."""
    x0, y0, x1, y1 = box
    s = rng.uniform(0, max_shift, 4)
    h, w = input_size
    return np.array([max(0, x0 - s[0]), max(0, y0 - s[1]), min(w - 1, x1 + s[2]), min(h - 1, y1 + s[3])],
                    np.float32)


def error_click(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, int] | None:
    """A simulated corrective click: the innermost pixel of the larger error region (missed lesion -> positive,
    false lesion -> negative), as an annotator clicks the middle of what is wrong. ``(x, y), label`` or None."""
    from scipy import ndimage

    fn, fp = target & ~pred, pred & ~target
    region, label = (fn, 1) if fn.sum() >= fp.sum() else (fp, 0)
    if region.sum() < 4:
        return None
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x, y], np.float32), label
