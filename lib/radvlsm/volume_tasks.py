"""The request-level tasks on a volume: one slice (Slicer's ``slice``), a lesion propagated, text on every slice.

Every answer is a label of the volume's full geometry (:func:`radvlsm.service.write_label` writes it with the
volume's spacing, origin and direction); a one-slice answer has only that slice filled, which is what Slicer's
plugin merges for a model of ``dimension`` 2. The JSON says which slice(s) and, per lesion, its extent in slices
and millimetres cubed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from radvlsm.errors import InputError
from radvlsm.geometry import mask_to_box
from radvlsm.io import Image2D
from radvlsm.predictor import Segmentation, SegmentPredictor
from radvlsm.propagation import PropagationConfig, propagate
from radvlsm.results import LabelResult
from radvlsm.task_specs import SAM
from radvlsm.volume import Volume, slice_areas
from radvlsm.volume_prompts import prompt_slice, requested_range, slice_disagrees_with_roi, slice_request


class PromptedTask(Protocol):
    """What :func:`sam_on_volume` needs of :class:`radvlsm.service.SamService` (which imports this module)."""

    predictor: SegmentPredictor

    def segment(self, image: Image2D, request: dict[str, Any]) -> tuple[Segmentation, bool]: ...

    def result_json(self, image: Image2D, seg: Segmentation, multilabel: bool, t_load: float, t0: float
                    ) -> dict[str, Any]: ...


def embed(volume: Volume, k: int, label: np.ndarray | None) -> np.ndarray | None:
    """A slice's 2D label as a label of the whole volume, empty elsewhere."""
    if label is None:
        return None
    out = np.zeros(volume.shape, label.dtype)
    out[k] = label
    return out


def extent_json(mask: np.ndarray, volume: Volume) -> dict[str, Any]:
    """Where a 3D lesion mask lies: its slices, voxels, volume in mm^3, its largest slice and box there, and the
    Slicer roi ``[x0, x1, y0, y1, z0, z1]`` around all of it."""
    per_slice = slice_areas(mask)
    slices = np.nonzero(per_slice)[0]
    if not len(slices):
        return {"slices": [], "n_slices": 0, "voxels": 0, "volume_mm3": 0.0}
    best = int(slices[np.argmax(per_slice[slices])])
    zs, ys, xs = np.nonzero(mask)
    voxels = int(per_slice.sum())
    return {"slices": [int(slices[0]), int(slices[-1])], "n_slices": int(len(slices)), "voxels": voxels,
            "volume_mm3": round(voxels * volume.voxel_mm3, 2), "largest_slice": best,
            "largest_slice_box": mask_to_box(mask[best]),
            "roi": [int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max()), int(zs.min()), int(zs.max())]}


def slice_notes(request: dict[str, Any], volume: Volume, k: int) -> list[str]:
    """Why the slice worked on is not the ``slice`` the request sent, when it is not."""
    if not slice_disagrees_with_roi(request, volume.n_slices):
        return []
    return [f"slice {request['slice']} lies outside the roi's z range; the roi's slice {k} was used (Slicer sends "
            "the slice view's offset in mm as slice when only a roi is placed)"]


def volume_keys(result: dict[str, Any], volume: Volume, k: int | None = None, request: dict[str, Any] | None = None,
                **keys: Any) -> dict[str, Any]:
    """The keys every answer on a volume carries; on slice ``k`` the 2D answer's Slicer rois get their z."""
    result.update(image_shape=list(volume.shape[1:]), volume_shape=list(volume.shape), **keys)
    if k is not None and request is not None and (notes := slice_notes(request, volume, k)):
        result["notes"] = [*result.get("notes", []), *notes]
    if k is not None:
        result["slice"] = k
        for name in ("lesions", "candidates"):
            for entry in result.get(name) or []:
                roi = entry.get("roi")
                if isinstance(roi, list) and len(roi) == 6 and roi[4] == roi[5] == 0:
                    entry["roi"] = [*roi[:4], k, k]
    return result


def required_slice(request: dict[str, Any], volume: Volume, task: str) -> int:
    k = prompt_slice(request, volume.n_slices)
    if k is None:
        raise InputError("slice", f"the image is a volume of {volume.n_slices} slices: {task} works on one slice; "
                                  f"give slice (0..{volume.n_slices - 1}), or clicks/roi with their z")
    return k


def on_slice(run_image: Callable[[Any, dict[str, Any]], LabelResult], volume: Volume, request: dict[str, Any],
             k: int) -> LabelResult:
    """A 2D task run on slice ``k``; its label placed in the volume, its markups already on the slice's plane."""
    sub, dropped = slice_request(request, k)
    res = run_image(volume.slice_image(k), sub)
    volume_keys(res.result, volume, k, request)
    if dropped:
        res.result["ignored_clicks"] = dropped
    return LabelResult(embed(volume, k, res.label), volume, res.result, markups=res.markups)


def sam_on_volume(service: PromptedTask, volume: Volume, request: dict[str, Any], t_load: float) -> LabelResult:
    """``sam`` on slice k; with ``propagate`` each lesion is carried through ``slices`` (default: all)."""
    t0 = time.perf_counter() - t_load / 1e3
    k = required_slice(request, volume, "sam")
    do_propagate = SAM.read(request, "propagate")
    first, last = requested_range(request, volume.n_slices)
    if do_propagate and not first <= k <= last:
        raise InputError("slice", f"slice {k} lies outside slices [{first}, {last}]")
    sub, dropped = slice_request(request, k)
    image = volume.slice_image(k)
    seg, multilabel = service.segment(image, sub)
    label = np.zeros(volume.shape, np.uint8)
    extents: list[dict[str, Any]] = []
    if not do_propagate:
        label[k] = seg.label_map(multilabel)
    else:
        encodes = 0
        for i, lesion in enumerate(seg.lesions):
            if not lesion.mask.any():  # nothing on the prompted slice: nothing to carry
                extents.append({**extent_json(lesion.mask[None], volume), "stopped": {"down": "empty mask",
                                                                                       "up": "empty mask"}})
                continue
            p = propagate(service.predictor, volume, k, lesion.mask, lesion.score, first, last, PropagationConfig())
            encodes += p.encodes
            lesion_mask = np.zeros(volume.shape, bool)
            for z, m in p.masks.items():
                lesion_mask[z] = m
            label[lesion_mask & (label == 0)] = i + 1 if multilabel else 1
            extents.append({**extent_json(lesion_mask, volume), "stopped": p.stopped,
                            "predicted_iou_by_slice": {str(z): round(s, 3) for z, s in
                                                       sorted(p.predicted_iou.items())}})
    result = service.result_json(image, seg, multilabel, t_load, t0)
    volume_keys(result, volume, k, request, propagated=do_propagate)
    for entry, extent in zip(result["lesions"], extents, strict=False):
        entry.update(extent)  # its roi is now the whole lesion's
    if do_propagate:
        result["latencies_ms"]["total"] = round((time.perf_counter() - t0) * 1e3, 1)
        result["encodes"] = encodes
    if dropped:
        result["ignored_clicks"] = dropped
    return LabelResult(label, volume, result)
