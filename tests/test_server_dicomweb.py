"""End to end over a real DICOMweb server: sample PNGs -> DICOM (Ultrasound Image Storage) -> Orthanc (STOW-RS) ->
the app started with ``--studies <Orthanc>/dicom-web`` -> ``radvlsm``/``sam`` on a series (image id =
SeriesInstanceUID) -> the label saved as final -> a DICOM SEG in Orthanc (QIDO finds it, WADO returns it,
pydicom-seg decodes it to the same mask). Then the OHIF viewer the app serves at ``/ohif/``, in Debian's Chromium
driven by Playwright (tests/browser/ohif_radvlsm.cjs): its MONAI Label panel runs ``radvlsm``, and the SEG the app
stored is drawn over the image (screenshots kept in work/test-artifacts/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from monailabel.client import MONAILabelClient
from PIL import Image

from radvlsm.dicom import read_seg
from radvlsm.io import load_image, load_mask
from tests.conftest import ROOT, SAMPLES, dice, reference, stop_server, tight_box
from tests.orthanc import needs_orthanc, start_dicomweb_app, upload_samples

pytestmark = [pytest.mark.e2e, needs_orthanc]
CASES = ["bus_0075-r", "bus_1033-r"]  # a portrait and a landscape image, as an ultrasound scanner writes them
OHIF_CASE = "bus_0370-r"  # with an Image Plane (pixel units), which OHIF needs to lay a SEG over the image
ARTEFACTS = Path(os.environ.get("RADVLSM_TEST_ARTIFACTS", ROOT / "work" / "test-artifacts"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
PLAYWRIGHT = ROOT / "work" / "node" / "node_modules" / "playwright-core"


def browser_missing() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        return f"Chromium is not installed ({CHROMIUM}); run scripts/install_dicomweb_test_deps.sh"
    if not PLAYWRIGHT.is_dir() or not shutil.which("node"):
        return f"node or playwright-core ({PLAYWRIGHT}) is missing; run scripts/install_dicomweb_test_deps.sh"
    return ""


@pytest.fixture(scope="module")
def uids(orthanc):
    return {**upload_samples(orthanc, CASES), **upload_samples(orthanc, [OHIF_CASE], plane=True)}


@pytest.fixture(scope="module")
def app(orthanc, uids, tmp_path_factory):
    srv = start_dicomweb_app(tmp_path_factory.mktemp("dicomweb-app"), orthanc.dicomweb)
    yield srv
    stop_server(srv.proc)


def segs_of(orthanc, study_uid: str) -> list[pydicom.Dataset]:
    client = DICOMwebClient(orthanc.dicomweb)
    found = client.search_for_series(search_filters={"Modality": "SEG", "StudyInstanceUID": study_uid})
    return [pydicom.Dataset.from_json(s) for s in found]


def test_orthanc_holds_the_samples_losslessly(orthanc, uids):
    """QIDO finds each uploaded series; WADO returns the PNG's pixels exactly, with no invented pixel spacing."""
    client = DICOMwebClient(orthanc.dicomweb)
    series = {str(pydicom.Dataset.from_json(s).SeriesInstanceUID)
              for s in client.search_for_series(search_filters={"Modality": "US"})}
    assert {u["series"] for u in uids.values()} <= series
    for case, u in uids.items():
        (ds,) = client.retrieve_series(u["study"], u["series"])
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1" and ds.Modality == "US"
        assert "PixelSpacing" not in ds and "unknown" in ds.DerivationDescription
        assert np.array_equal(ds.pixel_array, np.array(Image.open(SAMPLES / "images" / f"{case}.png")))


def test_app_sees_the_series_as_images(app, uids):
    """The app's images are the US series that QIDO finds (MONAI_LABEL_DICOMWEB_SEARCH_FILTER); active learning
    hands out their SeriesInstanceUIDs as image ids."""
    stats = requests.get(f"{app.url}/datastore/", timeout=60).json()
    assert stats["total"] == len(uids) and stats["completed"] == 0
    nxt = requests.post(f"{app.url}/activelearning/random", timeout=60)
    assert nxt.status_code == 200, nxt.text
    assert nxt.json()["id"] in {u["series"] for u in uids.values()}


def test_radvlsm_on_a_series_then_saved_as_dicom_seg(app, orthanc, uids, tmp_path):
    """The pipeline on a series lands on the reference lesion; its label saved as final becomes a DICOM SEG in
    Orthanc that references the image series and decodes to the same mask."""
    case, u = "bus_0075-r", uids["bus_0075-r"]
    client = MONAILabelClient(app.url, tmpdir=str(tmp_path))
    label_file, res = client.infer("radvlsm", u["series"], {"text": "breast lesion"})
    assert label_file.endswith(".nii.gz")  # the input's own format: the series converted to a one-slice NIfTI
    label = load_mask(label_file)
    assert label.shape == reference(case).shape
    assert dice(label > 0, reference(case)) >= 0.7
    assert res["found"] and res["lesions"][0]["diagnosis"]["status"] == "ok"

    r = requests.put(f"{app.url}/datastore/label", params={"image": u["series"], "tag": "final"},
                     files={"label": ("label.nii.gz", open(label_file, "rb").read()),
                            "params": (None, json.dumps({"label_info": [{"name": "lesion"}]}))}, timeout=120)
    assert r.status_code == 200, r.text
    (seg_series,) = segs_of(orthanc, u["study"])
    (seg,) = DICOMwebClient(orthanc.dicomweb).retrieve_series(u["study"], str(seg_series.SeriesInstanceUID))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == u["series"]
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == u["instance"]
    decoded, names = read_seg(seg)
    assert np.array_equal(decoded > 0, label > 0) and names == {1: "lesion"}
    # the app sees the series as labelled, and diagnosis uses the saved final label
    labelled = requests.get(f"{app.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
    assert labelled[u["series"]]["labels"]["final"]
    diag = requests.post(f"{app.url}/infer/diagnosis", params={"image": u["series"], "output": "json"},
                         files={"params": (None, "{}")}, timeout=120)
    assert diag.status_code == 200, diag.text


def test_sam_on_a_series_and_a_png_correction_saved_as_seg(app, orthanc, uids, tmp_path):
    """``sam`` with a box on the landscape series; a corrected label sent as a 2D PNG (as a REST client does) is
    stored as a DICOM SEG equal to it."""
    case, u = "bus_1033-r", uids["bus_1033-r"]
    r = requests.post(f"{app.url}/infer/sam", params={"image": u["series"], "output": "image"},
                      files={"params": (None, json.dumps({"boxes": [tight_box(case)], "result_extension": ".png"}))},
                      timeout=120)
    assert r.status_code == 200, r.text
    (tmp_path / "sam.png").write_bytes(r.content)
    assert dice(load_mask(tmp_path / "sam.png"), reference(case)) >= 0.7

    corrected = SAMPLES / "reference" / f"{case}.png"
    r = requests.put(f"{app.url}/datastore/label", params={"image": u["series"], "tag": "final"},
                     files={"label": (corrected.name, corrected.read_bytes())}, timeout=120)
    assert r.status_code == 200, r.text
    (seg_series,) = segs_of(orthanc, u["study"])
    (seg,) = DICOMwebClient(orthanc.dicomweb).retrieve_series(u["study"], str(seg_series.SeriesInstanceUID))
    decoded, _ = read_seg(seg)
    assert np.array_equal(decoded > 0, reference(case))
    assert load_image(corrected).shape == decoded.shape


def test_empty_or_missized_final_label_is_422_and_stores_nothing(app, orthanc, uids, tmp_path):
    u = uids["bus_1033-r"]
    before = len(segs_of(orthanc, u["study"]))
    rows, cols = reference("bus_1033-r").shape
    for name, arr in [("empty.png", np.zeros((rows, cols), np.uint8)), ("small.png", np.ones((8, 8), np.uint8))]:
        Image.fromarray(arr).save(tmp_path / name)
        r = requests.put(f"{app.url}/datastore/label", params={"image": u["series"], "tag": "final"},
                         files={"label": (name, (tmp_path / name).read_bytes())}, timeout=60)
        assert r.status_code == 422, (name, r.status_code, r.text)
        assert "label" in r.json()["detail"]
    assert len(segs_of(orthanc, u["study"])) == before


def run_browser(mode: str, app_url: str, study: str, out: Path, *extra: str) -> dict:
    script = ROOT / "tests" / "browser" / "ohif_radvlsm.cjs"
    proc = subprocess.run(["node", str(script), mode, app_url, study, str(out), *extra], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CHROMIUM": CHROMIUM})
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines else {}
    assert proc.returncode == 0 and "fatal" not in report, (proc.returncode, report, proc.stderr[-2000:])
    return report


def red_overlay(png: Path, viewport: dict) -> np.ndarray:
    """Pixels of the viewport where the SEG's red is blended over the gray ultrasound."""
    px = np.asarray(Image.open(png).convert("RGB")).astype(int)
    x, y, w, h = (int(round(viewport[k])) for k in ("x", "y", "width", "height"))
    crop = px[y:y + h, x:x + w]
    r, g, b = crop[..., 0], crop[..., 1], crop[..., 2]
    return (r > g + 40) & (r > b + 40)


@pytest.mark.skipif(bool(browser_missing()), reason=browser_missing() or "browser present")
def test_ohif_panel_runs_radvlsm_and_shows_the_stored_seg(app, orthanc, uids, tmp_path):
    """OHIF (the build monailabel 0.8.5 ships) opens the study from Orthanc through the app's DICOMweb proxy; its
    MONAI Label panel lists ``radvlsm`` (Auto-Segmentation) and ``sam`` (Point Prompts) and runs ``radvlsm`` (200),
    but cannot draw the answer on a single 2D image: the panel writes results into a labelmap *volume*, and OHIF
    makes no volume of one single-frame image. What works: the label the app stores as DICOM SEG is drawn by OHIF
    over the image, where the reference lesion is."""
    case, u = OHIF_CASE, uids[OHIF_CASE]
    out = ARTEFACTS / "ohif"
    shutil.rmtree(out, ignore_errors=True)
    panel = run_browser("panel", app.url, u["study"], out)
    assert [m.strip() for m in panel["segmentation_models"]] == ["radvlsm"]
    assert [m.strip() for m in panel["point_prompt_models"]] == ["sam"]
    runs = [r for r in panel["infer_requests"] if "/infer/radvlsm?" in r["url"]]
    assert runs and all(r["status"] == 200 for r in runs) and u["series"] in runs[0]["url"]
    assert panel["panel_drew"] is False  # OHIF's limitation (see the README); this fails once OHIF can draw it
    assert any("Volume Object is NOT In Cache" in line for line in panel["console"]), panel["console"]
    assert not any("NRRD encoding" in line for line in panel["console"])  # result_compress=false: a raw NRRD
    assert not red_overlay(out / "panel.png", panel["viewport"]).any()

    r = requests.post(f"{app.url}/infer/radvlsm", params={"image": u["series"], "output": "image"},
                      files={"params": (None, json.dumps({"result_extension": ".png"}))}, timeout=300)
    assert r.status_code == 200, r.text
    (tmp_path / "label.png").write_bytes(r.content)
    label = load_mask(tmp_path / "label.png")
    assert dice(label > 0, reference(case)) >= 0.7
    r = requests.put(f"{app.url}/datastore/label", params={"image": u["series"], "tag": "final"},
                     files={"label": ("label.png", (tmp_path / "label.png").read_bytes())}, timeout=120)
    assert r.status_code == 200, r.text

    seg = run_browser("seg", app.url, u["study"], out)
    red = red_overlay(out / "seg.png", seg["viewport"])
    rows, cols = np.nonzero(red)
    assert red.sum() > 2000, "no SEG overlay drawn"
    # the drawn blob is the label, uniformly scaled: same aspect ratio and area for that scale
    lr, lc = np.nonzero(label)
    sy = (rows.max() - rows.min() + 1) / (lr.max() - lr.min() + 1)
    sx = (cols.max() - cols.min() + 1) / (lc.max() - lc.min() + 1)
    assert abs(sx / sy - 1) < 0.1, (sx, sy)
    assert abs(red.sum() / (sx * sy) / label.astype(bool).sum() - 1) < 0.25


def test_upload_script_wraps_and_stores_images(orthanc, tmp_path):
    """scripts/dicomweb_upload.py: Secondary Capture with a given pixel spacing and an Image Plane; a file that is
    not an image is reported and makes the exit status 1, the others are still stored."""
    import sys

    (tmp_path / "notes.png").write_text("not an image")
    image = SAMPLES / "images" / "bus_0017-s.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "dicomweb_upload.py"), orthanc.dicomweb, str(image),
                           str(tmp_path / "notes.png"), "--sop", "sc", "--plane", "--pixel-spacing", "0.1", "0.2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "notes.png" in proc.stderr, proc.stderr
    path, study, series = proc.stdout.split()
    assert path == str(image)
    (ds,) = DICOMwebClient(orthanc.dicomweb).retrieve_series(study, series)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.Modality == "OT"
    assert [float(v) for v in ds.PixelSpacing] == [0.1, 0.2]
    assert [float(v) for v in ds.ImagePositionPatient] == [0, 0, 0]
    assert np.array_equal(ds.pixel_array, np.array(Image.open(image)))
