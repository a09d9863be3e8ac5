"""End to end over a real DICOMweb server: sample PNGs -> DICOM (Ultrasound Image Storage) -> Orthanc (STOW-RS) ->
the app started with ``--studies <Orthanc>/dicom-web`` -> ``radvlsm``/``sam`` on a series (image id =
SeriesInstanceUID) -> the label saved as final -> a DICOM SEG in Orthanc (QIDO finds it, WADO returns it,
pydicom-seg decodes it to the same mask)."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from monailabel.client import MONAILabelClient
from PIL import Image

from radvlsm.dicom import read_seg
from radvlsm.io import load_image, load_mask
from tests.conftest import SAMPLES, dice, reference, stop_server, tight_box
from tests.orthanc import needs_orthanc, start_dicomweb_app, start_orthanc, stop_orthanc, upload_samples

pytestmark = [pytest.mark.e2e, needs_orthanc]
CASES = ["bus_0075-r", "bus_1033-r"]  # a portrait and a landscape image


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    o = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield o
    stop_orthanc(o.proc)


@pytest.fixture(scope="module")
def uids(orthanc):
    return upload_samples(orthanc, CASES)


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
