"""Appearance and geometry augmentation that mimics other scanners and their exports.

Why: the proposer learned one breast site (BUS-BRA: tight grayscale crops) and one polyp set; at another hospital
the same lesions arrive tinted, with another gain/gamma curve and speckle, at another resolution and zoom, inside
a screen export with burnt-in text, calipers and a body-marker icon. Training on such copies teaches it lesions,
not a site. Every operation is a plain numpy/PIL transform of an ``(H, W, 3)`` uint8 image; geometric ones move the
lesion mask with the image, so the targets stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: burnt-in annotations of the kind scanners print on exports (positions, probes, settings)
TEXTS = ["LT AXILLA", "RT BREAST", "LT BREAST 2 OCLK", "RT 10:00 3CM FN", "L12-5", "14L5", "Gn 52", "D 4.0cm",
         "MI 1.1", "TIS 0.2", "FR 31Hz", "THY RT LOBE", "TRANS", "SAG", "ANTI-RAD", "2D 65%", "C 56", "P Low",
         "DR 60", "M5", "BREAST", "LEFT", "RIGHT", "Dist 1.24 cm", "A", "B"]
COLOURS = [(255, 255, 255), (255, 255, 0), (0, 255, 0), (0, 200, 255), (220, 220, 220), (255, 160, 0)]


@dataclass
class ScannerAugment:
    """Each operation runs with its probability; ``__call__(rgb, mask, rng)`` returns the new pair."""

    p_crop: float = 0.35  # zoom in: a random window that keeps the whole lesion
    p_canvas: float = 0.35  # zoom out: the image inside a larger dark screen (export with a UI border)
    p_curve: float = 0.9  # gain, gamma, contrast
    p_speckle: float = 0.4
    p_blur: float = 0.3
    p_lowres: float = 0.3
    p_tint: float = 0.5
    p_text: float = 0.6
    p_calipers: float = 0.4
    p_icon: float = 0.4
    p_doppler: float = 0.1
    p_flip: float = 0.5

    def __call__(self, rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        img, m = np.ascontiguousarray(rgb[..., :3]).astype(np.uint8), np.asarray(mask, bool)
        if img.shape[2] == 1:
            img = np.repeat(img, 3, 2)
        if rng.random() < self.p_flip:
            img, m = img[:, ::-1].copy(), m[:, ::-1].copy()
        if rng.random() < self.p_crop:
            img, m = zoom_in(img, m, rng)
        x = img.astype(np.float32) / 255
        if rng.random() < self.p_curve:
            x = tone_curve(x, rng)
        if rng.random() < self.p_speckle:
            x = speckle(x, rng)
        if rng.random() < self.p_blur:
            x = blur(x, float(rng.uniform(0.5, 1.6)))
        if rng.random() < self.p_lowres:
            x = low_resolution(x, float(rng.uniform(1.5, 3.0)))
        if rng.random() < self.p_tint:
            x = tint(x, rng)
        img = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
        if rng.random() < self.p_canvas:
            img, m = zoom_out(img, m, rng)
        if rng.random() < self.p_doppler:
            img = doppler_blobs(img, m, rng)
        if rng.random() < self.p_calipers:
            img = calipers(img, m, rng)
        if rng.random() < self.p_icon:
            img = body_marker(img, rng)
        if rng.random() < self.p_text:
            img = burnt_in_text(img, rng)
        return img, m


def zoom_in(img: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A window of 55-95 % of each side that still holds the whole lesion (if it fits)."""
    rows, cols = m.shape
    ys, xs = np.nonzero(m)
    y0, y1 = (ys.min(), ys.max() + 1) if len(ys) else (rows // 2, rows // 2 + 1)
    x0, x1 = (xs.min(), xs.max() + 1) if len(xs) else (cols // 2, cols // 2 + 1)
    h = max(int(rows * rng.uniform(0.55, 0.95)), y1 - y0 + 2)
    w = max(int(cols * rng.uniform(0.55, 0.95)), x1 - x0 + 2)
    if h >= rows or w >= cols:
        return img, m
    top = int(rng.integers(max(0, y1 - h), min(y0, rows - h) + 1))
    left = int(rng.integers(max(0, x1 - w), min(x0, cols - w) + 1))
    return img[top: top + h, left: left + w].copy(), m[top: top + h, left: left + w].copy()


def zoom_out(img: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The image placed in a dark screen 1.1-1.7x its size, as full-screen exports look."""
    rows, cols = m.shape
    s = rng.uniform(1.1, 1.7)
    big_r, big_c = int(rows * s), int(cols * rng.uniform(1.05, s))
    level = int(rng.integers(0, 25))
    canvas = np.full((big_r, big_c, 3), level, np.uint8)
    top, left = int(rng.integers(0, big_r - rows + 1)), int(rng.integers(0, big_c - cols + 1))
    canvas[top: top + rows, left: left + cols] = img
    mk = np.zeros((big_r, big_c), bool)
    mk[top: top + rows, left: left + cols] = m
    return canvas, mk


def tone_curve(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another gain, gamma and contrast (dynamic range) setting."""
    x = np.clip(x * rng.uniform(0.7, 1.3) + rng.uniform(-0.08, 0.08), 0, 1) ** rng.uniform(0.6, 1.6)
    c = rng.uniform(0.7, 1.4)
    return np.clip((x - 0.5) * c + 0.5, 0, 1)


def speckle(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative, slightly correlated noise (another transducer's speckle)."""
    n = rng.standard_normal(x.shape[:2]).astype(np.float32)
    n = blur(n[..., None], float(rng.uniform(0.3, 1.2)))[..., 0]
    n /= max(float(n.std()), 1e-6)
    return np.clip(x * (1 + rng.uniform(0.05, 0.25) * n[..., None]), 0, 1)


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(x, (sigma, sigma, 0))


def low_resolution(x: np.ndarray, factor: float) -> np.ndarray:
    rows, cols = x.shape[:2]
    im = Image.fromarray(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8))
    small = im.resize((max(2, int(cols / factor)), max(2, int(rows / factor))), Image.BILINEAR)
    return np.asarray(small.resize((cols, rows), Image.BILINEAR), np.float32) / 255


def tint(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour map over the gray levels (bluish, sepia, greenish...), as some exports apply."""
    gray = x.mean(2, keepdims=True) if rng.random() < 0.8 else x
    colour = rng.uniform(0.75, 1.0, 3).astype(np.float32)
    colour /= colour.max()
    return np.clip(gray * colour + rng.uniform(0, 0.06, 3).astype(np.float32), 0, 1)


def _draw(img: np.ndarray) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    im = Image.fromarray(img)
    return im, ImageDraw.Draw(im)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return COLOURS[int(rng.integers(len(COLOURS)))]


def burnt_in_text(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One to four labels, mostly near the borders, in the default bitmap font scaled to the image."""
    im, d = _draw(img)
    rows, cols = img.shape[:2]
    for _ in range(int(rng.integers(1, 5))):
        s = TEXTS[int(rng.integers(len(TEXTS)))]
        scale = max(1, int(round(rows / 220 * rng.uniform(0.8, 1.6))))
        tw, th = 6 * len(s), 11
        layer = Image.new("L", (tw, th), 0)
        ImageDraw.Draw(layer).text((0, 0), s, fill=255)
        layer = layer.resize((tw * scale, th * scale), Image.NEAREST)
        edge = rng.random() < 0.75
        x = int(rng.integers(0, max(1, cols - layer.width)))
        y = int(rng.choice([rng.integers(0, max(1, rows // 8)), rng.integers(max(1, rows * 7 // 8 - layer.height),
                                                                          max(2, rows - layer.height))])
                if edge else rng.integers(0, max(1, rows - layer.height)))
        im.paste(Image.new("RGB", layer.size, _colour(rng)), (x, y), layer)
    return np.asarray(im)


def calipers(img: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Measurement marks: '+' or 'x' pairs at the lesion's edges (as a sonographer leaves them) or elsewhere,
    sometimes joined by a dotted line."""
    im, d = _draw(img)
    rows, cols = m.shape
    size = max(3, int(min(rows, cols) * rng.uniform(0.012, 0.03)))
    colour = _colour(rng)
    ys, xs = np.nonzero(m)
    pairs = []
    if len(xs) and rng.random() < 0.7:
        yc = int(ys.mean())
        pairs.append(((int(xs.min()) - 2, yc), (int(xs.max()) + 2, yc)))
        if rng.random() < 0.6:
            xc = int(xs.mean())
            pairs.append(((xc, int(ys.min()) - 2), (xc, int(ys.max()) + 2)))
    else:
        a = (int(rng.integers(cols)), int(rng.integers(rows)))
        pairs.append((a, (int(np.clip(a[0] + rng.integers(-cols // 3, cols // 3), 0, cols - 1)), a[1])))
    cross = rng.random() < 0.5
    for p, q in pairs:
        for x, y in (p, q):
            if cross:
                d.line([(x - size, y - size), (x + size, y + size)], fill=colour, width=1)
                d.line([(x - size, y + size), (x + size, y - size)], fill=colour, width=1)
            else:
                d.line([(x - size, y), (x + size, y)], fill=colour, width=1)
                d.line([(x, y - size), (x, y + size)], fill=colour, width=1)
        if rng.random() < 0.4:
            n = max(2, int(np.hypot(q[0] - p[0], q[1] - p[1]) / 6))
            for t in np.linspace(0, 1, n):
                x, y = p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])
                d.point((x, y), fill=colour)
    return np.asarray(im)


def body_marker(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A body-marker pictogram in a lower corner: a light box with a breast outline and a probe line."""
    im, d = _draw(img)
    rows, cols = img.shape[:2]
    s = max(12, int(min(rows, cols) * rng.uniform(0.1, 0.18)))
    x0 = cols - s - 1 if rng.random() < 0.7 else 1
    y0 = rows - s - 1
    fill = tuple(int(v) for v in rng.integers(120, 200, 3))
    d.rectangle([x0, y0, x0 + s, y0 + s], fill=fill)
    d.arc([x0 + s * 0.15, y0 + s * 0.2, x0 + s * 0.85, y0 + s * 1.2], 180, 360, fill=(240, 240, 240), width=1)
    d.ellipse([x0 + s * 0.45, y0 + s * 0.55, x0 + s * 0.55, y0 + s * 0.65], outline=(240, 240, 240))
    px = x0 + s * rng.uniform(0.2, 0.8)
    d.line([(px - s * 0.12, y0 + s * 0.5), (px + s * 0.12, y0 + s * 0.4)], fill=(0, 255, 0), width=2)
    return np.asarray(im)


def doppler_blobs(img: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour-Doppler box with a few red/blue flow blobs (near the lesion when there is one)."""
    rows, cols = m.shape
    ys, xs = np.nonzero(m)
    cy, cx = (int(ys.mean()), int(xs.mean())) if len(ys) else (rows // 2, cols // 2)
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    bw, bh = int(cols * rng.uniform(0.3, 0.6)), int(rows * rng.uniform(0.3, 0.6))
    d.rectangle([cx - bw // 2, cy - bh // 2, cx + bw // 2, cy + bh // 2], outline=(200, 200, 200))
    for _ in range(int(rng.integers(1, 5))):
        r = max(1, int(min(rows, cols) * rng.uniform(0.005, 0.02)))
        x, y = cx + int(rng.integers(-bw // 2, bw // 2 + 1)), cy + int(rng.integers(-bh // 2, bh // 2 + 1))
        colour = (230, 30, 30) if rng.random() < 0.5 else (30, 80, 240)
        d.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    return np.asarray(im.filter(ImageFilter.SMOOTH)) if rng.random() < 0.3 else np.asarray(im)
