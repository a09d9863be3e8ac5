"""MONAI Label's LocalDatastore with checked ids and tags, validated uploads and atomic writes.

:class:`SafeLocalDatastore` is what ``RadVLSMApp.init_datastore`` returns for every local studies folder (a
subclass of ``monailabel.datastore.local.LocalDatastore``; site-packages untouched).

Fixes MONAI Label 0.8.5:

* ``LocalDatastore.add_image`` / ``save_label`` join the request's image id and label tag into paths as given
  (``_filename(image_id, ext)``, ``label_path(tag)``): an id or tag with ``../`` writes outside the studies folder.
  Here ids and tags are names, never paths (:func:`radvlsm.params.check_id` / ``check_tag``): 422 otherwise
  (``update_label_info`` gets the same checks, for the same message);
* ``LocalDatastore.add_image`` / ``save_label`` copy the upload over the target in place with ``shutil.copy``, and
  ``LocalDatastore._update_datastore_file`` rewrites ``datastore_v2.json`` in place (``open(path, "w")``): a server
  killed mid-write leaves a truncated image, label or datastore file. Here every file is written to a hidden
  ``.<name>.<pid>.<random>.partial`` file in the same folder, fsynced and renamed over the target
  (:func:`radvlsm.io.atomic_copy` / ``atomic_write_text``), so a reader (or a restart) sees the old file or the new
  one, never half of one;
* ``LocalDatastore.__init__`` loads ``datastore_v2.json`` with ``_init_from_datastore_file(throw_exception=True)``:
  one that does not parse (e.g. left half-written by the previous point) stops the server from starting. Here, at
  start-up, it is moved aside as ``datastore_v2.json.corrupt-<time>`` with a loud error and the datastore is rebuilt
  from the image and label files on disk; temp files left by a killed write (``.*.partial``, older than a minute)
  are removed;
* ``LocalDatastore.get_dataset_archive`` has an ``assert`` that some image has a final label (``GET
  /datastore/dataset``: 500). Here a ``LabelNotFoundException`` (404 through the handler in ``guards.py``).

radvlsm's own checks, not upstream faults: an uploaded image must load as a 2D image or a volume (not 4D) under the
pixel and voxel limits, an uploaded label must load and have the image's size (a volume's label: its full geometry,
spacing, origin and axes too) (422 naming the field otherwise), before anything is written.

Drop when: upstream's ``LocalDatastore`` refuses ids and tags holding ``/`` or ``..`` with a 4xx, writes images,
labels and ``datastore_v2.json`` via temp file + rename (``tests/test_faults.py``'s killed-save test passes with the
plain class), starts on a truncated ``datastore_v2.json``, and ``get_dataset_archive`` returns 4xx with no final
label. Then keep only ``add_image`` / ``save_label`` overrides that run these checks and call ``super()``.
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
from radvlsm.io import atomic_copy, atomic_write_text
from radvlsm.params import check_id, check_tag
from radvlsm.volume import load_input, load_label_for

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
    """``monailabel.datastore.local.LocalDatastore`` with the fixes of the module doc."""

    def __init__(self, datastore_path: str, *args, datastore_config: str = "datastore_v2.json", **kwargs):
        """Before ``LocalDatastore.__init__`` (which refuses to start on a corrupt ``datastore_v2.json``): set a
        corrupt one aside and remove stale ``.partial`` files."""
        if os.path.isdir(datastore_path):
            _quarantine_corrupt_config(os.path.join(datastore_path, datastore_config))
            _remove_stale_partials(datastore_path)
        super().__init__(datastore_path, *args, datastore_config=datastore_config, **kwargs)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Replaces ``LocalDatastore.add_image``: checked id, validated image, atomic copy and JSON write."""
        default_id, image_ext = self._to_id(os.path.basename(image_filename))
        image_id = check_id(image_id or default_id, "image")
        try:
            load_input(image_filename)  # readable, 2D or a volume (not 4D), under the pixel and voxel limits
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
        """Replaces ``LocalDatastore.save_label``: checked id and tag, validated label, atomic copy and JSON write."""
        check_id(image_id, "image")
        label_tag = check_tag(label_tag or "final", "tag")
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise ImageNotFoundException(f"image: no image with id '{image_id}' in the datastore")
        try:
            image = load_input(self.get_image_uri(image_id))
        except ImageReadError as exc:
            raise ImageReadError(f"the stored image cannot be read, so the label cannot be checked: {exc.message}",
                                 field="image") from exc
        load_label_for(label_filename, image)  # readable; the image's rows x cols, or a volume's full geometry

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
        """Wraps ``LocalDatastore.get_dataset_archive``, which asserts on an empty datalist (500): 404 instead."""
        if not self.datalist():  # MONAI Label asserts here (500)
            raise LabelNotFoundException("dataset: no image has a final label yet; there is nothing to archive")
        return super().get_dataset_archive(limit_cases)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        """Wraps ``LocalDatastore.update_label_info``: id and tag checked first (422 naming the field)."""
        check_tag(label_tag, "tag")
        super().update_label_info(check_id(label_id, "label"), label_tag, info)

    def _update_datastore_file(self, lock: bool = True) -> None:
        """Replaces ``LocalDatastore._update_datastore_file`` (in-place ``open(path, "w")``): temp file + rename."""

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
