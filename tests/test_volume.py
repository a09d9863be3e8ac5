"""Volumes without a model: loading, a slice's plane, 3D labels in the volume's geometry, which slice a request
names, and the errors of bad slices, rois and labels."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from radvlsm.errors import ImageReadError, InputError
from radvlsm.io import Image2D, save_mask
from radvlsm.markups import index_to_lps, roi_markups
from radvlsm.service import remove_result, write_label
from radvlsm.volume import Volume, load_input, load_volume_label
from radvlsm.volume_prompts import prompt_slice, requested_range, slice_request
from tests.volumes import DIRECTION, ORIGIN, SPACING, ijk_roi, lesion_volume, write_volume


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    pixels, lesion = lesion_volume()
    path = write_volume(tmp_path_factory.mktemp("vol") / "vol.nii.gz", pixels)
    return path, pixels, lesion


def test_a_volume_loads_with_its_geometry_and_a_one_slice_file_stays_2d(synthetic, tmp_path):
    path, pixels, _ = synthetic
    vol = load_input(path)
    assert isinstance(vol, Volume) and vol.shape == pixels.shape
    assert np.allclose(vol.spacing, SPACING) and np.allclose(vol.origin, ORIGIN)
    assert np.allclose(vol.direction, DIRECTION)
    assert np.array_equal(vol.slice_image(4).pixels[..., 0], pixels[4])  # uint8: no intensity clip
    one = load_input(write_volume(tmp_path / "one.nrrd", pixels[3:4]))
    assert isinstance(one, Image2D) and one.shape == pixels.shape[1:]


def test_a_slice_lies_on_its_own_plane(synthetic):
    """Pixel (i, j) of slice k is the volume's voxel (i, j, k) in physical space, as ITK maps it."""
    path, _, _ = synthetic
    vol, ref = load_input(path), sitk.ReadImage(str(path))
    for k, (i, j) in [(0, (0, 0)), (7, (31, 17)), (10, (159, 119))]:
        assert np.allclose(index_to_lps(vol.slice_image(k), (i, j, 0)), ref.TransformIndexToPhysicalPoint((i, j, k)))


def test_a_box_markup_on_slice_k_sits_at_the_lesion(synthetic):
    path, _, lesion = synthetic
    vol, ref = load_input(path), sitk.ReadImage(str(path))
    ys, xs = np.nonzero(lesion[6])
    box = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
    roi = roi_markups([box], vol.slice_image(6), ["lesion"])["markups"][0]
    centre = ref.TransformContinuousIndexToPhysicalPoint(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 6))
    assert np.allclose(roi["center"], centre, atol=1e-4)
    assert np.isclose(roi["size"][2], SPACING[2])


def test_a_3d_label_is_written_in_the_volume_geometry(synthetic, tmp_path, request):
    path, _, lesion = synthetic
    vol = load_input(path)
    label = np.zeros(vol.shape, np.uint8)
    label[6] = lesion[6]
    out = write_label(label, vol, {"result_extension": ".nrrd"})
    request.addfinalizer(lambda: remove_result(out))  # a result folder of its own, as the server's answer removes
    img = sitk.ReadImage(out)
    ref = sitk.ReadImage(str(path))
    assert img.GetSize() == ref.GetSize() and np.allclose(img.GetSpacing(), ref.GetSpacing())
    assert np.allclose(img.GetOrigin(), ref.GetOrigin()) and np.allclose(img.GetDirection(), ref.GetDirection())
    back = sitk.GetArrayFromImage(img)
    assert np.array_equal(back, label) and set(np.nonzero(back.reshape(len(back), -1).any(1))[0]) == {6}
    assert np.array_equal(load_volume_label(out, vol), label)
    with pytest.raises(InputError) as err:
        write_label(label, vol, {"result_extension": ".png"})
    assert err.value.field == "result_extension"
    with pytest.raises(ValueError):
        save_mask(label, tmp_path / "x.png", like=vol)


def test_a_label_of_another_geometry_or_size_is_refused(synthetic, tmp_path):
    path, pixels, lesion = synthetic
    vol = load_input(path)
    moved = write_volume(tmp_path / "moved.nrrd", lesion.astype(np.uint8), origin=(11.0, -20.0, 30.0))
    with pytest.raises(InputError, match="origin") as err:
        load_volume_label(moved, vol)
    assert err.value.field == "label"
    short = write_volume(tmp_path / "short.nrrd", lesion[:5].astype(np.uint8))
    with pytest.raises(InputError, match="voxels"):
        load_volume_label(short, vol)
    flat = write_volume(tmp_path / "flat.nrrd", lesion[5:6].astype(np.uint8))
    with pytest.raises(InputError, match="2D label"):
        load_volume_label(flat, vol)


def test_a_4d_image_is_refused_by_name(tmp_path):
    img = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 8, 8), np.uint8))] * 2)
    path = tmp_path / "four.nii.gz"
    sitk.WriteImage(img, str(path))
    with pytest.raises(ImageReadError, match="4D") as err:
        load_input(path)
    assert err.value.field == "image" and "four.nii.gz" in err.value.message


def test_which_slice_a_request_names():
    n = 11
    assert prompt_slice({"slice": 4}, n) == 4
    assert prompt_slice({"slice": "4"}, n) == 4
    assert prompt_slice({"foreground": [[10, 20, 7], [12, 22, 7]]}, n) == 7
    assert prompt_slice({"roi": [90, 50, 70, 40, 6, 6]}, n) == 6
    assert prompt_slice({"roi": [90, 50, 70, 40, 2, 6]}, n) == 4  # the middle of the roi's z range
    assert prompt_slice({"roi": [90, 50, 70, 40]}, n) is None  # a 2D roi names no slice
    assert prompt_slice({"boxes": [[1, 2, 30, 40]]}, n) is None
    assert prompt_slice({"slice": 0, "foreground": [[10, 20, 3]]}, n) == 0  # slice wins over the clicks


@pytest.mark.parametrize(("request_", "field"), [
    ({"slice": 11}, "slice"), ({"slice": -1}, "slice"), ({"slice": 2.5}, "slice"),
    ({"foreground": [[1, 2, 3], [1, 2, 5]]}, "slice"),
    ({"foreground": [[1, 2, 30]]}, "foreground"),
    ({"roi": [90, 50, 70, 40, 12, 14]}, "roi"), ({"roi": [90, 50, 70, 40, -3, -1]}, "roi"),
])
def test_bad_slices_and_rois_name_their_field(request_, field):
    with pytest.raises(InputError) as err:
        prompt_slice(request_, 11)
    assert err.value.field == field


@pytest.mark.parametrize("value", [[5, 2], [0, 11], [-1, 3], [1], "a,b", [1.5, 3]])
def test_bad_slice_ranges_name_slices(value):
    with pytest.raises(InputError) as err:
        requested_range({"slices": value}, 11)
    assert err.value.field == "slices"


def test_slice_ranges():
    assert requested_range({}, 11) == (0, 10)
    assert requested_range({"slices": [2, 5]}, 11) == (2, 5)
    assert requested_range({"slices": "3,3"}, 11) == (3, 3)


def test_the_slice_request_keeps_that_slices_clicks():
    """Slicer sends every click when the slice is 0: those of other slices are left out, and counted."""
    sub, dropped = slice_request({"foreground": [[1, 2, 0], [3, 4, 2]], "background": [[5, 6, 0], [7, 8]]}, 0)
    assert sub["foreground"] == [[1, 2, 0]] and sub["background"] == [[5, 6, 0], [7, 8]] and dropped == 1


def test_roi_helper_matches_the_lesion(synthetic):
    _, _, lesion = synthetic
    roi = ijk_roi(lesion[5], 5)
    ys, xs = np.nonzero(lesion[5])
    assert roi[:4] == [xs.max(), xs.min(), ys.max(), ys.min()] and roi[4:] == [5, 5]


def test_a_16_bit_volume_is_windowed_and_its_16_bit_label_is_not(tmp_path):
    """MR/CT intensities are clipped to the 0.5-99.5th percentiles of the non-zero voxels; a label never is."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(100, 2000, (6, 40, 50)).astype(np.uint16)
    pixels[2, 10, 10] = 60000  # one hot voxel must not set the contrast of every slice
    vol = load_input(write_volume(tmp_path / "mr.nrrd", pixels))
    lo, hi = vol.window
    assert hi < 2000 <= 60000 and vol.slice_image(2).pixels.max() == pytest.approx(hi)
    label = np.zeros(pixels.shape, np.uint16)
    label[1:4, 5:20, 5:30] = 300  # a label value above the image's window
    back = load_volume_label(write_volume(tmp_path / "label.nrrd", label), vol)
    assert (back > 0).sum() == (label > 0).sum()


def test_slice_on_a_2d_image_must_be_0(tmp_path):
    from radvlsm.service import check_2d_slice

    check_2d_slice({"slice": 0})
    check_2d_slice({"slice": None})
    with pytest.raises(InputError) as err:
        check_2d_slice({"slice": 3})
    assert err.value.field == "slice"


def test_lesions_kept_where_neighbouring_slices_agree():
    """A one-slice answer is dropped; a lesion through slices 2-5 is kept; a weak one (a tenth of its summed
    reliability) is dropped by the relative rule, a strong second lesion is kept, best first."""
    from radvlsm.volume_pipeline import consistent_lesions

    found = np.zeros((8, 20, 20), bool)
    rel = np.zeros(found.shape, np.float32)
    found[2:6, 2:8, 2:8], rel[2:6, 2:8, 2:8] = True, 0.9  # the lesion
    found[7, 15:18, 15:18], rel[7, 15:18, 15:18] = True, 0.95  # a blip on one slice
    found[0:2, 12:14, 2:4], rel[0:2, 12:14, 2:4] = True, 0.18  # weak, two slices: 0.36 vs 3.6
    found[3:6, 12:18, 12:18], rel[3:6, 12:18, 12:18] = True, 0.8  # a second lesion: 2.4
    kept = consistent_lesions(found, rel, min_slices=2, max_lesions=5, relative=0.5)
    assert [round(score, 2) for _, score in kept] == [3.6, 2.4]
    assert kept[0][0][2:6, 2:8, 2:8].all() and not kept[0][0][7].any()
    assert len(consistent_lesions(found, rel, min_slices=2, max_lesions=5, relative=0.0)) == 3
    assert consistent_lesions(np.zeros_like(found), rel, 2, 3, 0.5) == []


def test_the_coarse_to_fine_scan_runs_every_slice_near_an_answer_and_no_other():
    """Stride 3 over 0..29 with a lesion answered on 10..19: the coarse slices (every third and the last), then
    every slice within 2 of an answer, each once; stride 1 is every slice in order; a one-slice range is itself."""
    from radvlsm.volume_pipeline import scan_order

    lesion = set(range(10, 20))
    order = list(scan_order(0, 29, 3, lambda z: z in lesion))
    assert order[:11] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29] and len(order) == len(set(order))
    assert set(order) == set(range(0, 30, 3)) | {29} | set(range(8, 22))  # 8 and 20-21: neighbours of 10, 19
    assert list(scan_order(0, 29, 1, lambda z: z in lesion)) == list(range(30))
    assert list(scan_order(4, 9, 4, lambda z: False)) == [4, 8, 9]  # nothing answers: the coarse pass only
    assert list(scan_order(5, 5, 3, lambda z: True)) == [5]
    # an answer on a refined slice opens its own neighbours (a lesion found only off the coarse grid still grows)
    assert set(scan_order(0, 12, 4, lambda z: z in {4, 5, 6, 7})) == {0, 4, 8, 12} | {1, 2, 3, 5, 6, 7} | {9, 10}
    with pytest.raises(ValueError):
        list(scan_order(0, 3, 0, lambda z: False))


def test_a_stride_up_to_min_slices_gives_the_label_every_slice_would():
    """Random per-slice answers (each slice answers a lesion or not; answers on adjacent slices join): with stride
    <= min_slices, the lesions kept from the slices the scan runs are those kept from every slice."""
    from radvlsm.volume_pipeline import consistent_lesions, scan_order

    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 25))
        answers = rng.random(n) < rng.uniform(0.1, 0.7)
        full = np.zeros((n, 3, 3), bool)
        full[answers, 1, 1] = True
        rel = full.astype(np.float32)
        min_slices = int(rng.integers(2, 4))
        for stride in range(1, min_slices + 1):
            seen = np.zeros(n, bool)
            for z in scan_order(0, n - 1, stride, lambda z, a=answers: bool(a[z])):
                seen[z] = True
            part = full & seen[:, None, None]
            want = consistent_lesions(full, rel, min(min_slices, n), 10)
            got = consistent_lesions(part, rel, min(min_slices, n), 10)
            assert [m.tolist() for m, _ in got] == [m.tolist() for m, _ in want], (trial, stride, answers)


def test_the_volume_cache_keeps_the_last_volumes_and_sees_a_changed_file(synthetic, tmp_path):
    from radvlsm.volume import VolumeCache

    path, pixels, _ = synthetic
    cache = VolumeCache(max_items=2)
    first = cache.load(path)
    assert cache.load(path) is first  # a second click: no reload
    changed = write_volume(tmp_path / "v.nrrd", pixels)
    a = cache.load(changed)
    write_volume(changed, pixels[::-1].copy())  # the file changes: size or time differ
    b = cache.load(changed)
    assert b is not a and np.array_equal(b.pixels[..., 0], pixels[::-1])
    other = cache.load(write_volume(tmp_path / "w.nrrd", pixels[:5]))
    assert isinstance(other, Volume) and len(cache._items) == 2 and cache.load(path) is not first  # evicted


def test_a_roi_wins_over_slicers_slice_offset_in_mm():
    """With only a ROI placed, Slicer sends the Red view's offset in mm as ``slice``: outside the roi's K range (or
    the volume) the roi's own slice is used, and the answer says so."""
    from radvlsm.volume_tasks import slice_notes

    n = 11
    assert prompt_slice({"roi": [90, 50, 70, 40, 6, 6], "slice": 42}, n) == 6  # 42 mm, not a slice index
    assert prompt_slice({"roi": [90, 50, 70, 40, 5, 7], "slice": 7}, n) == 7  # inside the range: slice wins
    vol = Volume(np.zeros((n, 4, 4, 1), np.float32))
    assert slice_notes({"roi": [3, 0, 3, 0, 6, 6], "slice": 42}, vol, 6) and not slice_notes({"slice": 4}, vol, 4)
    with pytest.raises(InputError):
        prompt_slice({"boxes": [[1, 2, 3, 4]], "slice": 42}, n)  # no roi: a slice out of range is an error


def test_an_empty_lesion_has_an_empty_extent():
    from radvlsm.volume_tasks import extent_json

    vol = Volume(np.zeros((3, 4, 4, 1), np.float32), spacing=(0.5, 0.5, 2.0))
    assert extent_json(np.zeros((3, 4, 4), bool), vol) == {"slices": [], "n_slices": 0, "voxels": 0,
                                                           "volume_mm3": 0.0}
    mask = np.zeros((3, 4, 4), bool)
    mask[1:3, 1, 1:3] = True
    ext = extent_json(mask, vol)
    assert ext["slices"] == [1, 2] and ext["voxels"] == 4 and ext["volume_mm3"] == 2.0
    assert ext["roi"] == [1, 2, 1, 1, 1, 2] and ext["largest_slice_box"] == [1.0, 1.0, 2.0, 1.0]
