"""Shared fixtures: bundled samples with their reference masks, and a real MONAI Label server on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from radvlsm.geometry import mask_dice, mask_to_box
from radvlsm.io import load_mask

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
APP = ROOT / "apps" / "radvlsm"


def app_module(name: str):
    """A module of the app's own package (``apps/radvlsm/lib``, imported as ``lib`` as MONAI Label loads it)."""
    import importlib

    sys.path.insert(0, str(APP))
    try:
        return importlib.import_module(f"lib.{name}")
    finally:
        sys.path.pop(0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return mask_dice(np.asarray(a) > 0, np.asarray(b) > 0)


def reference(sample_id: str) -> np.ndarray:
    return load_mask(SAMPLES / "reference" / f"{sample_id}.png") > 0


def tight_box(sample_id: str) -> list[float]:
    return mask_to_box(reference(sample_id))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    studies: Path
    log: Path
    proc: subprocess.Popen


def start_server(tmp: Path, conf: dict[str, str] | None = None, env: dict[str, str] | None = None,
                 timeout: float = 180, headers: dict[str, str] | None = None) -> Server:
    studies = tmp / "studies"
    if not studies.exists():
        shutil.copytree(SAMPLES / "images", studies)
    port = free_port()
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port)]
    for k, v in (conf or {}).items():
        cmd += ["--conf", k, v]
    log = tmp / f"server-{port}.log"
    full_env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(tmp / "sessions"), **(env or {})}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp, env=full_env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/info/", timeout=2, headers=headers).ok:  # headers: a token when auth is on
                return Server(url, studies, log, proc)
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"server did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    srv = start_server(tmp_path_factory.mktemp("server"))
    yield srv
    stop_server(srv.proc)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A real Orthanc on free loopback ports with a throw-away storage, one per test module that asks for it
    (those modules skip with ``tests.orthanc.needs_orthanc`` where it is not installed)."""
    from tests.orthanc import start_orthanc, stop_orthanc  # tests.orthanc imports this module

    o = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield o
    stop_orthanc(o.proc)
