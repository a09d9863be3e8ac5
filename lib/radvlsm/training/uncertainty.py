"""Per-image uncertainty for active learning, from one run of the text pipeline, and the ranking strategies.

uncertainty = mean of three disagreements, each in [0, 1]:

* ``1 - agreement``: the top lesion's candidate masks (boxes, variants, multimask outputs) disagree;
* ``1 - predicted IoU``: SAM's own quality estimate of the top lesion's best box prompt is low;
* ``1 - match score``: the proposer is unsure the phrase is in the image at all.

An image where the pipeline finds no lesion scores 1.0 (a clinician should look at it). The score is stored in
the image's datastore info under ``SCORE_KEY`` with the decoder and proposer versions that produced it, so
images scored by an older decoder or proposer are scored again after training.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radvlsm.defaults import DEFAULT_PHRASE
from radvlsm.results import SegmentationResult, best_predicted_iou

SCORE_KEY = "radvlsm_uncertainty"


@dataclass
class Uncertainty:
    score: float
    agreement: float | None
    predicted_iou: float | None
    match_score: float

    def to_info(self, decoder_version: str, ts: float, proposer_version: str = "shipped") -> dict[str, Any]:
        return {"score": round(self.score, 5), "agreement": self.agreement, "predicted_iou": self.predicted_iou,
                "match_score": round(self.match_score, 5), "decoder_version": decoder_version,
                "proposer_version": proposer_version, "ts": ts}


def uncertainty_from_result(result: SegmentationResult | dict[str, Any]) -> Uncertainty:
    """The score of one pipeline result (``RadVLSMPipeline.run(...).summary``), read from its typed fields; a
    result JSON (``.result``, e.g. one stored or served) is read by :func:`uncertainty_from_json`."""
    if isinstance(result, dict):
        return uncertainty_from_json(result)
    top = result.lesions[0] if result.lesions else None
    if top is None:
        return Uncertainty(1.0, None, None, float(result.match_score))
    return _uncertainty(float(result.match_score), top.agreement, top.best_predicted_iou)


def uncertainty_from_json(result: dict[str, Any]) -> Uncertainty:
    """The score of one pipeline result JSON (the keys :meth:`SegmentationResult.to_json` writes)."""
    match = float(result.get("match_score") or 0.0)
    lesions = result.get("lesions") or []
    if not lesions:
        return Uncertainty(1.0, None, None, match)
    return _uncertainty(match, lesions[0].get("agreement"), best_predicted_iou(lesions[0].get("prompts", [])))


def _uncertainty(match: float, agreement: float | None, iou: float | None) -> Uncertainty:
    terms = [1 - match]
    if agreement is not None:
        terms.append(1 - float(agreement))
    if iou is not None:
        terms.append(1 - min(max(iou, 0.0), 1.0))
    return Uncertainty(float(sum(terms) / len(terms)), agreement, iou, match)


def mask_disagreement(u: Uncertainty) -> float:
    """The segmentation's terms alone (``1 - agreement``, ``1 - predicted IoU``; 1.0 when no lesion was found).

    Why: at a site whose presence is not yet calibrated (BUS-UCLM after 10 corrections a lesion is found on nearly
    every image), ``1 - match`` mostly flags lesion-free images, which teach the proposer's box nothing: the
    ``uncertainty`` curve's labels were 26 of 50 lesion-free (``random``'s 20) and its proposer fine-tune was
    refused. Measured as a strategy by ``benchmarks/bench_site_adaptation.py --strategies uncertainty_mask``; not a
    product strategy: from 0 it picked as many lesion-free images (26 of 50; the proposer says "present" on them and
    their spurious masks disagree) and gave 0.4248 at 50 (``uncertainty`` 0.4062, ``random`` 0.4476)."""
    terms = [1 - float(v) for v in (u.agreement, u.predicted_iou) if v is not None]
    return float(sum(terms) / len(terms)) if terms else 1.0


def score_image(pipeline, image, text: str = DEFAULT_PHRASE) -> Uncertainty:
    """Run the pipeline (no diagnosis) on an image and score it."""
    from radvlsm.pipeline import PipelineOptions

    res = pipeline.run(image, PipelineOptions(text=text, diagnose=False))
    return uncertainty_from_result(res.summary if res.summary is not None else res.result)


def stored_score(info: dict[str, Any]) -> float | None:
    entry = info.get(SCORE_KEY)
    return float(entry["score"]) if isinstance(entry, dict) and "score" in entry else None


def needs_scoring(info: dict[str, Any], decoder_version: str, proposer_version: str = "shipped") -> bool:
    entry = info.get(SCORE_KEY)
    return (not isinstance(entry, dict) or entry.get("decoder_version") != decoder_version
            or entry.get("proposer_version", "shipped") != proposer_version)


def pick_uncertain(ids: list[str], score_of: Callable[[str], float | None]) -> tuple[str, float | None]:
    """Highest stored uncertainty first (ties by id); unscored images come after every scored one."""
    scored = [(s, i) for i in ids if (s := score_of(i)) is not None]
    if scored:
        s, i = min(scored, key=lambda t: (-t[0], t[1]))
        return i, s
    return sorted(ids)[0], None


def pick_first(ids: list[str]) -> str:
    return sorted(ids)[0]


def pick_random(ids: list[str], rng: random.Random | None = None) -> str:
    return (rng or random).choice(sorted(ids))


#: strategy name -> how it picks among unlabelled ids (a registry, used by the app and the benchmark)
STRATEGIES = {"uncertainty": "highest stored uncertainty first", "random": "uniformly at random",
              "first": "first id in sorted order"}
