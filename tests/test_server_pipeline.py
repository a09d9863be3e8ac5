"""End to end: the full ``radvlsm`` pipeline and the ``diagnosis`` task on the real server."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from PIL import Image

from radvlsm.io import load_mask
from tests.conftest import SAMPLES, dice, reference

pytestmark = pytest.mark.e2e


def post(server, model: str, image: str, params: dict, **files) -> requests.Response:
    return requests.post(f"{server.url}/infer/{model}", params={"image": image, "output": "json"},
                         files={"params": (None, json.dumps(params)), **files}, timeout=300)


@pytest.mark.parametrize("case", ["bus_0075-r", "bus_0584-l"])
def test_radvlsm_text_to_mask_to_diagnosis(server, tmp_path, case):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    label_file, res = client.infer("radvlsm", case, {"text": "breast lesion", "result_extension": ".nrrd"})
    label = load_mask(label_file)
    assert label.shape == reference(case).shape
    assert dice(label > 0, reference(case)) >= 0.7
    assert res["found"] and res["lesions"][0]["label"] == 1
    lesion = res["lesions"][0]
    assert 0 <= lesion["uncertainty"] <= 1 and lesion["n_prompts"] >= 5
    assert {p["kind"] for p in lesion["prompts"]} >= {"box/m0", "box/m1", "scale1.1/m0", "scale1.2/m0"}
    assert 0 < lesion["reliability"] <= 1 and abs(sum(p["weight"] for p in lesion["prompts"]) - 1) < 1e-3
    assert lesion["diagnosis"]["status"] == "ok" and 0 <= lesion["diagnosis"]["probability"] <= 1
    for stage in ("encode", "propose", "aggregate", "diagnose", "total"):
        assert stage in res["latencies_ms"]


def test_one_encode_for_many_candidates(server, tmp_path):
    """A new upload: one encode, then every prompt decodes against it; the repeat call encodes nothing."""
    pixels = np.array(Image.open(SAMPLES / "images" / "bus_0017-s.png"))
    pixels[1, 1] ^= 1
    upload = tmp_path / "fresh.png"
    Image.fromarray(pixels).save(upload)
    first = post(server, "radvlsm", "", {}, file=("fresh.png", upload.read_bytes())).json()
    again = post(server, "radvlsm", "", {}, file=("fresh.png", upload.read_bytes())).json()
    assert first["encodes"] == 1 and first["cache_hit"] is False and first["latencies_ms"]["encode"] > 0
    assert again["encodes"] == 0 and again["cache_hit"] is True
    assert first["lesions"][0]["n_prompts"] > 1


def test_no_lesion_phrase_gives_an_empty_label(server, tmp_path):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    label_file, res = client.infer("radvlsm", "bus_0075-r", {"text": "colon polyp", "result_extension": ".png"})
    assert res["found"] is False and res["lesions"] == [] and "no lesion found" in res["message"]
    assert load_mask(label_file).max() == 0


def test_user_box_overrides_and_bad_input(server):
    r = post(server, "radvlsm", "bus_0075-r", {"boxes": [[99, 89, 234, 151]], "diagnose": False})
    assert r.status_code == 200 and r.json()["prompt_source"] == "user"
    assert "diagnosis" not in r.json()["lesions"][0]
    assert post(server, "radvlsm", "bus_0075-r", {"text": ""}).status_code == 422
    assert post(server, "radvlsm", "bus_0075-r", {"diagnose": "maybe"}).status_code == 422


def test_diagnosis_with_the_reference_mask(server):
    case = "bus_0370-r"  # malignant
    ref = SAMPLES / "reference" / f"{case}.png"
    r = post(server, "diagnosis", case, {}, label=(ref.name, ref.read_bytes()))
    assert r.status_code == 200, r.text
    res = r.json()
    assert [p["label"] for p in res["prediction"]] == ["benign", "malignant"]
    assert abs(sum(p["score"] for p in res["prediction"]) - 1) < 1e-3
    assert res["mask_source"] == "uploaded label" and res["label"] in ("benign", "malignant")
    drivers = res["diagnoses"][0]["contributions"]
    assert drivers and {"name", "value"} <= set(drivers[0])
    assert "Lesion 1" in res["text"]


def test_diagnosis_without_a_mask_runs_the_pipeline(server):
    res = post(server, "diagnosis", "bus_0017-s", {}).json()
    assert res["mask_source"] == "radvlsm pipeline" and res["probability_malignant"] is not None


@pytest.mark.parametrize("pixels", [0, 1])
def test_empty_or_one_pixel_mask_is_a_clear_answer(server, tmp_path, pixels):
    case = "bus_0075-r"
    shape = reference(case).shape
    m = np.zeros(shape, np.uint8)
    m[100, 100] = pixels
    path = tmp_path / "m.png"
    Image.fromarray(m).save(path)
    r = post(server, "diagnosis", case, {}, label=("m.png", path.read_bytes()))
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["prediction"] == [] and "not enough lesion" in res["message"].lower()


def test_diagnosis_label_of_wrong_size_is_4xx(server, tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.ones((10, 10), np.uint8)).save(path)
    r = post(server, "diagnosis", "bus_0075-r", {}, label=("small.png", path.read_bytes()))
    assert r.status_code == 422 and "label" in r.json()["detail"]
