"""A saved final label joins the site's exemplars through the app's own learning code (``apps/radvlsm/lib/models.py``)
on a real MONAI Label datastore, with the real LiteMedSAM backbone and template bank: a volume's label (MRI, CT)
is learned on its slice with the largest lesion, which the bank then finds on that slice."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from monailabel.datastore.local import LocalDatastore

from radvlsm.geometry import mask_to_box
from radvlsm.models import build_backbone
from radvlsm.predictor import SegmentPredictor
from radvlsm.proposals import build_proposer
from radvlsm.proposals.boxes import box_iou
from radvlsm.proposals.site_exemplars import SiteExemplars
from radvlsm.volume import load_input
from tests.conftest import app_module
from tests.volumes import lesion_volume, write_volume

K = 5  # the synthetic lesion's largest slice (tests/volumes.py)


@pytest.fixture(scope="module")
def predictor() -> SegmentPredictor:
    return SegmentPredictor(build_backbone("litemedsam"))


def test_a_volume_label_joins_the_bank_on_its_largest_lesion_slice(tmp_path, predictor):
    pixels, lesion = lesion_volume()
    assert int(np.argmax(lesion.reshape(len(lesion), -1).sum(1))) == K
    studies = tmp_path / "studies"
    studies.mkdir()
    path = write_volume(studies / "flair.nii.gz", pixels)
    label = sitk.GetImageFromArray(lesion.astype(np.uint8))
    label.CopyInformation(sitk.ReadImage(str(path)))
    sitk.WriteImage(label, str(tmp_path / "label.nii.gz"))
    ds = LocalDatastore(str(studies), extensions=["*.nii.gz"], auto_reload=False)
    ds.save_label("flair", str(tmp_path / "label.nii.gz"), "final", {})

    site = SiteExemplars(build_proposer("template", predictor=predictor, max_exemplars=20))
    app_module("models").learn_final_label(site, ds, "flair")
    assert site.bank.ids == ["flair"]  # before: "a 3D volume ... was given to a 2D task", skipped
    on_k = site.bank.propose(load_input(path).slice_image(K), "lesion")
    assert on_k.candidates
    iou = float(box_iou(np.array([on_k.candidates[0].box]), np.array([mask_to_box(lesion[K])]))[0, 0])
    assert iou >= 0.5, (on_k.candidates[0].box, mask_to_box(lesion[K]))


def test_an_emptied_volume_label_takes_its_exemplar_out(tmp_path, predictor):
    pixels, lesion = lesion_volume()
    studies = tmp_path / "studies"
    studies.mkdir()
    path = write_volume(studies / "flair.nii.gz", pixels)
    ds = LocalDatastore(str(studies), extensions=["*.nii.gz"], auto_reload=False)
    site = SiteExemplars(build_proposer("template", predictor=predictor, max_exemplars=20))
    models = app_module("models")
    for mask in (lesion, np.zeros_like(lesion)):  # the clinician saves, then empties the label
        label = sitk.GetImageFromArray(mask.astype(np.uint8))
        label.CopyInformation(sitk.ReadImage(str(path)))
        sitk.WriteImage(label, str(tmp_path / "label.nii.gz"))
        ds.save_label("flair", str(tmp_path / "label.nii.gz"), "final", {})
        models.learn_final_label(site, ds, "flair")
        assert site.bank.ids == (["flair"] if mask.any() else [])
