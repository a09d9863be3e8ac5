"""Wrap 2D images (PNG/JPG) as DICOM and store them on a DICOMweb server (STOW-RS), one study per image.

    python scripts/dicomweb_upload.py http://127.0.0.1:8042/dicom-web samples/images/*.png [--plane] [--sop sc]
        [--pixel-spacing ROW_MM COL_MM]

Ultrasound Image Storage by default (``--sop sc``: Secondary Capture). No pixel spacing is written unless given: a
PNG carries none. ``--plane`` adds an Image Plane in pixel units (position 0, identity orientation), which OHIF needs
to draw a DICOM SEG over the image. Prints ``<file> <StudyInstanceUID> <SeriesInstanceUID>`` per image; the series
UID is the image id the app uses with ``--studies <DICOMweb root>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--sop", choices=["us", "sc"], default="us")
    ap.add_argument("--plane", action="store_true", help="add an Image Plane in pixel units (for OHIF)")
    ap.add_argument("--pixel-spacing", nargs=2, type=float, metavar=("ROW_MM", "COL_MM"))
    args = ap.parse_args(argv)

    from dicomweb_client import DICOMwebClient

    from radvlsm.dicom import image_to_dicom
    from radvlsm.errors import ImageReadError

    client = DICOMwebClient(args.url.rstrip("/"))
    failed = 0
    for path in args.images:
        try:
            ds = image_to_dicom(path, sop_class=args.sop, plane=args.plane, pixel_spacing=args.pixel_spacing)
            client.store_instances([ds])
        except (ImageReadError, OSError, ValueError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(path, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
