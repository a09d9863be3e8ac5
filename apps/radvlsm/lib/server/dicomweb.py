"""MONAI Label's DICOMweb datastore, made to work with 2D images (ultrasound, secondary capture) and no dcmqi.

``--studies http://host/dicom-web`` makes MONAI Label 0.8.5 use ``monailabel.datastore.dicom.DICOMWebDatastore``:
image ids are SeriesInstanceUIDs (from QIDO with ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``), a series is fetched with
WADO into the cache and converted to NIfTI by SimpleITK/GDCM (a single 2D instance becomes a one-slice volume), and
saving a ``final`` label converts it to DICOM SEG and stores it with STOW-RS. ``RadVLSMApp._init_dicomweb_datastore``
returns :func:`make_dicomweb_datastore` instead of upstream's (site-packages untouched).

Fixes MONAI Label 0.8.5:

* ``MONAILabelApp._init_dicomweb_datastore`` calls ``_download_dcmqi_tools``, which downloads dcmqi 1.2.4's
  ``itkimage2segimage`` from GitHub at start-up: without internet the app does not start (dcmqi is not on PyPI or
  Debian). :func:`make_dicomweb_datastore` builds the same client and datastore from the same
  ``MONAI_LABEL_DICOMWEB_*`` settings without that download (no Google Cloud session: upstream's
  ``googleapis.com`` branch is not reproduced);
* ``DICOMWebDatastore.save_label`` (tag ``final``) calls ``monailabel.datastore.utils.convert.nifti_to_dicom_seg``
  with ``use_itk=True``, i.e. dcmqi's ``itkimage2segimage`` (see above); its pydicom-seg branch (``use_itk=False``)
  needs ``ImagePositionPatient`` on the source instances, which an ultrasound or secondary-capture image usually
  lacks, and takes a 3D label only, while a label sent as PNG (what a REST client or radvlsm's own result is) is 2D;
  an empty label makes ``nifti_to_dicom_seg`` return ``""``, which ``dicom_web_upload_dcm`` then fails on (500).
  :meth:`DICOMWeb2DDatastore.save_label` writes the SEG with pydicom-seg (:func:`radvlsm.dicom.label_to_seg`) from
  any 2D label format (PNG, NRRD, NIfTI, OHIF's ``.bin``) in the image's own geometry (a multi-slice series' 3D
  label too, checked against the volume's geometry), refuses an empty or
  mis-sized final label with a 422 before anything is stored, and records the SEG with ``Modality: SEG`` (upstream
  copies the image's modality);
* ``DICOMWebDatastore.get_label_uri(image_id, "final")`` (what the diagnosis task asks) treats the id as the SEG's
  SeriesInstanceUID, so it downloads the *image* series into the label cache and converts it as if it were a SEG.
  :meth:`DICOMWeb2DDatastore.get_label_uri` answers by image id from the local cache and never fetches an image
  series as a label.

Drop when: a MONAI Label release starts offline with ``--studies http(s)://...`` (no dcmqi download, or dcmqi
installable as a package), saves a 2D PNG final label for a single-instance US/SC series with no Image Plane
module as a SEG (``tests/test_server_dicomweb.py`` against Orthanc), refuses an empty label with a 4xx, and
``get_label_uri(image_id, "final")`` finds the SEG that references the image series. Then delete this module and
``RadVLSMApp._init_dicomweb_datastore``.
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
from radvlsm.errors import InputError
from radvlsm.io import save_mask
from radvlsm.service import in_temp_dir
from radvlsm.volume import load_input, load_label_for

logger = logging.getLogger(__name__)


class DICOMWeb2DDatastore(DICOMWebDatastore):
    """``monailabel.datastore.dicom.DICOMWebDatastore`` whose final labels become DICOM SEG for 2D images (see the
    module doc)."""

    def get_image_uri(self, image_id: str) -> str:
        """``DICOMWebDatastore.get_image_uri``, without the copy it leaves in the temp dir: on a series' first use
        it converts the series to a ``tmp*.nii.gz`` there, copies that into the cache (``add_image``) and returns
        the temp copy, which nothing deletes (a patient's images kept in ``/tmp`` for good). The cached file is
        returned instead and the temp one removed."""
        uri = super().get_image_uri(image_id)
        cached = os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz"))
        if (uri and os.path.realpath(uri) != cached and in_temp_dir(uri) and os.path.isfile(uri)
                and os.path.isfile(cached)):
            os.unlink(uri)
            return cached
        return uri

    def _series_dir(self, image_id: str) -> str:
        return os.path.realpath(os.path.join(self._datastore.image_path(), image_id))

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any],
                   label_id: str = "") -> str:
        """Replaces ``DICOMWebDatastore.save_label`` for tag ``final`` (SEG by pydicom-seg, no dcmqi); other tags go
        to ``LocalDatastore.save_label`` as upstream does."""
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
            image = load_input(image_uri)  # a 2D image, or a series of several slices (a volume)
            try:
                mask = load_label_for(label_filename, image)
            except InputError as exc:  # unreadable, mis-sized, or a volume's label of another geometry
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
        """Wraps ``DICOMWebDatastore.get_label_uri``. By image id (what radvlsm's tasks ask) from the local cache
        first; MONAI Label's own path (label id = the SEG's SeriesInstanceUID, fetched over WADO) otherwise, never
        for an image series."""
        local = LocalDatastore.get_label_uri(self, label_id, label_tag)
        if local and os.path.exists(local):
            return local
        if not image_id and label_id in self.list_images():
            return ""
        return super().get_label_uri(label_id, label_tag, image_id)


def make_dicomweb_datastore(studies: str) -> DICOMWeb2DDatastore:
    """The datastore for ``--studies http(s)://...`` from MONAI Label's ``MONAI_LABEL_DICOMWEB_*`` settings, as
    ``MONAILabelApp._init_dicomweb_datastore`` builds it, without its ``_download_dcmqi_tools`` call."""
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
