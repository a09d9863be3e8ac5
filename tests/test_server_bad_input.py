"""Bad input over REST, on one real server: each is a 4xx whose message names the field, the server keeps
answering, and nothing is written to the studies folder (nor outside it)."""

from __future__ import annotations

import http.client
import io
import json
import struct
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import nibabel as nib
import numpy as np
import pytest
import requests
import SimpleITK as sitk
from PIL import Image

from tests.conftest import SAMPLES, start_server, stop_server, tight_box
from tests.test_io import write_dicom

pytestmark = pytest.mark.e2e
CASE = "bus_0075-r"  # 352 rows x 276 cols
BOX = [[1, 1, 20, 20]]
UPLOAD_MB = 4


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    (tmp / "tmp").mkdir()  # the server's own temp dir: a refused upload must not stay there
    server = start_server(tmp, conf={"max_upload_mb": str(UPLOAD_MB)}, env={"TMPDIR": str(tmp / "tmp")})
    yield server
    stop_server(server.proc)


def png_with_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width x height``, with a few bytes of pixel data."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encode(save, suffix: str, tmp: Path) -> bytes:
    path = tmp / f"x{suffix}"
    save(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[str, bytes]]:
    tmp = tmp_path_factory.mktemp("bad_files")
    gray = np.array(Image.open(SAMPLES / "images" / f"{CASE}.png"))
    png = (SAMPLES / "images" / f"{CASE}.png").read_bytes()
    jpg = encode(lambda p: Image.fromarray(gray).save(p, quality=90), ".jpg", tmp)
    niigz = encode(lambda p: sitk.WriteImage(sitk.GetImageFromArray(gray), str(p)), ".nii.gz", tmp)
    nii = encode(lambda p: sitk.WriteImage(sitk.GetImageFromArray(gray), str(p)), ".nii", tmp)
    dcm = encode(lambda p: write_dicom(p, gray), ".dcm", tmp)
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape((20000, 20000))
    big_nii = header.binaryblock + b"\0" * 4  # header + empty extension block, no pixel data at all
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    return {
        "truncated_png": ("t.png", png[: len(png) // 3]),
        "corrupt_png": ("c.png", png[:16] + bytes(range(256)) * 8),
        "truncated_jpg": ("t.jpg", jpg[: len(jpg) // 2]),
        "truncated_niigz": ("t.nii.gz", niigz[: len(niigz) // 2]),
        "corrupt_nii": ("c.nii", b"\x5c\x01\x00\x00" + bytes(range(256)) * 4),
        "truncated_nii": ("t.nii", nii[: len(nii) // 2]),
        "truncated_dcm": ("t.dcm", dcm[: len(dcm) // 2]),
        "garbage_dcm": ("g.dcm", b"\0" * 128 + b"DICM" + bytes(range(256)) * 4),
        "empty_png": ("e.png", b""),
        "one_px_png": ("one.png", encode(lambda p: Image.fromarray(np.zeros((1, 1), np.uint8)).save(p), ".png", tmp)),
        "one_row_nrrd": ("row.nrrd", encode(lambda p: sitk.WriteImage(sitk.GetImageFromArray(
            np.zeros((1, 50), np.uint8)), str(p)), ".nrrd", tmp)),
        "huge_png": ("huge.png", png_with_header(10000, 10000)),  # over our limit, under Pillow's bomb limit
        "bomb_png": ("bomb.png", png_with_header(30000, 30000)),  # over Pillow's own decompression-bomb limit
        "huge_nii": ("huge.nii", big_nii),
        "volume_nrrd": ("vol.nrrd", encode(lambda p: sitk.WriteImage(sitk.GetImageFromArray(
            np.zeros((4, 64, 64), np.uint8)), str(p)), ".nrrd", tmp)),
        "four_d_nii": ("four.nii.gz", encode(lambda p: sitk.WriteImage(sitk.JoinSeries(
            [sitk.GetImageFromArray(np.zeros((4, 64, 64), np.uint8))] * 2), str(p)), ".nii.gz", tmp)),
        "nan_nii": ("nan.nii.gz", encode(lambda p: sitk.WriteImage(sitk.GetImageFromArray(
            np.full((64, 64), np.nan, np.float32)), str(p)), ".nii.gz", tmp)),
        "nan_tif": ("nan.tif", encode(lambda p: Image.fromarray(np.where(np.eye(64) > 0, np.nan, 1.0).astype(
            np.float32), mode="F").save(p), ".tif", tmp)),
        "text_file": ("notes.txt", b"not an image"),
        "rgba_png": ("rgba.png", encode(lambda p: Image.fromarray(rgba).save(p), ".png", tmp)),
        "gray16_png": ("g16.png", encode(lambda p: Image.fromarray(gray.astype(np.uint16) * 257).save(p), ".png",
                                         tmp)),
        "small_label": ("small.png", encode(lambda p: Image.fromarray(np.ones((10, 10), np.uint8)).save(p), ".png",
                                            tmp)),
        "good_png": (f"{CASE}.png", png),
    }


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file of the studies folder with its size and mtime (the lock file is not data)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


def without_session_store(files: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {k: v for k, v in files.items() if k != ".ses"}


def outside(srv) -> list[Path]:
    """Files a path traversal would have created next to (or above) the studies folder."""
    base = srv.studies.parent
    return sorted(p for p in [*base.glob("evil*"), *base.parent.glob("evil*"), *srv.studies.glob("labels/evil*")])


def send(srv, method: str, path: str, query: dict | None = None, params=None, files: dict | None = None,
         form_field: str = "params") -> requests.Response:
    fields = dict(files or {})
    if params is not None:
        fields[form_field] = (None, params if isinstance(params, str) else json.dumps(params))
    return requests.request(method, f"{srv.url}{path}", params=query, files=fields or None, timeout=120)


# (id, method, path, query, params, files (form field -> fixture key), status, words in the detail)
INFER = "/infer/sam"
CASES = [
    # unreadable / unusable uploads
    ("truncated_png", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "truncated_png"}, 422,
     "not a readable image"),
    ("corrupt_png", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "corrupt_png"}, 422, "readable"),
    ("truncated_jpg", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "truncated_jpg"}, 422, "readable"),
    ("truncated_niigz", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "truncated_niigz"}, 422,
     "readable"),
    ("truncated_nii", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "truncated_nii"}, 422,
     "truncated"),
    ("corrupt_nii", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "corrupt_nii"}, 422, "readable"),
    ("truncated_dcm", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "truncated_dcm"}, 422,
     "readable"),
    ("garbage_dcm", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "garbage_dcm"}, 422, "readable"),
    ("empty_file", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "empty_png"}, 422, "empty"),
    ("one_pixel", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "one_px_png"}, 422, "at least 2x2"),
    ("one_row", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "one_row_nrrd"}, 422, "at least 2x2"),
    ("huge_png_header", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "huge_png"}, 422,
     "over the limit"),
    ("bomb_png_header", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "bomb_png"}, 422,
     "over the limit"),
    ("huge_nii_header", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "huge_nii"}, 422,
     "over the limit"),
    # a volume runs slice by slice (tests/test_server_volume.py): REST boxes carry no z, so they need `slice`
    ("volume_boxes_without_slice", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "volume_nrrd"}, 422,
     "slice: the image is a volume of 4 slices"),
    ("volume_slice_out_of_range", "POST", INFER, {"output": "json"}, {"boxes": BOX, "slice": 4},
     {"file": "volume_nrrd"}, 422, "slice: must be between 0 and 3"),
    ("four_d_image", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "four_d_nii"}, 422, "4D image"),
    ("nan_nifti", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "nan_nii"}, 422, "NaN"),
    ("nan_diagonal_tif", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "nan_tif"}, 422, "NaN"),
    ("unknown_format", "POST", INFER, {"output": "json"}, {"boxes": BOX}, {"file": "text_file"}, 422,
     "unsupported format"),
    # prompts and JSON types (more in test_server_sam / test_server_pipeline / test_server_box_proposal)
    ("params_not_json", "POST", INFER, {"image": CASE, "output": "json"}, "{boxes: [[1,", None, 422, "params"),
    ("params_a_list", "POST", INFER, {"image": CASE, "output": "json"}, "[1, 2]", None, 422, "JSON object"),
    ("params_a_number", "POST", INFER, {"image": CASE, "output": "json"}, "5", None, 422, "JSON object"),
    ("box_nan", "POST", INFER, {"image": CASE, "output": "json"}, '{"boxes": [[1, 2, NaN, 40]]}', None, 422,
     "boxes"),
    ("box_a_dict", "POST", INFER, {"image": CASE, "output": "json"}, {"boxes": {"x0": 1}}, None, 422, "boxes"),
    ("box_three_numbers", "POST", INFER, {"image": CASE, "output": "json"}, {"boxes": [[1, 2, 3]]}, None, 422,
     "boxes"),
    ("box_zero_area", "POST", INFER, {"image": CASE, "output": "json"}, {"boxes": [[40, 40, 40, 40]]}, None, 422,
     "empty"),
    ("box_negative", "POST", INFER, {"image": CASE, "output": "json"}, {"boxes": [[-50, -50, -10, -10]]}, None,
     422, "outside"),
    ("roi_short", "POST", INFER, {"image": CASE, "output": "json"}, {"roi": [1, 2, 3]}, None, 422, "roi"),
    ("roi_outside", "POST", INFER, {"image": CASE, "output": "json"}, {"roi": [400, 500, 10, 20, 0, 0]}, None, 422,
     "outside"),
    ("point_a_string", "POST", INFER, {"image": CASE, "output": "json"}, {"foreground": "centre"}, None, 422,
     "foreground"),
    ("point_below_image", "POST", INFER, {"image": CASE, "output": "json"}, {"background": [[10, 352, 0]]}, None,
     422, "background"),
    ("multilabel_a_list", "POST", INFER, {"image": CASE, "output": "json"}, {"boxes": BOX, "multilabel": [1]}, None,
     422, "multilabel"),
    ("text_a_number", "POST", "/infer/radvlsm", {"image": CASE, "output": "json"}, {"text": 5}, None, 422, "text"),
    ("top_k_a_word", "POST", "/infer/radvlsm", {"image": CASE, "output": "json"}, {"top_k": "many"}, None, 422,
     "top_k"),
    ("backend_unknown", "POST", "/infer/box_proposal", {"image": CASE, "output": "json"}, {"backend": "nope"}, None,
     422, "backend"),
    # unknown names
    ("unknown_model", "POST", "/infer/nope", {"image": CASE}, {"boxes": BOX}, None, 404, "model"),
    ("unknown_train_model", "POST", "/train/nope", None, None, None, 404, "model"),
    ("unknown_batch_model", "POST", "/batch/infer/nope", None, None, None, 404, "model"),
    ("unknown_strategy", "POST", "/activelearning/nope", None, None, None, 404, "strategy"),
    ("unknown_scoring", "POST", "/scoring/nope", None, None, None, 404, "method"),
    ("unknown_image", "POST", INFER, {"image": "no_such_image", "output": "json"}, {"boxes": BOX}, None, 404,
     "image"),
    # ids that are paths
    ("image_dotdot", "POST", INFER, {"image": f"../{CASE}", "output": "json"}, {"boxes": BOX}, None, 422, "image"),
    ("image_absolute", "POST", INFER, {"image": "/etc/hostname", "output": "json"}, {"boxes": BOX}, None, 422,
     "path separator"),
    ("params_image_path", "POST", INFER, {"image": CASE, "output": "json"},
     {"boxes": BOX, "image": str(SAMPLES / "images" / f"{CASE}.png")}, None, 422, "image"),
    ("params_label_path", "POST", "/infer/diagnosis", {"image": CASE, "output": "json"},
     {"label": str(SAMPLES / "reference" / f"{CASE}.png")}, None, 422, "label"),
    ("session_dotdot", "POST", INFER, {"session_id": "../../etc", "output": "json"}, {"boxes": BOX}, None, 422,
     "session_id"),
    ("infer_save_label", "POST", INFER, {"image": CASE, "output": "json"},
     {"boxes": [[99, 89, 234, 151]], "save_label": True, "label_tag": "../../evil"}, None, 422, "save_label"),
    ("download_dotdot", "GET", "/datastore/image", {"image": "../datastore_v2"}, None, None, 422, "image"),
    # datastore writes
    ("label_wrong_size", "PUT", "/datastore/label", {"image": CASE, "tag": "final"}, None, {"label": "small_label"},
     422, "label is 10x10"),
    ("label_unreadable", "PUT", "/datastore/label", {"image": CASE, "tag": "final"}, None,
     {"label": "truncated_png"}, 422, "label"),
    ("label_unknown_format", "PUT", "/datastore/label", {"image": CASE, "tag": "final"}, None,
     {"label": "text_file"}, 422, "label"),
    ("label_unknown_image", "PUT", "/datastore/label", {"image": "no_such_image", "tag": "final"}, None,
     {"label": "good_png"}, 404, "no_such_image"),
    ("label_image_dotdot", "PUT", "/datastore/label", {"image": f"../{CASE}", "tag": "final"}, None,
     {"label": "good_png"}, 422, "image"),
    ("label_tag_dotdot", "PUT", "/datastore/label", {"image": CASE, "tag": "../../evil"}, None,
     {"label": "good_png"}, 422, "tag"),
    ("label_params_list", "PUT", "/datastore/label", {"image": CASE, "tag": "final"}, "[1]", {"label": "good_png"},
     422, "params"),
    ("image_id_dotdot", "PUT", "/datastore/image", {"image": "../../evil"}, None, {"file": "good_png"}, 422,
     "image"),
    ("image_id_slash", "PUT", "/datastore/image", {"image": "sub/evil"}, None, {"file": "good_png"}, 422, "image"),
    ("image_unreadable", "PUT", "/datastore/image", {"image": "evil_broken"}, None, {"file": "truncated_png"}, 422,
     "file"),
    ("image_4d", "PUT", "/datastore/image", {"image": "evil_4d"}, None, {"file": "four_d_nii"}, 422, "4D image"),
    ("image_info_list", "PUT", "/datastore/image/info", {"image": CASE}, "[1]", None, 422, "info"),
    ("dicom_seg_on_local_studies", "POST", INFER, {"image": CASE, "output": "dicom_seg"}, {"boxes": BOX}, None, 422,
     "output"),
    ("no_image_at_all", "POST", INFER, {"output": "json"}, {"boxes": BOX}, None, 422, "image"),
    ("session_not_an_archive", "PUT", "/session/", {"uncompress": "true"}, None, {"files": "text_file"}, 422,
     "archive"),
    ("dataset_without_labels", "GET", "/datastore/dataset", None, None, None, 404, "nothing to archive"),
    ("model_upload", "PUT", "/model/sam", None, None, {"file": "good_png"}, 405, "model"),
    ("model_delete", "DELETE", "/model/radvlsm", None, None, None, 405, "model"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_4xx_naming_the_field_and_writes_nothing(srv, files, case):
    _, method, path, query, params, upload, status, words = case
    before, temp_before = snapshot(srv.studies), snapshot(srv.studies.parent / "tmp")
    form = "info" if path.endswith("/info") else "params"
    r = send(srv, method, path, query, params, {k: files[v] for k, v in (upload or {}).items()}, form_field=form)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"], r.json()
    assert snapshot(srv.studies) == before
    # the upload's temp copy went with the refusal (``.ses``: MONAI Label's session store, touched by lookups)
    assert without_session_store(snapshot(srv.studies.parent / "tmp")) == without_session_store(temp_before)
    assert outside(srv) == []
    assert requests.get(f"{srv.url}/info/", timeout=30).status_code == 200


def test_request_over_the_upload_limit_is_413_before_the_body_is_read(srv):
    """The Content-Length alone decides: a client announcing 600 MB gets 413 without sending them."""
    url = urlsplit(srv.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", "/infer/sam?output=json")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(600 * 2**20))
    conn.endheaders()
    r = conn.getresponse()
    body = r.read().decode()  # FastAPI's own body limit (set from --conf max_upload_mb) answers first
    assert r.status == 413 and ("Too Large" in body or "max_upload_mb" in body), body
    conn.close()


def test_streamed_body_over_the_limit_is_refused(srv):
    """A chunked upload (no Content-Length) is cut off at the limit too."""
    before = snapshot(srv.studies)

    def body():
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\r\n"
        for _ in range(UPLOAD_MB + 2):
            yield b"\0" * 2**20
        yield b"\r\n--x--\r\n"

    r = requests.post(f"{srv.url}/infer/sam?output=json", data=body(),
                      headers={"Content-Type": "multipart/form-data; boundary=x"}, timeout=60)
    assert r.status_code == 413, r.text
    assert snapshot(srv.studies) == before
    assert requests.get(f"{srv.url}/info/", timeout=30).status_code == 200


@pytest.mark.parametrize("key", ["rgba_png", "gray16_png"])
def test_rgba_and_16_bit_uploads_are_accepted(srv, files, key):
    """Handled, not refused: RGBA drops its alpha, 16-bit keeps its range (min-max scaled for the encoder)."""
    name, data = files[key]
    r = send(srv, "POST", INFER, {"output": "json"}, {"boxes": [tight_box(CASE)]}, {"file": (name, data)})
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["image_shape"] == [352, 276] and res["lesions"][0]["area_px"] > 1000


def test_valid_label_and_image_are_still_saved(srv, files):
    """The checks refuse only bad uploads: a good label lands (atomically) in labels/final, a good image is added."""
    ref = SAMPLES / "reference" / f"{CASE}.png"
    r = send(srv, "PUT", "/datastore/label", {"image": CASE, "tag": "final"}, None,
             {"label": (ref.name, ref.read_bytes())})
    assert r.status_code == 200, r.text
    saved = srv.studies / "labels" / "final" / f"{CASE}.png"
    assert saved.read_bytes() == ref.read_bytes()
    r = send(srv, "PUT", "/datastore/image", {"image": "uploaded_copy"}, None, {"file": files["good_png"]})
    assert r.status_code == 200, r.text
    assert (srv.studies / "uploaded_copy.png").read_bytes() == files["good_png"][1]
    ds = requests.get(f"{srv.url}/datastore/", params={"output": "all"}, timeout=30).json()
    assert "final" in ds["objects"][CASE]["labels"] and "uploaded_copy" in ds["objects"]
    assert not list(srv.studies.rglob("*.partial"))  # no temp file left behind
    assert json.loads((srv.studies / "datastore_v2.json").read_text())["objects"]["uploaded_copy"]
    assert io.BytesIO(saved.read_bytes())  # readable


@pytest.mark.parametrize("field", ["image", "label"])
def test_symlink_in_the_upload_folder_is_not_taken_for_an_upload(srv, field):
    """Uploads are plain files the server itself wrote in the temp folder under tmpXXXXXXXX names; a symlink there
    with such a name (pointing at any file the server can read) is refused, not read."""
    import os
    import tempfile

    target = SAMPLES / ("images" if field == "image" else "reference") / f"{CASE}.png"
    link = Path(tempfile.gettempdir()) / f"tmp{os.urandom(4).hex()}.png"
    link.symlink_to(target)
    try:
        params = {"boxes": BOX, field: str(link)}
        r = send(srv, "POST", "/infer/diagnosis" if field == "label" else INFER, {"image": CASE, "output": "json"},
                 params)
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith(f"{field}:")
    finally:
        link.unlink()
