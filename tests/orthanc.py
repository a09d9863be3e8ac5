"""A real DICOMweb server for the tests: Orthanc (Debian packages ``orthanc`` + ``orthanc-dicomweb``, installed by
``scripts/install_dicomweb_test_deps.sh``) on loopback with a throw-away storage dir, and the radvlsm app started
with ``--studies`` pointing at its DICOMweb root. Tests that need Orthanc skip, naming what is missing, only when the
binary or the plugin is not installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from radvlsm.dicom import image_to_dicom
from tests.conftest import APP, SAMPLES, Server, free_port, stop_server

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
#: where Debian's orthanc-dicomweb puts the plugin (a symlink to /usr/lib/orthanc/libOrthancDicomWeb.so.<version>)
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def orthanc_missing() -> str:
    """Why Orthanc cannot run here ('' when it can)."""
    if not os.access(ORTHANC_BIN, os.X_OK):
        return f"Orthanc is not installed ({ORTHANC_BIN}); run scripts/install_dicomweb_test_deps.sh"
    if not os.path.exists(DICOMWEB_PLUGIN):
        return (f"Orthanc's DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}); "
                "run scripts/install_dicomweb_test_deps.sh")
    return ""


needs_orthanc = pytest.mark.skipif(bool(orthanc_missing()), reason=orthanc_missing() or "Orthanc present")


@dataclass
class Orthanc:
    url: str  # REST root
    dicomweb: str  # DICOMweb root (what the app's --studies gets)
    dicom_port: int
    storage: Path
    log: Path
    proc: subprocess.Popen


def start_orthanc(tmp: Path, timeout: float = 60) -> Orthanc:
    """Orthanc on free loopback ports with a fresh storage dir and the DICOMweb plugin; waits until it answers."""
    http_port, dicom_port = free_port(), free_port()
    storage = tmp / "orthanc-db"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "radvlsm-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "RADVLSMTEST",
        "RemoteAccessAllowed": False,  # HTTP answers loopback clients only
        "AuthenticationEnabled": False,
        # Orthanc 1.10 has no bind address: its DICOM port listens on every interface, so it accepts no one
        # (no known modality, nothing allowed by default); the tests use DICOMweb only
        "DicomModalities": {},
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowMove": False,
        "DicomAlwaysAllowGet": False,
        "SaveJobs": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado", "Ssl": False,
                     "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }
    cfg = tmp / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    log = tmp / "orthanc.log"
    proc = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp,
                            start_new_session=True)
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/dicom-web/studies", timeout=2).ok:  # the plugin answers: QIDO is up
                return Orthanc(url, f"{url}/dicom-web", dicom_port, storage, log, proc)
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_orthanc(proc)
    raise RuntimeError(f"Orthanc did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def stop_orthanc(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def upload_samples(orthanc: Orthanc, cases: list[str], **kw) -> dict[str, dict[str, str]]:
    """Each sample PNG as one DICOM instance (its own study and series) stored with STOW-RS; case -> UIDs."""
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(orthanc.dicomweb)
    uids = {}
    for case in cases:
        ds = image_to_dicom(SAMPLES / "images" / f"{case}.png", patient_id=case.split("-")[0],
                            description=f"BUS-BRA {case}", **kw)
        client.store_instances([ds])
        uids[case] = {"study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID),
                      "instance": str(ds.SOPInstanceUID)}
    return uids


def start_dicomweb_app(tmp: Path, studies: str, conf: dict[str, str] | None = None,
                       env: dict[str, str] | None = None, timeout: float = 180) -> Server:
    """The radvlsm app with ``--studies <DICOMweb root>``, a throw-away DICOM cache and the search filter on US."""
    port = free_port()
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP), "--studies", studies,
           "--host", "127.0.0.1", "--port", str(port)]
    for k, v in (conf or {}).items():
        cmd += ["--conf", k, v]
    log = tmp / f"server-{port}.log"
    full_env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(tmp / "sessions"),
                "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp / "dicom-cache"),
                "MONAI_LABEL_DICOMWEB_SEARCH_FILTER": json.dumps({"Modality": "US"}), **(env or {})}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp, env=full_env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/info/", timeout=2).ok:
                return Server(url, tmp / "dicom-cache", log, proc)
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"server did not answer within {timeout}s:\n{log.read_text()[-3000:]}")
