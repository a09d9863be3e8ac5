"""Access with MONAI Label's own authentication on (``MONAI_LABEL_AUTH_ENABLE=true``), on a real server.

MONAI Label validates bearer tokens against the public key it fetches from ``MONAI_LABEL_AUTH_REALM_URI`` (a
Keycloak realm in production: ``GET <realm>`` -> ``{"public_key": ...}``). Here that one endpoint is served on
loopback from a key pair made by the test, and tokens are signed with it, so MONAI Label's real token and role
checks run. Not tested: a real Keycloak (login flow, token refresh, key rotation)."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import SAMPLES, start_server, stop_server, tight_box

pytestmark = pytest.mark.e2e
CASE = "bus_0075-r"
ROLES = {"user": ["monailabel-user"], "annotator": ["monailabel-user", "monailabel-annotator"],
         "admin": ["monailabel-admin", "monailabel-user", "monailabel-annotator", "monailabel-reviewer"]}


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(key: rsa.RSAPrivateKey, roles: list[str], exp_in: float = 600, alg: str = "RS256") -> str:
    now = int(time.time())
    return jwt.encode({"preferred_username": "tester", "realm_access": {"roles": roles}, "iat": now,
                       "exp": now + exp_in}, key, algorithm=alg)


@pytest.fixture(scope="module")
def realm():
    """The realm endpoint MONAI Label reads its public key from, on loopback."""
    key = new_key()
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = json.dumps({"realm": "monailabel", "public_key": base64.b64encode(der).decode()}).encode()

    class Realm(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path.rstrip("/") == "/realms/monailabel" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Realm)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield key, f"http://127.0.0.1:{httpd.server_address[1]}/realms/monailabel"
    httpd.shutdown()


@pytest.fixture(scope="module")
def srv(realm, tmp_path_factory):
    key, uri = realm
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": uri}
    admin = {"Authorization": f"Bearer {token(key, ROLES['admin'])}"}
    server = start_server(tmp_path_factory.mktemp("auth"), conf={"models": "sam"}, env=env, headers=admin)
    yield server
    stop_server(server.proc)


def snapshot(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()
            and p.name != ".lock"}


def call(srv, what: str, headers: dict) -> requests.Response:
    ref = SAMPLES / "reference" / f"{CASE}.png"
    if what == "infer":
        return requests.post(f"{srv.url}/infer/sam", params={"image": CASE, "output": "json"}, headers=headers,
                             files={"params": (None, json.dumps({"boxes": [tight_box(CASE)]}))}, timeout=120)
    if what == "label":
        return requests.put(f"{srv.url}/datastore/label", params={"image": CASE, "tag": "final"}, headers=headers,
                            files={"label": (ref.name, ref.read_bytes())}, timeout=60)
    if what == "train":
        return requests.post(f"{srv.url}/train/radvlsm", json={"epochs": 1}, headers=headers, timeout=60)
    if what == "upload_image":
        return requests.put(f"{srv.url}/datastore/image", params={"image": "intruder"}, headers=headers,
                            files={"file": (ref.name, ref.read_bytes())}, timeout=60)
    if what == "delete_image":
        return requests.delete(f"{srv.url}/datastore/image", params={"id": CASE}, headers=headers, timeout=60)
    if what == "datastore":
        return requests.get(f"{srv.url}/datastore/", headers=headers, timeout=60)
    raise ValueError(what)


WRITES_AND_READS = ["infer", "label", "train", "upload_image", "delete_image", "datastore"]


@pytest.mark.parametrize("credentials", ["none", "garbage", "foreign_key", "expired", "hs256_forged"])
@pytest.mark.parametrize("what", WRITES_AND_READS)
def test_without_a_valid_token_everything_is_401_and_nothing_written(srv, realm, what, credentials):
    key, _ = realm
    headers = {
        "none": {},
        "garbage": {"Authorization": "Bearer not.a.token"},
        "foreign_key": {"Authorization": f"Bearer {token(new_key(), ROLES['admin'])}"},
        "expired": {"Authorization": f"Bearer {token(key, ROLES['admin'], exp_in=-60)}"},
        # an HMAC-signed token: refused because the server accepts only the realm's RS256 signatures
        "hs256_forged": {"Authorization": "Bearer " + jwt.encode(
            {"preferred_username": "x", "realm_access": {"roles": ROLES["admin"]}, "exp": int(time.time()) + 600},
            "a shared secret the attacker chose, 32+ bytes long", algorithm="HS256")},
    }[credentials]
    before = snapshot(srv.studies)
    r = call(srv, what, headers)
    assert r.status_code == 401, r.text
    assert snapshot(srv.studies) == before


@pytest.mark.parametrize("role, what, status", [
    ("user", "infer", 200), ("user", "datastore", 200), ("user", "label", 403), ("user", "train", 403),
    ("user", "upload_image", 403), ("user", "delete_image", 403),
    ("annotator", "train", 403), ("annotator", "delete_image", 403),
])
def test_roles_decide_who_may_write(srv, realm, role, what, status):
    key, _ = realm
    before = snapshot(srv.studies)
    r = call(srv, what, {"Authorization": f"Bearer {token(key, ROLES[role])}"})
    assert r.status_code == status, r.text
    if status != 200:
        assert "required" in r.json()["detail"]
        assert snapshot(srv.studies) == before


def test_annotator_saves_a_label_and_admin_may_stop_training(srv, realm):
    key, _ = realm
    r = call(srv, "label", {"Authorization": f"Bearer {token(key, ROLES['annotator'])}"})
    assert r.status_code == 200, r.text
    assert (srv.studies / "labels" / "final" / f"{CASE}.png").exists()
    admin = {"Authorization": f"Bearer {token(key, ROLES['admin'])}"}
    assert requests.delete(f"{srv.url}/train/", headers=admin, timeout=60).status_code == 200
    assert requests.delete(f"{srv.url}/train/", headers={"Authorization": f"Bearer {token(key, ROLES['user'])}"},
                           timeout=60).status_code == 403
