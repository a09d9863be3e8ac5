"""A volume over DICOMweb: a synthetic MR series (one instance per slice, with its Image Plane) stored in a real
Orthanc; the app started on it (``--studies <Orthanc>/dicom-web``, search filter Modality MR) converts the series
to a volume and answers ``radvlsm`` and ``sam`` (propagated) with labels of the series' geometry; and OHIF's
MONAI Label panel, which builds a labelmap volume for a multi-slice series, runs ``radvlsm`` and draws the answer
over the MPR views where the lesion is (screenshot kept in work/test-artifacts/ohif-volume/, copy in docs/)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
from dicomweb_client import DICOMwebClient
from PIL import Image

from radvlsm.dicom import read_seg
from tests.conftest import dice, stop_server
from tests.orthanc import needs_orthanc, start_dicomweb_app
from tests.test_server_dicomweb import ARTEFACTS, browser_missing, run_browser
from tests.volumes import DIRECTION, ORIGIN, SPACING, ijk_roi, lesion_volume, volume_to_mr_series

pytestmark = [pytest.mark.e2e, needs_orthanc]
K = 5


@pytest.fixture(scope="module")
def series(orthanc):
    pixels, lesion = lesion_volume()
    instances = volume_to_mr_series(pixels)
    DICOMwebClient(orthanc.dicomweb).store_instances(instances)
    return {"study": str(instances[0].StudyInstanceUID), "series": str(instances[0].SeriesInstanceUID),
            "lesion": lesion}


@pytest.fixture(scope="module")
def app(orthanc, series, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicomweb-volume-app")
    (folder / "tmp").mkdir()  # the server's own temp dir: the series' conversion must not stay there
    srv = start_dicomweb_app(folder, orthanc.dicomweb,
                             env={"MONAI_LABEL_DICOMWEB_SEARCH_FILTER": json.dumps({"Modality": "MR"}),
                                  "TMPDIR": str(folder / "tmp")})
    yield srv
    stop_server(srv.proc)


def infer(app, model: str, image: str, params: dict, tmp_path) -> tuple[np.ndarray, sitk.Image]:
    r = requests.post(f"{app.url}/infer/{model}", params={"image": image, "output": "image"},
                      files={"params": (None, json.dumps({"result_extension": ".nrrd", **params}))}, timeout=600)
    assert r.status_code == 200, r.text
    path = tmp_path / f"{model}.nrrd"
    path.write_bytes(r.content)
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def test_text_on_the_mr_series_is_a_label_of_its_geometry(app, series, tmp_path):
    label, img = infer(app, "radvlsm", series["series"], {"text": "lesion"}, tmp_path)
    lesion = series["lesion"]
    assert label.shape == lesion.shape
    # slice k of the label is instance k + 1 of the series: its plane is that instance's position
    k_axis = np.asarray(DIRECTION).reshape(3, 3)[:, 2]
    assert np.allclose(img.TransformIndexToPhysicalPoint((0, 0, K)), np.asarray(ORIGIN) + k_axis * SPACING[2] * K,
                       atol=1e-3)
    assert np.allclose(img.GetSpacing(), SPACING, atol=1e-4)
    assert dice(label > 0, lesion) >= 0.7  # the lesion where the series has it: no slice order or axis flipped
    # the series was fetched and converted for this request: the conversion lives in the cache, not the temp dir
    assert list((app.studies.parent / "tmp").glob("*.nii*")) == []


def test_sam_propagated_on_the_mr_series(app, series, tmp_path):
    lesion = series["lesion"]
    label, _ = infer(app, "sam", series["series"], {"roi": ijk_roi(lesion[K], K), "slice": K, "propagate": True},
                     tmp_path)
    assert dice(label > 0, lesion) >= 0.75


def test_a_final_volume_label_becomes_a_seg_of_the_series(app, orthanc, series, tmp_path):
    lesion = series["lesion"]
    label, img = infer(app, "sam", series["series"], {"roi": ijk_roi(lesion[K], K), "slice": K, "propagate": True},
                       tmp_path)
    path = tmp_path / "final.nrrd"
    sitk.WriteImage(img, str(path))
    with open(path, "rb") as f:
        r = requests.put(f"{app.url}/datastore/label", params={"image": series["series"], "tag": "final"},
                         files={"label": ("final.nrrd", f)}, timeout=120)
    assert r.status_code == 200, r.text
    client = DICOMwebClient(orthanc.dicomweb)
    found = client.search_for_series(search_filters={"Modality": "SEG", "StudyInstanceUID": series["study"]})
    assert len(found) == 1
    seg_uid = pydicom.Dataset.from_json(found[0]).SeriesInstanceUID
    (seg,) = client.retrieve_series(series["study"], seg_uid)
    decoded, names = read_seg(seg)
    assert names == {1: "lesion"}
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == series["series"]
    assert decoded.shape == label.shape and np.array_equal(decoded > 0, label > 0)  # each slice on its instance
    moved = sitk.Image(img)
    moved.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(moved, str(path))
    with open(path, "rb") as f:
        r = requests.put(f"{app.url}/datastore/label", params={"image": series["series"], "tag": "final"},
                         files={"label": ("moved.nrrd", f)}, timeout=120)
    assert r.status_code == 422 and "origin" in r.text


def green_overlay(png, viewport: dict) -> np.ndarray:
    px = np.asarray(Image.open(png).convert("RGB")).astype(int)
    x, y, w, h = (int(round(viewport[k])) for k in ("x", "y", "width", "height"))
    crop = px[y:y + h, x:x + w]
    return (crop[..., 1] > crop[..., 0] + 40) & (crop[..., 1] > crop[..., 2] + 40)


@pytest.mark.skipif(bool(browser_missing()), reason=browser_missing() or "browser present")
def test_ohif_panel_runs_radvlsm_on_the_series_and_draws_it(app, series):
    out = ARTEFACTS / "ohif-volume"
    shutil.rmtree(out, ignore_errors=True)
    panel = run_browser("panel", app.url, series["study"], out, "volume")
    runs = [r for r in panel["infer_requests"] if "/infer/radvlsm?" in r["url"]]
    assert runs and all(r["status"] == 200 for r in runs) and series["series"] in runs[0]["url"]
    assert panel["panel_drew"] is True, panel["console"]  # a multi-slice series: OHIF has a volume to draw into
    drawn = green_overlay(out / "panel.png", panel["viewport"])
    assert drawn.sum() > 200, "no segmentation drawn over the series"
