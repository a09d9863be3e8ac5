"""The predictor on real LiteMedSAM weights and on a tiny random SAM ViT through segment-anything's modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radvlsm.errors import CheckpointError
from radvlsm.geometry import Prompts
from radvlsm.io import load_image
from radvlsm.models import available_backbones, build_backbone
from radvlsm.predictor import SegmentPredictor, assign_points_to_boxes, preprocess
from tests.conftest import SAMPLES, dice, reference, tight_box

NO_POINTS = (np.zeros((0, 2), np.float32), np.zeros(0, int))


@pytest.fixture(scope="module")
def lite() -> SegmentPredictor:
    return SegmentPredictor(build_backbone("litemedsam"))


def test_registry_lists_every_backbone():
    assert {"litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "sam_vit_tiny"} <= set(available_backbones())
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        build_backbone("nope")


def test_sam_vit_without_checkpoint_names_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="needs a checkpoint path"):
        build_backbone("sam_vit_b")
    with pytest.raises(CheckpointError, match="checkpoint not found: .*missing.pth"):
        build_backbone("sam_vit_b", checkpoint=str(tmp_path / "missing.pth"))
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        build_backbone("sam_vit_tiny", checkpoint=str(tmp_path / "corrupt.pth"))


@pytest.mark.parametrize("case", ["bus_0075-r", "bus_1033-r"])
def test_litemedsam_segments_known_lesion_from_its_box(lite, case):
    img = load_image(SAMPLES / "images" / f"{case}.png")
    seg = lite.segment(img, Prompts(np.array([tight_box(case)], np.float32), *NO_POINTS))
    assert seg.lesions[0].mask.shape == img.shape
    assert dice(seg.lesions[0].mask, reference(case)) >= 0.85
    again = lite.segment(img, Prompts(np.array([tight_box(case)], np.float32), *NO_POINTS))
    assert again.cache_hit and again.timings_ms["encode"] == 0.0
    np.testing.assert_array_equal(again.lesions[0].mask, seg.lesions[0].mask)


def test_litemedsam_preprocessing_is_longest_side_256_minmax_padded(lite):
    img = load_image(SAMPLES / "images" / "bus_1033-r.png")  # 305 x 529
    x, (h, w) = preprocess(lite.backbone, img.rgb_uint8())
    assert x.shape == (1, 3, 256, 256) and (h, w) == (148, 256)
    assert float(x[..., :h, :w].min()) == 0.0 and float(x[..., :h, :w].max()) == pytest.approx(1.0)
    assert float(x[..., h:, :].abs().max()) == 0.0


def test_sam_vit_path_with_tiny_random_weights(tmp_path):
    bb = build_backbone("sam_vit_tiny")
    torch.save(bb.state_dict(), tmp_path / "tiny.pth")
    reloaded = build_backbone("sam_vit_tiny", checkpoint=str(tmp_path / "tiny.pth"))
    assert reloaded.version != bb.version  # checkpoint hash, part of the cache key
    pred = SegmentPredictor(reloaded)
    img = load_image(SAMPLES / "images" / "bus_1033-r.png")
    x, size = preprocess(reloaded, img.rgb_uint8())
    assert x.shape == (1, 3, 256, 256) and size == (148, 256)
    seg = pred.segment(img, Prompts(np.array([[10, 20, 200, 150]], np.float32),
                                    np.array([[50, 60]], np.float32), np.array([1])), multimask=True)
    assert seg.lesions[0].mask.shape == img.shape and seg.lesions[0].n_points == 1
    assert 0 < len(pred.cache) and pred.cache_key(img)[2] == reloaded.version


def test_clicks_go_to_the_box_they_fall_in():
    boxes = np.array([[0, 0, 100, 100], [40, 40, 60, 60], [200, 200, 300, 300]], np.float32)
    points = np.array([[50, 50], [10, 10], [250, 250], [190, 190]], np.float32)
    np.testing.assert_array_equal(assign_points_to_boxes(points, boxes), [1, 0, 2, 2])


def test_an_embedding_kept_on_disk_is_read_by_another_predictor_for_a_while(lite, tmp_path):
    """The server keeps its labelled images' embeddings; a training run (another process: another predictor) reads
    them instead of encoding, and only while it runs."""
    case = "bus_0075-r"
    img = load_image(SAMPLES / "images" / f"{case}.png")
    enc = lite.encode(img)
    lite.persist(img, enc, tmp_path)
    assert lite.disk_cache is None  # keeping one embedding does not turn the disk cache on
    trainer = SegmentPredictor(lite.backbone)
    with trainer.using_disk_cache(tmp_path):
        read = trainer.encode(img)
        assert read.encode_ms == 0 and not read.cache_hit  # from the disk, not encoded
        assert torch.equal(read.embedding, enc.embedding.half().float())
        other = load_image(SAMPLES / "images" / "bus_1033-r.png")
        assert trainer.encode(other).encode_ms > 0  # encoded, and kept for the next run
    assert trainer.disk_cache is None and len(list(tmp_path.rglob("*.pt"))) == 2
    # derived data: a file that cannot be read is encoded again (and rewritten), not a failed training run
    kept = next(tmp_path.rglob(f"{img.digest}.pt"))
    kept.write_bytes(b"truncated")
    again = SegmentPredictor(lite.backbone)
    with again.using_disk_cache(tmp_path):
        assert again.encode(img).encode_ms > 0
    assert torch.equal(torch.load(kept, weights_only=True)["embedding"], enc.embedding.half().cpu())
    own = SegmentPredictor(lite.backbone, disk_cache=str(tmp_path / "own"))
    with own.using_disk_cache(tmp_path):
        assert own.disk_cache == tmp_path / "own"  # a configured disk cache stays the one used
