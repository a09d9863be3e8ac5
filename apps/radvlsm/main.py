"""radvlsm MONAI Label app: wires the task configs named in ``--conf models`` (default: all)."""

from __future__ import annotations

import logging
import os
import re
import sys

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

import lib.configs
from lib.activelearning import STRATEGY_TASKS
from lib.batch import PreAnnotateBatch
from lib.server.datastore import SafeLocalDatastore
from radvlsm.defaults import LABELS
from radvlsm.errors import CheckpointError, InputError
from radvlsm.io import set_max_pixels
from radvlsm.params import check_id, get_bool
from radvlsm.service import in_temp_dir
from radvlsm.versions import default_trained_dir

logger = logging.getLogger(__name__)


#: MONAI Label saves an upload as ``tempfile.NamedTemporaryFile(suffix=ext).name``: ``tmp`` + 8 random characters.
_UPLOAD_NAME = re.compile(r"tmp[a-z0-9_]{8}(\.[^/\\]*)?")


def _is_upload(path: str) -> bool:
    """Uploaded files are saved by the server in the temp dir under a ``tmpXXXXXXXX`` name; any other path is
    treated as a datastore id. A symlink resolves elsewhere and so is not an upload."""
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    return _UPLOAD_NAME.fullmatch(os.path.basename(path)) is not None and in_temp_dir(path)


class RadVLSMApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        names = [n.strip() for n in conf.get("models", "all").split(",") if n.strip()]
        available = lib.configs.TASK_CONFIGS
        names = list(available) if names == ["all"] else names
        unknown = sorted(set(names) - set(available))
        if unknown:
            raise ValueError(f"unknown models {unknown}; available: {sorted(available)}")
        if conf.get("max_pixels"):  # images over this many pixels are refused from their header (422)
            set_max_pixels(int(conf["max_pixels"]))
        model_dir = conf.get("model_dir") or os.path.join(os.path.dirname(app_dir.rstrip("/")), "..", "model")
        self.model_dir = os.path.realpath(model_dir)
        conf.setdefault("trained_dir", default_trained_dir(studies, app_dir))  # decoders learned from corrections
        self.planner = None
        self.task_configs = {}
        for name in names:
            config = available[name]()
            config.init(name, self.model_dir, conf, self.planner)
            self.task_configs[name] = config
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="radvlsm",
                         description="Text-guided lesion segmentation and diagnosis for 2D medical images",
                         version="0.1.0", labels=dict(LABELS))
        # MONAI Label rescores every image after each train / next-sample request; on CPU that is minutes of
        # pipeline runs, so it is opt-in here (--conf auto_scoring true); POST /scoring/uncertainty scores on demand.
        self._auto_update_scoring = conf.get("auto_scoring", "false").lower() == "true"
        server = sys.modules.get("monailabel.app")  # only inside `monailabel start_server`, not in train workers
        if server is not None:
            from lib.server.guards import install

            upload_mb = float(conf.get("max_upload_mb", "512"))
            install(server.app, self, int(upload_mb * 2**20) if upload_mb > 0 else None,
                    [a.strip() for a in conf.get("auth_algorithms", "RS256").split(",") if a.strip()])
            from lib.server.workers import install as install_workers
            from lib.server.workers import install_result_cleanup

            install_result_cleanup()
            workers = int(conf.get("infer_workers", "4"))
            if workers > 0:  # 0: MONAI Label's own /infer, on the event loop
                install_workers(server.app, workers)

    def init_datastore(self):
        """Local studies folders get checked ids/tags, validated uploads and atomic writes (lib/server/datastore.py)."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        from monailabel.config import settings

        return SafeLocalDatastore(self.studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                                  auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                  read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def _init_dicomweb_datastore(self):
        """``--studies http(s)://.../dicom-web``: MONAI Label's DICOMweb datastore made to work with 2D images and
        without dcmqi (which MONAI Label would download from GitHub at start-up): lib/server/dicomweb.py."""
        from lib.server.dicomweb import make_dicomweb_datastore

        logger.info(f"radvlsm: DICOMweb datastore {self.studies}")
        return make_dicomweb_datastore(self.studies)

    def info(self):
        """``labels`` as a list of names ordered by value, as MONAI Label builds it when an app names none: OHIF's
        MONAI Label panel appends to it (a dict stops the panel at "connect"); 3D Slicer reads either."""
        meta = super().info()
        if isinstance(meta.get("labels"), dict):
            meta["labels"] = [k for k, _ in sorted(meta["labels"].items(), key=lambda kv: kv[1])]
        return meta

    def on_init_complete(self):
        """Only the serving process gets here (MONAI Label's lifespan; its train, scoring and batch subprocesses build
        the app but serve nothing): the tasks learn the final labels already saved (the site's exemplars, in the
        background), and ``/docs`` and ``/openapi.json`` describe each task's parameters and result JSON
        (lib/server/openapi.py)."""
        super().on_init_complete()
        for config in self.task_configs.values():
            if hasattr(config, "on_datastore"):
                config.on_datastore(self._datastore)
        server = sys.modules.get("monailabel.app")  # only inside `monailabel start_server`
        if server is not None:
            from lib.server.openapi import install_openapi

            install_openapi(server.app, self)

    def init_batch_infer(self) -> PreAnnotateBatch:
        """``/batch/infer/<task>``: pre-annotate unlabelled images, resumable, progress in the log."""
        return PreAnnotateBatch()

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, config in self.task_configs.items():
            try:
                task = config.infer()
            except CheckpointError as exc:
                raise SystemExit(f"radvlsm: cannot start task '{name}': {exc}") from exc
            infers.update(task if isinstance(task, dict) else {name: task})
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers = {name: config.trainer() for name, config in self.task_configs.items()}
        return {name: task for name, task in trainers.items() if task}

    def init_strategies(self) -> dict[str, Strategy]:
        return {name: cls() for name, cls in STRATEGY_TASKS.items()}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        methods = [getattr(config, "scoring_method", lambda: None)() for config in self.task_configs.values()]
        methods = [m for m in methods if m is not None]
        return {"uncertainty": methods[0]} if methods else {}

    def next_sample(self, request):
        """An unknown strategy is a 404 naming it (MONAI Label would say 500)."""
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:
            raise HTTPException(404, f"strategy: unknown strategy '{strategy}'; available: {sorted(self._strategies)}")
        return super().next_sample(request)

    def on_save_label(self, image_id, label_id):
        """Saved corrections reach the tasks that learn from them at once (e.g. the template bank)."""
        res = super().on_save_label(image_id, label_id)
        for config in self.task_configs.values():
            if hasattr(config, "on_save_label"):
                config.on_save_label(self._datastore, image_id)
        return res

    def infer(self, request, datastore=None):
        """Unknown ids and bad inputs become 4xx with the offending field named (MONAI Label would say 500)."""
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(404, f"model: unknown model '{model}'; available: {sorted(self._infers)}")
        image = request.get("image")
        if isinstance(image, str) and image and not _is_upload(image):
            try:
                check_id(image, "image")  # a datastore id, never a path (a params "image" could be one)
            except InputError as exc:
                raise HTTPException(422, str(exc)) from exc
            if not (datastore or self.datastore()).get_image_uri(image):
                raise HTTPException(404, f"image: no image with id '{image}' in the datastore")
        if datastore is None and get_bool(request, "save_label", False):
            # over HTTP, /infer needs only the user role; writing labels is PUT /datastore/label (annotator role).
            # The batch task passes its datastore and keeps saving its pre-annotations.
            raise HTTPException(422, "save_label: /infer does not write to the datastore; save a label with "
                                     "PUT /datastore/label")
        label = request.get("label")
        if isinstance(label, str) and label and not _is_upload(label) and not re.search(r"[/\\]|\.\.", label):
            # Slicer's deepgrow sends the segment's name as ``label`` (e.g. "lesion"): a name, not a mask.
            request = {k: v for k, v in request.items() if k != "label"}
            request["label_name"] = label
        elif label is not None and not (isinstance(label, str) and _is_upload(label)):
            raise HTTPException(422, "label: must be an uploaded file (the 'label' form field) or a segment "
                                     f"name, not a path (got {label!r:.80})")
        if model == "diagnosis" and isinstance(image, str) and not request.get("label"):
            stored = (datastore or self.datastore()).get_label_uri(image, "final")
            if stored:  # the clinician's corrected mask, when there is one
                request = {**request, "label": stored, "mask_source": "saved final label"}
        try:
            return super().infer(request, datastore)
        except InputError as exc:
            raise HTTPException(422, str(exc)) from exc
