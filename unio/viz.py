"""Pictures of inputs and predictions: boxes, masks, depth colour maps and image grids.

Everything takes and returns PIL RGB images (numpy arrays and paths are accepted as inputs
through :func:`unio.images.load_image`) and never modifies its input. Text uses PIL's default
font so nothing has to be installed or downloaded.
"""
from __future__ import annotations

import functools
import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError
from .images import load_image

__all__ = ["draw_boxes", "overlay_mask", "colorize_depth", "image_grid", "enlarge", "boxes_panel", "mask_panel",
           "PALETTE", "VIRIDIS", "TRUTH", "PRED"]

# Distinct colours for successive boxes (Tableau 10).
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))

# Nine evenly spaced stops of viridis (van der Walt & Smith, matplotlib 2.0), a perceptually
# uniform map readable in grey and by colour-blind viewers; interpolated linearly in between.
VIRIDIS = np.array([(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
                    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)], dtype=np.float64)

TRUTH, PRED = (44, 160, 44), (214, 39, 40)   # ground truth green, prediction red, in panels beside each other


@functools.lru_cache(maxsize=4)
def _font(size: int = 10):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    x1, y1, x2, y2 = draw.textbbox((0, 0), text, font=font)
    return x2 - x1, y2 - y1


def draw_boxes(image, boxes, labels: Sequence[str] | None = None, scores: Sequence[float] | None = None,
               colors: Sequence[tuple[int, int, int]] | None = None, width: int | None = None) -> Image.Image:
    """A copy of ``image`` with (x1, y1, x2, y2) pixel boxes and "label score" tags drawn."""
    image = load_image(image).copy()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
    for name, seq in (("labels", labels), ("scores", scores), ("colors", colors)):
        if seq is not None and len(seq) != len(boxes):
            raise InputError(f"draw_boxes got {len(boxes)} boxes but {len(seq)} {name}; pass one per box")
    if not np.isfinite(boxes).all():
        raise InputError("draw_boxes got a NaN or infinite box coordinate; pass finite pixel boxes")
    draw = ImageDraw.Draw(image)
    w, h = image.size
    width = width or max(1, round(min(w, h) / 128))
    font = _font(max(10, min(w, h) // 24))
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        color = tuple(colors[k]) if colors is not None else PALETTE[k % len(PALETTE)]
        # A box covers pixels [x1, x2) so its last drawn column is x2 - 1.
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=color, width=width)
        tag = labels[k] if labels is not None else ""
        if scores is not None:
            tag = f"{tag} {float(scores[k]):.2f}".strip()
        if tag:
            tw, th = _text_size(draw, tag, font)
            ty = y1 - th - 3 if y1 - th - 3 >= 0 else min(y1 + width, h - th - 3)
            tx = min(max(0, x1), max(0, w - tw - 4))
            draw.rectangle((tx, ty, tx + tw + 3, ty + th + 3), fill=color)
            draw.text((tx + 2, ty + 1), tag, fill=(255, 255, 255), font=font)
    return image


def overlay_mask(image, mask, color: tuple[int, int, int] = (255, 0, 0), alpha: float = 0.5) -> Image.Image:
    """``image`` with the pixels of a bool (H, W) ``mask`` blended towards ``color``."""
    image = load_image(image)
    mask = np.asarray(mask)
    if mask.shape != (image.height, image.width):
        raise InputError(f"overlay_mask: mask shape {mask.shape} does not match the image "
                         f"({image.height}, {image.width}); resize the mask (unio.images.unletterbox) first")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"overlay_mask alpha={alpha} must be in [0, 1]")
    arr = np.asarray(image, dtype=np.float32).copy()
    m = mask.astype(bool)
    arr[m] = (1 - alpha) * arr[m] + alpha * np.asarray(color, dtype=np.float32)
    return Image.fromarray(np.rint(arr).astype(np.uint8), "RGB")


def colorize_depth(depth, vmin: float | None = None, vmax: float | None = None, reverse: bool = False) -> Image.Image:
    """A float (H, W) depth map as a viridis RGB image: vmin dark purple, vmax yellow.

    ``vmin`` / ``vmax`` default to the map's finite minimum and maximum; ``reverse=True`` makes
    near (small) values bright. NaN and infinite values are drawn black.
    """
    d = np.asarray(depth, dtype=np.float64)
    if d.ndim != 2:
        raise InputError(f"colorize_depth expects an (H, W) array, got shape {d.shape}")
    finite = np.isfinite(d)
    if vmin is None:
        vmin = float(d[finite].min()) if finite.any() else 0.0
    if vmax is None:
        vmax = float(d[finite].max()) if finite.any() else 1.0
    t = np.clip((d - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    if reverse:
        t = 1.0 - t
    t = np.where(finite, t, 0.0) * (len(VIRIDIS) - 1)
    lo = np.minimum(t.astype(np.int64), len(VIRIDIS) - 2)
    frac = (t - lo)[..., None]
    rgb = VIRIDIS[lo] * (1 - frac) + VIRIDIS[lo + 1] * frac
    rgb[~finite] = 0
    return Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB")


def image_grid(images, captions: Sequence[str] | None = None, cols: int | None = None, pad: int = 4,
               background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Images laid out in rows of ``cols`` (default: about square), each with its caption below."""
    images = [load_image(im) for im in images]
    if not images:
        raise InputError("image_grid needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise InputError(f"image_grid got {len(images)} images but {len(captions)} captions; pass one per image")
    cols = cols or int(np.ceil(np.sqrt(len(images))))
    if cols < 1:
        raise InputError(f"image_grid cols={cols} must be at least 1")
    rows = -(-len(images) // cols)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    font = _font(11)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _text_size(scratch, "Ag", font)[1] + 3
    wrapped = []
    if captions is not None:
        chars = max(8, int(cell_w / max(1, _text_size(scratch, "abcdefghij", font)[0] / 10)))
        wrapped = [textwrap.wrap(str(c), width=chars) or [""] for c in captions]
    text_h = max((len(w) for w in wrapped), default=0) * line_h
    grid = Image.new("RGB", (cols * (cell_w + pad) + pad, rows * (cell_h + text_h + pad) + pad), background)
    draw = ImageDraw.Draw(grid)
    for k, im in enumerate(images):
        x = pad + (k % cols) * (cell_w + pad)
        y = pad + (k // cols) * (cell_h + text_h + pad)
        grid.paste(im, (x, y))
        for j, line in enumerate(wrapped[k] if wrapped else []):
            draw.text((x, y + cell_h + 1 + j * line_h), line, fill=(0, 0, 0), font=font)
    return grid


# ---------------------------------------------------------------------- task panels
def enlarge(image, scale: float = 1.0) -> Image.Image:
    """``image`` resized by ``scale`` with nearest-neighbour sampling (small pictures drawn big)."""
    image = load_image(image)
    if scale == 1.0:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.NEAREST)


def boxes_panel(image, boxes, labels=None, scores=None, colors=None, scale: float = 1.0) -> Image.Image:
    """:func:`draw_boxes` on ``image`` enlarged by ``scale`` (boxes in the original's pixels)."""
    boxes = [[float(v) * scale for v in b] for b in boxes]
    return draw_boxes(enlarge(image, scale), boxes, labels=labels, scores=scores, colors=colors,
                      width=2 if scale != 1.0 else None)


def mask_panel(image, mask, color=PRED, scale: float = 1.0) -> Image.Image:
    """:func:`overlay_mask` on ``image`` enlarged by ``scale``."""
    big = enlarge(image, scale)
    if scale == 1.0:
        return overlay_mask(big, mask, color=color)
    m = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize(big.size, Image.NEAREST)
    return overlay_mask(big, np.asarray(m) > 127, color=color, alpha=0.6)
