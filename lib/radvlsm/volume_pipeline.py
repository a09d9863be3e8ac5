"""Text on a volume: the 2D pipeline on every slice of a range, lesions kept where neighbouring slices agree.

A 2D proposer answers each slice alone, so a false positive is usually a one-slice blip while a lesion runs
through several slices. The per-slice lesion masks are stacked, joined in 3D (face-connected: a lesion continues
where its masks overlap on adjacent slices), and a 3D lesion is kept only if it spans at least ``min_slices``
slices. Lesions are ranked by their reliability summed over their slices (larger and steadier first), and a
further one is kept only if that sum is at least ``relative`` of the best one's (the 3D form of the 2D pipeline's
``SelectionConfig.relative``): scattered false answers of a few slices each no longer ride along with the lesion.

``relative = 0.5`` was picked on half A of lgg-mri (5 patients) from 0, 0.2-0.6 and slice-level reliability floors,
by text Dice (shipped and site-adapted models, per-slice answers dumped once and re-selected offline); on half A it
raised the 3D Dice 0.263 -> 0.309 (shipped) and 0.377 -> 0.520 (adapted). ``benchmarks/bench_volume.py`` reports
half B apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from radvlsm.defaults import DEFAULT_SLICE_STRIDE
from radvlsm.pipeline import PipelineOptions, RadVLSMPipeline
from radvlsm.volume import Volume, filled_slices
from radvlsm.volume_tasks import extent_json, volume_keys

#: what the diagnosis head was trained on; other modalities get a note instead of a probability
DIAGNOSIS_MODALITIES = ("US",)


@dataclass(frozen=True)
class VolumeTextConfig:
    #: a lesion must run through at least this many slices (fewer if the range itself is shorter)
    min_slices: int = 2
    #: a further lesion is kept only if its summed reliability is at least this share of the best lesion's
    relative: float = 0.5
    #: coarse-to-fine scan: every ``stride``-th slice first (and the last), then every slice within ``stride - 1``
    #: of a slice that answered a lesion, until no new slice answers; 1 runs every slice. Encoding is most of a
    #: volume's time, and a run of ``stride`` or more answering slices is met on a coarse slice and then followed
    #: to both ends, so with ``stride <= min_slices`` the label is the one every slice would give (only answers
    #: that could not be kept are skipped); a larger stride can miss a lesion through fewer slices than it.
    stride: int = DEFAULT_SLICE_STRIDE


@dataclass
class VolumeTextResult:
    label: np.ndarray  # (slices, rows, cols) uint8, lesion i = i + 1
    lesions: list[np.ndarray]  # each lesion's 3D mask, in label order
    result: dict[str, Any]


def text_on_volume(pipeline: RadVLSMPipeline, volume: Volume, opts: PipelineOptions, first: int = 0,
                   last: int | None = None, config: VolumeTextConfig | None = None,
                   modality: str | None = None) -> VolumeTextResult:
    """The phrase of ``opts`` on slices ``first..last`` (inclusive); one 3D label."""
    cfg = config or VolumeTextConfig()
    last = volume.n_slices - 1 if last is None else last
    t0 = time.perf_counter()
    found = np.zeros(volume.shape, bool)
    reliability = np.zeros(volume.shape, np.float32)
    encodes, hits, match, source, stages = 0, 0, {}, None, {}
    per_slice = replace(opts, diagnose=False)
    visited: list[int] = []
    for z in scan_order(first, last, cfg.stride, lambda z: bool(found[z].any())):
        visited.append(z)
        res = pipeline.run(volume.slice_image(z), per_slice)
        for stage, ms in res.result["latencies_ms"].items():  # where a volume's time goes, summed over slices
            if stage != "total":
                stages[stage] = stages.get(stage, 0.0) + ms
        encodes += res.result["encodes"]
        hits += int(res.result["cache_hit"])
        match[z] = res.result["match_score"]
        source = res.result["prompt_source"]
        for lesion in res.lesions:
            found[z] |= lesion.mask
            reliability[z][lesion.mask] = np.maximum(reliability[z][lesion.mask], lesion.reliability)
    lesions = consistent_lesions(found, reliability, min(cfg.min_slices, last - first + 1),
                                 opts.selection.max_lesions, cfg.relative)
    label = np.zeros(volume.shape, np.uint8)
    entries = []
    for i, (mask, score) in enumerate(lesions):
        label[mask] = i + 1
        entries.append({"label": i + 1, **extent_json(mask, volume), "reliability": round(score, 4)})
    kept = set().union(*(set(filled_slices(m).tolist()) for m, _ in lesions))
    answered = set(filled_slices(found).tolist())
    masks = [m for m, _ in lesions]
    result: dict[str, Any] = {
        "text": opts.text, "found": bool(entries), "lesions": entries, "slices": [first, last],
        "slices_with_lesion": sorted(kept), "slices_dropped": sorted(answered - kept),
        "match_score_by_slice": {str(z): v for z, v in match.items()},
        "prompt_source": source,
        "encodes": encodes, "cache_hit": hits == len(visited), "stride": cfg.stride,
        "slices_run": len(visited),
        "latencies_ms": {"total": round((time.perf_counter() - t0) * 1e3, 1),
                         "per_slice": round((time.perf_counter() - t0) * 1e3 / max(len(visited), 1), 1),
                         **{f"{stage}_sum": round(ms, 1) for stage, ms in stages.items()}},
    }
    if not entries:
        result["message"] = (f"no lesion found for '{opts.text}' on slices {first}..{last} that runs through "
                             f"{cfg.min_slices} or more slices; the label is empty")
    dropped = sorted(answered - kept)
    if dropped:
        result["notes"] = [f"answers on {len(dropped)} slices were not kept: they ran through fewer than "
                           f"{cfg.min_slices} slices or scored under {cfg.relative:g} of the best lesion"]
    if opts.diagnose:
        diagnose_lesions(pipeline, volume, masks, entries, result, modality)
    volume_keys(result, volume)
    return VolumeTextResult(label, masks, result)


def scan_order(first: int, last: int, stride: int, answered: Callable[[int], bool]) -> Iterator[int]:
    """The slices ``first..last`` to run, coarse first: every ``stride``-th and the last, then (while any new
    slice answers, as ``answered`` tells after it has run) the unvisited slices within ``stride - 1`` of one that
    answered. ``stride`` 1 is every slice in order."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    todo = sorted({*range(first, last + 1, stride), last})
    seen: set[int] = set()
    while todo:
        yield from todo
        seen.update(todo)
        near = {n for z in todo if answered(z) for n in range(z - stride + 1, z + stride)}
        todo = sorted(n for n in near if first <= n <= last and n not in seen)


def consistent_lesions(found: np.ndarray, reliability: np.ndarray, min_slices: int, max_lesions: int,
                       relative: float = 0.0) -> list[tuple[np.ndarray, float]]:
    """3D components of ``found`` spanning ``min_slices`` or more slices, each with its reliability summed over
    its slices (the maximum on each), best first, at most ``max_lesions``, each at least ``relative`` of the
    best one's."""
    from scipy import ndimage

    components, n = ndimage.label(found)  # face-connected in 3D
    out = []
    for i in range(1, n + 1):
        mask = components == i
        on = filled_slices(mask)
        if len(on) < min_slices:
            continue
        score = float(sum(reliability[z][mask[z]].max() for z in on))
        out.append((mask, score))
    out = sorted(out, key=lambda t: -t[1])
    return [o for o in out if o[1] >= relative * out[0][1]][:max_lesions] if out else []


def diagnose_lesions(pipeline: RadVLSMPipeline, volume: Volume, masks: list[np.ndarray],
                     entries: list[dict[str, Any]], result: dict[str, Any], modality: str | None) -> None:
    """Each lesion diagnosed on its largest slice when the volume is of a modality the head knows."""
    if pipeline.diagnoser is None:
        result["diagnosis_note"] = "no diagnosis head is loaded"
        return
    if (modality or "").upper() not in DIAGNOSIS_MODALITIES:
        result["diagnosis_note"] = (f"the diagnosis head was trained on breast ultrasound; not applied to a volume "
                                    f"of modality {modality or 'unknown'} (send modality=US for an ultrasound "
                                    "stack)")
        return
    for mask, entry in zip(masks, entries, strict=True):
        k = entry["largest_slice"]
        image = volume.slice_image(k)
        entry["diagnosis"] = pipeline.diagnoser.diagnose(image, mask[k], embedding=pipeline.predictor.encode(image)
                                                         ).to_json()
