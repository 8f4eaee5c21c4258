"""Reading images and letterboxing them for the model.

The model sees every image letterboxed to an S x S square: scaled so its long side is S and
placed at the top-left corner, the rest filled with grey. Location tokens are normalised by the
long side too (unio.tokenizers.locations), so a normalised coordinate means the same point in the
original image and in the letterboxed one (:func:`letterbox_array` does the same for a mask or a
depth map). :func:`unletterbox` maps a dense S x S output (mask,
depth, generated image) back to the caller's original size.

:func:`load_image` reads any picture file Pillow reads, in any mode, as RGB, or refuses it with an
:class:`~unio.errors.ImageError` that says what is wrong and what to do; a large file may be read
smaller (``max_side``) while results stay in its own pixel frame (:func:`original_size`).
"""
from __future__ import annotations

import math
import os
import re
import stat
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import torch
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError, features

from .errors import BoxError, ImageError, InputError, UnioError

try:  # HEIC/HEIF photos (iPhones) are read once pillow-heif is installed; refused clearly without it
    from pillow_heif import register_heif_opener
except ImportError:
    register_heif_opener = None
else:
    register_heif_opener()

__all__ = ["load_image", "original_size", "Letterbox", "letterbox", "letterbox_array", "unletterbox",
           "to_pixel_values", "from_pixel_values", "check_box", "unreadable", "too_many_pixels", "FILL",
           "BACKGROUND", "IMAGE_EXTENSIONS", "HEIF_EXTENSIONS"]

FILL = (127, 127, 127)
BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on unless the caller picks a colour
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".avif")  # what folders are read for
HEIF_EXTENSIONS = (".heic", ".heif")  # read with pillow-heif, refused with a message naming it without
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
HIGH_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
ORIGINAL_SIZE = "unio.original_size"  # PIL info key: ((W, H) of the file, (w, h) it was decoded at)
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # http://, https://, s3://, gs:// (and a Path's https:/)


def _limit_from_environment() -> None:
    """``UNIO_MAX_IMAGE_PIXELS=N`` (or ``none``) sets Pillow's decompression-bomb limit for the unio
    command, which has no Python prompt to set ``PIL.Image.MAX_IMAGE_PIXELS`` from."""
    value = os.environ.get("UNIO_MAX_IMAGE_PIXELS")
    if value is None or not value.strip():
        return
    if value.strip().lower() in ("none", "off", "0"):
        Image.MAX_IMAGE_PIXELS = None
        return
    try:
        Image.MAX_IMAGE_PIXELS = int(float(value))
    except ValueError:
        raise ImageError(f"UNIO_MAX_IMAGE_PIXELS={value!r} is not a number of pixels; set it to a whole number "
                         "(or none for no limit)") from None


_limit_from_environment()


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


def unreadable(what, exc) -> ImageError:
    """The one message for a file that is not a picture, whoever reads it (CLI, Python, server)."""
    if isinstance(exc, Image.DecompressionBombError):
        return too_many_pixels(what, _pixels_in(exc))
    if "truncated" in str(exc).lower():
        return ImageError(f"could not read {what} as an image: it is truncated (it ends before the picture "
                          "does: an interrupted download or copy?); pass the complete file")
    why = "not a picture format Pillow reads" if isinstance(exc, UnidentifiedImageError) else str(exc)
    return ImageError(f"could not read {what} as an image ({why}); pass a PNG/JPEG/... file")


def too_many_pixels(what, pixels: int | str) -> ImageError:
    """The refusal of a picture over Pillow's decompression-bomb limit, with how to raise the limit."""
    limit = Image.MAX_IMAGE_PIXELS
    count = f"{pixels:,}" if isinstance(pixels, int) else str(pixels)
    need = pixels if isinstance(pixels, int) else "N"
    most = f"{2 * limit:,}" if limit is not None else "any number of"
    return ImageError(f"{what} has {count} pixels, more than the {most} Pillow decodes (twice "
                      "PIL.Image.MAX_IMAGE_PIXELS: a guard against decompression bombs, small files that unpack to "
                      f"gigabytes); if you trust the file, raise the limit: PIL.Image.MAX_IMAGE_PIXELS = {need} in "
                      f"Python (None: no limit), or UNIO_MAX_IMAGE_PIXELS={need} in the environment of the unio "
                      "command")


def load_image(image, *, max_side: int | None = None, background=BACKGROUND) -> Image.Image:
    """A file path, PIL image, numpy array or tensor -> an RGB PIL image.

    Accepted: a path (str or os.PathLike; ``file://`` URLs too) of any picture Pillow reads (PNG,
    JPEG, WebP, GIF (first frame), BMP, TIFF (first page), AVIF where Pillow has it, HEIC/HEIF once
    pillow-heif is installed), a PIL image of any mode, a numpy array (H, W), (H, W, 1|3|4) of uint8,
    uint16, or float in [0, 1], or a tensor (C, H, W) or (H, W, C).

    - Files and PIL images are turned upright by their EXIF orientation (a phone's portrait JPEG is
      stored sideways with orientation 6), so boxes and masks come back in the frame a viewer shows.
    - Transparent pictures (RGBA, LA, PA, palette or grey with a transparent colour, (H, W, 4)
      arrays) are composited on ``background``: white unless the caller picks another colour, an
      (r, g, b) tuple or a name ("black", "#808080").
    - Grey (L), 1-bit, palette and CMYK pictures are converted to RGB (CMYK by Pillow's conversion,
      pure inks to their RGB colours; an embedded CMYK colour profile is not applied); 16-bit
      pictures (PNG mode I;16, uint16 arrays) are scaled to 8 bits (/257), not clipped to white;
      32-bit integer (I) pictures are read as 16-bit ones when a value is over 255 (over 65535
      clips); float (F) pictures as values in [0, 1] when none is over 1, else in 0..255 (clipped).
    - ``max_side``: a picture whose long side is at least twice this is decoded smaller, its long side
      still at least ``max_side`` (JPEGs by Pillow's ``draft``, DCT scaling by 1/2, 1/4 or 1/8, so a
      12000 x 9000 photo never occupies its full 324 MB; other formats by ``reduce`` after
      decoding). The result remembers the size it was read from (:func:`original_size`), and
      :func:`letterbox` maps to that size, so boxes, masks and depth maps still come back in the
      file's own pixel frame. Without ``max_side`` the full picture is read.

    Refused with an :class:`ImageError` saying why and what to do: a missing file, a folder, an
    empty (0-byte) or truncated file, an http(s) URL (nothing is downloaded), a format Pillow cannot
    read (HEIC/AVIF without their plugin, PDF, SVG, HTML, video), and a picture of more than
    twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (179 million by default: Pillow's decompression-bomb
    guard; raise it for a file you trust, or set ``UNIO_MAX_IMAGE_PIXELS`` for the unio command).
    """
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer))
                                 or max_side < 1):
        raise InputError(f"max_side must be a positive number of pixels (or None), got {max_side!r}")
    fill = _colour(background)
    if isinstance(image, (str, os.PathLike)):
        return _read_file(image, max_side, fill)
    if isinstance(image, Image.Image):
        size = original_size(image)
        upright = _upright(image)
        if upright.size != image.size:
            size = size[::-1]
        return _reduce(_to_rgb(upright, fill), max_side, size)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            image = np.moveaxis(image, 0, -1)
    if isinstance(image, np.ndarray):
        return _reduce(_from_array(image, fill), max_side)
    raise ImageError(f"cannot use a {type(image).__name__} as an image; pass a PIL image, a numpy array "
                     "(H, W[, 3]) or a file path")


def original_size(image: Image.Image) -> tuple[int, int]:
    """(W, H) of the picture ``image`` was read from: its own size unless :func:`load_image` read a
    large file smaller (``max_side``); what :func:`letterbox` maps results to."""
    record = image.info.get(ORIGINAL_SIZE)
    if record is not None and tuple(record[1]) == image.size:
        return tuple(record[0])
    return image.size


def _read_file(image, max_side: int | None, fill) -> Image.Image:
    path = _local_path(image)
    try:
        with warnings.catch_warnings():  # over twice the limit Pillow refuses it; up to that, read it quietly
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            full = im.size
            if max_side is not None and max(full) >= 2 * max_side:
                scale = max_side / max(full)
                im.draft(None, (max(1, math.ceil(full[0] * scale)), max(1, math.ceil(full[1] * scale))))
            im.load()  # the pixels, before the file closes
            decoded = im.size
            upright = _upright(im)
            if upright.size != decoded:
                full = full[::-1]
            return _reduce(_to_rgb(upright, fill), max_side, full)
    except UnioError:
        raise
    except MemoryError:
        raise ImageError(f"not enough memory to decode {path}; pass max_side= to read it smaller") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, zlib.error,
            Image.DecompressionBombError) as exc:
        raise _unreadable_file(path, exc) from None


def _local_path(image) -> Path:
    """The path of an existing, non-empty regular file, else an ImageError saying what it is."""
    text = os.fsdecode(os.fspath(image))
    if text.lower().startswith("file://"):
        text = url2pathname(urlparse(text).path)
    if text.lower().startswith("data:"):
        raise ImageError("a data: URI is not a file; decode its base64 payload and pass "
                         "PIL.Image.open(io.BytesIO(data)), or save it as a file")
    path = Path(text)
    try:
        st = path.stat()
    except FileNotFoundError:
        if URL.match(text):
            url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)", r"\1://", text)  # a Path keeps one slash
            raise ImageError(f"{url} is a URL; unio reads local files and downloads nothing: download it "
                             f"first (e.g. curl -LO '{url}') and pass the local file") from None
        raise ImageError(f"image file {path} does not exist; check the path") from None
    except OSError as exc:
        raise ImageError(f"cannot reach image file {path} ({exc.strerror or exc}); check the path") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{path} is a folder, not an image file; pass the image files in it "
                         "(`unio predict` also takes a folder)")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{path} is not a regular file; pass an image file")
    if st.st_size == 0:
        raise ImageError(f"image file {path} is empty (0 bytes: an interrupted download or copy?); "
                         "pass the complete file")
    return path


def _unreadable_file(path: Path, exc) -> ImageError:
    if isinstance(exc, PermissionError):
        return ImageError(f"cannot read {path}: permission denied; check the file's permissions")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
        size = path.stat().st_size
    except OSError:
        head, size = b"", 0
    if head[:4] == b"RIFF" and int.from_bytes(head[4:8], "little") + 8 > size:  # WebP says less than this
        exc = OSError("image file is truncated")
    what = _what_it_is(head) if isinstance(exc, UnidentifiedImageError) else None
    if what is not None:
        return ImageError(f"could not read {path} as an image: {what}")
    err = unreadable(path, exc)
    if "truncated" in str(exc).lower():  # a file the caller may read in part
        return ImageError(f"{err} (in Python, PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True reads what is there)")
    return err


def _what_it_is(head: bytes) -> str | None:
    """What a file Pillow could not identify is, with what to do; None when unknown."""
    if head[4:8] == b"ftyp":  # ISO base media: HEIF, AVIF, MP4, MOV ...
        box = int.from_bytes(head[:4], "big")
        brands = {head[8:12]} | {head[i:i + 4] for i in range(16, min(box, len(head)) - 3, 4)}
        if brands & {b"avif", b"avis"}:
            if not features.check("avif"):
                return ("it is an AVIF picture, and this Pillow was built without AVIF; install the plugin "
                        "(pip install pillow-avif-plugin) or a Pillow built with AVIF, or convert it to PNG/JPEG")
            return "it is an AVIF picture Pillow could not decode (damaged or truncated?); pass the complete file"
        if brands & HEIF_BRANDS:
            if register_heif_opener is None:
                return ("it is a HEIC/HEIF photo (an iPhone's format), which Pillow reads only with the "
                        "pillow-heif plugin; install it (pip install pillow-heif) or convert the photo to JPEG")
            return "it is a HEIC/HEIF photo pillow-heif could not decode (damaged or truncated?)"
        return "it is a video or other media file (MP4, MOV ...); extract a frame as PNG/JPEG"
    if head.startswith(b"%PDF"):
        return "it is a PDF document; export its page as a PNG/JPEG file"
    low = head.lstrip().lower()
    if low.startswith(b"<svg") or (low.startswith(b"<?xml") and b"svg" in low):
        return "it is an SVG drawing (vectors, not pixels); render it to a PNG file"
    if low.startswith((b"<!doctype html", b"<html", b"<head", b"<!--")):
        return "it is a web page (HTML), not a picture (a page saved in place of the image?); save the image itself"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "it is a text file, not a picture; pass a PNG/JPEG/... file"
    return None


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned by its EXIF orientation tag (unchanged without one)."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF: take the pixels as stored
        return image
    return ImageOps.exif_transpose(image) if orientation not in (None, 1) else image


def _to_rgb(image: Image.Image, fill) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in HIGH_BIT:  # 16-bit, 32-bit and float pictures
        return _from_array(np.asarray(image), fill)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _flatten(image, fill)
    return image.convert("RGB")


def _flatten(image: Image.Image, fill) -> Image.Image:
    """A picture with transparency composited on the ``fill`` colour."""
    if image.mode == "La":
        image = image.convert("LA")
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] == 255:  # opaque everywhere
        return rgba.convert("RGB")
    out = Image.new("RGB", rgba.size, fill)
    out.paste(rgba, (0, 0), alpha)
    return out


def _from_array(arr: np.ndarray, fill) -> Image.Image:
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
    if arr.ndim == 3 and arr.shape[-1] == 4:
        return _flatten(Image.fromarray(arr, "RGBA"), fill)
    return Image.fromarray(arr).convert("RGB")


def _reduce(image: Image.Image, max_side: int | None, original: tuple[int, int] | None = None) -> Image.Image:
    """``image`` reduced by a whole factor while its long side stays at least ``max_side``,
    remembering ``original`` (the size it was read from) when that differs from its own."""
    original = tuple(original or original_size(image))
    k = max(image.size) // max_side if max_side else 1
    if k >= 2:
        image = image.reduce(k)
    if image.size != original:
        if image.info.get(ORIGINAL_SIZE) != (original, image.size):
            image.info[ORIGINAL_SIZE] = (original, image.size)
    return image


def _colour(value) -> tuple[int, int, int]:
    if value is BACKGROUND:
        return value
    try:
        rgb = ImageColor.getrgb(value) if isinstance(value, str) else tuple(int(v) for v in value)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) not in (3, 4) or not all(0 <= v <= 255 for v in rgb):
        raise InputError(f"background must be a colour, (r, g, b) in 0..255 or a name like 'white', got {value!r}")
    return tuple(rgb[:3])


def _pixels_in(exc) -> int | str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else "too many"


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
    info = Letterbox(*original_size(img), int(size))  # a large file read smaller still maps to its own frame
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
