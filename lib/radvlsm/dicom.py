"""2D images to DICOM, and labels (2D, or a series' 3D one) to DICOM SEG, for DICOMweb servers and OHIF.

* :func:`image_to_dicom` wraps a PNG/JPG (8/16-bit gray or RGB) as one DICOM instance: Ultrasound Image Storage
  (``sop_class="us"``, the default, what a breast ultrasound is) or Secondary Capture (``"sc"``). Pixel spacing is
  written only when the caller knows it (``pixel_spacing=(row_mm, col_mm)``): a PNG carries none, and an invented
  one would turn pixel measurements into false millimetres. ``plane=True`` adds an Image Plane (position 0,0,0,
  orientation rows along +x, columns along +y), which volume viewers such as OHIF's need to lay a SEG over the image;
  without a known spacing the plane is in pixel units.
* :func:`label_to_seg` writes a 2D label (0 = background, lesion *i* = *i*) as a DICOM SEG (pydicom-seg's
  ``MultiClassWriter``) that references its source instance. The source needs no Image Plane: an ultrasound or
  secondary-capture image rarely has one, and the SEG then takes the label's own geometry.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radvlsm.defaults import LESION
from radvlsm.errors import ImageReadError

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
SOP_CLASSES = {"us": (US_IMAGE_STORAGE, "US"), "sc": (SECONDARY_CAPTURE_STORAGE, "OT")}

#: SNOMED CT codes of a lesion segment (DICOM CID 7150/7151 style): category and type.
LESION_CATEGORY = {"CodeValue": "49755003", "CodingSchemeDesignator": "SCT",
                   "CodeMeaning": "Morphologically Altered Structure"}
LESION_TYPE = {"CodeValue": "52988006", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Lesion"}


def _pixels(path: Path) -> tuple[np.ndarray, str]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im).astype(np.uint16)
                return arr, "MONOCHROME2"
            if im.mode in ("1", "L", "LA"):
                return np.asarray(im.convert("L")), "MONOCHROME2"
            return np.asarray(im.convert("RGB")), "RGB"
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(f"{path.name}: not a readable image ({exc})") from exc


def image_to_dicom(path: str | Path, *, patient_id: str | None = None, patient_name: str | None = None,
                   study_uid: str | None = None, series_uid: str | None = None, sop_class: str = "us",
                   pixel_spacing: Sequence[float] | None = None, plane: bool = False,
                   description: str | None = None, instance_number: int = 1):
    """One DICOM instance (a ``pydicom.FileDataset``) holding the 2D image at ``path`` losslessly."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path = Path(path)
    if sop_class not in SOP_CLASSES:
        raise ValueError(f"sop_class must be one of {sorted(SOP_CLASSES)}, got {sop_class!r}")
    sop_class_uid, modality = SOP_CLASSES[sop_class]
    arr, photometric = _pixels(path)
    now = datetime.datetime.now()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path.with_suffix(".dcm")), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = patient_id or path.stem
    ds.PatientName = patient_name or ds.PatientID
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyDescription = description or path.stem
    ds.SeriesDescription = description or path.stem
    ds.Modality = modality
    ds.SeriesNumber, ds.InstanceNumber = 1, instance_number
    ds.ImageType = ["DERIVED", "SECONDARY"]
    if sop_class == "sc":
        ds.ConversionType = "WSD"  # workstation: converted from a picture file
    ds.Manufacturer = "radvlsm image_to_dicom"
    ds.DerivationDescription = f"Converted from {path.name} without loss; pixel spacing " + (
        "given by the user" if pixel_spacing else "unknown (not in the source file)")
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    bits = 16 if arr.dtype == np.uint16 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.LossyImageCompression = "00"
    if pixel_spacing is not None:
        row_mm, col_mm = (float(v) for v in pixel_spacing)
        if not (row_mm > 0 and col_mm > 0):
            raise ValueError(f"pixel_spacing must be positive (row_mm, col_mm), got {pixel_spacing!r}")
        ds.PixelSpacing = [f"{row_mm:.6g}", f"{col_mm:.6g}"]
    if plane:
        ds.FrameOfReferenceUID = generate_uid()
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [0, 0, 0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    pydicom.dataset.validate_file_meta(ds.file_meta, enforce_standard=True)
    return ds


def _segment_attributes(labels: Sequence[int], label_info: Sequence[dict[str, Any]] | None) -> list[dict]:
    out = []
    for i, value in enumerate(labels):
        info = dict(label_info[i]) if label_info and i < len(label_info) and isinstance(label_info[i], dict) else {}
        name = str(info.get("name") or (LESION if len(labels) == 1 else f"{LESION} {value}"))
        rgb = [int(c) for c in list(info.get("color") or (255, 64, 64))[:3]]
        out.append({
            "labelID": int(value),
            "SegmentLabel": name[:64],
            "SegmentDescription": str(info.get("description") or name)[:64],
            "SegmentAlgorithmType": "SEMIAUTOMATIC",
            "SegmentAlgorithmName": "radvlsm",
            "SegmentedPropertyCategoryCodeSequence": LESION_CATEGORY,
            "SegmentedPropertyTypeCodeSequence": LESION_TYPE,
            "recommendedDisplayRGBValue": rgb,
        })
    return out


def label_to_seg(label: np.ndarray, sources: Sequence[Any], *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 origin: Sequence[float] = (0.0, 0.0, 0.0), direction: Sequence[float] | None = None,
                 label_info: Sequence[dict[str, Any]] | None = None, series_description: str = "radvlsm",
                 series_number: int = 300):
    """A DICOM SEG (``pydicom.Dataset``) for a ``(rows, cols)`` label on the single-frame source instance(s)
    ``sources`` (pydicom datasets), or a ``(slices, rows, cols)`` label of a series of ``slices`` instances that
    each have their Image Plane (an MR/CT series: pydicom-seg maps each slice to the instance at its position).
    ``spacing``/``origin``/``direction`` are the image's 3D geometry as read by SimpleITK (what the server's cached
    image has); a 2D source without an Image Plane gets one from them, on a copy, so that pydicom-seg can map the
    label's one slice to it."""
    import pydicom_seg
    import SimpleITK as sitk

    label = np.asarray(label)
    if label.ndim == 3 and label.shape[0] == 1:
        label = label[0]
    if not sources:
        raise ValueError("no source DICOM instance to reference")
    if label.ndim == 3:
        if label.shape[0] != len(sources) or any("ImagePositionPatient" not in s for s in sources):
            raise ValueError(f"a label of {label.shape[0]} slices needs as many source instances with an Image "
                             f"Plane, got {len(sources)}")
    elif label.ndim != 2:
        raise ValueError(f"label must be 2D (rows, cols) or 3D (slices, rows, cols), got shape {list(label.shape)}")
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if label.shape[-2:] != (rows, cols):
        raise ValueError(f"label is {label.shape[-1]}x{label.shape[-2]} but the image is {cols}x{rows}")
    values = [int(v) for v in np.unique(label) if v > 0]
    if not values:
        raise ValueError("label is empty: a DICOM SEG needs at least one segment")

    seg = sitk.GetImageFromArray(label.astype(np.uint16) if label.ndim == 3 else label.astype(np.uint16)[None])
    seg.SetSpacing([float(s) for s in spacing])
    seg.SetOrigin([float(o) for o in origin])
    if direction is not None:
        seg.SetDirection([float(d) for d in direction])

    refs = []
    for src in sources:
        ref = copy.deepcopy(src)
        if "PixelData" in ref:
            del ref.PixelData
        if "ImagePositionPatient" not in ref:
            ref.ImagePositionPatient = [float(o) for o in seg.GetOrigin()]
        refs.append(ref)

    template = pydicom_seg.template.from_dcmqi_metainfo({
        "ContentCreatorName": "radvlsm",
        "ClinicalTrialSeriesID": "Session1",
        "ClinicalTrialTimePointID": "1",
        "SeriesDescription": series_description[:64],
        "SeriesNumber": str(series_number),
        "InstanceNumber": "1",
        "segmentAttributes": [_segment_attributes(values, label_info)],
        "ContentLabel": "LESION",
        "ContentDescription": "radvlsm lesion segmentation",
        "ClinicalTrialCoordinatingCenterName": "radvlsm",
        "BodyPartExamined": "",
    })
    writer = pydicom_seg.MultiClassWriter(template=template, inplane_cropping=False, skip_empty_slices=False,
                                          skip_missing_segment=False)
    dcm = writer.write(seg, refs)
    if "FrameOfReferenceUID" not in dcm or not dcm.FrameOfReferenceUID:
        from pydicom.uid import generate_uid

        dcm.FrameOfReferenceUID = sources[0].get("FrameOfReferenceUID") or generate_uid()
    return dcm


def read_seg(dataset) -> tuple[np.ndarray, dict[int, str]]:
    """Decode a DICOM SEG (a ``pydicom.Dataset``) with pydicom-seg: the ``(rows, cols)`` label (segment number
    per pixel, one frame; ``(slices, rows, cols)`` for a series' SEG) and each segment's label."""
    import pydicom_seg
    import SimpleITK as sitk

    result = pydicom_seg.MultiClassReader().read(dataset)
    arr = sitk.GetArrayFromImage(result.image)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in dataset.SegmentSequence}
    return arr, names
