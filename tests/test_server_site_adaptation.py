"""A new site teaches the text path through the real server, with default options.

BUS-UCLM (a breast site in Spain, another scanner; no shipped model trained on it) in a fresh datastore, served
with the cross-site proposer (``--conf qformer_checkpoint model/qformer_lite_xsite/...``: the start the
learning-curve benchmark uses) and the site's phrase named (``--conf site_phrases "breast lesion"``, since
2026-12-04: without it the published fine-tune took "lesion" +12.2 text Dice points while "breast lesion", the
phrase this test asks with, answered "no lesion" on 58 % of the held-back lesion images; README).
Final labels of the training patients' images, lesion-free ones as empty labels,
are saved with Slicer's own client (``MONAILabelLib``, with ``label_info``); ``POST /train/radvlsm`` with **no
options**; then ``/infer/radvlsm`` on the held-back patients' images, same server process (no restart), finds
their lesions better than before (top lesion's box IoU with the reference), and the published proposer carries
its presence threshold.

Skipped where ``../shared/data/bus-uclm`` is absent (research licence: never bundled), and unless
``RADVLSM_SITE_E2E=1``: training 50 labels with the defaults takes about 8 minutes here, over the suite's budget.
The held-back set is every lesion image of the held-back patients (72, as the learning-curve benchmark), and the
claim (top lesion's box IoU up by more than 0.05) is unchanged. An earlier version measured a seeded draw of 16 of
them, to save time: there it **failed** (the gate published, the IoU fell 0.137 -> 0.085), so 16 images could not
tell a gain from noise. Last run on all 72 (2026-12-01) it **failed** again: the gate published (out of fold
better with confidence on the 50 labels), the IoU rose 0.166 -> 0.183, short of +0.05; on 2026-12-04 the same:
published, 0.241 -> 0.254 (+0.013); rerun the same day with the site phrase named: the gate refused (22 lesion
and 28 lesion-free images among the 50; out-of-fold top-1 IoU 0.275 -> 0.333, lower bound -0.016). The learning-curve
benchmark's `random` draw of 50 (another 50 images) gained +0.17 text Dice, so what a site learns from 50 labels
still depends on which 50. Kept as the product's claim, not loosened.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import time

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import ROOT, start_server, stop_server
from tests.test_server_slicer import slicer_client_module

pytestmark = pytest.mark.e2e
UCLM = ROOT.parent / "shared" / "data" / "bus-uclm"
XSITE = ROOT / "model" / "qformer_lite_xsite" / "qformer_lite.pt"
N_LABELS = 50
PHRASE = "breast lesion"


def _cases():
    """``(labelled, test)`` ids: training patients (a seeded draw, lesion-free images included) and lesion images of
    held-back patients (``sha1(patient) mod 5 == 0``, the benchmarks' split)."""
    import sys

    sys.path.insert(0, str(ROOT))
    from benchmarks.datasets import held_out, uclm

    with open(UCLM / "info.csv") as f:
        patient = {r["id"]: r["patient"] for r in csv.DictReader(f)}
    lesion, normal = {c for _, _, c in uclm("lesion")}, {c for _, _, c in uclm("normal")}
    pool = sorted(c for c in lesion | normal if not held_out(patient[c]))
    random.Random(0).shuffle(pool)
    test = sorted(c for c in lesion if held_out(patient[c]))
    return pool[:N_LABELS], test, normal


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not (UCLM / "info.csv").is_file():
        pytest.skip("needs ../shared/data/bus-uclm (not bundled)")
    if os.environ.get("RADVLSM_SITE_E2E") != "1":
        pytest.skip("site-adaptation e2e is opt-in (RADVLSM_SITE_E2E=1, ~8 min): see the module docstring")
    labelled, test, normal = _cases()
    tmp = tmp_path_factory.mktemp("site")
    studies = tmp / "studies"
    studies.mkdir()
    for c in labelled + test:
        shutil.copy(UCLM / "images" / f"{c}.jpg", studies / f"{c}.jpg")
    # the site names the phrase it asks with (README: Learning from corrections); without it the 2026-12-04 run's
    # fine-tune taught "lesion" (+12.2 text Dice points) while "breast lesion" answered "no lesion" on 58 %
    server = start_server(tmp, conf={"qformer_checkpoint": str(XSITE), "site_phrases": PHRASE})
    yield server, labelled, test, normal, tmp
    stop_server(server.proc)


def top_lesion_iou(url: str, cases: list[str]) -> tuple[float, set[str]]:
    """Mean IoU of the top lesion's box (the mask's tight box, from the JSON) with the reference lesion's box;
    0 where no lesion is returned."""
    from radvlsm.geometry import mask_to_box
    from radvlsm.proposals.boxes import box_iou

    scores, versions = [], set()
    for c in cases:
        r = requests.post(f"{url}/infer/radvlsm", params={"image": c, "output": "json"},
                          files={"params": (None, json.dumps({"text": PHRASE, "diagnose": False}))}, timeout=300)
        assert r.status_code == 200, r.text
        res = r.json()
        versions.add(res["proposer_version"])
        gt = np.array(Image.open(UCLM / "masks" / f"{c}.png").convert("L")) > 0
        boxes = [lesion["box"] for lesion in res["lesions"][:1]]
        scores.append(float(box_iou(np.array(boxes[0], np.float32), np.array([mask_to_box(gt)], np.float32))[0, 0])
                      if boxes else 0.0)
    return float(np.mean(scores)), versions


@pytest.mark.timeout(1500)  # 50 labels trained with the defaults: minutes on a 2-core CPU
def test_default_train_teaches_the_site_and_infer_uses_it_live(site):
    server, labelled, test, normal, tmp = site
    before, versions = top_lesion_iou(server.url, test)
    assert versions == {"shipped"}

    client = slicer_client_module().MONAILabelClient(server.url, tmpdir=str(tmp))
    for c in labelled:  # Submit Label as Slicer does; a lesion-free image is an empty label
        mask = np.array(Image.open(UCLM / "masks" / f"{c}.png").convert("L")) > 0
        assert mask.any() != (c in normal)
        path = tmp / f"{c}.png"
        Image.fromarray(mask.astype(np.uint8)).save(path)
        saved = client.save_label(c, str(path), params={"label_info": [{"name": "lesion", "idx": 1}]})
        assert saved["image"] == c

    r = requests.post(f"{server.url}/train/radvlsm", json={}, timeout=30)  # no options: the defaults
    assert r.status_code == 200, r.text
    deadline = time.time() + 900
    while (task := requests.get(f"{server.url}/train/", timeout=30).json())["status"] in ("SUBMITTED", "RUNNING"):
        assert time.time() < deadline, "training did not finish"
        time.sleep(3)
    assert task["status"] == "DONE", task
    stats = requests.get(f"{server.url}/info/", timeout=30).json()["train_stats"]["radvlsm"]
    proposer = stats["proposer"]
    n_free = sum(c in normal for c in labelled)
    assert proposer["images"] == N_LABELS and proposer["lesion_free"] == n_free > 0, proposer
    assert proposer["published"] and proposer["gate"]["passed"] and proposer["gate"]["lower"] > 0, proposer
    assert 0.0 < proposer["match_threshold"] < 1.0

    after, versions = top_lesion_iou(server.url, test)  # same server process: picked up live
    assert versions == {proposer["version"]}
    assert after > before + 0.05, (before, after)
