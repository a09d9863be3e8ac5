"""MONAI Label's DICOMweb datastore, made to work with 2D images (ultrasound, secondary capture) and no dcmqi.

``--studies http://host/dicom-web`` makes MONAI Label 0.8.5 use ``DICOMWebDatastore``: image ids are
SeriesInstanceUIDs (from QIDO with ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``), a series is fetched with WADO into
the cache and converted to NIfTI by SimpleITK/GDCM (a single 2D instance becomes a one-slice volume), and saving a
``final`` label converts it to DICOM SEG and stores it with STOW-RS. As shipped, for 2D images that last step fails:

* the conversion calls dcmqi's ``itkimage2segimage``, which MONAI Label downloads from GitHub at start-up (the app
  fails to start without internet) and which is not on PyPI or Debian;
* its pydicom-seg fallback needs ``ImagePositionPatient`` on the source instances, which an ultrasound or
  secondary-capture image usually lacks;
* a label sent as PNG (what a REST client or radvlsm's own result is) is 2D, and pydicom-seg takes 3D only;
* ``get_label_uri(image_id, "final")`` (what the diagnosis task asks) downloads the *image* series as if it were a
  SEG.

:class:`DICOMWeb2DDatastore` writes the SEG with pydicom-seg (:func:`radvlsm.dicom.label_to_seg`) from any 2D label
format in the image's own geometry, refuses an empty or mis-sized final label with a 422 before anything is
stored, and answers a final label by image id from the local cache. :func:`make_dicomweb_datastore` builds it from
MONAI Label's settings, as ``MONAILabelApp._init_dicomweb_datastore`` does, without the dcmqi download.
"""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile
from typing import Any

from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag

from radvlsm.dicom import label_to_seg
from radvlsm.errors import ImageReadError
from radvlsm.io import load_image, load_mask, save_mask

logger = logging.getLogger(__name__)


class DICOMWeb2DDatastore(DICOMWebDatastore):
    """``DICOMWebDatastore`` whose final labels become DICOM SEG for 2D images (see the module doc)."""

    def _series_dir(self, image_id: str) -> str:
        return os.path.realpath(os.path.join(self._datastore.image_path(), image_id))

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any],
                   label_id: str = "") -> str:
        import pydicom

        image_uri = self.get_image_uri(image_id)  # fetches and converts the series on first use
        if label_tag != DefaultLabelTag.FINAL:  # other tags stay in the local cache only (as in MONAI Label)
            return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)

        converted = ""
        if "".join(pathlib.Path(label_filename).suffixes) == ".bin":  # OHIF's raw label buffer
            converted = label_filename = binary_to_image(image_uri, label_filename)
        fd, label_nii = tempfile.mkstemp(suffix=".nii.gz")
        os.close(fd)
        seg_file = label_nii.replace(".nii.gz", ".dcm")
        try:
            image = load_image(image_uri)
            try:
                mask = load_mask(label_filename, shape=image.shape)
            except ImageReadError as exc:
                raise HTTPException(422, str(exc)) from exc
            if not mask.any():
                raise HTTPException(422, "label: the label is empty; a DICOM SEG needs at least one segment "
                                         "(nothing was stored)")
            save_mask(mask, label_nii, like=image)  # the label in the image's own (one-slice) geometry
            series_dir = self._series_dir(image_id)
            sources = [pydicom.dcmread(os.path.join(series_dir, f), stop_before_pixels=True)
                       for f in sorted(os.listdir(series_dir))]
            spacing, origin, direction = image.volume_geometry or (
                (*image.spacing, 1.0), (*image.origin, 0.0),
                (image.direction[0], image.direction[1], 0.0, image.direction[2], image.direction[3], 0.0,
                 0.0, 0.0, 1.0))
            info = label_info.get("label_info") if isinstance(label_info.get("label_info"), list) else None
            seg = label_to_seg(mask, sources, spacing=spacing, origin=origin, direction=direction, label_info=info,
                               series_description=str(label_info.get("model_name") or "radvlsm"))
            seg.save_as(seg_file)
            seg_series = dicom_web_upload_dcm(seg_file, self._client)
            if not seg_series:
                raise HTTPException(502, "the DICOMweb server did not store the DICOM SEG (STOW-RS answer had no "
                                         "series URL)")
            image_info = self.get_image_info(image_id)
            label_info.update({"SeriesInstanceUID": seg_series, "Modality": "SEG",
                               "PatientID": image_info.get("PatientID"),
                               "StudyInstanceUID": image_info.get("StudyInstanceUID"),
                               "ReferencedSeriesInstanceUID": image_id})
            logger.info(f"radvlsm: final label of {image_id} stored as DICOM SEG series {seg_series}")
            return LocalDatastore.save_label(self, image_id, label_nii, label_tag, label_info)
        finally:
            for path in (label_nii, seg_file, converted):
                if path and os.path.exists(path):
                    os.unlink(path)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """By image id (what radvlsm's tasks ask) from the local cache first; MONAI Label's own path (label id =
        the SEG's SeriesInstanceUID, fetched over WADO) otherwise, never for an image series."""
        local = LocalDatastore.get_label_uri(self, label_id, label_tag)
        if local and os.path.exists(local):
            return local
        if not image_id and label_id in self.list_images():
            return ""
        return super().get_label_uri(label_id, label_tag, image_id)


def make_dicomweb_datastore(studies: str) -> DICOMWeb2DDatastore:
    """The datastore for ``--studies http(s)://...`` from MONAI Label's ``MONAI_LABEL_DICOMWEB_*`` settings."""
    from dicomweb_client.session_utils import create_session_from_user_pass
    from monailabel.config import settings
    from monailabel.datastore.dicom import DICOMwebClientX

    session = None
    if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                                settings.MONAI_LABEL_DICOMWEB_PASSWORD)
    client = DICOMwebClientX(url=studies.rstrip("/"), session=session,
                             qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                             wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                             stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
    cache_path = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    return DICOMWeb2DDatastore(client=client, search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
                               cache_path=cache_path or None,
                               fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
                               convert_to_nifti=True)
