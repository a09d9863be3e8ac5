"""Library-level guards behind the server's 4xx answers: header-size checks before decoding, NIfTI integrity, ids
that are names not paths, and atomic writes (no half-written file, no temp file left)."""

from __future__ import annotations

import os
import time

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

import radvlsm.io as rio
from radvlsm.errors import ImageReadError, InputError
from radvlsm.io import atomic_copy, atomic_write_text, load_image
from radvlsm.params import check_id, check_tag
from tests.test_server_bad_input import png_with_header


def nifti_header_only(path, shape) -> None:
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    path.write_bytes(header.binaryblock + b"\0" * 4)


@pytest.mark.parametrize("name, shape", [("big.nii", (20000, 20000)), ("stack.nii", (64, 64, 500))])
def test_size_and_slices_are_refused_from_the_header(tmp_path, name, shape):
    """No pixel data exists in these files: only a check on the header can refuse them, and it is quick."""
    path = tmp_path / name
    nifti_header_only(path, shape)
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError, match="over the limit" if len(shape) == 2 else "3D volume with 500 slices"):
        load_image(path)
    assert time.perf_counter() - t0 < 1.0


def test_png_header_over_the_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_with_header(9000, 9000))  # 81 Mpx: under Pillow's bomb error, over our 67 Mpx default
    with pytest.raises(ImageReadError, match="9000x9000 pixels .* over the limit"):
        load_image(path)


def test_max_pixels_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(rio, "MAX_PIXELS", rio.MAX_PIXELS)
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(path)
    assert load_image(path).shape == (40, 50)
    rio.set_max_pixels(1999)
    with pytest.raises(ImageReadError, match="50x40 pixels .* over the limit of 1999"):
        load_image(path)
    with pytest.raises(ValueError):
        rio.set_max_pixels(0)


def test_truncated_and_nan_nifti_are_refused(tmp_path):
    """ITK alone pads a truncated NIfTI with zeros and reads NaN as 0; both must be refused."""
    img = np.arange(300 * 200, dtype=np.uint8).reshape(300, 200)
    for suffix in (".nii", ".nii.gz"):
        whole = tmp_path / f"whole{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(img), str(whole))
        assert load_image(whole).shape == (300, 200)
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        with pytest.raises(ImageReadError, match="not a readable image"):
            load_image(cut)
    nan = np.ones((64, 64), np.float32)
    nan[10, 20] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(ImageReadError, match="NaN"):
        load_image(tmp_path / "nan.nii.gz")


@pytest.mark.parametrize("value", ["../x", "a/b", "a\\b", "/etc/passwd", "..", ".", "", "x\0y", "a" * 300, 5, None])
def test_ids_that_are_paths_are_refused(value):
    with pytest.raises(InputError) as err:
        check_id(value, "image")
    assert err.value.field == "image"


@pytest.mark.parametrize("value", ["bus_0075-r", "1.2.840.113619.2.55", "case 7", "img_v2"])
def test_plain_ids_pass(value):
    assert check_id(value) == value


@pytest.mark.parametrize("value, ok", [("final", True), ("original", True), ("expert-2", True), ("../x", False),
                                       (".hidden", False), ("a b", False), ("x" * 65, False)])
def test_tags(value, ok):
    if ok:
        assert check_tag(value) == value
    else:
        with pytest.raises(InputError):
            check_tag(value)


def test_atomic_copy_replaces_whole_or_not_at_all(tmp_path):
    src, dest = tmp_path / "new.bin", tmp_path / "labels" / "x.png"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    src.write_bytes(os.urandom(3 << 20))
    atomic_copy(src, dest)
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(FileNotFoundError):  # a copy that fails leaves the old file and no temp file
        atomic_copy(tmp_path / "missing", dest)
    assert dest.read_bytes() == src.read_bytes()
    atomic_write_text(tmp_path / "d.json", '{"a": 1}')
    assert (tmp_path / "d.json").read_text() == '{"a": 1}'
    assert sorted(p.name for p in tmp_path.rglob("*.partial")) == []
