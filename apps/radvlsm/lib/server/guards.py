"""Request guards on MONAI Label's FastAPI app: bad input is a 4xx naming the field, before anything is written.

Installed by :func:`install` from ``RadVLSMApp.__init__`` when the app runs inside ``monailabel start_server``
(site-packages untouched). Each item says what upstream does and what replaces it here.

Fixes MONAI Label 0.8.5:

* request size: every upload endpoint (``monailabel.endpoints.infer.run_inference``,
  ``monailabel.endpoints.datastore.add_image`` / ``save_label``, ``monailabel.endpoints.session.create_session``,
  ``monailabel.endpoints.model.update_model``) copies the whole body to a temp file with ``shutil.copyfileobj``,
  with no limit. :class:`RequestGuard` answers 413 from ``Content-Length`` over ``--conf max_upload_mb`` before the
  body is read, and :func:`install` sets FastAPI's ``max_body_size`` for chunked bodies;
* ids in the query (``image``, ``id``, ``label``, ``session_id``) and the label ``tag`` are joined into paths as
  given by ``monailabel.datastore.local.LocalDatastore`` (``get_image_uri``, ``get_label_uri``, ``save_label``,
  ...) and ``monailabel.utils.sessions.Sessions.get_session``, so ``../`` reads or writes outside the studies
  folder. :class:`RequestGuard`: 422 unless each is a name (:func:`radvlsm.params.check_id` / ``check_tag``);
* an unknown task in the path: ``MONAILabelApp.infer`` / ``scoring`` raise ``MONAILabelException(INVALID_INPUT)``,
  ``MONAILabelApp.next_sample`` raises ``MONAILabelException(APP_INIT_ERROR)`` (no handler: 500), and
  ``monailabel.endpoints.train.run_model`` / ``monailabel.endpoints.batch_infer.run`` answer 200 and start an
  ``AsyncTask`` subprocess that then fails. :class:`RequestGuard`: 404 naming the task and listing those served,
  for ``/infer/<model>``, ``/infer/wsi/<model>``, ``/train/<model>``, ``/batch/infer/<model>``,
  ``/activelearning/<strategy>``, ``/scoring/<method>`` (skipped with authentication on, so that an
  unauthenticated caller gets 401 and learns no task names);
* ``output=dicom_seg`` with a local studies folder: ``monailabel.endpoints.infer.run_inference`` runs the whole
  inference, then ``send_response`` answers 500 ("Error processing inference"). :class:`RequestGuard`: 422 first;
* ``PUT /model/<name>`` (``monailabel.endpoints.model.update_model``) overwrites the task's weight file in place
  with ``shutil.copy``, and ``DELETE /model/<name>`` (``delete_model``) moves it away; both need only the annotator
  role (``api_update_model`` / ``api_delete_model`` depend on ``MONAI_LABEL_AUTH_ROLE_ANNOTATOR`` although their
  summaries say admin). :class:`RequestGuard`: 405; the decoder is published only by training (atomic, versioned);
* exceptions no upstream handler maps (each a 500): ``MONAILabelException`` (e.g. a train option refused under
  ``run_sync``) -> 422 when ``INVALID_INPUT``; ``ImageNotFoundException`` / ``LabelNotFoundException`` (raised by
  ``LocalDatastore.remove_image`` / ``update_image_info`` / ``update_label_info`` / ``save_label``) -> 404;
  ``json.JSONDecodeError`` from ``json.loads(params)`` / ``json.loads(info)`` in the endpoint functions -> 422;
  ``shutil.ReadError`` from ``Sessions.add_session`` (``PUT /session/?uncompress=true`` with a non-archive) -> 422;
  radvlsm's own :class:`~radvlsm.errors.InputError` -> 422 with its message;
* a JSON form field that parses to something other than an object: ``run_inference`` does
  ``request.update(json.loads(params))`` and ``monailabel.endpoints.datastore.add_image`` / ``save_label`` /
  ``update_image_info`` / ``update_label_info`` do ``dict.update`` or item assignment on it, so ``params=[1]`` or
  ``params=5`` is a TypeError (500). :func:`_wrap_endpoints` wraps those functions (the ``api_*`` routes look them up
  by name at call time): 422. The same wrapper makes ``run_inference`` with no image, file or session a 422
  (upstream: ``HTTPException(500)``). When the wrapped function fails, the upload deletions it queued as background
  tasks run at once (:func:`_discard_uploads`): upstream runs them only after a successful answer, so every refused
  upload (a patient's image) stayed in the temp dir; likewise a session upload that is not an archive
  (:func:`_wrap_session_upload`);
* ``POST /train/<model>`` and ``POST /train/``: ``monailabel.endpoints.train.run_model`` / ``run`` answer 200 and
  start a background run that fails on a misspelt option, a wrong type or too few final labels (the task runs in a
  subprocess the endpoint never hears from). :func:`_wrap_train_endpoints` runs the train task's
  ``validate(request, datastore)`` first: 422 naming the option;
* with ``MONAI_LABEL_AUTH_ENABLE``, ``monailabel.endpoints.user.auth.from_token`` calls ``jwt.decode(token, key,
  options=...)`` with no ``algorithms``, which PyJWT 2.x refuses for every token, so nobody gets in.
  :func:`_patch_token_check` replaces it: same check with the algorithms pinned (``--conf auth_algorithms``),
  ``exp`` required, and an unreachable realm a 503 instead of a 500.

Drop when: each item can go on its own once upstream does the same. Check against ``tests/test_server_bad_input.py``
and ``tests/test_server_auth.py`` with the guard disabled: upstream returns 413 for an oversized body; 4xx for ids
and tags holding ``/`` or ``..``; 404 for an unknown model / strategy / method without starting a train subprocess;
a 4xx for ``output=dicom_seg`` on a local datastore before inferring; no in-place weight overwrite over REST (or a
role check you accept); 4xx for ``MONAILabelException(INVALID_INPUT)``, not-found, bad JSON, non-object JSON and
non-archive uploads; validates train requests synchronously; and ``from_token`` passes ``algorithms`` to
``jwt.decode``. When all do, delete this module and the ``install`` call in ``main.py``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import shutil
from typing import Any
from urllib.parse import parse_qsl

from fastapi import HTTPException
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from radvlsm.errors import InputError
from radvlsm.params import check_id, check_tag

logger = logging.getLogger(__name__)

ID_PARAMS = ("image", "id", "label", "session_id")
#: path prefix -> (which of the app's registries names the task, what the task is called in messages)
TASK_PATHS = {
    "/infer/wsi/": ("_infers", "model"),
    "/infer/": ("_infers", "model"),
    "/batch/infer/": ("_infers", "model"),
    "/train/": ("_trainers", "model"),
    "/activelearning/": ("_strategies", "strategy"),
    "/scoring/": ("_scoring_methods", "method"),
}


def _detail(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


class RequestGuard:
    """Pure ASGI middleware (no body buffering) in front of all of MONAI Label's routers (``monailabel.app.app``):
    refuses a bad request before the endpoint runs (size, ids and tag, unknown task, ``dicom_seg`` on a local
    folder, ``PUT``/``DELETE /model``; see the module doc)."""

    def __init__(self, app, radvlsm_app: Any, max_upload_bytes: int | None):
        self.app = app
        self.radvlsm_app = radvlsm_app
        self.max_upload_bytes = max_upload_bytes
        from monailabel.config import settings

        self.auth_enabled = bool(settings.MONAI_LABEL_AUTH_ENABLE)

    def _dicomweb(self) -> bool:
        from monailabel.datastore.dicom import DICOMWebDatastore

        try:
            return isinstance(self.radvlsm_app.datastore(), DICOMWebDatastore)
        except Exception:  # no datastore yet: let the endpoint decide
            return True

    def check(self, scope: dict) -> JSONResponse | None:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if self.max_upload_bytes is not None and length and length.isdigit() \
                and int(length) > self.max_upload_bytes:
            return _detail(413, f"file: the request is {int(length) / 2**20:.1f} MB, over the limit of "
                                f"{self.max_upload_bytes / 2**20:.0f} MB (--conf max_upload_mb)")
        try:
            for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
                if key in ID_PARAMS and value:
                    check_id(value, key)
                elif key == "tag" and value:
                    check_tag(value, "tag")
                elif key == "output" and value == "dicom_seg" and not self._dicomweb():
                    # MONAI Label runs the inference first, then answers 500 for a local studies folder
                    raise InputError("output", "dicom_seg needs a DICOMweb datastore (--studies http(s)://...); "
                                               "use output=image or json")
        except InputError as exc:
            return _detail(422, str(exc))
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if scope.get("method") in ("PUT", "DELETE") and path.startswith("/model/"):
            return _detail(405, "model: weight files are not uploaded or deleted over REST in radvlsm (MONAI Label "
                                "would let the annotator role overwrite them in place); the decoder is published by "
                                "/train/radvlsm and restored with `python -m radvlsm.training restore`")
        if scope.get("method") != "POST" or self.auth_enabled:
            return None  # with authentication on, the endpoint's role check answers first (no task list leaks)
        for prefix, (registry, what) in TASK_PATHS.items():
            if path.startswith(prefix):
                name = path[len(prefix):].strip("/")
                if not name or "/" in name:
                    return None
                available = getattr(self.radvlsm_app, registry, None) or {}
                if name not in available:
                    return _detail(404, f"{what}: unknown {what} '{name}'; available: {sorted(available)}")
                return None
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            response = self.check(scope)
            if response is not None:
                logger.info(f"refused {scope.get('method')} {scope.get('path')}: {response.body.decode()[:300]}")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _input_error(request: Request, exc: InputError) -> JSONResponse:
    return _detail(422, str(exc))


async def _monailabel_error(request: Request, exc: MONAILabelException) -> JSONResponse:
    """A task's own refusal (e.g. a bad train option under ``run_sync``) is the caller's error, not a 500."""
    return _detail(422 if exc.error == MONAILabelError.INVALID_INPUT else 500, str(exc.msg))


async def _json_error(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
    return _detail(422, f"params: a JSON form field (params / info) is not valid JSON ({exc})")


async def _not_an_archive(request: Request, exc: Exception) -> JSONResponse:
    return _detail(422, f"files: uncompress=true needs a zip or tar archive ({exc})")


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return _detail(404, str(getattr(exc, "msg", exc)))


def _json_object_field(fn, field: str):
    """Wrap a MONAI Label endpoint function (``monailabel.endpoints.infer.run_inference``,
    ``monailabel.endpoints.datastore.add_image`` / ``save_label`` / ``update_image_info`` / ``update_label_info``)
    so that its JSON form ``field`` must parse to a JSON object, and ``run_inference`` needs an image, a file or a
    session (422 instead of upstream's 500s)."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        arguments = sig.bind_partial(*args, **kwargs).arguments
        if fn.__name__ == "run_inference" and not (arguments.get("file") or arguments.get("image")
                                                   or arguments.get("session_id")):
            raise HTTPException(422, "image: no image given (an image id, an uploaded file, or a session_id); "
                                     "MONAI Label would answer 500")
        value = arguments.get(field)
        if isinstance(value, str) and value.strip():
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise HTTPException(422, f"{field}: not valid JSON ({exc})") from exc
            if not isinstance(parsed, dict):
                raise HTTPException(422, f"{field}: expected a JSON object {{...}}, got {type(parsed).__name__}")
        try:
            return fn(*args, **kwargs)
        except BaseException:
            _discard_uploads(arguments.get("background_tasks"))
            raise

    wrapper.radvlsm_guard = True
    return wrapper


def _discard_uploads(background_tasks: Any) -> None:
    """Run the upload deletions an endpoint queued before it failed. MONAI Label copies an upload to the temp dir
    and queues its ``remove_file`` as a background task, which runs only after a successful answer: a refused
    upload (a patient's image) stayed in the temp dir for good."""
    tasks = getattr(background_tasks, "tasks", None)
    if not tasks:
        return
    for task in tasks:
        try:
            task.func(*task.args, **task.kwargs)
        except Exception as exc:  # noqa: BLE001 - the request's own error is the one to answer with
            logger.warning(f"radvlsm: could not remove an upload after a failed request: {exc}")
    tasks.clear()


def _wrap_session_upload() -> None:
    """``Sessions.add_session`` fails on a non-archive with ``uncompress=true`` after ``create_session`` copied the
    upload into a temp folder whose deletion it queues only on success: remove that folder when it fails."""
    import os

    from monailabel.utils.sessions import Sessions

    from radvlsm.service import in_temp_dir

    original = Sessions.add_session
    if getattr(original, "radvlsm_guard", False):
        return

    @functools.wraps(original)
    def add_session(self, data_file: str, *args, **kwargs):
        try:
            return original(self, data_file, *args, **kwargs)
        except BaseException:
            folder = data_file if os.path.isdir(data_file) else os.path.dirname(data_file)
            if in_temp_dir(folder):
                shutil.rmtree(folder, ignore_errors=True)  # create_session's received folder, not a user's path
            raise

    add_session.radvlsm_guard = True
    Sessions.add_session = add_session


def _wrap_endpoints() -> None:
    """Replace the endpoint functions named below in their ``monailabel.endpoints`` modules with
    :func:`_json_object_field` wrappers (once: a wrapped function is marked ``radvlsm_guard``)."""
    from monailabel.endpoints import datastore as ep_datastore
    from monailabel.endpoints import infer as ep_infer

    for module, name, field in [(ep_infer, "run_inference", "params"), (ep_datastore, "add_image", "params"),
                                (ep_datastore, "save_label", "params"), (ep_datastore, "update_image_info", "info"),
                                (ep_datastore, "update_label_info", "info")]:
        fn = getattr(module, name, None)
        if fn is None or getattr(fn, "radvlsm_guard", False):
            continue
        if field not in inspect.signature(fn).parameters:
            logger.warning(f"radvlsm: {module.__name__}.{name} has no '{field}' argument; not wrapped")
            continue
        setattr(module, name, _json_object_field(fn, field))


def _validated_train(fn, radvlsm_app: Any):
    """Wrap MONAI Label 0.8.5's ``monailabel.endpoints.train.run_model`` / ``run`` so that every train task with a
    ``validate`` method checks its request before the background run starts. To drop with an upstream that
    validates train requests synchronously."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        arguments = sig.bind_partial(*args, **kwargs).arguments
        params = arguments.get("params") or {}
        if not isinstance(params, dict):
            raise HTTPException(422, f"params: expected a JSON object {{...}}, got {type(params).__name__}")
        trainers = getattr(radvlsm_app, "_trainers", {}) or {}
        model = arguments.get("model")
        # run_model: the body is the task's options; run (all tasks): the body maps each task to its options
        requests_ = {model: params} if model else {m: params.get(m) or {} for m in trainers}
        for name, request in requests_.items():
            validate = getattr(trainers.get(name), "validate", None)
            if validate is None:
                continue
            if not isinstance(request, dict):
                raise HTTPException(422, f"{name}: expected a JSON object of train options")
            try:
                validate({"model": name, **request}, radvlsm_app.datastore())
            except InputError as exc:
                raise HTTPException(422, f"{name} training: {exc}") from exc
        return fn(*args, **kwargs)

    wrapper.radvlsm_guard = True
    return wrapper


def _wrap_train_endpoints(radvlsm_app: Any) -> None:
    """Replace ``monailabel.endpoints.train.run_model`` and ``run`` with :func:`_validated_train` wrappers (of the
    original, so a second install does not wrap twice)."""
    from monailabel.endpoints import train as ep_train

    for name in ("run_model", "run"):
        fn = getattr(ep_train, name, None)
        if fn is not None:
            setattr(ep_train, name, _validated_train(getattr(fn, "__wrapped__", fn), radvlsm_app))


def _patch_token_check(algorithms: list[str]) -> None:
    """Replaces ``monailabel.endpoints.user.auth.from_token``. MONAI Label 0.8.5 decodes the bearer token with
    ``jwt.decode(token, key, options=...)`` and no ``algorithms``; PyJWT 2.x then refuses every token ("It is
    required that you pass in a value for the algorithms argument"), so with ``MONAI_LABEL_AUTH_ENABLE`` nobody gets
    in. Same check, with the algorithms pinned (Keycloak signs with RS256), ``exp`` required, and an unreachable
    realm a 503 instead of a 500. Drop when upstream's ``from_token`` passes ``algorithms`` to ``jwt.decode``."""
    import jwt
    import requests
    from monailabel.config import settings
    from monailabel.endpoints.user import auth

    if getattr(auth.from_token, "radvlsm_guard", False):
        return

    def from_token(token: str):
        if not settings.MONAI_LABEL_AUTH_ENABLE:
            return auth.DEFAULT_USER
        try:
            key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
        except requests.RequestException as exc:
            raise HTTPException(503, f"auth: cannot fetch the realm's public key ({exc})") from exc
        payload = jwt.decode(token, key, algorithms=algorithms,
                             options={"verify_signature": True, "verify_aud": False, "verify_exp": True,
                                      "require": ["exp"]})
        roles: Any = payload
        for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
            roles = roles.get(part) if isinstance(roles, dict) else None
        return auth.User(username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or "",
                         email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
                         name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
                         roles=[r for r in roles if isinstance(r, str)] if isinstance(roles, list) else [])

    from_token.radvlsm_guard = True
    auth.from_token = from_token


def install(fastapi_app, radvlsm_app: Any, max_upload_bytes: int | None,
            auth_algorithms: list[str] | None = None) -> None:
    """Add the guard and the handlers to MONAI Label's FastAPI app. The app is built during the server's
    lifespan start-up, after Starlette built its middleware stack; resetting the stack makes the next request
    rebuild it with these (Starlette builds it lazily on the first call)."""
    fastapi_app.add_exception_handler(InputError, _input_error)
    fastapi_app.add_exception_handler(json.JSONDecodeError, _json_error)
    fastapi_app.add_exception_handler(MONAILabelException, _monailabel_error)
    fastapi_app.add_exception_handler(ImageNotFoundException, _not_found)
    fastapi_app.add_exception_handler(LabelNotFoundException, _not_found)
    fastapi_app.add_exception_handler(shutil.ReadError, _not_an_archive)  # PUT /session/?uncompress=true
    fastapi_app.user_middleware = [m for m in fastapi_app.user_middleware if m.cls is not RequestGuard]
    fastapi_app.user_middleware.insert(0, Middleware(RequestGuard, radvlsm_app=radvlsm_app,
                                                     max_upload_bytes=max_upload_bytes))
    if max_upload_bytes is not None and hasattr(fastapi_app, "max_body_size"):
        fastapi_app.max_body_size = max_upload_bytes  # also bounds chunked bodies that carry no Content-Length
    _wrap_endpoints()
    _wrap_session_upload()
    _wrap_train_endpoints(radvlsm_app)
    from monailabel.config import settings

    if settings.MONAI_LABEL_AUTH_ENABLE:
        _patch_token_check(auth_algorithms or ["RS256"])
    fastapi_app.middleware_stack = None
    logger.info(f"radvlsm: request guard installed (uploads up to {max_upload_bytes} bytes)")
