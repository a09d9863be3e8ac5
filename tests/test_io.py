"""Every supported 2D format loads to the same (rows, cols) grid, and masks come back in the input's geometry."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from radvlsm.errors import ImageReadError
from radvlsm.io import load_image, load_mask, save_mask
from tests.conftest import SAMPLES

CASE = "bus_1033-r"  # landscape: 305 rows x 529 cols, so a transposition cannot pass unnoticed


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    return np.array(Image.open(SAMPLES / "images" / f"{CASE}.png"))


def write_dicom(path, pixels: np.ndarray) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "US", "test"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [0.1, 0.2]
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    pydicom.dcmwrite(str(path), ds, write_like_original=False)


def variants(tmp_path, gray):
    rgb = np.stack([gray] * 3, -1)
    rgba = np.concatenate([rgb, np.full(gray.shape + (1,), 255, np.uint8)], -1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=100)
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    for name in ("img.nii.gz", "img.nrrd"):
        sitk.WriteImage(sitk.GetImageFromArray(gray), str(tmp_path / name))
    sitk.WriteImage(sitk.GetImageFromArray(gray[None]), str(tmp_path / "one_slice.nrrd"))  # 3D with one slice
    write_dicom(tmp_path / "img.dcm", gray)
    return ["rgb.png", "rgba.png", "rgb.jpg", "gray16.png", "img.nii.gz", "img.nrrd", "one_slice.nrrd", "img.dcm"]


def test_all_formats_share_one_geometry(tmp_path, gray):
    ref = load_image(SAMPLES / "images" / f"{CASE}.png")
    assert ref.shape == gray.shape == (305, 529)
    for name in variants(tmp_path, gray):
        img = load_image(tmp_path / name)
        assert img.shape == ref.shape, name
        diff = np.abs(img.rgb_uint8().astype(int) - ref.rgb_uint8().astype(int))
        assert diff.max() <= (4 if name.endswith(".jpg") else 0), name  # lossless everywhere but JPEG


def test_dicom_spacing_is_kept(tmp_path, gray):
    write_dicom(tmp_path / "img.dcm", gray)
    assert load_image(tmp_path / "img.dcm").spacing == pytest.approx((0.2, 0.1))  # (x=col, y=row)


@pytest.mark.parametrize("suffix", [".png", ".nrrd", ".nii.gz"])
def test_mask_round_trip_keeps_geometry(tmp_path, suffix):
    src = tmp_path / "img.nrrd"
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 255, (30, 50)).astype(np.uint8))
    image.SetSpacing((0.5, 0.25))
    image.SetOrigin((3.0, 4.0))
    sitk.WriteImage(image, str(src))
    img = load_image(src)
    mask = np.zeros(img.shape, np.uint8)
    mask[5:10, 20:40] = 1
    out = save_mask(mask, tmp_path / f"mask{suffix}", like=img)
    np.testing.assert_array_equal(load_mask(out, img.shape), mask)
    if suffix != ".png":
        written = sitk.ReadImage(str(out))
        assert written.GetSpacing() == (0.5, 0.25) and written.GetOrigin() == (3.0, 4.0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mask")]  # no temp file left behind


@pytest.mark.parametrize(
    "content, words",
    [(b"", "empty"), (b"\x89PNG\r\n\x1a\ntruncated", "not a readable image"), (b"hello", "not a readable image")],
)
def test_unreadable_files_raise_clear_errors(tmp_path, content, words):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match=words):
        load_image(p)


def test_tiny_nan_and_volume_inputs_are_refused(tmp_path):
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "one.png")
    with pytest.raises(ImageReadError, match="at least 2x2"):
        load_image(tmp_path / "one.png")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 8), np.nan, np.float32)), str(tmp_path / "nan.nrrd"))
    with pytest.raises(ImageReadError, match="NaN"):
        load_image(tmp_path / "nan.nrrd")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.uint8)), str(tmp_path / "vol.nrrd"))
    with pytest.raises(ImageReadError, match="3D volume with 4 slices"):
        load_image(tmp_path / "vol.nrrd")


def test_label_of_wrong_size_is_refused(tmp_path):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(ImageReadError, match="label is 12x10"):
        load_mask(tmp_path / "m.png", shape=(12, 10))
