"""Faults: corrupt weights at start-up, a label save killed mid-way, a datastore file left half-written.

The killed-save test runs the datastore the server uses (radvlsm's SafeLocalDatastore over MONAI Label's
LocalDatastore) in a process that saves labels in a loop and is SIGKILLed at 5 random moments, then reopens the
studies folder as a restarted server would. (Killed training runs and inference while training:
tests/test_server_train.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import APP, SAMPLES, start_server

CASE = "bus_0075-r"


def test_truncated_backbone_checkpoint_is_a_clear_error_naming_the_file(tmp_path):
    """Library level (the server path, SystemExit with this message, is the qformer case below and
    tests/test_server_sam.py's missing checkpoint)."""
    from radvlsm.errors import CheckpointError
    from radvlsm.models import build_backbone
    from radvlsm.models.litemedsam import default_checkpoint

    bad = tmp_path / "litemedsam.pth"
    bad.write_bytes(Path(default_checkpoint()).read_bytes()[: 2**20])
    with pytest.raises(CheckpointError, match="could not be read") as err:
        build_backbone("litemedsam", checkpoint=str(bad))
    assert str(bad) in str(err.value)


@pytest.mark.e2e
def test_corrupt_proposer_weights_stop_startup_with_a_message_naming_the_file(tmp_path):
    bad = tmp_path / "qformer_lite.pt"
    bad.write_bytes(b"this is not a checkpoint" * 100)
    t0 = time.time()
    with pytest.raises(RuntimeError) as err:
        start_server(tmp_path, conf={"models": "box_proposal", "qformer_checkpoint": str(bad)})
    text = str(err.value)
    assert "server exited" in text and "cannot start task 'box_proposal'" in text, text[-2000:]
    assert str(bad) in text and "could not be loaded" in text, text[-2000:]
    assert time.time() - t0 < 120


HARNESS = """
import json, os, random, signal, sys, time
sys.path.insert(0, {app!r})
from lib.server.datastore import SafeLocalDatastore

def open_ds(studies):
    return SafeLocalDatastore(studies, extensions=["*.png", "*.nii.gz"], auto_reload=False)

case, kill_studies, labels, corrupt_studies = {case!r}, {kill_studies!r}, {labels!r}, {corrupt_studies!r}
versions = [open(p, "rb").read() for p in labels]
ds = open_ds(kill_studies)
rng = random.Random(0)
for k in range(5):
    pid = os.fork()  # the saver: forked after the imports, so each round costs no start-up
    if pid == 0:
        i = 0
        while True:  # each save: validate image and label, copy + fsync + rename, JSON + fsync + rename
            ds.save_label(case, labels[i % 3], "final", {{"n": i}})
            i += 1
    time.sleep(rng.uniform(0.2, 0.8))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    label = open(os.path.join(kill_studies, "labels", "final", case + ".png"), "rb").read()
    record = json.load(open(os.path.join(kill_studies, "datastore_v2.json")))  # must parse
    info = record["objects"][case]["labels"]["final"]["info"]
    print("round", k, label in versions, info["name"], info["n"], flush=True)
print("reopened", open_ds(kill_studies).get_label_uri(case, "final"), flush=True)
print("rebuilt", open_ds(corrupt_studies).get_label_uri(case, "final"), flush=True)
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """One child process (one start-up) runs both datastore fault scenarios; the tests read its report."""
    tmp = tmp_path_factory.mktemp("faults")
    kill_studies, corrupt_studies = tmp / "kill", tmp / "corrupt"
    for studies in (kill_studies, corrupt_studies):
        (studies / "labels" / "final").mkdir(parents=True)
        shutil.copy(SAMPLES / "images" / f"{CASE}.png", studies)
    ref = np.array(Image.open(SAMPLES / "reference" / f"{CASE}.png"))
    labels = []
    for name, mask in {"a": ref, "b": np.flipud(ref), "c": (ref > 0).astype(np.uint8)}.items():
        Image.fromarray(mask).save(tmp / f"{name}.png")
        labels.append(str(tmp / f"{name}.png"))
    # what a stock MONAI Label server killed while rewriting its datastore file leaves behind
    shutil.copy(SAMPLES / "reference" / f"{CASE}.png", corrupt_studies / "labels" / "final")
    (corrupt_studies / "datastore_v2.json").write_text('{"name": "new-dataset", "objects": {"bus_0075-r": {"ima')
    stale = corrupt_studies / "labels" / "final" / f".{CASE}.png.123.abcd.partial"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    code = HARNESS.format(app=str(APP), case=CASE, kill_studies=str(kill_studies), labels=labels,
                          corrupt_studies=str(corrupt_studies))
    out = subprocess.run([sys.executable, "-c", code], cwd=APP, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out, kill_studies, corrupt_studies


def test_killed_label_saves_leave_a_consistent_datastore(harness):
    out, studies, _ = harness
    rounds = [line.split() for line in out.stdout.splitlines() if line.startswith("round")]
    assert len(rounds) == 5
    for _, _, whole, name, n in rounds:
        assert whole == "True"  # the label file is one whole version, never a mix or a prefix
        assert name == f"{CASE}.png" and int(n) >= 0  # datastore_v2.json parses and records it
    assert sum(int(r[4]) + 1 for r in rounds) >= 10  # saves were really running when the kills came
    assert f"reopened {studies}/labels/final/{CASE}.png" in out.stdout  # a restarted server serves it


def test_half_written_datastore_file_is_set_aside_and_rebuilt(harness):
    """MONAI Label itself refuses to start on a truncated datastore_v2.json; here the file is moved aside (loudly)
    and the datastore rebuilt from the files on disk."""
    out, _, studies = harness
    assert f"rebuilt {studies}/labels/final/{CASE}.png" in out.stdout
    assert "is corrupt" in out.stderr and "rebuilding" in out.stderr
    assert len(list(studies.glob("datastore_v2.json.corrupt-*"))) == 1
    assert json.loads((studies / "datastore_v2.json").read_text())["objects"][CASE]["labels"]["final"]
    assert not list(studies.rglob("*.partial"))


def test_embedding_cache_is_bounded_by_the_bytes_it_holds():
    """The predictor caches ``Encoded`` objects: their tensors must count, or ``--conf cache_mb`` bounds nothing and
    every new image adds 4 MB for good (found by benchmarks/bench_load.py: a 24 MB cache never missed)."""
    import torch

    from radvlsm.cache import EmbeddingCache
    from radvlsm.predictor import Encoded

    cache = EmbeddingCache(max_bytes=3 * 4 * 2**20)
    for i in range(10):
        cache.get_or_compute(i, lambda: Encoded(torch.zeros(1, 256, 64, 64), (352, 276), (256, 201)))
    assert len(cache) == 3 and cache.bytes == 3 * 4 * 2**20
    assert cache.get_or_compute(0, lambda: None)[1] is False and cache.get_or_compute(9, lambda: None)[1] is True


def test_start_up_serves_the_last_good_decoder_when_current_is_corrupt(tmp_path):
    """v0001 good, v0002 published then corrupted on disk: a server starting now serves v0001 (not the shipped
    decoder); a running server whose ``current`` turns bad keeps what it serves (tests/test_training.py)."""
    import threading

    import torch

    from radvlsm.models import build_backbone
    from radvlsm.training import DecoderStore, DecoderWatcher
    from radvlsm.training.store import decoder_state

    backbone = build_backbone("litemedsam")
    shipped = decoder_state(backbone)
    key = "mask_decoder.iou_token.weight"
    good = {k: v.clone() for k, v in shipped.items()}
    good[key] += 1
    store = DecoderStore(tmp_path / "sam_decoder")
    v1 = store.publish(good, "litemedsam", backbone.version, {})
    v2 = store.publish(shipped, "litemedsam", backbone.version, {})
    store.payload(v2).write_bytes(store.payload(v2).read_bytes()[:1000])  # truncated on disk
    assert store.current() == v2
    watcher = DecoderWatcher(store, backbone, threading.Lock())
    assert watcher.refresh() == v1
    assert torch.equal(decoder_state(backbone)[key], good[key])
