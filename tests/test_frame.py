"""One coordinate frame (:class:`radvlsm.frame.Frame`) for serving and training: round trips on known lesions of
the bundled samples (a landscape, a portrait and a portrait made by transposing the landscape one), a training
target mapped back by the serving path lands on the label, and training builds its targets in the very frame the
predictor's encoding carries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radvlsm.frame import Frame
from radvlsm.geometry import ResizeLongestSide, mask_to_box
from radvlsm.io import load_image
from radvlsm.models import build_backbone
from radvlsm.predictor import Encoded, SegmentPredictor
from tests.conftest import SAMPLES, dice, reference

LANDSCAPE, PORTRAIT = "bus_1033-r", "bus_0075-r"  # 305 x 529 and 352 x 276 (rows x cols)
CASES = [LANDSCAPE, PORTRAIT, f"{LANDSCAPE}.T"]  # .T: the landscape sample transposed in memory


def lesion(case: str) -> np.ndarray:
    sample, _, kind = case.partition(".")
    mask = reference(sample)
    return np.ascontiguousarray(mask.T) if kind == "T" else mask


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> SegmentPredictor:
    return SegmentPredictor(build_backbone("litemedsam"), disk_cache=str(tmp_path_factory.mktemp("emb")))


def test_samples_cover_both_orientations():
    rows, cols = lesion(LANDSCAPE).shape
    assert cols > rows
    for case in (PORTRAIT, f"{LANDSCAPE}.T"):
        rows, cols = lesion(case).shape
        assert rows > cols


@pytest.mark.parametrize("shape", [(305, 529), (352, 276), (2, 1025), (100, 100), (1, 7)])
@pytest.mark.parametrize("img_size", [256, 1024])
def test_input_size_is_resize_longest_side_and_determines_the_frame(shape, img_size):
    frame = Frame(shape, img_size)
    assert frame.input_size == ResizeLongestSide(img_size).new_size(shape)
    assert max(frame.input_size) == img_size and min(frame.input_size) >= 1
    assert Frame.of(shape, frame.input_size) == frame  # what an encoding carries is enough
    assert frame.scale == pytest.approx(img_size / max(shape))


def test_an_input_size_no_frame_makes_is_refused():
    with pytest.raises(ValueError, match="not the model input"):
        Frame.of((300, 517), (150, 256))
    with pytest.raises(ValueError, match="not the model input"):
        _ = Encoded(torch.zeros(1), (300, 517), (150, 256)).frame
    with pytest.raises(ValueError, match="1024-pixel one is expected"):
        Frame((300, 517), 256).check(1024)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("img_size", [256, 1024])
def test_boxes_and_points_round_trip_on_a_known_lesion(case, img_size):
    mask = lesion(case)
    frame = Frame(mask.shape, img_size)
    box = np.array(mask_to_box(mask), np.float32)
    model = frame.boxes_to_model(box)
    assert model.shape == (1, 4) and model.dtype == np.float32
    h, w = frame.input_size
    x0, y0, x1, y1 = model[0]
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    np.testing.assert_allclose(frame.boxes_to_image(model)[0], box, atol=1e-3)
    # the model-frame box bounds the model-frame training target, within one pixel of the coarser grid
    target_box = np.array(mask_to_box(frame.mask_to_model(mask).numpy()), np.float32)
    assert np.abs(model[0] - target_box).max() <= max(1.0, frame.scale)
    ys, xs = np.nonzero(mask)
    points = np.array([[xs.mean(), ys.mean()], [xs.min(), ys.min()], [xs.max(), ys.max()]], np.float32)
    np.testing.assert_allclose(frame.points_to_image(frame.points_to_model(points)), points, atol=1e-3)
    np.testing.assert_allclose(frame.points_to_model(points[None])[0], frame.points_to_model(points))  # any batch


def test_a_transposed_image_has_the_transposed_frame():
    mask = lesion(LANDSCAPE)
    frame, transposed = Frame(mask.shape, 256), Frame(mask.T.shape, 256)
    assert transposed.input_size == frame.input_size[::-1]
    box = np.array(mask_to_box(mask), np.float32)
    swap = [1, 0, 3, 2]
    np.testing.assert_allclose(transposed.boxes_to_model(box[swap]), frame.boxes_to_model(box)[:, swap])
    assert torch.equal(transposed.mask_to_model(mask.T), frame.mask_to_model(mask).T)


@pytest.mark.parametrize("case", CASES)
def test_a_training_target_and_a_served_mask_agree(predictor, case):
    """The decoder's training target, read back as the predictor serves its logits, is the label again."""
    mask = lesion(case)
    img_size = predictor.backbone.img_size
    low_res = 4 * predictor.backbone.prompt_encoder.image_embedding_size[0]  # as training/loop.train
    frame = Frame(mask.shape, img_size)
    target = frame.mask_to_decoder(mask, low_res)  # what training/loop.Prompts trains on
    assert target.shape == (low_res, low_res) and set(target.unique().tolist()) == {0.0, 1.0}
    from radvlsm.training.data import model_frame_target

    assert torch.equal(target, model_frame_target(mask, frame.input_size, img_size))  # LiteMedSAM: low_res = 256
    logits = (2 * target - 1)[None, None] * 8.0  # a decoder that reproduces its target exactly
    enc = Encoded(torch.zeros(1), mask.shape, frame.input_size)
    served = predictor.postprocess(logits, enc)[0]
    assert torch.equal(served, frame.logits_to_image(logits)[0, 0])
    served = served.numpy() > 0
    assert served.shape == mask.shape
    assert dice(served, mask) > 0.97
    assert np.abs(np.array(mask_to_box(served)) - np.array(mask_to_box(mask))).max() <= 2


@pytest.mark.parametrize("case", CASES)
def test_a_coarser_decoder_grid_agrees_too(case):
    """SAM ViT's geometry (1024 input, 256 decoder grid): the target is resampled onto the decoder grid and the
    served path upsamples it back; they still agree."""
    mask = lesion(case)
    frame = Frame(mask.shape, 1024)
    target = frame.mask_to_decoder(mask, 256)
    assert target.shape == (256, 256)
    served = frame.logits_to_image((2 * target - 1)[None, None] * 8.0)[0, 0].numpy() > 0
    assert dice(served, mask) > 0.97
    assert np.abs(np.array(mask_to_box(served)) - np.array(mask_to_box(mask))).max() <= 2


@pytest.mark.parametrize("case", CASES)
def test_training_target_differs_from_the_image_resampling_only_on_the_boundary(case):
    """The target is resized without antialiasing, the image with it: same size, centres and padding, and the
    thresholded masks differ on under 1 % of the lesion's model pixels."""
    mask = lesion(case)
    frame = Frame(mask.shape, 256)
    target = frame.mask_to_model(mask)
    as_image = (frame.soft_mask_to_model(mask) > 0.5).float()
    assert int((target != as_image).sum()) < 0.01 * float(target.sum())


def test_the_two_valid_grids_are_one():
    """``proposals/template.valid_grid`` and ``proposals/qformer_model.valid_grid`` computed the same cells with
    two float formulas; both now read :meth:`Frame.grid_valid`."""
    import math

    from radvlsm.proposals.qformer_model import valid_grid as qformer_valid
    from radvlsm.proposals.template import valid_grid as template_valid

    for img_size, grid in ((256, 64), (1024, 64), (512, 32)):
        for side in range(1, img_size + 1):
            for shape in ((side, img_size), (img_size, side)):
                frame = Frame(shape, img_size)
                h, w = frame.input_size
                stride = img_size / grid
                template_old = (min(grid, int(np.ceil(h / stride))), min(grid, int(np.ceil(w / stride))))
                qformer_old = (math.ceil(h * grid / img_size), math.ceil(w * grid / img_size))
                assert frame.grid_valid(grid) == template_old == qformer_old
    enc = Encoded(torch.zeros(1, 256, 64, 64), (305, 529), Frame((305, 529), 256).input_size)
    rows, cols = template_valid(enc, 256)
    v = qformer_valid(enc.input_size, 256, 64)
    assert (rows, cols) == (37, 64) and v[:rows, :cols].all() and v.sum() == rows * cols
    assert torch.equal(v, enc.frame.grid_valid_mask(64))
    # the decoder grid of LiteMedSAM is its model input: its crop is the input size itself
    assert enc.frame.decoder_valid(256) == enc.frame.input_size


def test_a_valid_cell_map_and_its_padded_grid_map_to_the_same_image():
    frame = Frame((305, 529), 256)
    rows, cols = frame.grid_valid(64)
    part = torch.rand(rows, cols, generator=torch.Generator().manual_seed(0))
    full = torch.zeros(64, 64)
    full[:rows, :cols] = part
    out = frame.heat_to_image(part, 64)
    assert out.shape == (305, 529)
    assert torch.equal(out, frame.heat_to_image(full))
    assert torch.equal(out, frame.logits_to_image(full[None, None])[0, 0])


def test_training_builds_in_the_frame_the_encoding_carries(predictor):
    """``training/data.prepare`` takes its items' frame from the predictor's encoding: the same frame, boxes and
    targets the served path maps through."""
    from radvlsm.training.data import TrainSample, lesion_components, prepare
    from radvlsm.training.loop import Prompts

    ids = [LANDSCAPE, PORTRAIT]
    items = prepare([TrainSample(i, SAMPLES / "images" / f"{i}.png", SAMPLES / "reference" / f"{i}.png")
                     for i in ids], predictor)
    assert [it.image_id for it in items] == ids
    img_size = predictor.backbone.img_size
    low_res = 4 * predictor.backbone.prompt_encoder.image_embedding_size[0]
    for item in items:
        image = load_image(SAMPLES / "images" / f"{item.image_id}.png")
        enc = predictor.encode(image)
        assert item.frame == enc.frame == Frame(image.shape, img_size)
        comps = lesion_components(reference(item.image_id))[:3]
        assert len(item.lesions) == len(comps)
        for (box, mask), comp in zip(item.lesions, comps, strict=True):
            np.testing.assert_array_equal(mask, comp)
            np.testing.assert_array_equal(box, enc.frame.boxes_to_model(np.array(mask_to_box(comp), np.float32))[0])
        targets = [t for _, _, t in Prompts([item], img_size, low_res).entries]
        for t, (_, mask) in zip(targets, item.lesions, strict=True):
            assert torch.equal(t, enc.frame.mask_to_decoder(mask, low_res))
