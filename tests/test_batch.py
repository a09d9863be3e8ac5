"""Batch pre-annotation through MONAI Label's ``/batch/infer/radvlsm`` on a real server: unlabelled images only,
labels saved as it goes, a rerun redoes nothing, a clinician's final label is never overwritten."""

from __future__ import annotations

import shutil

import pytest
import requests

from tests.conftest import SAMPLES, start_server, stop_server

pytestmark = pytest.mark.e2e
CASES = ["bus_0075-r", "bus_1033-r"]


def batch(url: str) -> dict:
    r = requests.post(f"{url}/batch/infer/radvlsm", params={"images": "unlabeled", "run_sync": "true"},
                      json={"label_tag": "original"}, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()


def test_batch_pre_annotation_is_resumable_and_spares_final_labels(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    for case in CASES:
        shutil.copy(SAMPLES / "images" / f"{case}.png", studies)
    srv = start_server(tmp_path, conf={"models": "radvlsm"})
    try:
        final = SAMPLES / "reference" / f"{CASES[0]}.png"
        r = requests.put(f"{srv.url}/datastore/label", params={"image": CASES[0], "tag": "final"},
                         files={"label": (final.name, final.read_bytes())}, timeout=60)
        assert r.status_code == 200, r.text
        first = batch(srv.url)
        assert first["total"] == 1 and first["done"] == 1 and first["failed"] == []
        assert first["skipped_already_labelled"] == 1 and first["images_per_s"] > 0
        saved = sorted(p.stem for p in (studies / "labels" / "original").iterdir())
        assert saved == [CASES[1]]  # the finally-labelled image got no pre-annotation
        again = batch(srv.url)
        assert again["total"] == 0 and again["skipped_already_labelled"] == 2
        log = srv.log.read_text()
        assert "radvlsm batch: 1/1" in log and "images/s" in log
    finally:
        stop_server(srv.proc)
