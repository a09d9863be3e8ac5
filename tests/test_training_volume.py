"""A volume's final label trains as its slices, and its slices stay together: in the held-back split (by image id)
and in the proposer's folds (by group), so no slice is scored by a model trained on its neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radvlsm.training.data import EMPTY_SLICES_PER_LESION_SLICE, Item, TrainSample, split, volume_samples
from radvlsm.training.datastore import samples_from_datastore
from radvlsm.training.gate import item_folds
from tests.conftest import SAMPLES
from tests.volumes import lesion_volume, write_volume


@pytest.fixture(scope="module")
def volume_pair(tmp_path_factory):
    pixels, lesion = lesion_volume(slices=15, k_centre=7)
    folder = tmp_path_factory.mktemp("train-volume")
    return (write_volume(folder / "image.nii.gz", pixels), write_volume(folder / "label.nrrd", lesion.astype(np.uint8)),
            pixels, lesion)


def test_a_volume_label_becomes_its_lesion_slices_and_as_many_lesion_free_ones(volume_pair):
    image, label, pixels, lesion = volume_pair
    samples = volume_samples(TrainSample("vol", image, label))
    on = np.nonzero(lesion.reshape(len(lesion), -1).any(1))[0]
    slices = [s.slice for s in samples]
    assert set(on) <= set(slices)
    empty = [k for k in slices if k not in set(on)]
    assert len(empty) == min(len(lesion) - len(on), round(EMPTY_SLICES_PER_LESION_SLICE * len(on)))
    assert empty[0] == 0 and empty[-1] == len(lesion) - 1  # spread over the volume, not bunched at one end
    assert {s.image_id for s in samples} == {"vol"} and len({s.sample_id for s in samples}) == len(samples)
    k = int(on[len(on) // 2])
    img, mask = next(s for s in samples if s.slice == k).load()
    assert np.array_equal(img.pixels[..., 0], pixels[k]) and np.array_equal(mask, lesion[k])


def test_a_2d_sample_stays_as_it_is():
    sample = TrainSample("bus_0075-r", SAMPLES / "images" / "bus_0075-r.png", SAMPLES / "reference" / "bus_0075-r.png")
    assert volume_samples(sample) == [sample]


class Store:
    """The datastore methods ``samples_from_datastore`` reads (MONAI Label's ``Datastore`` interface)."""

    def __init__(self, pairs: dict[str, tuple]):
        self.pairs = pairs

    def get_labeled_images(self, label_tag=None):
        return list(self.pairs)

    def get_label_uri(self, image_id, tag):
        return str(self.pairs[image_id][1])

    def get_image_uri(self, image_id):
        return str(self.pairs[image_id][0])

    def get_label_info(self, image_id, tag):
        return {}


def test_the_datastore_lists_a_volume_as_slices_beside_2d_images(volume_pair):
    image, label, _, lesion = volume_pair
    store = Store({"vol": (image, label),
                   "bus_0075-r": (SAMPLES / "images" / "bus_0075-r.png", SAMPLES / "reference" / "bus_0075-r.png")})
    samples = samples_from_datastore(store)
    assert [s.sample_id for s in samples if s.image_id == "bus_0075-r"] == ["bus_0075-r"]
    volume = [s for s in samples if s.image_id == "vol"]
    assert len(volume) > 1 and all(s.slice is not None for s in volume)
    train, val = split([s.image_id for s in samples])  # the split is by image: a volume is on one side
    assert set(train) | set(val) == {"vol", "bus_0075-r"} and not set(train) & set(val)


def item(sample_id: str, group: str) -> Item:
    return Item(sample_id, torch.zeros(1), (8, 8), (8, 8), np.zeros((8, 8), bool), [], group=group)


def test_proposer_folds_hold_a_volume_out_whole():
    items = [item(f"vol{v}[{k}]", f"vol{v}") for v in range(4) for k in range(6)] + [item("png", "")]
    held = item_folds(items, 3)
    assert sorted(i for fold in held for i in fold) == list(range(len(items)))
    for fold in held:
        groups = {items[i].group_id for i in fold}
        assert all(items[i].group_id in groups for i in fold)
        assert all((i in fold) == (items[i].group_id in groups) for i in range(len(items)))  # whole groups
    assert items[-1].group_id == "png"
