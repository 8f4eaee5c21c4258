"""Reading images and letterboxing them for the model.

The model sees every image letterboxed to an S x S square: scaled so its long side is S and
placed at the top-left corner, the rest filled with grey. Location tokens are normalised by the
long side too (unio.tokenizers.locations), so a normalised coordinate means the same point in the
original image and in the letterboxed one (:func:`letterbox_array` does the same for a mask or a
depth map). :func:`unletterbox` maps a dense S x S output (mask,
depth, generated image) back to the caller's original size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BoxError, ImageError

__all__ = ["load_image", "Letterbox", "letterbox", "letterbox_array", "unletterbox", "to_pixel_values",
           "from_pixel_values", "check_box", "FILL", "IMAGE_EXTENSIONS"]

FILL = (127, 127, 127)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # what folders are read for


def check_box(box, size: tuple[int, int] | None = None) -> tuple[float, float, float, float]:
    """A pixel box as 4 finite floats (x1, y1, x2, y2) with x1 < x2 and y1 < y2, else a BoxError
    saying what is wrong; with ``size`` (W, H) it must also overlap that image."""
    if hasattr(box, "to_list"):
        box = box.to_list()
    try:
        values = tuple(float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        raise BoxError(f"a box must be 4 numbers (x1, y1, x2, y2) in pixels, got {box!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise BoxError(f"a box must be 4 finite numbers (x1, y1, x2, y2) in pixels, got {box!r}")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise BoxError(f"box {values} is empty or inverted; give corners x1 < x2 and y1 < y2 in pixels")
    if size is not None and (x2 <= 0 or y2 <= 0 or x1 >= size[0] or y1 >= size[1]):
        raise BoxError(f"box {values} lies outside the {size[0]}x{size[1]} image")
    return values


def load_image(image) -> Image.Image:
    """PIL image, numpy array (H, W), (H, W, 3|4) uint8, uint16 or float in [0, 1], or a path -> RGB PIL.

    Files and PIL images are turned upright by their EXIF orientation (a phone's portrait JPEG is
    stored sideways with orientation 6), so boxes and masks come back in the frame a viewer shows.
    16-bit pictures (PNG mode I;16, uint16 arrays) are scaled to 8 bits (/257), not clipped to white.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"image file {path} does not exist; check the path")
        try:
            with Image.open(path) as im:
                im.load()  # the pixels, before the file closes
                return load_image(_upright(im))
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageError(f"could not read {path} as an image ({exc}); pass a PNG/JPEG/... file") from None
    if isinstance(image, Image.Image):
        image = _upright(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit and float pictures
            return load_image(np.asarray(image))
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            image = np.moveaxis(image, 0, -1)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or 0 in arr.shape:
            raise ImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
        if arr.dtype != np.uint8:
            sixteen = arr.dtype == np.uint16 or (np.issubdtype(arr.dtype, np.integer) and 255 < arr.max(initial=0) <= 65535)
            arr = arr.astype(np.float64)
            if not np.isfinite(arr).all():
                raise ImageError("the image array contains NaN or infinite values")
            if sixteen:
                arr = arr / 257.0          # 0..65535 -> 0..255
            elif arr.max(initial=0) <= 1.0:
                arr = arr * 255.0
            arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    raise ImageError(f"cannot use a {type(image).__name__} as an image; pass a PIL image, a numpy array "
                     "(H, W[, 3]) or a file path")


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned by its EXIF orientation tag (unchanged without one)."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF: take the pixels as stored
        return image
    return ImageOps.exif_transpose(image) if orientation not in (None, 1) else image


@dataclass(frozen=True)
class Letterbox:
    """How an original W x H image sits in the S x S square the model sees."""

    width: int   # original size
    height: int
    size: int    # S

    @property
    def scale(self) -> float:
        return self.size / max(self.width, self.height)

    @property
    def content(self) -> tuple[int, int]:
        """(w, h) of the scaled image inside the square (top-left aligned)."""
        s = self.scale
        return max(1, round(self.width * s)), max(1, round(self.height * s))


def letterbox(image, size: int, resample=Image.BICUBIC) -> tuple[Image.Image, Letterbox]:
    img = load_image(image)
    info = Letterbox(img.width, img.height, int(size))
    w, h = info.content
    canvas = Image.new("RGB", (size, size), FILL)
    canvas.paste(img if (w, h) == img.size else img.resize((w, h), resample), (0, 0))
    return canvas, info


def letterbox_array(arr: np.ndarray, size: int, fill: float, nearest: bool) -> np.ndarray:
    """An (H, W) mask or depth map placed top-left in a size x size canvas, as :func:`letterbox`
    places a picture: ``nearest`` for masks (bool out, ``fill`` as a bool), else bilinear (float32)."""
    arr = np.asarray(arr)
    info = Letterbox(arr.shape[1], arr.shape[0], int(size))
    w, h = info.content
    if nearest:
        small = np.asarray(Image.fromarray(arr.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
        out = np.full((size, size), bool(fill))
    else:
        small = np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
        out = np.full((size, size), fill, dtype=np.float32)
    out[:h, :w] = small
    return out


def unletterbox(dense, info: Letterbox, resample=Image.BILINEAR):
    """Crop the content region of an S x S output and resize it to the original W x H.

    Accepts a PIL image or a numpy array (S, S[, C]); returns the same kind.
    """
    w, h = info.content
    if isinstance(dense, Image.Image):
        return dense.crop((0, 0, w, h)).resize((info.width, info.height), resample)
    arr = np.asarray(dense)
    crop = arr[:h, :w]
    if arr.dtype == bool:
        out = Image.fromarray(crop.astype(np.uint8) * 255).resize((info.width, info.height), Image.NEAREST)
        return np.asarray(out) > 127
    chans = [crop] if crop.ndim == 2 else [crop[..., c] for c in range(crop.shape[-1])]
    resized = [np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((info.width, info.height), resample))
               for c in chans]
    out = resized[0] if crop.ndim == 2 else np.stack(resized, -1)
    return out.astype(arr.dtype if arr.dtype.kind == "f" else np.float32)


def to_pixel_values(images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
    """Square RGB PIL images -> float tensor (B, 3, S, S) normalised to [-1, 1]."""
    if isinstance(images, Image.Image):
        images = [images]
    arr = np.stack([np.asarray(load_image(im), dtype=np.float32) for im in images])  # (B, S, S, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).div_(127.5).sub_(1.0)


def from_pixel_values(pixels: torch.Tensor) -> list[Image.Image]:
    """Inverse of :func:`to_pixel_values`."""
    arr = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]
