"""Whether a fine-tuned mask decoder is published: an honest decision at the small N of a new site.

With five corrections the hash split (:mod:`radvlsm.holdout`) holds one image back, and "mean validation Dice not
worse than the served model's" over one image is a coin toss. The default gate (``auto``) therefore scores the
decoder like the proposer's gate (:mod:`radvlsm.training.gate`):

* ``cv``: when the split holds fewer than :data:`MIN_HELD_BACK` lesion images, every labelled lesion image is
  scored **out of fold** (``decoder_folds`` copies, each trained from the served weights without its fold), and
  the published model is trained on all of them;
* ``holdout``: otherwise, the held-back images as today;

and either way the model is published only when a **paired bootstrap** of the per-image Dice gain (served vs new,
image by image; a volume's slices are one image) has its lower bound above ``-tolerance`` at ``gate_confidence``
(0: better with confidence). ``mean`` is the earlier rule (the held-back mean not worse than the served one's
minus ``tolerance``), kept for runs that must publish on a handful of images, such as the tests of the
publishing mechanics. Under ``torch.distributed`` (many labels, several GPUs) ``auto`` and ``cv`` use the
held-back split: the folds' copies would train on one rank only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from radvlsm.training.data import Item
from radvlsm.training.gate import GateResult, by_group, item_folds, paired_bootstrap
from radvlsm.training.loop import PromptDecoder, TrainConfig, check_decoder_gate, evaluate, train

#: ``auto`` cross-validates when the held-back split has fewer lesion images than this; the bootstrap never
#: passes on fewer paired images
MIN_HELD_BACK = 3


def gate_method(cfg: TrainConfig, held_back: list[Item], distributed: bool) -> str:
    """``cv``, ``holdout`` or ``mean`` for this run (see the module's docstring)."""
    check_decoder_gate(cfg.decoder_gate)  # a config built in code, not through TrainConfig.from_request
    if cfg.decoder_gate == "mean":
        return "mean"
    if distributed:
        return "holdout"
    if cfg.decoder_gate != "auto":
        return cfg.decoder_gate
    return "cv" if len({it.group_id for it in held_back}) < MIN_HELD_BACK else "holdout"


def out_of_fold(make_model: Callable[[], PromptDecoder], items: list[Item], img_size: int, cfg: TrainConfig,
                should_stop: Callable[[], bool] | None = None) -> list[float]:
    """Per-item Dice of ``items``, each from a copy of the served decoder trained without the item's fold."""
    scores = [float("nan")] * len(items)
    for fold in item_folds(items, max(cfg.decoder_folds, 2)):
        rest = [it for i, it in enumerate(items) if i not in fold]
        held = sorted(fold)
        if not rest or not held:
            continue
        model = make_model()
        train(model, rest, img_size, cfg, should_stop=should_stop)
        for i, s in zip(held, evaluate(model, [items[i] for i in held], img_size), strict=True):
            scores[i] = s
    return scores


def decide(method: str, items: list[Item], before: list[float], after: list[float], cfg: TrainConfig
           ) -> tuple[bool, dict, str]:
    """``(publish, gate JSON, reason)`` from the served and new per-item Dice of the same ``items``."""
    if method == "mean":
        b = float(np.mean(before)) if before else float("nan")
        a = float(np.mean(after)) if after else float("nan")
        passed = bool(a >= b - cfg.tolerance)  # NaN (nothing held back) never passes
        rule = f"held-back mean {b:.4f} -> {a:.4f} (tolerance {cfg.tolerance})"
        return passed, {"method": method, "n": len(before), "before": b, "after": a, "passed": passed}, rule
    b, a = by_group(items, before), by_group(items, after)
    groups = [g for g in b if np.isfinite(a[g])]
    gate: GateResult = paired_bootstrap(np.array([b[g] for g in groups]), np.array([a[g] for g in groups]),
                                        cfg.gate_confidence, min_images=MIN_HELD_BACK, tolerance=cfg.tolerance)
    where = (f"out of fold ({max(cfg.decoder_folds, 2)} folds)" if method == "cv" else "held back")
    rule = f"{where}: {gate.describe()}, tolerance {cfg.tolerance}"
    if gate.n < MIN_HELD_BACK:
        rule += f"; fewer than {MIN_HELD_BACK} images never pass"
    return gate.passed, {"method": method, **gate.to_json(), "tolerance": cfg.tolerance}, rule
