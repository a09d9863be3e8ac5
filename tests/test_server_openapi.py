"""``/docs`` and ``/openapi.json`` describe every task: parameters and result fields in ``POST /infer/{model}``'s
description, and one request and one result example per task, which must match what the task really answers."""

from __future__ import annotations

import importlib.util
import json

import pytest
import requests

from tests.conftest import APP

pytestmark = pytest.mark.e2e
TASKS = ["sam", "box_proposal", "radvlsm", "diagnosis"]
CASE = "bus_0075-r"  # the image the result examples were recorded on


def task_docs() -> dict:
    """The app's task docs (apps/radvlsm/lib/server/openapi.py, standard library only)."""
    spec = importlib.util.spec_from_file_location("radvlsm_app_openapi", APP / "lib" / "server" / "openapi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TASKS


@pytest.fixture(scope="module")
def infer_op(server):
    schema = requests.get(f"{server.url}/openapi.json", timeout=30).json()
    return schema["paths"]["/infer/{model}"]["post"]


def test_infer_operation_lists_and_describes_each_task(server, infer_op):
    DOCS = task_docs()  # noqa: N806
    (model,) = [p for p in infer_op["parameters"] if p["name"] == "model"]
    assert model["schema"]["enum"] == TASKS
    for task in TASKS:
        assert f"### `{task}`" in infer_op["description"]
        for names, _ in DOCS[task]["params"] + DOCS[task]["result"]:
            assert f"| `{names}` |" in infer_op["description"]
    body = infer_op["requestBody"]["content"]["multipart/form-data"]["examples"]
    results = infer_op["responses"]["200"]["content"]["application/json"]["examples"]
    assert sorted(body) == sorted(results) == sorted(TASKS)
    docs = requests.get(f"{server.url}/docs", timeout=30)
    assert docs.status_code == 200 and "openapi.json" in docs.text  # ReDoc (its script comes from a CDN)


@pytest.mark.parametrize("task", TASKS)
def test_documented_example_is_what_the_task_answers(server, infer_op, task):
    """The documented params run as they are; the answer has exactly the documented result fields (plus the
    ones documented as optional)."""
    DOCS = task_docs()  # noqa: N806
    params = infer_op["requestBody"]["content"]["multipart/form-data"]["examples"][task]["value"]["params"]
    example = infer_op["responses"]["200"]["content"]["application/json"]["examples"][task]["value"]
    r = requests.post(f"{server.url}/infer/{task}", params={"image": CASE, "output": "json"},
                      files={"params": (None, params)}, timeout=300)
    assert r.status_code == 200, r.text
    real = r.json()
    assert set(example) <= set(real), set(example) - set(real)
    assert set(real) <= set(example) | set(DOCS[task]["optional"]), set(real) - set(example)
    for key in ("lesions", "candidates", "diagnoses"):
        if key in example and example[key]:
            assert set(example[key][0]) == set(real[key][0]), key
    json.dumps(example)  # plain JSON
