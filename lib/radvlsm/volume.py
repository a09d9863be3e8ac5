"""Volumes (MRI, CT, an ultrasound cine saved as a stack) for 2D models run slice by slice.

A :class:`Volume` holds SimpleITK's ``[z, y, x(, c)]`` array, so ``pixels[k]`` is slice ``k`` (Slicer's K index)
with its columns on I and its rows on J, as a 2D image's. :meth:`Volume.slice_image` hands one slice to the 2D
code as an :class:`~radvlsm.io.Image2D` whose geometry is that slice's plane (origin moved along the volume's third
axis), so a label or a markup made from the slice lands where the user sees it. Labels of a volume are written
with the volume's own spacing, origin and direction (:func:`radvlsm.io.save_mask` takes a 3D label).

Intensities: a volume that is not 8-bit is clipped to the 0.5-99.5th percentiles of its non-zero voxels, over the
whole volume (MedSAM's MR/CT-free recipe): a slice keeps the contrast of its neighbours instead of being stretched
by one outlier voxel. Each slice is then min-max scaled for the encoder like any 2D image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radvlsm.errors import ImageReadError, InputError
from radvlsm.io import ITK_SUFFIXES, Image2D, _check_nifti, _check_size, file_suffix, load_image, load_mask

#: Volumes of more voxels than this are refused from their header (float32: 4 bytes a voxel).
MAX_VOXELS = int(os.environ.get("RADVLSM_MAX_VOXELS", 512 * 512 * 640))


@dataclass
class Volume:
    """``pixels``: ``(slices, rows, cols, channels)`` float32; geometry as SimpleITK gives it (LPS, ``direction``
    row-major 3x3 whose columns are the I, J, K axes)."""

    pixels: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    source: str = ""
    window: tuple[float, float] | None = None  # the intensity clip applied at load (see the module notes)
    _slices: dict[int, Image2D] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, cols)``."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1]), int(self.pixels.shape[2])

    @property
    def n_slices(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def volume_geometry(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """``(spacing, origin, direction)``: what :func:`radvlsm.io.save_mask` writes a 3D label with."""
        return tuple(self.spacing), tuple(self.origin), tuple(self.direction)

    @property
    def voxel_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def slice_origin(self, k: int) -> tuple[float, float, float]:
        """LPS position of voxel ``(0, 0, k)``: the origin moved ``k`` slices along the K axis."""
        d = np.asarray(self.direction, float).reshape(3, 3)
        return tuple(float(v) for v in np.asarray(self.origin, float) + d[:, 2] * self.spacing[2] * k)

    def slice_image(self, k: int) -> Image2D:
        """Slice ``k`` as a 2D image on its own plane (cached: the 2D code hashes its pixels once)."""
        if not 0 <= k < self.n_slices:
            raise IndexError(f"slice {k} outside 0..{self.n_slices - 1}")
        if k not in self._slices:
            px = self.pixels[k]  # a view: the window was applied to the whole volume when it was loaded
            d = self.direction
            self._slices[k] = Image2D(np.ascontiguousarray(px, np.float32), tuple(self.spacing[:2]),
                                      self.slice_origin(k)[:2], (d[0], d[1], d[3], d[4]),
                                      source=f"{self.source}#slice={k}",
                                      volume_geometry=(tuple(self.spacing), self.slice_origin(k),
                                                       tuple(self.direction)))
        return self._slices[k]


#: the intensity window's percentiles are read from at most about this many voxels (an even stride through the
#: volume): the same window to the grey level on a CT-sized volume, in a thirtieth of the time (3 s -> 0.1 s)
WINDOW_SAMPLE = 2_000_000


def slice_areas(mask: np.ndarray) -> np.ndarray:
    """Non-zero voxels on each slice of a ``(slices, rows, cols)`` mask: ``(slices,)``."""
    return np.count_nonzero(np.asarray(mask).reshape(len(mask), -1), axis=1)


def filled_slices(mask: np.ndarray) -> np.ndarray:
    """Indices of the slices where a ``(slices, rows, cols)`` mask is non-zero, in order."""
    return np.nonzero(slice_areas(mask))[0]


def _intensity_window(pixels: np.ndarray, dtype: np.dtype) -> tuple[float, float] | None:
    if dtype == np.uint8:
        return None
    flat = pixels.reshape(-1)
    values = flat[:: max(1, flat.size // WINDOW_SAMPLE)]
    values = values[values != 0]
    if values.size < 100:
        return None
    lo, hi = np.percentile(values, [0.5, 99.5])
    return (float(lo), float(hi)) if hi > lo else None


def load_input(path: str | Path, window: bool = True) -> Image2D | Volume:
    """A 2D image (PNG/JPG, or a one-slice NIfTI/NRRD/DICOM) as :func:`radvlsm.io.load_image` loads it, or a
    volume of several slices; a 4D image (several volumes) is an error naming the file. ``window``: clip a
    non-8-bit volume's intensities (never for a label)."""
    path = Path(path)
    if file_suffix(path) not in ITK_SUFFIXES or not path.is_file() or path.stat().st_size == 0:
        return load_image(path)  # its own messages (missing, empty, unsupported format)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(f"{path.name}: not a readable image ({str(exc).strip().splitlines()[-1]})") from exc
    size = tuple(int(v) for v in reader.GetSize())
    if len(size) > 3 and any(v != 1 for v in size[3:]):
        raise ImageReadError(f"{path.name}: a 4D image ({' x '.join(map(str, size))}, several volumes); send one "
                             "3D volume (one time point or channel)")
    if len(size) < 3 or size[2] == 1:
        return load_image(path)
    cols, rows, slices = size[:3]
    _check_size(rows, cols, path.name)
    if cols * rows * slices > MAX_VOXELS:
        raise ImageReadError(f"{path.name}: volume is {cols}x{rows}x{slices} voxels, over the limit of "
                             f"{MAX_VOXELS} (RADVLSM_MAX_VOXELS)")
    try:
        if file_suffix(path) in (".nii", ".nii.gz"):
            _check_nifti(path)
        img = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(f"{path.name}: not a readable image ({str(exc).strip().splitlines()[-1]})") from exc
    if img.GetDimension() > 3:  # a trailing singleton dimension (x y z 1)
        img = sitk.Extract(img, [*size[:3], 0], [0, 0, 0, 0])
    arr = sitk.GetArrayFromImage(img)
    if arr.ndim == 3:
        arr = arr[..., None]
    pixels = arr.astype(np.float32)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(pixels)):
        raise ImageReadError(f"{path.name}: image contains NaN or infinite values")
    clip = _intensity_window(pixels, arr.dtype) if window else None
    if clip is not None:
        np.clip(pixels, *clip, out=pixels)
    return Volume(pixels, tuple(map(float, img.GetSpacing())), tuple(map(float, img.GetOrigin())),
                  tuple(map(float, img.GetDirection())), source=str(path), window=clip)


class VolumeCache:
    """The last few volumes loaded, by file (path, size, modification time): a click on a volume in Slicer is one
    request, and reading, checking and windowing a CT-sized NIfTI takes seconds each time. Bounded by count and
    bytes; thread-safe (the server's infer workers share it). A 2D image is not kept (it loads in milliseconds)."""

    def __init__(self, max_items: int = 2, max_bytes: int = 1 << 30):
        import threading

        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: dict[tuple, Volume] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(path: str | Path) -> tuple | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return os.path.realpath(path), st.st_size, st.st_mtime_ns

    def load(self, path: str | Path) -> Image2D | Volume:
        key = self.key(path)
        with self._lock:
            hit = self._items.pop(key, None) if key is not None else None
            if hit is not None:
                self._items[key] = hit  # most recent last
                return hit
        image = load_input(path)
        if isinstance(image, Volume) and key is not None and image.pixels.nbytes <= self.max_bytes:
            with self._lock:
                self._items[key] = image
                while len(self._items) > self.max_items or \
                        sum(v.pixels.nbytes for v in self._items.values()) > self.max_bytes:
                    self._items.pop(next(iter(self._items)))
        return image


#: what the tasks load requests through
VOLUMES = VolumeCache()


def load_volume_label(path: str | Path, volume: Volume, field_name: str = "label") -> np.ndarray:
    """A label for ``volume``: ``(slices, rows, cols)`` uint8 on the same grid and in the same place (spacing,
    origin and axes within 1e-3 of the image's), else an :class:`InputError` naming ``field_name``."""
    try:
        label = load_input(path, window=False)
    except ImageReadError as exc:
        raise ImageReadError(exc.message, field=field_name) from exc
    if not isinstance(label, Volume):
        raise InputError(field_name, f"a 2D label ({label.shape[1]}x{label.shape[0]}) for a volume of "
                                     f"{volume.n_slices} slices; send a label of the volume's geometry")
    if label.shape != volume.shape:
        raise InputError(field_name, f"label is {list(label.shape[::-1])} voxels (x, y, z) but the image is "
                                     f"{list(volume.shape[::-1])}")
    for name in ("spacing", "origin", "direction"):
        if not np.allclose(getattr(label, name), getattr(volume, name), atol=1e-3, rtol=1e-4):
            raise InputError(field_name, f"label {name} {list(getattr(label, name))} differs from the image's "
                                         f"{list(getattr(volume, name))}: it would not overlay the volume")
    px = label.pixels[..., 0]
    return np.rint(px).astype(np.uint8) if px.max() <= 255 else (px > 0).astype(np.uint8)


def load_label_for(path: str | Path, image: Image2D | Volume, field_name: str = "label") -> np.ndarray:
    """The label of ``path`` checked against ``image``: 2D ``(rows, cols)`` or 3D ``(slices, rows, cols)``."""
    if isinstance(image, Volume):
        return load_volume_label(path, image, field_name)
    return load_mask(path, image.shape, field_name=field_name)
