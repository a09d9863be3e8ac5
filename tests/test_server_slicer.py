"""End to end as 3D Slicer's MONAI Label plugin talks: its own ``MONAILabelLib`` client and its request shapes.

The client is the file the Slicer extension ships (``plugins/slicer/MONAILabel/MONAILabelLib/client.py``, installed
with monailabel); ``SlicerRequests`` mirrors what ``MONAILabel.py`` builds around it: each model's ``config`` from
``/info`` as parameters (first element of a list), ``result_extension=.nrrd`` and ``result_dtype=uint8`` on every
infer, deepgrow clicks as IJK ``[i, j, k]`` with ``label``, ``roi`` as IJK ``[i0, i1, j0, j1, k0, k1]`` (pairs
max-first where Slicer's RAS-to-IJK flips an axis) and ``slice`` for 2D models; local volumes are uploaded as
``.nrrd`` (``upload_image``) and corrected labels saved as ``.nrrd`` with ``label_info``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from radvlsm.geometry import mask_to_box
from tests.conftest import SAMPLES, dice, reference, tight_box

pytestmark = pytest.mark.e2e
CASE = "bus_0075-r"  # the PNG study on the server
NRRD_CASE = "bus_1033-r"  # turned into a local NRRD volume, uploaded as Slicer does
SPACING, ORIGIN = (0.08, 0.11, 1.0), (12.5, -40.0, 3.0)  # mm, LPS: what a DICOM-derived ultrasound volume has
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # axes flipped, as Slicer's RAS <-> LPS gives


def slicer_client_module():
    """The Slicer extension's client module, loaded from the monailabel installation (not monailabel.client)."""
    candidates = [Path(p) / "monailabel/plugins/slicer/MONAILabel/MONAILabelLib/client.py"
                  for p in {sys.prefix, sys.base_prefix}]
    path = next((p for p in candidates if p.exists()), None)
    assert path is not None, f"Slicer plugin client not found in {candidates}"
    spec = importlib.util.spec_from_file_location("slicer_monailabel_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SlicerRequests:
    """The request building of MONAILabel.py (getParamsFromConfig, logic.infer, onClickDeepgrow) over its client."""

    def __init__(self, url: str, tmpdir: Path):
        self.client = slicer_client_module().MONAILabelClient(url, tmpdir=str(tmpdir))
        self.info = self.client.info()

    def config(self, model: str) -> dict:
        cfg = self.info["models"][model].get("config", {})
        return {k: v[0] if isinstance(v, list) else v for k, v in cfg.items()}

    def infer(self, model: str, image_id: str, params: dict | None = None):
        params = {**self.config(model), **(params or {}), "result_extension": ".nrrd", "result_dtype": "uint8"}
        return self.client.infer(model, image_id, params)

    def deepgrow(self, model: str, image_id: str, foreground: list, background: list, roi: list | None = None):
        is_3d = self.info["models"][model].get("dimension", 3) != 2
        points = foreground or background
        slice_index = points[-1][2] if points else None
        params = {"label": "lesion", "foreground": foreground, "background": background, **self.config(model)}
        if roi:
            params["roi"] = roi
        if not is_3d:
            params["slice"] = slice_index
        return self.infer(model, image_id, params)


def ijk_roi(box: list[float]) -> list[int]:
    """SAM box [x0, y0, x1, y1] -> the roi Slicer sends for it: IJK, each pair max-first (flipped axes)."""
    x0, y0, x1, y1 = (round(v) for v in box)
    return [x1, x0, y1, y0, 0, 0]


def centre_click(mask: np.ndarray) -> list[int]:
    """A click well inside the lesion, as IJK [i (column), j (row), k]."""
    rows, cols = np.nonzero(mask)
    r, c = int(np.median(rows)), int(np.median(cols))
    assert mask[r, c]
    return [c, r, 0]


def read_label(path: str) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(path)
    arr = sitk.GetArrayFromImage(img)
    return (arr[0] if arr.ndim == 3 else arr), img


@pytest.fixture(scope="module")
def slicer(server, tmp_path_factory) -> SlicerRequests:
    return SlicerRequests(server.url, tmp_path_factory.mktemp("slicer"))


@pytest.fixture(scope="module")
def nrrd_study(slicer, tmp_path_factory) -> tuple[str, sitk.Image]:
    """A local 2D image saved as Slicer saves a volume node (3D NRRD, one slice, LPS geometry) and uploaded."""
    gray = np.array(sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLES / "images" / f"{NRRD_CASE}.png"))))
    gray = gray if gray.ndim == 2 else gray[..., 0]
    vol = sitk.GetImageFromArray(gray[None])
    vol.SetSpacing(SPACING)
    vol.SetOrigin(ORIGIN)
    vol.SetDirection(DIRECTION)
    path = tmp_path_factory.mktemp("nrrd") / "slicer-volume.nrrd"
    sitk.WriteImage(vol, str(path))
    image_id = "slicer_local_volume"
    slicer.client.upload_image(str(path), image_id)
    return image_id, vol


def assert_same_geometry(label: sitk.Image, image: sitk.Image) -> None:
    """The label overlays the volume in Slicer: same grid, spacing, origin and axes (all three for a 3D NRRD)."""
    assert label.GetDimension() == image.GetDimension()
    assert label.GetSize() == image.GetSize()
    assert np.allclose(label.GetSpacing(), image.GetSpacing())
    assert np.allclose(label.GetOrigin(), image.GetOrigin())
    assert np.allclose(label.GetDirection(), image.GetDirection())


def test_info_shows_each_task_where_slicer_looks(slicer):
    models = slicer.info["models"]
    assert models["sam"]["type"] == "deepgrow" and models["sam"]["dimension"] == 2
    assert models["radvlsm"]["type"] == "segmentation" and slicer.config("radvlsm")["text"]
    assert models["box_proposal"]["type"] == "detection"
    assert models["diagnosis"]["type"] == "classification"
    assert "first" in slicer.info["strategies"] and "uncertainty" in slicer.info["strategies"]


def test_sam_click_and_roi_on_the_png_study(slicer, tmp_path):
    ref = reference(CASE)
    label_file, res = slicer.deepgrow("sam", CASE, [centre_click(ref)], [], roi=ijk_roi(tight_box(CASE)))
    assert label_file.endswith(".nrrd")
    mask, img = read_label(label_file)
    assert mask.dtype == np.uint8 and mask.shape == ref.shape
    assert dice(mask > 0, ref) >= 0.8
    assert res["lesions"][0]["box"] == tight_box(CASE)  # the flipped IJK roi came back as the lesion's SAM box


def test_sam_click_only_on_the_nrrd_study(slicer, nrrd_study):
    image_id, vol = nrrd_study
    ref = reference(NRRD_CASE)
    x0, y0, x1, y1 = tight_box(NRRD_CASE)
    label_file, _ = slicer.deepgrow("sam", image_id, [], [], roi=ijk_roi([x0, y0, x1, y1]))
    mask, label = read_label(label_file)
    assert_same_geometry(label, vol)
    assert dice(mask > 0, ref) >= 0.8


@pytest.mark.parametrize("study", ["png", "nrrd"])
def test_radvlsm_from_its_config_text(slicer, nrrd_study, study):
    image_id, case = (CASE, CASE) if study == "png" else (nrrd_study[0], NRRD_CASE)
    label_file, res = slicer.infer("radvlsm", image_id)
    mask, label = read_label(label_file)
    assert res["found"] and dice(mask > 0, reference(case)) >= 0.7
    if study == "nrrd":
        assert_same_geometry(label, nrrd_study[1])
    # the lesion's box and its Slicer roi describe the same pixels as the mask
    lesion = res["lesions"][0]
    assert np.allclose(lesion["box"], mask_to_box(mask == lesion["label"]), atol=2)


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


@pytest.mark.parametrize("study", ["png", "nrrd"])
def test_box_proposal_returns_roi_markups_on_the_lesion(slicer, nrrd_study, study):
    """Slicer loads a detection's .json result as ROI markups (physical LPS mm): each ROI, mapped back through the
    volume's geometry, is the JSON's pixel box, and the top one covers the reference lesion."""
    image_id, case = (CASE, CASE) if study == "png" else (nrrd_study[0], NRRD_CASE)
    result_file, res = slicer.infer("box_proposal", image_id)
    assert result_file.endswith(".json")
    doc = json.loads(Path(result_file).read_text())
    assert "markups-schema" in doc["@schema"] and len(doc["markups"]) == len(res["candidates"]) >= 1
    if study == "png":
        image = sitk.ReadImage(str(SAMPLES / "images" / f"{CASE}.png"))
        spacing, origin, direction = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)
    else:
        image = nrrd_study[1]
        spacing, origin = image.GetSpacing(), image.GetOrigin()
        direction = np.array(image.GetDirection()).reshape(3, 3)
    for roi, cand in zip(doc["markups"], res["candidates"], strict=True):
        assert roi["type"] == "ROI" and roi["coordinateSystem"] == "LPS"
        assert np.allclose(np.array(roi["orientation"]).reshape(3, 3), direction)
        # centre back to a continuous pixel index, size back to pixels: the candidate's box
        centre = np.linalg.solve(direction, np.array(roi["center"]) - origin) / np.array(spacing)
        half = np.array(roi["size"][:2]) / np.array(spacing[:2]) / 2
        x0, y0, x1, y1 = cand["box"]
        assert np.allclose(centre, [(x0 + x1) / 2, (y0 + y1) / 2, 0], atol=1e-3)
        assert np.allclose(half, [(x1 - x0 + 1) / 2, (y1 - y0 + 1) / 2], atol=1e-3)
    assert image.GetSize()[:2] == reference(case).shape[::-1]
    assert box_iou(res["candidates"][0]["box"], tight_box(case)) >= 0.5


def test_correct_submit_then_diagnose_the_saved_label(slicer, nrrd_study, tmp_path):
    """Submit Label as Slicer does (labelmap NRRD with label_info), then the classification task reads it."""
    image_id, vol = nrrd_study
    ref = reference(NRRD_CASE).astype(np.uint8)
    lab = sitk.GetImageFromArray(ref[None])
    lab.CopyInformation(vol)
    path = tmp_path / "label.nrrd"
    sitk.WriteImage(lab, str(path))
    saved = slicer.client.save_label(image_id, str(path), params={"label_info": [{"name": "lesion", "idx": 1}]})
    assert saved["image"] == image_id
    label_file, res = slicer.infer("diagnosis", image_id)
    assert res["mask_source"] == "saved final label", res
    assert 0 <= res["probability_malignant"] <= 1 and res["prediction"]
    mask, label = read_label(label_file)  # what was described comes back, on the volume's geometry
    assert_same_geometry(label, vol)
    assert dice(mask > 0, ref) == 1.0 and res["label_names"] == {"lesion": 1}
