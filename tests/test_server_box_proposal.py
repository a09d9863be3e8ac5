"""End to end: text-guided box proposals on the real server (shipped qformer_lite, template bank from saved labels)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from radvlsm.io import load_mask
from radvlsm.proposals.boxes import box_iou
from tests.conftest import SAMPLES, start_server, stop_server, tight_box

pytestmark = pytest.mark.e2e


def propose(server, image: str, params: dict) -> requests.Response:
    return requests.post(f"{server.url}/infer/box_proposal", params={"image": image, "output": "json"},
                         files={"params": (None, json.dumps(params))}, timeout=120)


def test_info_shows_the_default_phrase(server):
    info = requests.get(f"{server.url}/info/", timeout=30).json()["models"]["box_proposal"]
    assert info["type"] == "detection" and info["config"]["text"] == "lesion"


@pytest.mark.parametrize("case", ["bus_0075-r", "bus_1033-r"])
def test_phrase_gives_a_box_on_the_lesion(server, case):
    r = propose(server, case, {"text": "breast lesion", "top_k": 3})
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["found"] and res["match_score"] > 0.5
    top = res["candidates"][0]
    assert top["backend"] == "qformer_lite"
    assert box_iou(np.array(top["box"]), np.array(tight_box(case)))[0, 0] >= 0.5
    x0, y0, x1, y1 = top["box"]
    assert top["roi"] == [x0, x1, y0, y1, 0, 0]


def test_wrong_domain_phrase_gives_no_confident_box(server):
    res = propose(server, "bus_0075-r", {"text": "colon polyp"}).json()
    assert res["found"] is False and res["candidates"] == []
    assert res["match_score"] < 0.5 and "no confident" in res["message"]


def test_heatmap_label_has_the_image_geometry(server, tmp_path):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    label_file, res = client.infer("box_proposal", "bus_1033-r", {"heatmap": True, "result_extension": ".nrrd"})
    heat = load_mask(label_file)
    assert heat.shape == (305, 529)
    ref = load_mask(SAMPLES / "reference" / "bus_1033-r.png") > 0
    assert heat[ref].mean() > heat[~ref].mean() + 50  # relevance concentrates on the lesion


@pytest.mark.parametrize(
    "params, words",
    [({"text": ""}, "empty"), ({"text": "x" * 5000}, "at most"), ({"text": 42}, "string"),
     ({"text": "lesion", "backend": "nope"}, "backend"), ({"text": "lesion", "top_k": 0}, "top_k")],
)
def test_bad_text_and_options_are_4xx(server, params, words):
    r = propose(server, "bus_0075-r", params)
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]


@pytest.fixture()
def fresh_server(tmp_path):
    """Its own datastore: the template bank must start empty whatever other tests saved."""
    srv = start_server(tmp_path)
    yield srv
    stop_server(srv.proc)


def test_template_backend_learns_from_saved_labels(fresh_server, tmp_path):
    server = fresh_server
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    query = "bus_0083-r"
    empty = propose(server, query, {"backend": "template"}).json()
    assert empty["found"] is False and "bank is empty" in empty["notes"][0]
    # the exemplar set tests/test_proposals_template.py uses (chosen there among three sets, not tuned)
    for case in ["bus_0130-l", "bus_0133-r", "bus_0164-l"]:
        client.save_label(case, str(SAMPLES / "reference" / f"{case}.png"), tag="final")
    res = propose(server, query, {"backend": "template", "top_k": 3}).json()
    assert res["found"] and res["candidates"][0]["backend"] == "template"
    assert set(res["candidates"][0]["extra"]["exemplars"]) == {"bus_0130-l", "bus_0133-r", "bus_0164-l"}
    assert box_iou(np.array(res["candidates"][0]["box"]), np.array(tight_box(query)))[0, 0] >= 0.5
    both = propose(server, query, {"backend": ["qformer_lite", "template"]}).json()
    assert set(both["backends"]) == {"qformer_lite", "template"}
