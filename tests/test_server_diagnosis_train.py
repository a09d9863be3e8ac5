"""End to end: clinicians' labels with a pathology recalibrate the diagnosis head (``/train/diagnosis``); the
running server's ``diagnosis`` and ``radvlsm`` tasks answer with the published head at once, no restart."""

from __future__ import annotations

import csv
import json

import pytest
import requests

from tests.conftest import SAMPLES, start_server, stop_server
from tests.test_server_train import wait_done

pytestmark = pytest.mark.e2e
PATHOLOGY = {r["ID"]: r["Pathology"] for r in csv.DictReader((SAMPLES / "pathology.csv").open())}
LABELLED = ["bus_0017-s", "bus_0075-r", "bus_0083-r", "bus_0130-l", "bus_0133-r", "bus_0263-l", "bus_0370-r"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    # the site's exemplars off: not what this file tests, and scoring each of the 7 saved labels for them (on the
    # server's learning thread) would share the CPU with the head's training run
    server = start_server(tmp_path_factory.mktemp("diag_train_server"),
                          conf={"models": "radvlsm,diagnosis", "site_exemplars": "false"})
    yield server
    stop_server(server.proc)


def diagnose(srv, image: str, params: dict | None = None) -> dict:
    r = requests.post(f"{srv.url}/infer/diagnosis", params={"image": image, "output": "json"},
                      files={"params": (None, json.dumps(params or {}))}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_recalibrated_head_is_published_and_served_live(srv):
    for i in LABELLED:
        r = requests.put(f"{srv.url}/datastore/label", params={"image": i, "tag": "final"},
                         files={"label": (f"{i}.png", (SAMPLES / "reference" / f"{i}.png").read_bytes()),
                                "params": (None, json.dumps({"pathology": PATHOLOGY[i]}))}, timeout=60)
        assert r.status_code == 200, r.text
    before = diagnose(srv, "bus_0075-r")
    assert before["head_version"] == "shipped" and before["mask_source"] == "saved final label"

    bad = requests.post(f"{srv.url}/train/diagnosis", json={"strength": "a lot"}, timeout=30)
    assert bad.status_code == 422 and "strength" in bad.json()["detail"], bad.text  # refused before any run starts

    sync = requests.post(f"{srv.url}/train/diagnosis", params={"run_sync": "true"}, json={"tolerance": -1}, timeout=60)
    assert sync.status_code == 422 and "tolerance" in sync.json()["detail"], sync.text
    assert not (srv.studies / ".radvlsm" / "trained" / "litemedsam" / "diagnosis_head" / "current").exists()

    r = requests.post(f"{srv.url}/train/diagnosis", json={"tolerance": 10}, timeout=30)
    assert r.status_code == 200, r.text
    assert wait_done(srv)["status"] == "DONE"
    stats = requests.get(f"{srv.url}/info/", timeout=30).json()["train_stats"]["diagnosis"]
    assert stats["published"] == "v0001" and stats["served_version"] == "v0001", stats
    assert stats["n_train"] + stats["n_val"] + len(stats["skipped"]) == len(LABELLED)
    store = srv.studies / ".radvlsm" / "trained" / "litemedsam" / "diagnosis_head"
    assert (store / "v0001.head.json").is_file() and (store / "current").read_text().strip() == "v0001"

    after = diagnose(srv, "bus_0075-r")  # same process: the head is picked up live
    assert after["head_version"] == "v0001"
    assert after["probability_malignant"] != before["probability_malignant"]
    r = requests.post(f"{srv.url}/infer/radvlsm", params={"image": "bus_0584-l", "output": "json"},
                      files={"params": (None, "{}")}, timeout=300)
    assert r.status_code == 200 and r.json()["lesions"][0]["diagnosis"]["version"] == "v0001"
