"""Training phrases from dataset metadata and lesion morphology (plans as data, not code).

Each image gets positive phrases (generic, organ/modality, and, where known, pathology, BI-RADS, side, and
BI-RADS-style shape / margin / echo pattern measured on its mask) and negative phrases from other domains. At
inference a single class-agnostic phrase (``DEFAULT_PHRASE``) suffices; the richer phrases only shape training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from radvlsm.defaults import DEFAULT_PHRASE  # noqa: F401  (re-exported: the phrase used at inference)

DOMAINS: dict[str, dict[str, list[str]]] = {
    "breast": {
        "generic": ["lesion", "the lesion", "breast lesion", "breast mass", "a mass in the breast ultrasound",
                    "lesion in the breast ultrasound image", "breast tumor", "the breast nodule"],
        "pathology": ["{pathology} breast lesion", "{pathology} breast mass", "a {pathology} mass"],
        "birads": ["BI-RADS {birads} breast lesion", "breast mass, BI-RADS category {birads}"],
        "side": ["lesion in the {side} breast", "{side} breast mass"],
        "morphology": ["{shape} breast mass", "{shape} mass with {margin} margins", "{echo} breast lesion",
                       "{shape}, {echo} mass with {margin} margins"],
    },
    "polyp": {
        "generic": ["lesion", "the lesion", "colon polyp", "polyp", "a polyp in the colonoscopy image",
                    "colorectal polyp", "endoscopic polyp", "the polyp in the colon"],
        "morphology": ["{size} colon polyp", "{size} polyp"],
    },
    # thyroid ultrasound (DDTI): another organ of the same modality, so the proposer learns lesions, not a site
    "thyroid": {
        "generic": ["lesion", "the lesion", "thyroid nodule", "nodule", "a nodule in the thyroid ultrasound",
                    "thyroid lesion", "thyroid mass", "the thyroid nodule"],
        "tirads": ["TI-RADS {tirads} thyroid nodule"],
        "morphology": ["{shape} thyroid nodule", "{echo} thyroid nodule", "{echo} nodule with {margin} margins"],
    },
}
#: Phrases that name nothing in an image of a given domain (used as image-text mismatches).
NEGATIVES: dict[str, list[str]] = {
    "breast": ["colon polyp", "polyp", "a polyp in the colonoscopy image", "colorectal polyp", "endoscopic polyp"],
    "polyp": ["breast lesion", "breast mass", "a mass in the breast ultrasound", "breast tumor",
              "the breast nodule", "BI-RADS 4 breast lesion", "malignant breast mass", "thyroid nodule",
              "a nodule in the thyroid ultrasound"],
    # organs of the same modality are not made mismatches of each other: a new site's image should not be
    # refused for looking like another organ's scan
    "thyroid": ["colon polyp", "polyp", "a polyp in the colonoscopy image", "colorectal polyp", "endoscopic polyp"],
    # lesion-free crops: every lesion phrase is a mismatch
    "normal": ["lesion", "the lesion", "breast lesion", "breast mass", "a mass in the breast ultrasound",
               "breast tumor", "malignant breast mass", "benign breast lesion", "BI-RADS 4 breast lesion"],
}


@dataclass
class PhraseSet:
    positives: list[str]
    negatives: list[str]
    attributes: dict[str, str] = field(default_factory=dict)


def morphology(mask: np.ndarray, image: np.ndarray | None = None) -> dict[str, str]:
    """BI-RADS-style descriptors measured on a mask: shape (oval/round/irregular), margin
    (circumscribed/not circumscribed, from solidity), echo pattern (from lesion vs surrounding intensity), size."""
    m = np.asarray(mask) > 0
    if m.sum() < 16:
        return {}
    ys, xs = np.nonzero(m)
    cov = np.cov(np.stack([xs, ys]).astype(np.float64))
    ev = np.sort(np.linalg.eigvalsh(cov))
    elong = float(np.sqrt(ev[1] / max(ev[0], 1e-9)))
    area = float(m.sum())
    perim = float((m ^ ndimage.binary_erosion(m)).sum())
    circularity = 4 * np.pi * area / max(perim, 1.0) ** 2
    hull_area = _convex_hull_area(xs, ys)
    solidity = area / max(hull_area, 1.0)
    shape = "irregular" if solidity < 0.85 or circularity < 0.45 else ("round" if elong < 1.25 else "oval")
    out = {"shape": shape, "margin": "circumscribed" if solidity >= 0.9 else "not circumscribed",
           "size": "large" if area / m.size > 0.15 else ("small" if area / m.size < 0.03 else "medium")}
    if image is not None:
        gray = np.asarray(image, np.float32)
        gray = gray.mean(-1) if gray.ndim == 3 else gray
        ring = ndimage.binary_dilation(m, iterations=max(3, int(0.15 * np.sqrt(area)))) & ~m
        if ring.any():
            inside, around = float(gray[m].mean()), float(gray[ring].mean())
            ratio = inside / max(around, 1e-6)
            out["echo"] = "hypoechoic" if ratio < 0.8 else ("hyperechoic" if ratio > 1.2 else "isoechoic")
    return out


def _convex_hull_area(xs: np.ndarray, ys: np.ndarray) -> float:
    from scipy.spatial import ConvexHull, QhullError

    pts = np.unique(np.stack([xs, ys], 1), axis=0)
    try:
        return float(ConvexHull(pts).volume)
    except (QhullError, ValueError):
        return float(len(pts))


def phrases_for(domain: str, meta: dict[str, str] | None = None, mask: np.ndarray | None = None,
                image: np.ndarray | None = None) -> PhraseSet:
    """All positive phrases whose slots can be filled, plus the domain's negatives."""
    attrs = {k: str(v).lower() for k, v in (meta or {}).items() if v not in (None, "")}
    if mask is not None:
        attrs.update(morphology(mask, image))
    positives: list[str] = []
    for templates in DOMAINS.get(domain, {}).values():
        for t in templates:
            try:
                positives.append(t.format(**attrs))
            except KeyError:
                continue
    return PhraseSet(sorted(set(positives)), list(NEGATIVES.get(domain, [])), attrs)


def sample_pair(ps: PhraseSet, rng: random.Random, p_negative: float = 0.3) -> tuple[str, bool]:
    """One (phrase, is_match) training pair; the generic phrase is favoured so inference's phrase is well seen."""
    if not ps.positives or (ps.negatives and rng.random() < p_negative):
        return rng.choice(ps.negatives), False
    if rng.random() < 0.3:
        return DEFAULT_PHRASE, True
    return rng.choice(ps.positives), True


def all_phrases() -> list[str]:
    """Every phrase training can produce, for precomputing text features (slots filled with their vocabularies)."""
    vocab = {"pathology": ["benign", "malignant"], "birads": ["2", "3", "4", "5"], "side": ["left", "right"],
             "shape": ["oval", "round", "irregular"], "margin": ["circumscribed", "not circumscribed"],
             "echo": ["hypoechoic", "isoechoic", "hyperechoic"], "size": ["small", "medium", "large"],
             "tirads": ["2", "3", "4a", "4b", "4c", "5"]}
    out = {DEFAULT_PHRASE}
    for groups in DOMAINS.values():
        for templates in groups.values():
            for t in templates:
                out.update(_fill(t, vocab))
    for negs in NEGATIVES.values():
        out.update(negs)
    return sorted(out)


def anchor_vocabulary() -> list[str]:
    """The generic phrase of every domain and every mismatch phrase: what a site fine-tune keeps the served
    model's image-text match for (:mod:`radvlsm.training.proposer`), so the phrases it does not train on, another
    organ's ("colon polyp" on breast US) or an organ's own ("breast lesion" when the site trains "lesion"), keep
    meaning what they meant."""
    out = {p for groups in DOMAINS.values() for p in groups["generic"]}
    for negs in NEGATIVES.values():
        out.update(negs)
    return sorted(out)


def _fill(template: str, vocab: dict[str, list[str]]) -> list[str]:
    import itertools
    import string

    slots = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    return [template.format(**dict(zip(slots, combo, strict=True)))
            for combo in itertools.product(*(vocab[s] for s in slots))]
