"""radvlsm.dicom without a server: PNG -> DICOM keeps pixels and claims no spacing it does not know; a 2D label ->
DICOM SEG on an image without an Image Plane decodes back to the same label."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image

from radvlsm.dicom import image_to_dicom, label_to_seg, read_seg
from radvlsm.io import load_image
from tests.conftest import SAMPLES, reference

CASE = "bus_0075-r"


@pytest.mark.parametrize("sop_class", ["us", "sc"])
def test_png_to_dicom_is_lossless_and_loads_like_the_png(tmp_path, sop_class):
    ds = image_to_dicom(SAMPLES / "images" / f"{CASE}.png", sop_class=sop_class)
    ds.save_as(tmp_path / "img.dcm")
    back = pydicom.dcmread(tmp_path / "img.dcm")
    png = np.array(Image.open(SAMPLES / "images" / f"{CASE}.png"))
    assert np.array_equal(back.pixel_array, png)
    assert "PixelSpacing" not in back and "ImagePositionPatient" not in back
    img = load_image(tmp_path / "img.dcm")
    assert img.shape == png.shape and np.array_equal(img.pixels[..., 0], png.astype(np.float32))


def test_known_spacing_and_rgb(tmp_path):
    rgb = np.stack([np.array(Image.open(SAMPLES / "images" / f"{CASE}.png"))] * 3, -1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    ds = image_to_dicom(tmp_path / "rgb.png", pixel_spacing=(0.1, 0.2), plane=True)
    ds.save_as(tmp_path / "rgb.dcm")
    assert ds.PhotometricInterpretation == "RGB" and [float(v) for v in ds.PixelSpacing] == [0.1, 0.2]
    img = load_image(tmp_path / "rgb.dcm")
    assert img.spacing == pytest.approx((0.2, 0.1))  # (x = column, y = row)
    with pytest.raises(ValueError, match="positive"):
        image_to_dicom(tmp_path / "rgb.png", pixel_spacing=(0, 1))


def test_label_to_seg_round_trip_two_lesions():
    src = image_to_dicom(SAMPLES / "images" / f"{CASE}.png")
    label = reference(CASE).astype(np.uint8)
    label[:10, :10] = 2
    seg = label_to_seg(label, [src])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    decoded, names = read_seg(seg)
    assert np.array_equal(decoded, label) and names == {1: "lesion 1", 2: "lesion 2"}
    with pytest.raises(ValueError, match="empty"):
        label_to_seg(np.zeros_like(label), [src])
    with pytest.raises(ValueError, match="but the image is"):
        label_to_seg(label[:-1], [src])
