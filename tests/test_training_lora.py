"""Low-rank adapters in LiteMedSAM's image encoder (real weights, bundled samples): exact at zero, exact when
merged, trained with the decoder, published with it, and served to the mask decoder only (the shipped embedding
that the proposer and the diagnosis head read is untouched)."""

from __future__ import annotations

import copy

import pytest
import torch

from radvlsm.io import load_image
from radvlsm.models import build_backbone
from radvlsm.predictor import Encoded, SegmentPredictor, preprocess
from radvlsm.training import SHIPPED, DecoderStore, DecoderWatcher, TrainConfig, fine_tune
from radvlsm.training.lora import TARGETS, split_encoder
from radvlsm.training.store import decoder_state
from tests.conftest import SAMPLES, tight_box
from tests.test_training import IDS, sample

IMAGE = "bus_0075-r"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> SegmentPredictor:
    return SegmentPredictor(build_backbone("litemedsam"), disk_cache=str(tmp_path_factory.mktemp("emb")))


@pytest.fixture(scope="module")
def x(predictor) -> torch.Tensor:
    return preprocess(predictor.backbone, load_image(SAMPLES / "images" / f"{IMAGE}.png").rgb_uint8())[0]


def test_zero_adapters_reproduce_the_encoder_and_merging_is_exact(predictor, x):
    encoder = predictor.backbone.image_encoder
    head, tail = split_encoder("litemedsam", encoder, rank=4)
    assert {n.rsplit(".", 1)[-1] for n in tail.adapters()} == set(TARGETS) and len(tail.adapters()) == 8
    assert all(p.requires_grad == (n.endswith((".A", ".B"))) for n, p in tail.named_parameters())
    with torch.no_grad():
        reference = encoder(x)
        assert torch.equal(tail(head(x)), reference)  # B starts at zero: training starts at the served encoder
        for m in tail.adapters().values():
            m.B.normal_(std=0.05)
        adapted = tail(head(x))
        merged = copy.deepcopy(encoder)
        merged.load_state_dict({k[len("image_encoder."):]: v for k, v in tail.merged_state().items()}, strict=False)
        assert not torch.allclose(adapted, reference, atol=1e-3)
        assert torch.allclose(merged(x), adapted, atol=1e-4)


def test_training_mode_leaves_the_stage_statistics_alone(predictor, x):
    """The last stage has batch norms: a training-mode pass would overwrite their running statistics, which the
    published merged weights do not carry. The tail stays in eval mode, so only the adapters change."""
    head, tail = split_encoder("litemedsam", predictor.backbone.image_encoder, rank=4)
    buffers = {k: v.clone() for k, v in tail.named_buffers()}
    assert any("running_mean" in k for k in buffers)
    tail.train()
    assert not tail.training and not any(m.training for m in tail.modules())
    tail(head(x)).mean().backward()
    assert all(torch.equal(v, buffers[k]) for k, v in tail.named_buffers())


def test_backbones_without_a_split_are_a_clear_error(predictor):
    with pytest.raises(ValueError, match="adapters are available for"):
        split_encoder("sam_vit_b", predictor.backbone.image_encoder, rank=4)
    assert TrainConfig.from_request({"encoder_lora_rank": 4}).encoder_lora_rank == 4
    with pytest.raises(ValueError, match="encoder_lora_rank"):
        TrainConfig.from_request({"encoder_lora_rank": -1})


def test_adapted_encoder_is_published_and_serves_the_decoder_only(tmp_path, predictor):
    store = DecoderStore(tmp_path / "sam_decoder")
    shipped_decoder = decoder_state(predictor.backbone)
    predictor.decoder_watcher = DecoderWatcher(store, predictor.backbone, predictor.lock)
    try:
        image = load_image(SAMPLES / "images" / f"{IMAGE}.png")
        shipped = predictor.encode(image)
        assert shipped.seg_embedding is None
        # the gate is not what this test is about (tests/test_training.py): one held-back check instead of 3 folds
        cfg = TrainConfig(epochs=1, clicks=False, encoder_lora_rank=4, tolerance=1.0, decoder_gate="mean")
        res = fine_tune(predictor, [sample(i) for i in IDS], store, cfg)
        assert res.published and res.version == "v0001", res.reason
        saved = store.load("v0001")["state"]
        encoder_keys = sorted(k for k in saved if k.startswith("image_encoder."))
        assert len(encoder_keys) == 8 and all(k.startswith("image_encoder.layers.3.") for k in encoder_keys)

        enc = predictor.encode(image)  # picked up live: a second, adapted encode for the decoder
        assert predictor.decoder_version == "v0001" and enc.seg_embedding is not None
        assert torch.equal(enc.embedding, shipped.embedding)  # what the proposer and diagnosis read: unchanged
        assert not torch.equal(enc.seg_embedding, enc.embedding)
        box = tight_box(IMAGE)
        on_adapted, _ = predictor.decode_logits(enc, box)
        on_shipped, _ = predictor.decode_logits(Encoded(enc.embedding, enc.original_size, enc.input_size), box)
        assert not torch.equal(on_adapted, on_shipped)  # the decoder reads the adapted embedding

        # a decoder-only run on top keeps the encoder it was trained with
        res2 = fine_tune(predictor, [sample(i) for i in IDS], store, TrainConfig(epochs=1, clicks=False,
                                                                                  tolerance=1.0, decoder_gate="mean"))
        assert res2.published and res2.version == "v0002"
        again = store.load("v0002")["state"]
        assert all(torch.equal(again[k], saved[k]) for k in encoder_keys)
        assert predictor.encode(image).seg_embedding is not None

        # a predictor that does not follow the store cannot continue from an adapted version
        plain = SegmentPredictor(predictor.backbone, disk_cache=None)
        with pytest.raises(ValueError, match="adapted image encoder"):
            fine_tune(plain, [sample(i) for i in IDS], store, TrainConfig(epochs=1))

        store.restore(SHIPPED)
        assert predictor.encode(image).seg_embedding is None and predictor.decoder_version == SHIPPED
    finally:
        predictor.decoder_watcher = None
        predictor.backbone.load_state_dict(shipped_decoder, strict=False)
