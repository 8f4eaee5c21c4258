"""Location tokens: boxes, points and polygons as discrete coordinate bins (Pix2Seq, Chen et al. 2022).

A coordinate is normalised by the image's *long* side, because the model sees every image
letterboxed top-left into a square whose side is that long side (unio.images.letterbox): a
normalised coordinate then means the same point in the original image and in the square. The
range [0, long side] is cut into ``num_bins`` equal bins; encoding takes the bin a coordinate
falls in, decoding returns the bin's centre, so the round-trip error is at most half a bin
(``bin_size(image_size) / 2`` pixels). On the short side only the first bins are ever used.

Bins are *local* location ids in [0, num_bins); ``UnifiedVocab.location_ids`` makes them global.
Boxes are (x1, y1, x2, y2) in pixels of the original image, as everywhere in unio.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import BoxError, TokenizerError

__all__ = ["LocationTokenizer"]


class LocationTokenizer:
    """Quantises pixel coordinates to ``num_bins`` bins over the image's long side.

    >>> tok = LocationTokenizer(num_bins=1000)
    >>> tok.encode_boxes([10, 20, 110, 70], image_size=(200, 100)).tolist()
    [50, 100, 550, 350]
    >>> tok.decode_boxes([50, 100, 550, 350], image_size=(200, 100)).round(3).tolist()
    [10.1, 20.1, 110.1, 70.1]
    >>> tok.bin_size((200, 100))  # pixels per bin; the round trip is exact to half of it
    0.2
    """

    def __init__(self, num_bins: int = 1000):
        if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 2:
            raise TokenizerError(f"num_bins must be an integer >= 2, got {num_bins!r}; Pix2Seq uses 1000")
        self.num_bins = int(num_bins)

    def __repr__(self) -> str:
        return f"LocationTokenizer(num_bins={self.num_bins})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocationTokenizer) and other.num_bins == self.num_bins

    def __hash__(self) -> int:
        return hash(("LocationTokenizer", self.num_bins))

    # ------------------------------------------------------------------ geometry
    def bin_size(self, image_size) -> float:
        """Width of one bin in pixels of the original image (the round-trip error is half of it)."""
        return _long_side(image_size) / self.num_bins

    def bins_per_pixel(self, image_size) -> float:
        return self.num_bins / _long_side(image_size)

    # ------------------------------------------------------------------ boxes
    def encode_boxes(self, boxes_xyxy, image_size) -> np.ndarray:
        """Pixel boxes (4,) or (N, 4) -> int64 bins of the same shape.

        Boxes reaching outside the image are clipped to it first. NaN / infinite, inverted
        (x2 < x1 or y2 < y1) and zero-area boxes raise :class:`BoxError`.
        """
        w, h = _image_size(image_size)
        boxes, single = _as_rows(boxes_xyxy, 4, "boxes", "(x1, y1, x2, y2)")
        _check_finite(boxes, "box", "(x1, y1, x2, y2)")
        inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if inverted.any():
            i = int(np.flatnonzero(inverted)[0])
            raise BoxError(
                f"box {i} {_fmt(boxes[i])} is inverted (x2 < x1 or y2 < y1); boxes are (x1, y1, x2, y2) "
                f"corners in pixels: swap the corners, or convert (x, y, w, h) boxes to (x, y, x + w, y + h)")
        clipped = np.stack([boxes[:, 0].clip(0, w), boxes[:, 1].clip(0, h),
                            boxes[:, 2].clip(0, w), boxes[:, 3].clip(0, h)], axis=1)
        empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            where = "lies outside" if (clipped[i] != boxes[i]).any() else "has zero area in"
            raise BoxError(
                f"box {i} {_fmt(boxes[i])} {where} the {_fmt_size(w, h)} image (zero area after clipping); "
                f"drop it, or check that boxes are in pixels of this image (not normalised to [0, 1])")
        bins = self._quantise(clipped, max(w, h))
        return bins[0] if single else bins

    def decode_boxes(self, bins, image_size) -> np.ndarray:
        """Bins (4,) or (N, 4) -> float64 pixel boxes (bin centres, clipped to the image)."""
        w, h = _image_size(image_size)
        arr, single = _as_rows(bins, 4, "box bins", "(x1, y1, x2, y2)")
        out = self._dequantise(self._check_bins(arr), w, h, pairs=2)
        return out[0] if single else out

    # ------------------------------------------------------------------ points and polygons
    def encode_points(self, points_xy, image_size) -> np.ndarray:
        """Pixel points (2,) or (N, 2) -> int64 bins of the same shape; points outside are clipped."""
        w, h = _image_size(image_size)
        pts, single = _as_rows(points_xy, 2, "points", "(x, y)")
        _check_finite(pts, "point", "(x, y)")
        clipped = np.stack([pts[:, 0].clip(0, w), pts[:, 1].clip(0, h)], axis=1)
        bins = self._quantise(clipped, max(w, h))
        return bins[0] if single else bins

    def decode_points(self, bins, image_size) -> np.ndarray:
        """Bins (2,) or (N, 2) -> float64 pixel points at bin centres."""
        w, h = _image_size(image_size)
        arr, single = _as_rows(bins, 2, "point bins", "(x, y)")
        out = self._dequantise(self._check_bins(arr), w, h, pairs=1)
        return out[0] if single else out

    def encode_polygon(self, points_xy, image_size) -> np.ndarray:
        """A polygon as (N, 2) points or flat (x0, y0, x1, y1, ...) -> flat int64 bins (2N,)."""
        pts = _polygon_points(points_xy, "polygon")
        return self.encode_points(pts, image_size).reshape(-1)

    def decode_polygon(self, bins, image_size) -> np.ndarray:
        """Flat bins (x0, y0, x1, y1, ...) -> (N, 2) float64 pixel points."""
        pts = _polygon_points(bins, "polygon bins")
        return self.decode_points(pts, image_size)

    # ------------------------------------------------------------------ internals
    def _quantise(self, coords: np.ndarray, long_side: float) -> np.ndarray:
        # floor(c / L * B); a coordinate exactly on the far edge belongs to the last bin.
        bins = np.floor(coords * self.num_bins / long_side)
        return bins.clip(0, self.num_bins - 1).astype(np.int64)

    def _dequantise(self, bins: np.ndarray, w: float, h: float, pairs: int) -> np.ndarray:
        out = (bins + 0.5) * (max(w, h) / self.num_bins)
        # A centre may lie past the short side's edge; the true coordinate never does.
        limits = np.array([w, h] * pairs, dtype=np.float64)
        return np.minimum(out, limits)

    def _check_bins(self, arr: np.ndarray) -> np.ndarray:
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise BoxError("location bins must be integers; pass the local bins that encode_* returned "
                           "(UnifiedVocab.split gives local ids)")
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_bins):
            raise BoxError(f"location bins must lie in [0, {self.num_bins}), got values in "
                           f"[{int(arr.min())}, {int(arr.max())}]; map global ids to local bins with "
                           "UnifiedVocab.to_local(ids, 'location') first")
        return arr.astype(np.int64)


# ---------------------------------------------------------------------- helpers
def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise BoxError(f"could not read {type(x).__name__} {x!r:.80} as numbers; pass a list, numpy array "
                       "or tensor of pixel coordinates") from None


def _as_rows(x, width: int, what: str, order: str) -> tuple[np.ndarray, bool]:
    arr = _to_numpy(x)
    if arr.ndim == 1 and arr.shape[0] == width:
        return arr[None, :], True
    if arr.ndim == 2 and arr.shape[1] == width:
        return arr, False
    if arr.ndim == 1 and arr.shape[0] == 0:  # an empty list: no boxes
        return arr.reshape(0, width), False
    raise BoxError(f"{what} must have shape ({width},) or (N, {width}) as {order}, got shape {arr.shape}")


def _check_finite(arr: np.ndarray, what: str, order: str) -> None:
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise BoxError(f"{what} {i} {_fmt(arr[i])} contains NaN or infinite values; "
                       f"give finite pixel coordinates {order} or drop it")


def _polygon_points(x, what: str) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.ndim == 1 and arr.shape[0] % 2 == 0:
        arr = arr.reshape(-1, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise BoxError(f"a {what} must be (N, 2) points or a flat sequence x0, y0, x1, y1, ... of even "
                       f"length, got shape {arr.shape}")
    if arr.shape[0] < 3:
        raise BoxError(f"a {what} needs at least 3 points, got {arr.shape[0]}; use encode_points for "
                       "single points or encode_boxes for boxes")
    return arr


def _image_size(image_size) -> tuple[float, float]:
    try:
        w, h = (float(v) for v in image_size)
    except (TypeError, ValueError):
        raise BoxError(f"image_size must be (width, height) in pixels, got {image_size!r}") from None
    if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
        raise BoxError(f"image_size must be a positive (width, height) in pixels, got {image_size!r}; "
                       "pass the size of the original image, e.g. image.size for a PIL image")
    return w, h


def _long_side(image_size) -> float:
    return max(_image_size(image_size))


def _fmt(row: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in row) + ")"


def _fmt_size(w: float, h: float) -> str:
    return f"{w:g} x {h:g}"
