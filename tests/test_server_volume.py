"""Volumes end to end, slice by slice: Slicer's own client on a real 3D NIfTI (clicks on slice k -> a 3D label
whose only filled slice is k; propagation -> the lesion's slices), the stock client's text path on the whole
volume, a saved 3D correction diagnosed, and every bad slice, roi or geometry a 4xx naming its field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from monailabel.client import MONAILabelClient

from tests.conftest import dice
from tests.test_server_slicer import SlicerRequests, assert_same_geometry
from tests.volumes import SPACING, ijk_roi, lesion_volume, write_volume

pytestmark = pytest.mark.e2e
VOLUME_ID = "synthetic_volume"
K = 5  # the lesion's largest slice


@pytest.fixture(scope="module")
def study(server, tmp_path_factory):
    """The synthetic volume uploaded as Slicer uploads a local volume; its file, pixels and lesion."""
    pixels, lesion = lesion_volume()
    path = write_volume(tmp_path_factory.mktemp("volume") / "volume.nii.gz", pixels)
    slicer = SlicerRequests(server.url, tmp_path_factory.mktemp("slicer-volume"))
    slicer.client.upload_image(str(path), VOLUME_ID)
    return slicer, path, lesion


def read(path: str) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(img), img


def filled_slices(label: np.ndarray) -> set[int]:
    return set(np.nonzero(label.reshape(label.shape[0], -1).any(1))[0].tolist())


def test_clicks_on_slice_k_give_a_3d_label_filled_on_k_only(study):
    slicer, path, lesion = study
    ys, xs = np.nonzero(lesion[K])
    click = [int(np.median(xs)), int(np.median(ys)), K]
    label_file, res = slicer.deepgrow("sam", VOLUME_ID, [click], [], roi=ijk_roi(lesion[K], K))
    label, img = read(label_file)
    assert_same_geometry(img, sitk.ReadImage(str(path)))
    assert filled_slices(label) == {K} and res["slice"] == K and res["volume_shape"] == list(lesion.shape)
    assert dice(label[K] > 0, lesion[K]) >= 0.85
    assert res["lesions"][0]["roi"][4:] == [K, K]  # the answer's roi is on the slice it was asked on


def test_a_roi_alone_lands_on_its_own_slice_whatever_slice_slicer_sends(study):
    """Slicer, starting from a placed ROI with no click, sends the slice view's offset in mm as ``slice`` (here
    K * 2 mm + 30 mm origin = 40): the roi's own z names the slice."""
    slicer, _, lesion = study
    params = {**slicer.config("sam"), "roi": ijk_roi(lesion[K], K), "slice": 40, "foreground": [], "background": [],
              "label": "lesion"}
    label_file, res = slicer.infer("sam", VOLUME_ID, params)
    label, _ = read(label_file)
    assert filled_slices(label) == {K} and res["slice"] == K and "roi's slice 5" in res["notes"][0]
    assert dice(label[K] > 0, lesion[K]) >= 0.85


def test_propagation_follows_the_lesion_through_its_slices(study):
    slicer, path, lesion = study
    params = {**slicer.config("sam"), "propagate": True, "roi": ijk_roi(lesion[K], K), "slice": K,
              "foreground": [], "background": [], "label": "lesion"}
    label_file, res = slicer.infer("sam", VOLUME_ID, params)
    label, img = read(label_file)
    assert_same_geometry(img, sitk.ReadImage(str(path)))
    truth = filled_slices(lesion)
    got = filled_slices(label)
    assert len(got) >= len(truth) - 2 and got <= set(range(min(truth) - 1, max(truth) + 2)), (got, truth)
    assert dice(label > 0, lesion) >= 0.75
    entry = res["lesions"][0]
    assert entry["slices"] == [min(got), max(got)] and entry["n_slices"] == len(got)
    assert np.isclose(entry["volume_mm3"], (label > 0).sum() * np.prod(SPACING), rtol=1e-3)
    assert set(entry["stopped"]) == {"down", "up"} and res["propagated"] is True


def test_text_on_the_whole_volume_with_the_stock_client(server, study, tmp_path):
    _, path, lesion = study
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    label_file, res = client.infer("radvlsm", VOLUME_ID, {"text": "lesion", "result_extension": ".nii.gz"})
    label, img = read(label_file)
    assert_same_geometry(img, sitk.ReadImage(str(path)))
    assert res["slices"] == [0, lesion.shape[0] - 1] and res["volume_shape"] == list(lesion.shape)
    # the default coarse-to-fine scan (stride 2): every other slice, then each neighbour of a slice that answered
    run = {int(z) for z in res["match_score_by_slice"]}
    answered = set(res["slices_with_lesion"]) | set(res["slices_dropped"])
    assert res["stride"] == 2 and res["slices_run"] == len(run) and set(range(0, lesion.shape[0], 2)) <= run
    assert {n for z in answered for n in (z - 1, z + 1) if 0 <= n < lesion.shape[0]} <= run
    # where the time went: each stage of the per-slice pipeline summed over the slices, within the total
    lat = res["latencies_ms"]
    assert (lat["encode_sum"] > 0) == (res["encodes"] > 0) and lat["propose_sum"] > 0 and "aggregate_sum" in lat
    assert lat["encode_sum"] + lat["propose_sum"] + lat["aggregate_sum"] <= lat["total"]
    # whatever the proposer finds, the JSON describes the label: each lesion's slices and volume are its voxels'
    for entry in res["lesions"]:
        mask = label == entry["label"]
        assert entry["slices"] == [min(filled_slices(mask)), max(filled_slices(mask))] and entry["n_slices"] >= 2
        assert entry["voxels"] == int(mask.sum())
    assert set(res["slices_with_lesion"]) == filled_slices(label)
    assert res["found"] and dice(label > 0, lesion) >= 0.7  # the dark blob is found with the default phrase
    assert "diagnosis_note" in res  # the head is breast-US 2D: a volume of unknown modality is not diagnosed
    # the coarse-to-fine scan (which slices it runs: tests/test_volume.py): the lesion through 7 of the 11 slices is
    # met on the coarse slices 3 and 6 and grown from there, so every slice near it runs and it is found whole
    label_file, coarse = client.infer("radvlsm", VOLUME_ID, {"text": "lesion", "result_extension": ".nii.gz",
                                                             "slice_stride": 3})
    label3, _ = read(label_file)
    assert coarse["stride"] == 3 and coarse["slices_run"] == len(coarse["match_score_by_slice"])
    assert {"0", "3", "6", "9", "10"} <= set(coarse["match_score_by_slice"])
    assert coarse["found"] and dice(label3 > 0, lesion) >= 0.7


def test_box_proposal_on_a_slice_and_its_markups_on_that_plane(study):
    slicer, path, _ = study
    result_file, res = slicer.infer("box_proposal", VOLUME_ID, {"slice": K})
    doc = json.loads(open(result_file).read())
    ref = sitk.ReadImage(str(path))
    for roi, cand in zip(doc["markups"], res["candidates"], strict=True):
        x0, y0, x1, y1 = cand["box"]
        centre = ref.TransformContinuousIndexToPhysicalPoint(((x0 + x1) / 2, (y0 + y1) / 2, K))
        assert np.allclose(roi["center"], centre, atol=1e-3)
        assert cand["roi"][4:] == [K, K]


def test_a_saved_3d_correction_is_diagnosed_on_its_largest_slice(study, tmp_path):
    slicer, path, lesion = study
    lab = sitk.GetImageFromArray(lesion.astype(np.uint8))
    lab.CopyInformation(sitk.ReadImage(str(path)))
    good = tmp_path / "label.nrrd"
    sitk.WriteImage(lab, str(good))
    slicer.client.save_label(VOLUME_ID, str(good), params={"label_info": [{"name": "lesion", "idx": 1}]})
    label_file, res = slicer.infer("diagnosis", VOLUME_ID)
    assert res["mask_source"] == "saved final label" and res["slice"] == K
    assert "breast ultrasound" in res["diagnosis_note"] and res["prediction"]
    label, _ = read(label_file)
    assert filled_slices(label) == {K} and dice(label[K] > 0, lesion[K]) == 1.0


def post(server, model: str, image: str, params: dict) -> requests.Response:
    return requests.post(f"{server.url}/infer/{model}", params={"image": image, "output": "json"},
                         files={"params": (None, json.dumps(params))}, timeout=300)


@pytest.mark.parametrize(("model", "params", "field"), [
    ("sam", {"boxes": [[40, 30, 120, 90]]}, "slice"),  # REST boxes carry no z
    ("sam", {"boxes": [[40, 30, 120, 90]], "slice": 11}, "slice"),
    ("sam", {"roi": [120, 40, 90, 30, 14, 15]}, "roi"),
    ("sam", {"roi": [120, 40, 90, 30, 5, 5], "propagate": True, "slices": [8, 2]}, "slices"),
    ("sam", {"roi": [120, 40, 90, 30, 5, 5], "propagate": True, "slices": [6, 9]}, "slice"),
    ("sam", {"roi": [120, 40, 90, 30, 5, 5], "result_extension": ".png"}, "result_extension"),
    ("radvlsm", {"slices": [0, 40]}, "slices"),
    ("radvlsm", {"slice_stride": 0}, "slice_stride"),
    ("radvlsm", {"slice_stride": "every other"}, "slice_stride"),
    ("box_proposal", {}, "slice"),
])
def test_bad_slices_are_422_naming_the_field(server, study, model, params, field):
    r = post(server, model, VOLUME_ID, params)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_a_4d_upload_and_a_misplaced_label_are_refused(server, study, tmp_path):
    slicer, path, lesion = study
    four = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.ReadImage(str(path))] * 2), str(four))
    with open(four, "rb") as f:
        r = requests.put(f"{server.url}/datastore/image", params={"image": "four_d"}, files={"file": f}, timeout=60)
    assert r.status_code == 422 and "4D" in r.text
    moved = write_volume(tmp_path / "moved.nrrd", lesion.astype(np.uint8), origin=(0.0, 0.0, 0.0))
    with open(moved, "rb") as f:
        r = requests.put(f"{server.url}/datastore/label", params={"image": VOLUME_ID, "tag": "final"},
                         files={"label": f}, timeout=60)
    assert r.status_code == 422 and "origin" in r.text
