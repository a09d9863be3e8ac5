"""The mask decoder on ONNX Runtime: the per-prompt (cheap) path, about 2x faster than torch on this CPU.

Exported once per checkpoint beside the encoder (same cache directory and atomic writes). The graph takes the
image embedding and the prompt encoder's sparse embeddings (prompt encoder stays in torch: it is tiny) and returns
all four masks and IoUs, as ``MaskDecoder.predict_masks``; the dense positional encoding and the "no mask" dense
embedding are baked in (this project never sends a mask prompt). It serves only the checkpoint's own decoder:
once a fine-tuned decoder is live (``predictor.decoder_version != "shipped"``) the torch decoder is used.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from radvlsm.io import atomic_write
from radvlsm.models.registry import Backbone
from radvlsm.runtimes.onnx_cache import EXPORT_ATOL, EXPORT_LOCK, EXPORTS, OPSET, export_dir

logger = logging.getLogger(__name__)


class _DecoderGraph(nn.Module):
    def __init__(self, backbone: Backbone):
        super().__init__()
        pe = backbone.prompt_encoder
        self.decoder = backbone.mask_decoder
        with torch.no_grad():
            self.register_buffer("image_pe", pe.get_dense_pe().detach().cpu().clone())
            self.register_buffer("no_mask", pe.no_mask_embed.weight.detach().cpu().reshape(1, -1, 1, 1).clone())

    def forward(self, embedding: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dense = self.no_mask.expand(sparse.shape[0], -1, embedding.shape[-2], embedding.shape[-1])
        return self.decoder.predict_masks(image_embeddings=embedding, image_pe=self.image_pe,
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)


def _probe(backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    grid = backbone.prompt_encoder.image_embedding_size
    emb = torch.randn(1, backbone.prompt_encoder.embed_dim, *grid, generator=g)
    box = torch.tensor([[0.2, 0.3, 0.7, 0.8]]) * backbone.img_size
    with torch.inference_mode():
        sparse, _ = backbone.prompt_encoder.cpu()(points=None, boxes=box, masks=None)
    backbone.prompt_encoder.to(backbone.device)
    return emb, sparse.repeat(2, 1, 1)


def export_decoder(backbone: Backbone, cache_dir: str | Path | None = None) -> Path:
    """The ONNX mask decoder for ``backbone`` (cached file, or a new export checked against torch)."""
    out = export_dir(backbone, cache_dir)
    path = out / "decoder.onnx"
    with EXPORT_LOCK:
        if path.exists():
            return path
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        graph = _DecoderGraph(backbone).cpu().eval()
        emb, sparse = _probe(backbone)

        def write(tmp: Path) -> None:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                torch.onnx.export(graph, (emb, sparse), str(tmp), input_names=["embedding", "sparse"],
                                  output_names=["masks", "iou"], opset_version=OPSET, dynamo=False,
                                  dynamic_axes={"sparse": {0: "n", 1: "tokens"}, "masks": {0: "n"}, "iou": {0: "n"}})
                ref = graph(emb, sparse)
            got = OnnxDecoder(tmp).run(emb, sparse)
            diff = max(float((a - b).abs().max()) for a, b in zip(got, ref, strict=True))
            if diff > EXPORT_ATOL * 10:  # logits, not unit-scale: 1e-2 absolute
                raise RuntimeError(f"ONNX mask decoder differs from torch by {diff:.2e}; not using it")

        atomic_write(path, write)
        backbone.mask_decoder.to(backbone.device)
        EXPORTS["decoder"] += 1
        logger.info(f"radvlsm: ONNX mask decoder exported in {time.perf_counter() - start:.1f} s ({path})")
        return path


class OnnxDecoder:
    """``run(embedding (1,C,h,w), sparse (N,T,C))`` -> all four low-res masks ``(N,4,g,g)`` and IoUs ``(N,4)``."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(self, embedding: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou = self.session.run(None, {"embedding": embedding.detach().cpu().float().contiguous().numpy(),
                                             "sparse": sparse.detach().cpu().float().contiguous().numpy()})
        return torch.from_numpy(masks), torch.from_numpy(iou)


def build_decoder(backbone: Backbone, cache_dir: str | Path | None = None) -> OnnxDecoder:
    return OnnxDecoder(export_decoder(backbone, cache_dir))
