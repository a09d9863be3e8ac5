"""Per-task documentation in the server's OpenAPI schema (``/docs``, ``/openapi.json``).

The tables come from :mod:`radvlsm.task_specs` (no torch: ``tests/test_server_openapi.py`` loads this file on its
own to read :data:`TASKS`).

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
/infer/{model}`` (or per-model operations); then hand each task its spec's tables and ``openapi_examples.json`` and
delete :func:`install_openapi` and its call in ``RadVLSMApp.on_init_complete``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from radvlsm.task_specs import SPECS

logger = logging.getLogger(__name__)

EXAMPLES = Path(__file__).with_name("openapi_examples.json")

#: task -> its documentation tables (parameters, result fields, keys that appear only in some answers), from the
#: one spec of each task (radvlsm.task_specs) that its parser and its MONAI Label config also come from
TASKS: dict[str, dict[str, Any]] = {name: spec.doc() for name, spec in SPECS.items()}


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
