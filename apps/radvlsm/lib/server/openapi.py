"""Per-task documentation in the server's OpenAPI schema (``/docs``, ``/openapi.json``).

Standard library only (``tests/test_server_openapi.py`` loads this file on its own to read :data:`TASKS`).

Fixes MONAI Label 0.8.5:

* ``monailabel.endpoints.infer`` documents ``POST /infer/{model}`` (``api_run_inference``) once for every model:
  ``model`` is any string, ``params`` is a JSON string form field with no description, and the router's 200
  response says ``application/json: {"type": "string", "example": "{}"}``. An app has no hook to describe its
  tasks there; their descriptions and default options are only in ``GET /info``. :func:`install_openapi` wraps
  ``FastAPI.openapi`` of ``monailabel.app.app`` so that :func:`document_infer` rewrites that operation in the
  generated schema: ``model`` is an enum of the tasks served, the description has each task's parameters and
  result fields (:data:`TASKS`), and the request body and the JSON response carry one example per task (the result
  examples are real answers of the tasks on ``bus_0075-r``, lists cut to two items: ``openapi_examples.json``
  beside this file; ``tests/test_server_openapi.py`` checks them against live answers).

Drop when: upstream lets an infer task contribute its own parameter / result schema and examples to ``POST
/infer/{model}`` (or per-model operations); then move :data:`TASKS` and ``openapi_examples.json`` to the infer tasks
and delete :func:`install_openapi` and its call in ``RadVLSMApp.on_init_complete``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXAMPLES = Path(__file__).with_name("openapi_examples.json")

_RESULT_FILE = ("`result_extension` (`.png`, `.nrrd`, `.nii.gz`, `.nii`, `.mha`; default: the input's format, "
                "NRRD otherwise), `result_dtype` (`uint8`, `uint16`, ...)")
_PROMPTS = ("`boxes` `[[x0, y0, x1, y1], ...]` (pixel columns/rows, inclusive); `roi` `[x0, x1, y0, y1, z0, z1]` "
            "(IJK, as 3D Slicer and OHIF send it; pairs may come max-first); `foreground`, `background` "
            "`[[x, y, z], ...]` clicks (z: the slice, on a volume)")
_VOLUME = ("on a volume (NIfTI/NRRD/MHA of several slices): `slice` (0-based K index, what 3D Slicer sends for a "
           "2D model) or the clicks'/roi's z name the slice; the label has the volume's geometry, filled on that "
           "slice only")
_VOLUME_RESULT = ("on a volume: `slice`, `volume_shape` [slices, rows, cols], `ignored_clicks` (clicks on other "
                  "slices, left out), `notes` (e.g. a `slice` outside the roi's z range: the roi's slice is used)")

#: task -> (parameters, result fields, keys that appear only in some answers)
TASKS: dict[str, dict[str, Any]] = {
    "sam": {
        "params": [
            ("boxes / roi / foreground / background", "prompts, at least one: " + _PROMPTS),
            ("multilabel", "bool, default false: box *i* is labelled *i*+1 instead of every lesion 1"),
            ("multimask", "bool: SAM's three candidate masks, best by predicted IoU (default: on for a lone click)"),
            ("slice", _VOLUME),
            ("propagate, slices", "bool, default false: on a volume, each lesion is carried slice to slice from the "
                                  "prompted one through `slices` [first, last] (default: all), stopping where its "
                                  "mask vanishes or looks like its surroundings"),
            ("result_extension, result_dtype", _RESULT_FILE),
        ],
        "result": [
            ("lesions", "per prompt box: `label`, `area_px`, `predicted_iou`, `clicks`, `box` [x0,y0,x1,y1], `roi`"),
            ("cache_hit, latencies_ms", "whether the image embedding was cached; load/encode/decode/total in ms, "
                                        "`queue`: ms the request waited for a server worker"),
            ("backbone, runtime, model_version, decoder_version", "what produced the mask"),
            ("image_shape, label_names", "[rows, cols]; label values"),
            ("slice, volume_shape, propagated, encodes", _VOLUME_RESULT + "; with `propagate` each lesion also has "
                                                         "`slices`, `n_slices`, `voxels`, `volume_mm3`, "
                                                         "`largest_slice(_box)`, `roi` (all of it), `stopped`, "
                                                         "`predicted_iou_by_slice`"),
            ("notes", "optional: e.g. `propagate` on a one-slice image"),
        ],
        "optional": ["slice", "volume_shape", "propagated", "encodes", "ignored_clicks", "notes"],
    },
    "box_proposal": {
        "params": [
            ("text", "1-500 characters, default `lesion` (`--conf text`): what to look for"),
            ("top_k", "1-20, default 3: candidate boxes returned"),
            ("backend", "`qformer_lite` (default), `template`, `blip2`, or a list of them (candidates merged)"),
            ("heatmap", "bool: the relevance map (0-255) comes back as the label"),
            ("refine", "bool, default false: snap boxes to the lesion with one mask-decoder pass"),
            ("slice", "required on a volume: " + _VOLUME + " (the markups lie on that slice's plane)"),
        ],
        "result": [
            ("candidates", "best first: `box` [x0,y0,x1,y1], `roi`, `score`, `backend`, `extra`"),
            ("text, found, match_score", "the phrase, whether it names something in the image, image-text score"),
            ("backends", "per backend: `match_score`, `n_candidates`, latencies, `version` (qformer_lite: `shipped` "
                         "or the fine-tune `/train/radvlsm` published)"),
            ("cache_hit, latencies_ms, image_shape, label_names, decoder_version", "as for `sam`"),
            ("notes", "optional: e.g. an empty exemplar bank, or presence from the class-agnostic phrase"),
        ],
        "optional": ["message", "notes", "slice", "volume_shape", "ignored_clicks"],
    },
    "radvlsm": {
        "params": [
            ("text, top_k", "as for `box_proposal`"),
            ("diagnose", "bool, default true: benign/malignant per lesion"),
            ("max_lesions", "1-20, default 3"),
            ("boxes / roi / foreground / background", "optional: boxes replace the proposals; clicks refine the "
                                                      "lesion whose box they fall in. " + _PROMPTS),
            ("slice, slices, modality", "on a volume: with `slice` (or prompts) one slice, as for `sam`; else the "
                                        "phrase runs on every slice of `slices` [first, last] (default: all) and a "
                                        "lesion is kept where it runs through 2 or more slices; `modality` (DICOM "
                                        "code): `US` lets the breast-US diagnosis head describe each lesion"),
            ("result_extension, result_dtype", _RESULT_FILE),
        ],
        "result": [
            ("lesions", "per lesion (label *i* = *i*+1): `box`, `roi`, `area_px`, `proposal_score`, `reliability`, "
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
             "`reliability` (summed over its slices)"),
        ],
        "optional": ["message", "notes", "slice", "slices", "slices_with_lesion", "slices_dropped",
                     "match_score_by_slice", "volume_shape", "ignored_clicks", "diagnosis_note"],
    },
    "diagnosis": {
        "params": [
            ("label", "optional uploaded lesion mask (the `label` form field); else the image's saved final label, "
                      "else the `radvlsm` pipeline's mask"),
            ("text", "phrase for the pipeline when it supplies the mask"),
            ("slice, modality", "on a volume: the slice diagnosed (default: the label's largest lesion slice, else "
                                "the largest slice of the first lesion the phrase finds); the head is breast-US "
                                "2D, so other modalities get a `diagnosis_note`"),
        ],
        "result": [
            ("prediction", "MONAI Label's classification form: `[{idx, label, score}]` for benign/malignant"),
            ("probability_malignant, label", "P(malignant) and the call at the head's threshold"),
            ("diagnoses", "per lesion: `status`, `probability`, `label`, `threshold`, `contributions` (radiomics and "
                          "visual descriptors with signed log-odds), `mask`, `summary`, `text`"),
            ("text", "plain-text report (what Slicer shows)"),
            ("mask_source, pipeline, head_version, label_names, decoder_version", "where the mask came from"),
            ("latencies_ms", "`queue`: ms the request waited for a server worker"),
        ],
        "optional": ["message", "slice", "volume_shape", "ignored_clicks", "diagnosis_note", "notes"],
    },
}


def load_examples() -> dict[str, dict[str, Any]]:
    return json.loads(EXAMPLES.read_text())


def _description(names: list[str], descriptions: dict[str, str]) -> str:
    lines = ["Runs one task on a datastore image (`image` = its id; with a DICOMweb datastore the SeriesInstanceUID) "
             "or on an uploaded `file`. Task options go in the `params` form field as a JSON object. `output`: "
             "`json` (the result JSON only), `image` (the label file only), `all` (multipart: label file and JSON; "
             "MONAI Label's default; `dicom_seg` is not produced by these tasks: save a final label to a DICOMweb "
             "datastore to get a DICOM SEG). Bad input is a 4xx whose message names the field. Examples for each task "
             "are under the request body and the 200 response.", ""]
    for name in names:
        doc = TASKS.get(name)
        lines.append(f"### `{name}`")
        if descriptions.get(name):
            lines += [descriptions[name], ""]
        if doc is None:
            continue
        lines += ["| parameter | meaning |", "|---|---|"]
        lines += [f"| `{p}` | {m} |" for p, m in doc["params"]]
        lines += ["", "| result field | meaning |", "|---|---|"]
        lines += [f"| `{p}` | {m} |" for p, m in doc["result"]]
        if doc["optional"]:
            lines += ["", "Only in some answers: " + ", ".join(f"`{k}`" for k in doc["optional"]) +
                      " (e.g. `message` when nothing is found or the mask is too small)."]
        lines.append("")
    return "\n".join(lines)


def document_infer(schema: dict[str, Any], names: list[str], descriptions: dict[str, str]) -> dict[str, Any]:
    """Rewrite ``POST /infer/{model}`` (as ``monailabel.endpoints.infer`` generates it) in an OpenAPI schema (in
    place; also returned)."""
    op = schema.get("paths", {}).get("/infer/{model}", {}).get("post")
    if op is None:
        logger.warning("radvlsm: no POST /infer/{model} in the OpenAPI schema; task docs not added")
        return schema
    examples = load_examples()
    op["summary"] = "Run a radvlsm task: " + ", ".join(names)
    op["description"] = _description(names, descriptions)
    for param in op.get("parameters", []):
        if param.get("name") == "model" and param.get("in") == "path":
            param["schema"] = {"type": "string", "enum": names, "title": "Model"}
            param["description"] = "the task"
            param["examples"] = {n: {"value": n} for n in names}
        elif param.get("name") == "image" and param.get("in") == "query":
            param["description"] = "datastore image id (leave empty when uploading `file`)"
            param["examples"] = {"local": {"value": "bus_0075-r"}}
    body = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if body is not None:
        body["examples"] = {n: {"summary": f"{n} params", "value": {"params": json.dumps(examples[n]["params"])}}
                            for n in names if n in examples}
    ok = op.get("responses", {}).get("200", {})
    ok["description"] = "the task's result (`output=json`), label file (`output=image`) or both (`output=all`)"
    json_ok = ok.setdefault("content", {}).setdefault("application/json", {})
    json_ok["schema"] = {"type": "object", "description": "the task's result JSON (fields per task above)"}
    json_ok.pop("example", None)
    json_ok["examples"] = {n: {"summary": f"{n} result on bus_0075-r", "value": examples[n]["result"]}
                           for n in names if n in examples}
    return schema


def install_openapi(fastapi_app: Any, app: Any) -> None:
    """Wraps ``fastapi_app.openapi`` (FastAPI's schema builder for MONAI Label's ``monailabel.app.app``) so that
    ``/openapi.json`` and ``/docs`` carry the task docs of the app's tasks (built once, then cached as FastAPI
    does)."""
    original = fastapi_app.openapi

    def openapi() -> dict[str, Any]:
        if fastapi_app.openapi_schema:
            return fastapi_app.openapi_schema
        schema = original()
        names = list(app._infers)
        descriptions = {n: getattr(t, "description", "") or "" for n, t in app._infers.items()}
        fastapi_app.openapi_schema = document_infer(schema, names, descriptions)
        return fastapi_app.openapi_schema

    fastapi_app.openapi_schema = None
    fastapi_app.openapi = openapi
