"""The relevance map's context head: a checkpoint with it loads and serves like any other, it starts exactly at
the linear map it is added to, it reads a patch's neighbourhood and never the padding."""

from __future__ import annotations

import pytest
import torch

from radvlsm.io import load_image
from radvlsm.models import build_backbone
from radvlsm.predictor import SegmentPredictor
from radvlsm.proposals import build_proposer
from radvlsm.proposals.qformer_lite import DEFAULT_CHECKPOINT, load_qformer
from radvlsm.proposals.qformer_model import QFormerLite, QFormerLiteConfig, valid_grid
from tests.conftest import SAMPLES


def inputs(input_size=(256, 192), seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, 256, 64, 64, generator=g)
    tokens = torch.randn(1, 5, 384, generator=g)
    return emb, valid_grid(input_size)[None], tokens, torch.ones(1, 5, dtype=torch.long)


def test_a_new_context_head_starts_at_the_linear_map():
    torch.manual_seed(0)
    plain = QFormerLite().eval()
    ctx = QFormerLite(QFormerLiteConfig(context_channels=16)).eval()
    missing, unexpected = ctx.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("context.") for k in missing)
    with torch.no_grad():
        a, b = plain(*inputs()), ctx(*inputs())
    for key in ("heat", "itm", "box"):
        assert torch.equal(a[key], b[key]), key


def test_context_reads_the_neighbourhood_and_never_the_padding():
    torch.manual_seed(0)
    model = QFormerLite(QFormerLiteConfig(context_channels=16, context_dilations=(1, 2))).eval()
    torch.nn.init.normal_(model.context.out.weight)  # a trained head: not the zero start
    emb, valid, tok, tmask = inputs((256, 192))  # 48 valid columns of 64
    with torch.no_grad():
        z = model.encode(emb, valid, tok, tmask)
        base = model.heads(z, valid)["heat"]
        near = {**z, "feats": z["feats"].clone()}
        near["feats"][:, :, 20, 22] += 5.0  # a neighbour of patch (20, 20), two columns away
        moved = model.heads(near, valid)["heat"]
        pad = {**z, "feats": z["feats"].clone()}
        pad["feats"][:, :, :, 48:] = torch.randn_like(pad["feats"][:, :, :, 48:]) * 10  # only the padding
        padded = model.heads(pad, valid)["heat"]
    assert (moved[0, 20, 20] - base[0, 20, 20]).abs() > 1e-4  # the linear map alone would not change there
    assert torch.allclose(padded[..., :48], base[..., :48], atol=1e-5)


@pytest.fixture(scope="module")
def context_checkpoint(tmp_path_factory):
    """The shipped default with a (non-zero) context head added, saved as the training script saves it."""
    model, meta = load_qformer(DEFAULT_CHECKPOINT)
    cfg = QFormerLiteConfig(**{**meta["config"], "context_channels": 16})
    ctx = QFormerLite(cfg)
    ctx.load_state_dict(model.state_dict(), strict=False)
    torch.manual_seed(1)
    torch.nn.init.normal_(ctx.context.out.weight, std=0.05)
    path = tmp_path_factory.mktemp("ctx") / "qformer_lite.pt"
    torch.save({**meta, "config": cfg.to_dict(), "state_dict": ctx.state_dict()}, path)
    return path


def test_a_context_checkpoint_loads_and_serves(tmp_path, context_checkpoint):
    model, meta = load_qformer(context_checkpoint)
    assert model.context is not None and meta["config"]["context_channels"] == 16
    predictor = SegmentPredictor(build_backbone("litemedsam"), disk_cache=str(tmp_path / "emb"))
    proposer = build_proposer("qformer_lite", predictor=predictor, checkpoint=str(context_checkpoint))
    shipped = build_proposer("qformer_lite", predictor=predictor)
    image = load_image(SAMPLES / "images" / "bus_0075-r.png")
    enc = predictor.encode(image)
    a, b = proposer.propose(image, "lesion", encoded=enc), shipped.propose(image, "lesion", encoded=enc)
    assert a.match_score == pytest.approx(b.match_score)  # the context head changes the map, not the match
    assert a.heatmap.shape == image.shape[:2] and not (a.heatmap == b.heatmap).all()
