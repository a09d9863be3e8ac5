"""Request-level entry points shared by the MONAI Label infer tasks, the CLI and the benchmarks.

A request is the dict MONAI Label hands to an infer task (``image`` path plus the client's params); a response
is the label array, the loaded image (for its geometry) and a JSON-serialisable result.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from radvlsm.errors import InputError
from radvlsm.geometry import parse_prompts
from radvlsm.io import PIL_SUFFIXES, Image2D, file_suffix, load_image, save_mask
from radvlsm.params import get_bool, get_choice
from radvlsm.predictor import Segmentation, SegmentPredictor
from radvlsm.results import LabelResult, SamResult  # noqa: F401  (LabelResult re-exported: the tasks' answer type)
from radvlsm.task_specs import SAM
from radvlsm.volume import VOLUMES, Volume
from radvlsm.volume_prompts import requested_slice
from radvlsm.volume_tasks import sam_on_volume

RESULT_EXTENSIONS = [".png", ".nrrd", ".nii.gz", ".nii", ".mha"]
RESULT_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "int16": np.int16, "int32": np.int32,
                 "float32": np.float32}


def _request_path(request: dict[str, Any]) -> str:
    path = request.get("image")
    if not isinstance(path, str) or not path:
        raise InputError("image", "no image given (an image id from the datastore, or an uploaded file)")
    return path


def load_request_image(request: dict[str, Any]) -> Image2D:
    """The request's image, which must be 2D (a volume is an error naming it)."""
    return load_image(_request_path(request))


def check_2d_slice(request: dict[str, Any]) -> None:
    """A 2D image has one slice: ``slice`` may be absent or 0 (what Slicer sends for it), nothing else."""
    requested_slice(request, 1)


def load_request_input(request: dict[str, Any]) -> Image2D | Volume:
    """The request's image: 2D, or a volume (:mod:`radvlsm.volume`, the last few kept) for the tasks that run slice
    by slice."""
    return VOLUMES.load(_request_path(request))


def run_on_input(request: dict[str, Any], run_image: Callable[[Image2D, dict[str, Any]], LabelResult],
                 run_volume: Callable[[Volume, dict[str, Any]], LabelResult]) -> LabelResult:
    """The request's image to ``run_image`` (after :func:`check_2d_slice`), or its volume to ``run_volume``."""
    image = load_request_input(request)
    if isinstance(image, Volume):
        return run_volume(image, request)
    check_2d_slice(request)
    return run_image(image, request)


def result_extension(request: dict[str, Any], image: Image2D | Volume) -> str:
    """The client's ``result_extension`` (Slicer asks ``.nrrd``), else the input's own format, else NRRD."""
    ext = request.get("result_extension")
    if ext in (None, ""):
        ext = file_suffix(image.source)
        return ext if ext in RESULT_EXTENSIONS else ".nrrd"
    ext = str(ext) if str(ext).startswith(".") else f".{ext}"
    if ext not in RESULT_EXTENSIONS:
        raise InputError("result_extension", f"must be one of {RESULT_EXTENSIONS}, got {ext!r}")
    return ext


#: a result file lives alone in a private folder named so (see :func:`result_path`)
RESULT_FOLDER_PREFIX = "radvlsm-result-"


def result_path(suffix: str) -> str:
    """A new path for a result file, alone in a private folder of the temp dir (mode 0700).

    MONAI Label's client saves a result as ``<its temp dir>/<the basename the server sends>``; on the same machine
    that is the server's own file when the server writes to the temp dir itself, and the server deletes it after
    answering, so the client's copy vanished. In a folder of its own the server's file never shares a path with a
    client's, and its random name does not collide between clients either. :func:`remove_result` removes both."""
    folder = tempfile.mkdtemp(prefix=RESULT_FOLDER_PREFIX)
    return os.path.join(folder, f"radvlsm-{secrets.token_hex(8)}{suffix}")


def in_temp_dir(path: str) -> bool:
    """Whether ``path`` lies directly in the temp dir (where MONAI Label puts uploads and conversions, and
    :func:`result_path` its folders), its parent folder resolved."""
    return os.path.realpath(os.path.dirname(os.path.abspath(path))) == os.path.realpath(tempfile.gettempdir())


def remove_result(path: str) -> None:
    """Delete a result file and, if it is one of :func:`result_path`'s, its folder (anything else: the file)."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder).startswith(RESULT_FOLDER_PREFIX) and in_temp_dir(folder):
        shutil.rmtree(folder, ignore_errors=True)
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.unlink(path)


def write_markups(markups: dict[str, Any]) -> str:
    """Write a Slicer markups document to a result ``.json`` file the server streams back (and deletes)."""
    path = result_path(".json")
    with open(path, "w") as f:
        json.dump(markups, f)
    return path


def write_label(label: np.ndarray, image: Image2D | Volume, request: dict[str, Any]) -> str:
    """Write ``label`` with the image's geometry to a result file the server streams back (and deletes)."""
    ext = result_extension(request, image)
    if label.ndim == 3 and ext in PIL_SUFFIXES:
        raise InputError("result_extension", f"the label of a volume is 3D and cannot be {ext}; use one of "
                                             f"{[e for e in RESULT_EXTENSIONS if e not in PIL_SUFFIXES]}")
    dtype_name = get_choice(request, "result_dtype", "uint8", list(RESULT_DTYPES))
    if ext in PIL_SUFFIXES and dtype_name not in ("uint8", "uint16"):
        dtype_name = "uint8"
    compress = get_bool(request, "result_compress", True)
    path = result_path(ext)
    try:
        save_mask(label.astype(RESULT_DTYPES[dtype_name]), path, like=image)
        if ext not in PIL_SUFFIXES and ext != ".nii.gz" and not compress:
            # MONAI Label's `result_compress`: OHIF asks false (its NRRD reader has no gzip); compressed otherwise
            import SimpleITK as sitk

            sitk.WriteImage(sitk.ReadImage(path), path, useCompression=False)
    except BaseException:
        remove_result(path)  # a failed write leaves no folder behind
        raise
    return path


class SamService:
    """The ``sam`` task: prompts in any supported convention -> label map + per-lesion JSON (2D images, or one
    slice of a volume, propagated through it with ``propagate``: :mod:`radvlsm.volume_tasks`)."""

    def __init__(self, predictor: SegmentPredictor):
        self.predictor = predictor

    def run(self, request: dict[str, Any]) -> LabelResult:
        t0 = time.perf_counter()
        image = load_request_input(request)
        t_load = (time.perf_counter() - t0) * 1e3
        if isinstance(image, Volume):
            return sam_on_volume(self, image, request, t_load)
        check_2d_slice(request)
        seg, multilabel = self.segment(image, request)
        result = self.result_json(image, seg, multilabel, t_load, t0)
        if SAM.read(request, "propagate"):  # Slicer sends the task's config, 2D image or not
            result["notes"] = ["propagate: the image has a single slice; nothing to propagate"]
        return LabelResult(seg.label_map(multilabel), image, result)

    def segment(self, image: Image2D, request: dict[str, Any]) -> tuple[Segmentation, bool]:
        """The prompts of ``request`` decoded on ``image``; and whether lesions are labelled 1..N."""
        prompts = parse_prompts(request, image.shape)
        if prompts.empty:
            raise InputError("boxes", "no prompt: give boxes [[x0,y0,x1,y1]], a Slicer roi, or foreground points")
        multilabel = SAM.read(request, "multilabel")
        # Several outputs help an ambiguous single click; boxes are what LiteMedSAM was trained on (one output).
        single_click = len(prompts.boxes) == 0 and len(prompts.points) == 1
        multimask = SAM.read(request, "multimask", single_click)
        return self.predictor.segment(image, prompts, multimask=multimask), multilabel

    def result_json(self, image: Image2D, seg: Segmentation, multilabel: bool, t_load: float, t0: float
                    ) -> dict[str, Any]:
        timings = {"load": round(t_load, 1), **{k: round(v, 1) for k, v in seg.timings_ms.items()}}
        timings["total"] = round((time.perf_counter() - t0) * 1e3, 1)
        return SamResult.from_segmentation(seg, multilabel, self.predictor, image.shape, timings).to_json()
