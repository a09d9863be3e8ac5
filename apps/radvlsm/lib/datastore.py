"""MONAI Label's LocalDatastore with checked ids and tags, validated uploads and atomic writes.

MONAI Label 0.8.5's ``LocalDatastore`` joins the request's image id and label tag into paths as given (an id or tag
with ``../`` writes outside the studies folder), copies uploads in place with ``shutil.copy`` and rewrites
``datastore_v2.json`` in place: a server killed mid-write leaves a truncated label or datastore file. Here:

* ids and tags are names, never paths (:func:`radvlsm.params.check_id` / ``check_tag``): 422 otherwise;
* an uploaded image must load as a 2D image under the pixel limit, an uploaded label must load and have the image's
  size (422 naming the field otherwise), before anything is written;
* every file (image, label, ``datastore_v2.json``) is written to a hidden temp file in the same folder, flushed and
  renamed over the target, so a reader (or a restart) sees the old file or the new one, never half of one;
* at start-up, a ``datastore_v2.json`` that does not parse (e.g. left half-written by a stock MONAI Label server
  that was killed) is moved aside as ``datastore_v2.json.corrupt-<time>`` with a loud error, and the datastore is
  rebuilt from the image and label files on disk (MONAI Label itself would refuse to start); temp files left by a
  killed write (``.*.partial``, older than a minute) are removed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException

from radvlsm.errors import ImageReadError
from radvlsm.io import atomic_copy, atomic_write_text, load_image, load_mask
from radvlsm.params import check_id, check_tag

logger = logging.getLogger(__name__)


def _quarantine_corrupt_config(path: str) -> None:
    if not os.path.exists(path):
        return
    try:
        with open(path) as fin:
            LocalDatastoreModel.model_validate_json(fin.read())
    except ValueError as exc:  # pydantic's ValidationError (bad JSON or bad fields) is a ValueError
        aside = f"{path}.corrupt-{int(time.time())}"
        os.replace(path, aside)
        logger.error(f"radvlsm: {path} is corrupt ({str(exc).splitlines()[0]}); moved to {aside} and rebuilding the "
                     "datastore from the image and label files (label info such as pathology is lost)")


def _remove_stale_partials(root: str, age_s: float = 60.0) -> None:
    now = time.time()
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if name.startswith(".") and name.endswith(".partial") and now - os.path.getmtime(path) > age_s:
                logger.warning(f"radvlsm: removing {path}, left by an interrupted write")
                os.unlink(path)


class SafeLocalDatastore(LocalDatastore):
    def __init__(self, datastore_path: str, *args, datastore_config: str = "datastore_v2.json", **kwargs):
        if os.path.isdir(datastore_path):
            _quarantine_corrupt_config(os.path.join(datastore_path, datastore_config))
            _remove_stale_partials(datastore_path)
        super().__init__(datastore_path, *args, datastore_config=datastore_config, **kwargs)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        default_id, image_ext = self._to_id(os.path.basename(image_filename))
        image_id = check_id(image_id or default_id, "image")
        try:
            load_image(image_filename)  # readable, 2D, under the pixel limit
        except ImageReadError as exc:
            raise ImageReadError(exc.message, field="file") from exc
        name = self._filename(image_id, image_ext)
        dest = os.path.join(self._datastore.image_path(), name)
        with FileLock(self._lock_file):
            atomic_copy(image_filename, dest)
            image_info = dict(image_info or {})
            image_info.update(ts=int(time.time()), name=name)
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=image_info, ext=image_ext))
            self._update_datastore_file(lock=False)
        logger.info(f"Added image {image_id} => {dest}")
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        check_id(image_id, "image")
        label_tag = check_tag(label_tag or "final", "tag")
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise ImageNotFoundException(f"image: no image with id '{image_id}' in the datastore")
        try:
            shape = load_image(self.get_image_uri(image_id)).shape
        except ImageReadError as exc:
            raise ImageReadError(f"the stored image cannot be read, so the label cannot be checked: {exc.message}",
                                 field="image") from exc
        load_mask(label_filename, shape, field_name="label")  # readable, 2D, same rows x cols as the image

        _, label_ext = self._to_id(os.path.basename(label_filename))
        label_path = self._datastore.label_path(label_tag)
        name = self._filename(image_id, label_ext)
        dest = os.path.join(label_path, name)
        with FileLock(self._lock_file):
            os.makedirs(label_path, exist_ok=True)
            atomic_copy(label_filename, dest)
            label_info = dict(label_info or {})
            label_info.update(ts=int(time.time()), name=name)
            obj.labels[label_tag] = DataModel(info=label_info, ext=label_ext)
            self._update_datastore_file(lock=False)
        logger.info(f"Saved label {image_id} ({label_tag}) => {dest}")
        return image_id

    def get_dataset_archive(self, limit_cases: int | None) -> str:
        if not self.datalist():  # MONAI Label asserts here (500)
            raise LabelNotFoundException("dataset: no image has a final label yet; there is nothing to archive")
        return super().get_dataset_archive(limit_cases)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        check_tag(label_tag, "tag")
        super().update_label_info(check_id(label_id, "label"), label_tag, info)

    def _update_datastore_file(self, lock: bool = True) -> None:
        def write() -> None:
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_text(self._datastore_config_path, text)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()
