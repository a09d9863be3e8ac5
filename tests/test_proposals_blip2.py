"""``blip2`` backend with a tiny random BLIP-2 ITM model built and saved locally (no downloads, no real weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radvlsm.errors import CheckpointError
from radvlsm.io import Image2D, load_image
from radvlsm.proposals import build_proposer
from radvlsm.proposals.blip2 import Blip2Proposer, cam_to_image, default_cam_layer
from tests.conftest import SAMPLES

transformers = pytest.importorskip("transformers")

IMAGE_SIZE, PATCH = 32, 8  # 4x4 patch grid
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "lesion", "tumor", "mass", "breast", "kidney",
         "stone", "cyst", "polyp", "hypoechoic", "of", "in", "image"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random 2-layer BLIP-2 ITM model + BERT word-piece tokenizer + BLIP image processor, saved like a hub copy."""
    from transformers import BertTokenizer, Blip2Config, Blip2ForImageTextRetrieval, Blip2Processor
    from transformers.models.blip.image_processing_blip import BlipImageProcessor

    d = tmp_path_factory.mktemp("blip2-tiny")
    (d / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    processor = Blip2Processor(BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
                               BertTokenizer(str(d / "vocab.txt")))
    # Blip2VisionConfig's default initializer_range is 1e-10: every patch token would be identical and the CAM flat.
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=PATCH, initializer_range=0.02),
        qformer_config=dict(vocab_size=len(processor.tokenizer), hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64, encoder_hidden_size=32,
                            cross_attention_frequency=1, max_position_embeddings=64, use_qformer_text_input=True),
        text_config=dict(model_type="opt", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
                         vocab_size=50, word_embed_proj_dim=16),
        num_query_tokens=4, image_text_hidden_size=16,
    )
    torch.manual_seed(0)
    Blip2ForImageTextRetrieval(config).eval().save_pretrained(d)
    processor.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def proposer(tiny_dir) -> Blip2Proposer:
    return build_proposer("blip2", model_path=str(tiny_dir))


@pytest.fixture(scope="module")
def image() -> Image2D:
    return load_image(SAMPLES / "images" / "bus_0017-s.png")  # 385 x 360: not square


def test_proposal_shapes_and_boxes(proposer, image):
    p = proposer.propose(image, "hypoechoic breast mass", top_k=3)
    assert p.backend == "blip2"
    assert p.heatmap.shape == image.shape and p.heatmap.dtype == np.float32
    assert p.heatmap.min() >= 0 and p.heatmap.max() == pytest.approx(1.0)
    assert 0.0 <= p.match_score <= 1.0
    assert 1 <= len(p.candidates) <= 3
    rows, cols = image.shape
    for c in p.candidates:
        x0, y0, x1, y1 = c.box
        assert 0 <= x0 <= x1 <= cols - 1 and 0 <= y0 <= y1 <= rows - 1
        assert 0 < c.score <= 1 and c.backend == "blip2" and c.extra["cam_strength"] > 0
    assert [c.score for c in p.candidates] == sorted((c.score for c in p.candidates), reverse=True)


def test_match_score_is_itm_softmax(proposer, image):
    inputs = proposer.inputs(image, "breast lesion")
    assert inputs["pixel_values"].shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)  # squashed to a square, aspect dropped
    with torch.no_grad():
        logits = proposer.model(**inputs, use_image_text_matching_head=True).logits_per_image
    expected = float(torch.softmax(logits, 1)[0, 1])
    assert proposer.propose(image, "breast lesion").match_score == pytest.approx(expected, abs=1e-6)


def test_deterministic(proposer, image):
    a = proposer.propose(image, "tumor")
    b = proposer.propose(image, "tumor")
    np.testing.assert_array_equal(a.heatmap, b.heatmap)
    assert [c.box for c in a.candidates] == [c.box for c in b.candidates] and a.match_score == b.match_score


def test_heatmap_depends_on_text(proposer, image):
    a = proposer.propose(image, "hypoechoic mass")
    b = proposer.propose(image, "kidney stone")
    assert np.abs(a.heatmap - b.heatmap).max() > 1e-3
    assert a.match_score != b.match_score


def test_cam_maps_back_through_the_square_resize():
    """A hot top-right patch of the square grid lands in the top-right of a wide image, not a padded corner."""
    cam = np.zeros((4, 4), np.float32)
    cam[0, 3] = 1.0
    heat = cam_to_image(cam, (100, 300))
    assert heat.shape == (100, 300)
    ys, xs = np.nonzero(heat >= 0.5)
    # one patch is 1/4 of each side: columns 225..299, rows 0..24 (bilinear spreads it by under half a patch)
    assert xs.min() >= 225 - 300 / 8 and xs.max() == 299
    assert ys.min() == 0 and ys.max() <= 25 + 100 / 8
    assert np.unravel_index(np.argmax(heat), heat.shape)[1] > 225
    assert np.all(cam_to_image(np.zeros((4, 4)), (10, 20)) == 0)


def test_default_cam_layer():
    assert default_cam_layer(12, 2) == 6  # blip2-itm-vit-g: cross-attention in even layers
    assert default_cam_layer(2, 1) == 1


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="huggingface-cli download"):
        Blip2Proposer(model_path=tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=str(empty)):
        Blip2Proposer(model_path=empty)


def test_half_precision_refused_on_cpu(tiny_dir):
    with pytest.raises(ValueError, match="CUDA"):
        Blip2Proposer(model_path=tiny_dir, dtype="float16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_on_cuda(tiny_dir, image, dtype):
    p = Blip2Proposer(model_path=tiny_dir, device="cuda", dtype=dtype).propose(image, "breast mass")
    assert p.heatmap.shape == image.shape and 0 <= p.match_score <= 1 and p.candidates
