"""A synthetic volume with a known lesion, for the slice-by-slice tests (no research data is bundled).

An ellipsoid of low intensity (as a hypoechoic lesion, or a dark lesion on MR) in a noisy brighter background; its
in-plane radii shrink towards the ends of its slice range as a ball's do. The volume has non-trivial geometry
(anisotropic spacing, an origin away from 0, flipped I and J axes as Slicer's RAS <-> LPS gives), so that every
conversion between slice index, pixel and physical point is exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

SPACING = (0.5, 0.6, 2.0)
ORIGIN = (10.0, -20.0, 30.0)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def lesion_volume(slices: int = 11, rows: int = 120, cols: int = 160, centre: tuple[int, int] = (60, 84),
                  radii: tuple[float, float] = (24.0, 32.0), k_centre: int = 5, k_radius: float = 3.6,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels uint8 [z, y, x], lesion bool [z, y, x])``."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:slices, :rows, :cols]
    shrink = np.sqrt(np.clip(1 - ((z - k_centre) / k_radius) ** 2, 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = ((y - centre[0]) / (radii[0] * shrink)) ** 2 + ((x - centre[1]) / (radii[1] * shrink)) ** 2 <= 1
    inside &= shrink > 0
    pixels = 150 + 20 * rng.standard_normal((slices, rows, cols))
    pixels[inside] = 45 + 10 * rng.standard_normal(int(inside.sum()))
    return np.clip(pixels, 0, 255).astype(np.uint8), inside


def write_volume(path: Path, pixels: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> Path:
    img = sitk.GetImageFromArray(pixels)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return path


def ijk_roi(mask2d: np.ndarray, k: int) -> list[int]:
    """The roi Slicer sends around a lesion on slice ``k``: IJK, pairs max-first (flipped axes), z = k."""
    ys, xs = np.nonzero(mask2d)
    return [int(xs.max()), int(xs.min()), int(ys.max()), int(ys.min()), k, k]


MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def volume_to_mr_series(pixels: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION,
                        patient_id: str = "SYNTH-MR") -> list:
    """The volume as an MR series (one instance per slice, with its Image Plane), as a scanner would store it:
    slice k at ``origin + K axis * spacing_z * k``; rows along the I axis, columns along J (ITK's direction
    columns)."""
    import datetime

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    d = np.asarray(direction, float).reshape(3, 3)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    today = datetime.date.today().strftime("%Y%m%d")
    out = []
    for k in range(pixels.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(f"slice{k}.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.PatientID = ds.PatientName = patient_id
        ds.PatientBirthDate = ds.PatientSex = ds.ReferringPhysicianName = ds.AccessionNumber = ""
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.StudyDate, ds.SeriesDate, ds.StudyTime = "1", today, today, "120000"
        ds.StudyDescription = ds.SeriesDescription = "synthetic lesion volume"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, k + 1
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin) + d[:, 2] * spacing[2] * k]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[0]:.6g}"]  # row spacing (J), column spacing (I)
        ds.SliceThickness = f"{spacing[2]:.6g}"
        ds.SpacingBetweenSlices = f"{spacing[2]:.6g}"
        ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.ascontiguousarray(pixels[k].astype(np.uint8)).tobytes()
        out.append(ds)
    return out
