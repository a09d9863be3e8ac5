"""Each infer task's parameters and result fields, written once: the services read their typed parameters through
:meth:`TaskSpec.read`, the MONAI Label task takes its description and default config from :meth:`TaskSpec.config`,
and the server's OpenAPI page documents it from :meth:`TaskSpec.doc` (``apps/radvlsm/lib/server/openapi.py``).

Plain data over :mod:`radvlsm.params` (no torch), so the docs can be read without building a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from radvlsm.defaults import DEFAULT_MAX_LESIONS, DEFAULT_PHRASE, DEFAULT_SLICE_STRIDE, DEFAULT_TOP_K
from radvlsm.params import get_bool, get_int

KINDS = ("bool", "int", "doc")


@dataclass(frozen=True)
class Param:
    """One request parameter (or, with ``kind`` ``doc``, a documented group its own parser reads: prompts, volume
    options). ``config``: shown in MONAI Label's task config, which is what 3D Slicer offers as the task's options."""

    name: str
    doc: str = ""
    kind: str = "doc"
    default: Any = None
    lo: int | None = None
    hi: int | None = None
    config: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS}, got {self.kind!r}")

    def meaning(self) -> str:
        """The documentation's line: type, bounds and default, then what it does."""
        if self.kind == "bool":
            head = "bool" if self.default is None else f"bool, default {str(self.default).lower()}"
        elif self.kind == "int":
            head = f"{self.lo}-{self.hi}, default {self.default}"
        else:
            return self.doc
        return f"{head}: {self.doc}" if self.doc else head

    def read(self, request: dict[str, Any], default: Any = None) -> Any:
        """The request's value, type- and range-checked (an :class:`~radvlsm.errors.InputError` naming it);
        ``default`` replaces the spec's where it depends on the request (``multimask``)."""
        default = self.default if default is None else default
        if self.kind == "bool":
            return get_bool(request, self.name, default)
        if self.kind == "int":
            return get_int(request, self.name, default, self.lo, self.hi)
        raise TypeError(f"{self.name} is documented here and read by its own parser")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    summary: str  # MONAI Label's task description (GET /info, Slicer's tooltip)
    params: tuple[Param, ...]
    result: tuple[tuple[str, str], ...]  # (field names, meaning)
    optional: tuple[str, ...] = ()  # result fields only some answers carry

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"{self.name} has no parameter {name!r}")

    def read(self, request: dict[str, Any], name: str, default: Any = None) -> Any:
        return self.param(name).read(request, default)

    def config(self, **served: Any) -> dict[str, Any]:
        """MONAI Label's default config: the ``config`` parameters' defaults, overridden or completed by what the
        server serves (``text`` from ``--conf text``, the default backend; the backbone, shown to the user)."""
        return {**{p.name: p.default for p in self.params if p.config}, **served}

    def doc(self) -> dict[str, Any]:
        """The OpenAPI page's tables: ``params`` and ``result`` as (names, meaning) rows, and ``optional``."""
        return {"params": [(p.name, p.meaning()) for p in self.params], "result": list(self.result),
                "optional": list(self.optional)}


_RESULT_FILE = Param("result_extension, result_dtype",
                     "`result_extension` (`.png`, `.nrrd`, `.nii.gz`, `.nii`, `.mha`; default: the input's format, "
                     "NRRD otherwise), `result_dtype` (`uint8`, `uint16`, ...)")
_PROMPTS = ("`boxes` `[[x0, y0, x1, y1], ...]` (pixel columns/rows, inclusive); `roi` `[x0, x1, y0, y1, z0, z1]` "
            "(IJK, as 3D Slicer and OHIF send it; pairs may come max-first); `foreground`, `background` "
            "`[[x, y, z], ...]` clicks (z: the slice, on a volume)")
_VOLUME = ("on a volume (NIfTI/NRRD/MHA of several slices): `slice` (0-based K index, what 3D Slicer sends for a "
           "2D model) or the clicks'/roi's z name the slice; the label has the volume's geometry, filled on that "
           "slice only")
_VOLUME_RESULT = ("on a volume: `slice`, `volume_shape` [slices, rows, cols], `ignored_clicks` (clicks on other "
                  "slices, left out), `notes` (e.g. a `slice` outside the roi's z range: the roi's slice is used)")
_TEXT = Param("text", f"1-500 characters, default `{DEFAULT_PHRASE}` (`--conf text`): what to look for",
              default=DEFAULT_PHRASE, config=True)
_TOP_K = Param("top_k", "candidate boxes returned", "int", DEFAULT_TOP_K, 1, 20, config=True)

SAM = TaskSpec(
    "sam",
    "Box/click prompted lesion segmentation (LiteMedSAM by default). Prompts: Slicer/OHIF roi=[x0,x1,y0,y1,z0,z1] "
    "and foreground/background=[[x,y,z],...] in IJK, or REST boxes=[[x0,y0,x1,y1],...] in pixel columns/rows. "
    "One lesion per box; multilabel=true labels them 1..N, otherwise all are 1. On a volume: the slice given by "
    "slice (or the clicks'/roi's z); propagate=true carries each lesion through the volume (slices=[first, last]).",
    (Param("boxes / roi / foreground / background", "prompts, at least one: " + _PROMPTS),
     Param("multilabel", "box *i* is labelled *i*+1 instead of every lesion 1", "bool", False, config=True),
     Param("multimask", "SAM's three candidate masks, best by predicted IoU (default: on for a lone click)", "bool"),
     Param("slice", _VOLUME),
     Param("propagate", "on a volume, each lesion is carried slice to slice from the prompted one through "
                        "`slices` [first, last] (default: all), stopping where its mask vanishes or looks like its "
                        "surroundings", "bool", False, config=True),
     Param("slices", "on a volume with `propagate`: [first, last] slice (default: all)"),
     _RESULT_FILE),
    (("lesions", "per prompt box: `label`, `area_px`, `predicted_iou`, `clicks`, `box` [x0,y0,x1,y1], `roi`"),
     ("cache_hit, latencies_ms", "whether the image embedding was cached; load/encode/decode/total in ms, "
                                 "`queue`: ms the request waited for a server worker"),
     ("backbone, runtime, model_version, decoder_version", "what produced the mask"),
     ("image_shape, label_names", "[rows, cols]; label values"),
     ("slice, volume_shape, propagated, encodes", _VOLUME_RESULT + "; with `propagate` each lesion also has "
                                                  "`slices`, `n_slices`, `voxels`, `volume_mm3`, "
                                                  "`largest_slice(_box)`, `roi` (all of it), `stopped`, "
                                                  "`predicted_iou_by_slice`"),
     ("notes", "optional: e.g. `propagate` on a one-slice image")),
    ("slice", "volume_shape", "propagated", "encodes", "ignored_clicks", "notes"),
)

BOX_PROPOSAL = TaskSpec(
    "box_proposal",
    "Text-guided lesion box proposals. params: text (default in config), top_k, backend "
    "(qformer_lite | template | blip2, or several), heatmap=true to get the relevance map as the label, "
    "refine=true to snap boxes to the lesion with one decoder pass (off by default). "
    "Boxes are [x0,y0,x1,y1] in pixel columns/rows; roi gives the Slicer order.",
    (_TEXT, _TOP_K,
     Param("backend", "`qformer_lite` (default), `template`, `blip2`, or a list of them (candidates merged)",
           default="qformer_lite", config=True),
     Param("heatmap", "the relevance map (0-255) comes back as the label", "bool", False, config=True),
     Param("refine", "snap boxes to the lesion with one mask-decoder pass (default: each backend's own; off for "
                     "the text proposers)", "bool"),
     Param("slice", "required on a volume: " + _VOLUME + " (the markups lie on that slice's plane)")),
    (("candidates", "best first: `box` [x0,y0,x1,y1], `roi`, `score`, `backend`, `extra`"),
     ("text, found, match_score", "the phrase, whether it names something in the image, image-text score"),
     ("backends", "per backend: `match_score`, `n_candidates`, latencies, `version` (qformer_lite: `shipped` "
                  "or the fine-tune `/train/radvlsm` published)"),
     ("cache_hit, latencies_ms, image_shape, label_names, decoder_version", "as for `sam`"),
     ("notes", "optional: e.g. an empty exemplar bank, or presence from the class-agnostic phrase")),
    ("message", "notes", "slice", "volume_shape", "ignored_clicks"),
)

RADVLSM = TaskSpec(
    "radvlsm",
    "Text -> lesion boxes -> fused lesion masks -> diagnosis, on one image encode. params: text (default in "
    "config), top_k, diagnose, max_lesions; optional boxes/roi override the proposals and foreground/background "
    "clicks refine the lesion they fall in. Label: lesion i = i+1 (empty when nothing is found). On a volume: every "
    "slice (or slices=[first, last]; slice= or prompts for one), lesions kept where neighbouring slices agree.",
    (_TEXT, _TOP_K,
     Param("diagnose", "benign/malignant per lesion", "bool", True, config=True),
     Param("max_lesions", "lesions returned at most", "int", DEFAULT_MAX_LESIONS, 1, 20),
     Param("boxes / roi / foreground / background", "optional: boxes replace the proposals; clicks refine the "
                                                    "lesion whose box they fall in. " + _PROMPTS),
     Param("slice, slices, modality", "on a volume: with `slice` (or prompts) one slice, as for `sam`; else the "
                                      "phrase runs on every slice of `slices` [first, last] (default: all) and a "
                                      "lesion is kept where it runs through 2 or more slices; `modality` (DICOM "
                                      "code): `US` lets the breast-US diagnosis head describe each lesion"),
     Param("slice_stride", "on a volume without `slice`: every this-many-th slice runs first, then the slices "
                           "within `slice_stride - 1` of one that found a lesion (fewer encodes; a lesion through "
                           "fewer slices than this can be missed); 1 runs every slice", "int", DEFAULT_SLICE_STRIDE,
           1, 16),
     _RESULT_FILE),
    (("lesions", "per lesion (label *i* = *i*+1): `box`, `roi`, `area_px`, `proposal_score`, `reliability`, "
                 "`agreement`, `uncertainty` = 1 - agreement, `n_prompts`, `prompts` (each decoded prompt: "
                 "`kind`, `weight` and its factors), `diagnosis`"),
     ("text, found, match_score, prompt_source, proposer_version",
      "the phrase, where the boxes came from, and the proposer weights that proposed them"),
     ("encodes, cache_hit, latencies_ms", "1 on a new image, 0 after; per stage in ms"),
     ("image_shape, runtime, label_names, decoder_version", "as for `sam`"),
     ("notes", "optional: how the proposer decided, e.g. presence from the class-agnostic phrase when the "
               "typed one matched below the threshold (checkpoints with a mismatch floor), or that the "
               "candidate masks were ranked by the mask ranker (`--conf mask_ranker`)"),
     ("slices, slices_with_lesion, slices_dropped, match_score_by_slice, volume_shape, diagnosis_note",
      "on a whole volume: the range run, where lesions were kept and where one-slice answers were dropped; "
      "each lesion has `slices`, `n_slices`, `voxels`, `volume_mm3`, `largest_slice(_box)`, `roi`, "
      "`reliability` (summed over its slices)")),
    ("message", "notes", "slice", "slices", "slices_with_lesion", "slices_dropped", "match_score_by_slice",
     "volume_shape", "ignored_clicks", "diagnosis_note"),
)

DIAGNOSIS = TaskSpec(
    "diagnosis",
    "Benign/malignant from a lesion mask: an uploaded label, else the image's saved final label, else the radvlsm "
    "pipeline's own mask. Returns prediction [{idx, label, score}], P(malignant), and the radiomics/visual "
    "descriptors that drove it.",
    (Param("label", "optional uploaded lesion mask (the `label` form field); else the image's saved final label, "
                    "else the `radvlsm` pipeline's mask"),
     Param("text", "phrase for the pipeline when it supplies the mask", default=DEFAULT_PHRASE, config=True),
     Param("slice, modality", "on a volume: the slice diagnosed (default: the label's largest lesion slice, else "
                              "the largest slice of the first lesion the phrase finds); the head is breast-US "
                              "2D, so other modalities get a `diagnosis_note`")),
    (("prediction", "MONAI Label's classification form: `[{idx, label, score}]` for benign/malignant"),
     ("probability_malignant, label", "P(malignant) and the call at the head's threshold"),
     ("diagnoses", "per lesion: `status`, `probability`, `label`, `threshold`, `contributions` (radiomics and "
                   "visual descriptors with signed log-odds), `mask`, `summary`, `text`"),
     ("text", "plain-text report (what Slicer shows)"),
     ("mask_source, pipeline, head_version, label_names, decoder_version", "where the mask came from"),
     ("latencies_ms", "`queue`: ms the request waited for a server worker")),
    ("message", "slice", "volume_shape", "ignored_clicks", "diagnosis_note", "notes"),
)

SPECS: dict[str, TaskSpec] = {s.name: s for s in (SAM, BOX_PROPOSAL, RADVLSM, DIAGNOSIS)}
