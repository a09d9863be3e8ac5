"""End to end: the real MONAI Label server on loopback, driven by MONAI Label's own client and by raw HTTP."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from PIL import Image

from radvlsm.geometry import box_to_slicer_roi
from radvlsm.io import load_mask
from tests.conftest import SAMPLES, dice, reference, tight_box

pytestmark = pytest.mark.e2e
CASES = ["bus_0075-r", "bus_1033-r"]  # a portrait and a landscape image


def infer_json(server, image: str, params: dict, **kw) -> requests.Response:
    return requests.post(f"{server.url}/infer/sam", params={"image": image, "output": "json", **kw},
                         files={"params": (None, json.dumps(params))}, timeout=120)


def test_info_lists_sam_with_its_config(server):
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert info["models"]["sam"]["type"] == "deepgrow"
    assert info["models"]["sam"]["dimension"] == 2
    assert info["models"]["sam"]["config"]["backbone"] == "litemedsam"


def test_datastore_lists_the_samples(server):
    ds = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()
    expected = {p.stem for p in (SAMPLES / "images").glob("*.png")}
    # every bundled sample; the session's server also holds what other modules upload (volumes, Slicer's NRRD)
    assert expected <= set(ds["objects"]) and all(ds["objects"][i]["image"]["ext"] == ".png" for i in expected)


@pytest.mark.parametrize("case", CASES)
def test_slicer_client_roi_nrrd(server, tmp_path, case):
    """As the Slicer plugin asks: roi in IJK (pairs max-first, as Slicer's flipped RAS gives), .nrrd uint8."""
    x0, y0, x1, y1 = tight_box(case)
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    params = {"roi": [x1, x0, y1, y0, 0, 0], "result_extension": ".nrrd", "result_dtype": "uint8"}
    label_file, result = client.infer("sam", case, params)
    assert label_file.endswith(".nrrd")
    mask = load_mask(label_file)
    assert mask.shape == reference(case).shape and mask.dtype == np.uint8
    assert dice(mask, reference(case)) >= 0.8
    assert result["lesions"][0]["box"] == [x0, y0, x1, y1]


@pytest.mark.parametrize("case", CASES)
def test_rest_boxes_then_cached_click(server, tmp_path, case):
    """Plain REST boxes in pixel columns/rows on an upload; a second prompt on the same pixels hits the cache."""
    box = tight_box(case)
    pixels = np.array(Image.open(SAMPLES / "images" / f"{case}.png"))
    pixels[0, 0] ^= 1  # content never seen by this server: the first call must encode
    upload = tmp_path / f"{case}.png"
    Image.fromarray(pixels).save(upload)

    def post(params: dict, output: str) -> requests.Response:
        return requests.post(f"{server.url}/infer/sam", params={"output": output},
                             files={"params": (None, json.dumps(params)), "file": (upload.name, upload.read_bytes())},
                             timeout=120)

    first = post({"boxes": [box]}, "json")
    assert first.status_code == 200, first.text
    assert first.json()["cache_hit"] is False and first.json()["latencies_ms"]["encode"] > 0
    r = post({"boxes": [box], "result_extension": ".png"}, "image")
    assert r.status_code == 200
    assert dice(np.array(Image.open(io.BytesIO(r.content))), reference(case)) >= 0.8
    click = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 0]
    res = post({"boxes": [box], "foreground": [click]}, "json").json()
    assert res["cache_hit"] is True
    assert res["latencies_ms"]["encode"] == 0.0
    assert res["lesions"][0]["clicks"] == 1
    assert res["lesions"][0]["box"] == [round(v, 2) for v in box]


def test_foreground_clicks_alone_segment_the_lesion(server, tmp_path):
    """OHIF/Slicer deepgrow clicks [[x, y, z]]: a few clicks inside the lesion, none outside."""
    case = "bus_1033-r"
    ref = reference(case)
    ys, xs = np.nonzero(ref)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    x0, y0, x1, y1 = tight_box(case)
    label_file, _ = client.infer("sam", case, {"foreground": [[cx, cy, 0]], "background": [[2, 2, 0]],
                                               "roi": box_to_slicer_roi([x0, y0, x1, y1]),
                                               "result_extension": ".nrrd"})
    assert dice(load_mask(label_file), ref) >= 0.8


def test_upload_and_infer_multilabel(server, tmp_path):
    """Two boxes on an uploaded file: multilabel gives labels 1 and 2, each where its box is."""
    case = CASES[0]
    x0, y0, x1, y1 = tight_box(case)
    other = [5.0, 5.0, 40.0, 40.0]
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    label_file, result = client.infer("sam", "", {"boxes": [[x0, y0, x1, y1], other], "multilabel": True,
                                                  "result_extension": ".png"},
                                      file=str(SAMPLES / "images" / f"{case}.png"))
    label = load_mask(label_file)
    assert set(np.unique(label)) <= {0, 1, 2}
    assert dice(label == 1, reference(case)) >= 0.8
    assert [lesion["label"] for lesion in result["lesions"]] == [1, 2]


@pytest.mark.parametrize(
    "image, params, status, words",
    [
        ("no_such_image", {"boxes": [[1, 1, 20, 20]]}, 404, "image"),
        ("bus_0075-r", {"boxes": [[50, 50, 10, 60]]}, 422, "boxes"),
        ("bus_0075-r", {"boxes": [[5000, 5000, 6000, 6000]]}, 422, "outside"),
        ("bus_0075-r", {"boxes": [[10, 10, 10, 10]]}, 422, "empty"),
        ("bus_0075-r", {"boxes": "a box"}, 422, "boxes"),
        ("bus_0075-r", {"foreground": [[9999, 5, 0]]}, 422, "foreground"),
        ("bus_0075-r", {}, 422, "prompt"),
        ("bus_0075-r", {"boxes": [[1, 1, 20, 20]], "multilabel": "perhaps"}, 422, "multilabel"),
        ("bus_0075-r", {"boxes": [[1, 1, 20, 20]], "result_extension": ".exe"}, 422, "result_extension"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(server, image, params, status, words):
    r = infer_json(server, image, params)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_unreadable_upload_is_4xx_and_server_keeps_serving(server, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    r = requests.post(f"{server.url}/infer/sam", params={"output": "json"},
                      files={"params": (None, json.dumps({"boxes": [[1, 1, 20, 20]]})),
                             "file": ("broken.png", bad.read_bytes())}, timeout=60)
    assert r.status_code == 422 and "not a readable image" in r.json()["detail"]
    assert infer_json(server, CASES[0], {"boxes": [tight_box(CASES[0])]}).status_code == 200


def test_saved_correction_lands_in_labels_final(server, tmp_path):
    case = "bus_0164-l"
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    client.save_label(case, str(SAMPLES / "reference" / f"{case}.png"), tag="final")
    saved = server.studies / "labels" / "final" / f"{case}.png"
    assert saved.exists()
    assert dice(load_mask(saved), reference(case)) == 1.0
    ds = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()
    assert "final" in ds["objects"][case]["labels"]


def test_missing_checkpoint_is_a_clear_startup_error(tmp_path):
    from tests.conftest import start_server

    with pytest.raises(RuntimeError) as err:
        start_server(tmp_path, conf={"backbone": "sam_vit_b", "checkpoint": str(tmp_path / "sam_vit_b.pth")})
    assert "checkpoint not found" in str(err.value) and "sam_vit_b.pth" in str(err.value)
