"""Image and mask I/O: every supported 2D format loads to the same ``[row, col, channel]`` grid.

PNG/JPG (gray, RGB, RGBA, 16-bit) are read with Pillow; NIfTI, NRRD and DICOM with SimpleITK, whose numpy view
is ``[(z,) y, x]`` so its columns are Slicer's I axis and its rows the J axis, like a PNG's. Masks are written
back with the source's spacing/origin/direction so viewers overlay them on the image.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radvlsm.errors import ImageReadError

#: Images larger than this many pixels (rows x cols) are refused rather than exhausting memory. The size is read
#: from the file's header before any pixel is decoded (PNG/JPG/TIFF via Pillow's lazy open, NIfTI/NRRD/DICOM via
#: SimpleITK's ``ReadImageInformation``). The server sets it from ``--conf max_pixels``.
MAX_PIXELS = int(os.environ.get("RADVLSM_MAX_PIXELS", 8192 * 8192))


def set_max_pixels(limit: int) -> int:
    """Change the pixel limit (``--conf max_pixels``); Pillow's own decompression-bomb limit is raised to match."""
    global MAX_PIXELS
    limit = int(limit)
    if limit < 4:
        raise ValueError(f"max_pixels must be at least 4, got {limit}")
    MAX_PIXELS = limit
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit
    return MAX_PIXELS

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
ITK_SUFFIXES = {".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".dicom"}


def file_suffix(path: str | Path) -> str:
    name = str(path).lower()
    for double in (".nii.gz", ".seg.nrrd"):
        if name.endswith(double):
            return double
    return Path(name).suffix


@dataclass
class Image2D:
    """A 2D image: ``pixels`` is ``(rows, cols, channels)`` float32 in the file's own intensity units."""

    pixels: np.ndarray
    spacing: tuple[float, float] = (1.0, 1.0)  # (x, y) in mm or pixel units
    origin: tuple[float, float] = (0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 1.0)
    source: str = ""
    # A single-slice 3D volume (Slicer saves 2D images so, DICOM gives a slice position): its full (spacing,
    # origin, direction), so that a label written back lands on the same plane, not at z = 0.
    volume_geometry: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]] | None = None
    _digest: str | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def digest(self) -> str:
        """Content hash (pixels and shape): the embedding cache key does not depend on file names."""
        if self._digest is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(str(self.pixels.shape).encode())
            h.update(np.ascontiguousarray(self.pixels).tobytes())
            self._digest = h.hexdigest()
        return self._digest

    def rgb_uint8(self) -> np.ndarray:
        """``(rows, cols, 3)`` uint8 after per-image min-max scaling: what the SAM backbones consume."""
        px = self.pixels
        px = px[..., :1] if px.shape[2] in (1, 2) else px[..., :3]
        lo, hi = float(px.min()), float(px.max())
        scaled = (px - lo) / max(hi - lo, 1e-8) * 255.0
        if scaled.shape[2] == 1:
            scaled = np.repeat(scaled, 3, axis=2)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _check_size(rows: int, cols: int, source: str) -> None:
    """Refuse degenerate and over-limit sizes (called on the header's size, before decoding, and after)."""
    if rows < 2 or cols < 2:
        raise ImageReadError(f"{source}: image is {cols}x{rows} pixels (width x height); at least 2x2 is needed")
    if rows * cols > MAX_PIXELS:
        raise ImageReadError(f"{source}: image is {cols}x{rows} pixels (width x height), over the limit of "
                             f"{MAX_PIXELS} pixels (--conf max_pixels / RADVLSM_MAX_PIXELS)")


def _check_pixels(pixels: np.ndarray, source: str) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3:
        raise ImageReadError(f"{source}: expected a 2D image, got array shape {list(pixels.shape)}")
    rows, cols = pixels.shape[:2]
    _check_size(rows, cols, source)
    pixels = pixels.astype(np.float32, copy=False)
    if not np.all(np.isfinite(pixels)):
        raise ImageReadError(f"{source}: image contains NaN or infinite values")
    return pixels


def _load_pil(path: Path) -> Image2D:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # lazy: only the header is read here
            _check_size(im.height, im.width, path.name)
            im.load()
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            if im.mode == "RGBA" or im.mode == "LA":
                im = im.convert("RGB" if im.mode == "RGBA" else "L")
            arr = np.array(im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard, raised by open() above its limit
        raise ImageReadError(f"{path.name}: image is over the limit of {MAX_PIXELS} pixels "
                             f"(--conf max_pixels / RADVLSM_MAX_PIXELS) ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(f"{path.name}: not a readable image ({exc})") from exc
    return Image2D(_check_pixels(arr, path.name), source=str(path))


def _squeeze_to_2d(arr: np.ndarray, is_vector: bool, source: str) -> np.ndarray:
    """SimpleITK arrays are ``[z, y, x(, c)]``; accept 3D only with a single slice."""
    spatial = arr.shape[:-1] if is_vector else arr.shape
    if len(spatial) == 3:
        if spatial[0] != 1:
            raise ImageReadError(
                f"{source}: a 3D volume with {spatial[0]} slices was given to a 2D task; send one slice "
                "(a 2D file, or a volume with a single slice)"
            )
        arr = arr[0]
    return arr


def _check_nifti(path: Path) -> None:
    """ITK's NIfTI reader pads a truncated file (``.nii`` or ``.nii.gz``) with zeros and reads NaN as 0, silently:
    check with nibabel (header only, then a streamed pass) that all the data is there and, for float data, finite."""
    import gzip
    import zlib

    try:
        import nibabel as nib
        from nibabel.filebasedimages import ImageFileError
    except ImportError:  # nibabel comes with MONAI; without it ITK's own checks are all there is
        return
    try:
        nii = nib.load(str(path))
        header = nii.header
        need = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
        if str(path).lower().endswith(".gz"):
            got = 0
            with gzip.open(path, "rb") as fin:
                while chunk := fin.read(1 << 20):
                    got += len(chunk)
        else:
            got = path.stat().st_size
    except (OSError, EOFError, zlib.error, ValueError, ImageFileError) as exc:
        raise ImageReadError(f"{path.name}: not a readable image ({exc})") from exc
    if got < need:
        raise ImageReadError(f"{path.name}: not a readable image (truncated: {got} bytes of data where the header "
                             f"needs {need})")
    if header.get_data_dtype().kind == "f":
        data = nii.dataobj
        for start in range(0, data.shape[0], 512):  # bounded memory
            if not np.all(np.isfinite(np.asarray(data[start:start + 512]))):
                raise ImageReadError(f"{path.name}: image contains NaN or infinite values")


def _load_itk(path: Path) -> Image2D:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # the header only: refuse 3D stacks and huge images before the pixels
        size = reader.GetSize()  # (x, y[, z])
        if len(size) > 3 or (len(size) == 3 and size[2] != 1):
            slices = size[2] if len(size) == 3 else "x".join(str(v) for v in size[2:])
            raise ImageReadError(
                f"{path.name}: a 3D volume with {slices} slices was given to a 2D task; send one slice "
                "(a 2D file, or a volume with a single slice)"
            )
        _check_size(int(size[1]) if len(size) > 1 else 1, int(size[0]), path.name)
        if file_suffix(path) in (".nii", ".nii.gz"):
            _check_nifti(path)
        img = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(f"{path.name}: not a readable image ({str(exc).strip().splitlines()[-1]})") from exc
    is_vector = img.GetNumberOfComponentsPerPixel() > 1
    arr = _squeeze_to_2d(sitk.GetArrayFromImage(img), is_vector, path.name)
    spacing = tuple(float(s) for s in img.GetSpacing()[:2])
    origin = tuple(float(o) for o in img.GetOrigin()[:2])
    d = img.GetDirection()
    dim = img.GetDimension()
    direction = tuple(float(v) for v in (d[0], d[1], d[dim], d[dim + 1]))
    volume = None
    if dim == 3:
        volume = (tuple(map(float, img.GetSpacing())), tuple(map(float, img.GetOrigin())), tuple(map(float, d)))
    return Image2D(_check_pixels(arr, path.name), spacing, origin, direction, source=str(path),
                   volume_geometry=volume)


def load_image(path: str | Path) -> Image2D:
    """Load any supported 2D image; raise :class:`ImageReadError` with a clear message otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path.name}: file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path.name}: file is empty")
    suffix = file_suffix(path)
    if suffix in PIL_SUFFIXES:
        return _load_pil(path)
    if suffix in ITK_SUFFIXES or suffix == "":
        return _load_itk(path)
    raise ImageReadError(f"{path.name}: unsupported format '{suffix}' (use PNG, JPG, NIfTI, NRRD or DICOM)")


def load_mask(path: str | Path, shape: tuple[int, int] | None = None, field_name: str = "label") -> np.ndarray:
    """Load a label image as a ``(rows, cols)`` uint8 array (0 background, >0 lesion labels)."""
    try:
        img = load_image(path)
    except ImageReadError as exc:
        raise ImageReadError(exc.message, field=field_name) from exc
    px = img.pixels[..., 0]
    if shape is not None and px.shape != tuple(shape):
        raise ImageReadError(f"label is {px.shape[1]}x{px.shape[0]} but the image is {shape[1]}x{shape[0]}", field_name)
    if px.max() > 1 and np.unique(px).size == 2:  # 0/255 style binary masks
        px = px > 0
    if px.max() > 1 and np.unique(px).size > 2 and img.source.lower().endswith((".jpg", ".jpeg")):
        px = px > 127  # lossy JPEG masks (e.g. Kvasir-SEG)
    return np.asarray(px).astype(np.uint8)


def save_mask(mask: np.ndarray, path: str | Path, like: Image2D | None = None) -> Path:
    """Write a ``(rows, cols)`` label, or a ``(slices, rows, cols)`` one for a volume (``like`` a
    :class:`radvlsm.volume.Volume`), atomically (temp file + rename) with ``like``'s geometry."""
    path = Path(path)
    mask = np.asarray(mask).astype(np.uint8)
    suffix = file_suffix(path)
    if mask.ndim == 3 and suffix in PIL_SUFFIXES:
        raise ValueError(f"{path.name}: a 3D label cannot be written as {suffix}; use .nrrd, .nii.gz or .mha")

    def write(tmp: Path) -> None:
        if suffix in PIL_SUFFIXES:
            from PIL import Image

            Image.fromarray(mask).save(tmp, format="PNG" if suffix == ".png" else None)
        else:
            import SimpleITK as sitk

            volume = like.volume_geometry if like is not None else None
            img = sitk.GetImageFromArray(mask[None] if volume and mask.ndim == 2 else mask)
            if volume:  # same dimension and plane as the source volume
                img.SetSpacing(volume[0])
                img.SetOrigin(volume[1])
                img.SetDirection(volume[2])
            elif like is not None:
                img.SetSpacing(like.spacing)
                img.SetOrigin(like.origin)
                img.SetDirection(like.direction)
            sitk.WriteImage(img, str(tmp), useCompression=True)

    return atomic_write(path, write, suffix=f".partial{suffix or '.tmp'}")  # the writers pick the format by suffix


def atomic_write(dest: str | Path, write: Callable[[Path], None], suffix: str = ".partial") -> Path:
    """Make ``dest`` either the old file or the complete new one, never half written: ``write(tmp)`` into a hidden
    sibling temp file, flush it to disk, rename it over ``dest``. The default suffix matches no image pattern (so
    datastore watchers ignore the temp file, and stale ones are recognisable); writers that choose their format
    by extension pass ``.partial<ext>``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.{os.urandom(4).hex()}{suffix}"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def atomic_copy(src: str | Path, dest: str | Path) -> Path:
    """Copy ``src`` to ``dest`` atomically (see :func:`atomic_write`)."""
    import shutil

    return atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))


def atomic_write_text(dest: str | Path, text: str) -> Path:
    """Write ``text`` to ``dest`` atomically (see :func:`atomic_write`)."""
    return atomic_write(dest, lambda tmp: tmp.write_text(text))
