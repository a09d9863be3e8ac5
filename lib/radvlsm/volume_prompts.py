"""Which slice of a volume a request means, and the 2D request for that slice.

Slicer's MONAI Label plugin talks to a model of ``dimension`` 2 in IJK: clicks ``[i, j, k]``, ``roi`` ``[i0, i1,
j0, j1, k0, k1]`` and ``slice`` = the K index of the slice the user works on. It filters the clicks to that slice,
except on slice 0 (its ``if not sliceIndex`` test), where it sends them all; so clicks of other slices are left out
here (and counted in the answer) rather than refused. Without ``slice`` the clicks' K, else the middle of the
roi's K range, names the slice. REST ``boxes`` carry no K: on a volume they need ``slice``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from radvlsm.errors import InputError
from radvlsm.params import get_int


def requested_slice(request: dict[str, Any], n_slices: int) -> int | None:
    """``slice`` when given (0 .. n_slices - 1), else None."""
    if request.get("slice") in (None, ""):
        return None
    return get_int(request, "slice", 0, 0, n_slices - 1)


def requested_range(request: dict[str, Any], n_slices: int) -> tuple[int, int]:
    """``slices: [first, last]`` (inclusive, in order, inside the volume); the whole volume when absent."""
    value = request.get("slices")
    if value in (None, "", []):
        return 0, n_slices - 1
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    try:
        first, last = (int(v) for v in value)
        if any(isinstance(v, bool) or float(v) != int(v) for v in value):
            raise ValueError
    except (TypeError, ValueError) as exc:
        raise InputError("slices", f"expected [first, last] slice indices, got {value!r:.60}") from exc
    if first > last:
        raise InputError("slices", f"[{first}, {last}] is reversed: give [first, last] with first <= last")
    if first < 0 or last > n_slices - 1:
        raise InputError("slices", f"[{first}, {last}] lies outside the volume's slices 0..{n_slices - 1}")
    return first, last


def _points_k(request: dict[str, Any], name: str) -> list[int | None]:
    """The K index of each point of ``name`` (None for an ``[x, y]`` point)."""
    points = request.get(name) or []
    if isinstance(points, (str, bytes, dict)):
        raise InputError(name, f"expected [[x, y, z], ...], got {type(points).__name__}")
    arr = np.asarray(points, dtype=object)
    if arr.ndim == 1 and len(arr) in (2, 3) and not isinstance(arr[0], (list, tuple)):
        points = [points]
    out: list[int | None] = []
    for p in points:
        if isinstance(p, (list, tuple)) and len(p) == 3:
            try:
                out.append(int(round(float(p[2]))))
            except (TypeError, ValueError) as exc:
                raise InputError(name, f"point {p!r:.60} has a non-numeric z") from exc
        else:
            out.append(None)
    return out


def roi_k_range(request: dict[str, Any], n_slices: int) -> tuple[int, int] | None:
    """The roi's K range (sorted), checked to touch the volume; None for a 4-number or absent roi."""
    roi = request.get("roi")
    if roi is None or (hasattr(roi, "__len__") and len(roi) != 6):
        return None
    try:
        k0, k1 = sorted(float(v) for v in roi[4:6])
    except (TypeError, ValueError) as exc:
        raise InputError("roi", f"expected [x0, x1, y0, y1, z0, z1] numbers, got {roi!r:.80}") from exc
    if k1 < -0.5 or k0 > n_slices - 0.5:
        raise InputError("roi", f"its z range [{k0:g}, {k1:g}] lies outside the volume's slices 0..{n_slices - 1}")
    return max(0, int(round(k0))), min(n_slices - 1, int(round(k1)))


def slice_disagrees_with_roi(request: dict[str, Any], n_slices: int) -> bool:
    """Whether ``slice`` lies outside the roi's K range (or outside the volume) while the roi has one.

    Slicer's plugin, when inference starts from a placed ROI with no click, sends as ``slice`` the Red slice
    view's *offset in millimetres* (``round(abs(GetSliceOffset()))``), which is the K index only for a volume of
    1 mm slices starting at 0. The roi's own K range (from its IJK corners) is right; it wins then."""
    roi = roi_k_range(request, n_slices)
    raw = request.get("slice")
    if roi is None or raw in (None, ""):
        return False
    try:
        k = float(raw)
    except (TypeError, ValueError):
        return False  # requested_slice names the field
    return not roi[0] <= k <= roi[1]


def prompt_slice(request: dict[str, Any], n_slices: int) -> int | None:
    """The slice a prompted request works on: ``slice`` (unless it disagrees with a roi's K range: see
    :func:`slice_disagrees_with_roi`), else the clicks' K, else the roi's middle K."""
    roi = roi_k_range(request, n_slices)  # checked whether or not it names the slice
    if slice_disagrees_with_roi(request, n_slices):
        return (roi[0] + roi[1]) // 2
    k = requested_slice(request, n_slices)
    if k is not None:
        return k
    ks = {z for name in ("foreground", "background") for z in _points_k(request, name) if z is not None}
    if len(ks) > 1:
        raise InputError("slice", f"the clicks lie on slices {sorted(ks)}; give the slice to work on")
    if ks:
        z = ks.pop()
        if not 0 <= z < n_slices:
            raise InputError("foreground", f"a click's z {z} lies outside the volume's slices 0..{n_slices - 1}")
        return z
    if roi is not None:
        return (roi[0] + roi[1]) // 2
    return None


def slice_request(request: dict[str, Any], k: int) -> tuple[dict[str, Any], int]:
    """The request for slice ``k`` alone: clicks of other slices removed. Returns it and how many were removed."""
    sub = dict(request)
    dropped = 0
    for name in ("foreground", "background"):
        points = request.get(name) or []
        if not points:
            continue
        ks = _points_k(request, name)
        if len(ks) != len(points) or isinstance(points[0], (int, float)):
            continue  # one bare point: validate_points reads it as is
        kept = [p for p, z in zip(points, ks, strict=True) if z is None or z == k]
        dropped += len(points) - len(kept)
        sub[name] = kept
    return sub, dropped
