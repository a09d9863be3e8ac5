"""Serving many annotators (real MONAI Label server on loopback, real clients): inference runs off the event loop
in a bounded worker pool, each answer is its own image's, a failing request frees its worker, the result JSON says
how long it waited, and MONAI Label's stock client with its default temp folder keeps every result file while the
server leaves none behind."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from PIL import Image

from radvlsm.io import load_mask
from radvlsm.service import RESULT_FOLDER_PREFIX, remove_result, result_path
from tests.conftest import APP, SAMPLES, dice, reference, tight_box

CASES = ["bus_0075-r", "bus_1033-r", "bus_0130-l", "bus_0263-l"]


def result_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"{RESULT_FOLDER_PREFIX}*")}


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def sam(server, case: str, **params) -> requests.Response:
    return requests.post(f"{server.url}/infer/sam", params={"image": case, "output": "json"},
                         files={"params": (None, json.dumps({"boxes": [tight_box(case)], **params}))}, timeout=300)


@pytest.mark.e2e
def test_stock_client_with_its_default_temp_folder_keeps_every_result(server):
    """MONAILabelClient(url) saves a result as <temp dir>/<basename the server sends>: never the server's own file,
    so the server's clean-up after answering cannot delete it; the server leaves no result folder behind."""
    before = result_folders()
    client = MONAILabelClient(server.url)  # default tmpdir: the same temp dir as the server's
    files = []
    for case in CASES + CASES:
        label_file, result = client.infer("sam", case, {"boxes": [tight_box(case)], "result_extension": ".png"})
        files.append((case, label_file))
        assert result["lesions"], result
    time.sleep(1.0)  # the server's background clean-up has run by now
    try:
        for case, label_file in files:
            assert os.path.isfile(label_file), f"{label_file} vanished"
            assert dice(load_mask(label_file), reference(case)) >= 0.8
        assert len({f for _, f in files}) == len(files)  # no two results share a name
        assert wait_for(lambda: result_folders() <= before), result_folders() - before
    finally:
        for _, f in files:
            Path(f).unlink(missing_ok=True)


@pytest.mark.e2e
def test_slicer_client_saving_into_the_servers_temp_folder_keeps_every_result(server):
    """3D Slicer's own client (MONAILabelLib) pointed at the server's temp folder, the worst case on one machine."""
    from tests.test_server_slicer import SlicerRequests

    slicer = SlicerRequests(server.url, Path(tempfile.gettempdir()))
    files = []
    try:
        for case in CASES:
            x0, y0, x1, y1 = tight_box(case)
            label_file, _ = slicer.infer("sam", case, {"roi": [x1, x0, y1, y0, 0, 0]})
            files.append((case, label_file))
        time.sleep(1.0)
        for case, label_file in files:
            assert os.path.isfile(label_file), f"{label_file} vanished"
            assert dice(load_mask(label_file) > 0, reference(case)) >= 0.8
    finally:
        for _, f in files:
            Path(f).unlink(missing_ok=True)


@pytest.mark.e2e
def test_info_is_answered_while_a_new_image_pipeline_runs(server, tmp_path):
    pixels = np.array(Image.open(SAMPLES / "images" / "bus_0075-r.png"))
    pixels[:8, :8] ^= 3  # never seen by this server: the pipeline must encode it
    upload = tmp_path / "new.png"
    Image.fromarray(pixels).save(upload)
    done: dict[str, float] = {}

    def pipeline():
        r = requests.post(f"{server.url}/infer/radvlsm", params={"output": "json"},
                          files={"params": (None, json.dumps({"text": "lesion"})),
                                 "file": (upload.name, upload.read_bytes())}, timeout=300)
        done["pipeline"] = time.perf_counter()
        done["response"] = r

    worker = threading.Thread(target=pipeline)
    worker.start()
    time.sleep(0.15)  # the upload is in and the encode has started
    infos = []
    while "pipeline" not in done and len(infos) < 20:
        r = requests.get(f"{server.url}/info/", timeout=60)
        assert r.status_code == 200
        infos.append(time.perf_counter())
    worker.join()
    res = done["response"]
    assert res.status_code == 200, res.text
    # /info was answered (more than once) before the pipeline's answer: the event loop was free
    assert len([t for t in infos if t < done["pipeline"]]) >= 2, (infos, done["pipeline"])
    assert res.json()["latencies_ms"]["queue"] >= 0


@pytest.mark.e2e
def test_concurrent_prompts_each_get_their_own_images_answer(server):
    jobs = CASES * 3  # more requests than workers: some wait their turn
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda case: sam(server, case, result_extension=".png"), jobs))
    for case, r in zip(jobs, answers, strict=True):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["lesions"][0]["box"] == [round(v, 2) for v in tight_box(case)]  # this image's lesion
        assert body["latencies_ms"]["queue"] >= 0


@pytest.mark.e2e
def test_failed_requests_free_their_workers(server):
    for _ in range(6):  # more than the workers: a failure that kept its slot would block the next good request
        r = sam(server, CASES[0], boxes=[[5, 5, 2, 2]])
        assert r.status_code == 422 and "boxes" in r.text, r.text
    good = sam(server, CASES[0])
    assert good.status_code == 200 and good.json()["lesions"], good.text


def load_workers():
    """The app's worker module (``apps/radvlsm/lib/server/workers.py``: anyio and radvlsm only)."""
    spec = importlib.util.spec_from_file_location("radvlsm_app_workers", APP / "lib" / "server" / "workers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pool_bounds_concurrency_reports_the_wait_and_frees_a_failed_slot():
    workers = load_workers()
    pool = workers.InferPool(1)
    lock, running, peak, waits = threading.Lock(), [0], [0], {}

    def job(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        waits[i] = workers.QUEUE_MS.get()
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        if i == 1:
            raise ValueError("boom")
        return i

    async def main():
        return await asyncio.gather(*(pool.run(job, i) for i in range(3)), return_exceptions=True)

    out = asyncio.run(main())
    assert out[0] == 0 and isinstance(out[1], ValueError) and out[2] == 2  # the failure freed its slot
    assert peak[0] == 1 and pool.waiting == 0
    assert max(waits.values()) >= 350  # the last waited for the two jobs before it (0.2 s each)
    assert min(waits.values()) < 150
    with pytest.raises(ValueError, match="infer_workers"):
        workers.InferPool(0)


def test_results_live_alone_in_private_folders_removed_with_them(tmp_path):
    a, b = result_path(".png"), result_path(".png")
    assert Path(a).parent != Path(b).parent and Path(a).name != Path(b).name
    assert Path(a).parent.parent == Path(tempfile.gettempdir()) and Path(a).parent.name.startswith(RESULT_FOLDER_PREFIX)
    assert (Path(a).parent.stat().st_mode & 0o777) == 0o700
    Path(a).write_bytes(b"x")
    remove_result(a)
    remove_result(b)  # never written: its folder goes too
    assert not Path(a).parent.exists() and not Path(b).parent.exists()
    other = tmp_path / "keep" / "file.png"  # not a result folder: only the file goes
    other.parent.mkdir()
    other.write_bytes(b"x")
    remove_result(str(other))
    assert not other.exists() and other.parent.exists()
    remove_result("")  # nothing to remove
