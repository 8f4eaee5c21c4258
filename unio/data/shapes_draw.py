"""Drawing primitives of the shapes world (:mod:`unio.data.shapes`): shapes, colours, sizes, the
seeded random stream, the boolean shape stamps, the background and depth of the empty scene.

Everything here is written out so that no library or libm version can move a pixel: the random
stream is SplitMix64 in plain Python and every shape test is +, -, *, / and comparisons.
"""
from __future__ import annotations

import functools

import numpy as np

from ..errors import InputError

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
# Saturated colours far from the grey background and from each other.
COLORS = {
    "red": (214, 39, 40),
    "orange": (247, 129, 16),
    "yellow": (240, 206, 30),
    "green": (44, 160, 44),
    "cyan": (23, 190, 207),
    "blue": (31, 78, 210),
    "purple": (148, 72, 189),
}
SIZES = ("small", "large")
# Radius of the circumscribed circle as a fraction of the image side (min, max).
SIZE_RADIUS = {"small": (0.08, 0.10), "large": (0.15, 0.18)}
MIN_VISIBLE_FRACTION = 0.7  # an object must keep at least this share of its pixels
MIN_VISIBLE_PIXELS = 8
# Depth: objects in [0.15, 0.75]; background from 1.0 at the top to 0.85 at the bottom (a floor
# receding towards the horizon), so the background is always farther than any object. Every
# object stands on the floor: its depth falls linearly with the image row of its base (the bottom
# of its circumscribed circle), from 0.75 for a base on the top row to 0.15 on the bottom row, so
# depth can be read off the picture (height in the visual field, the cue monocular depth networks
# lean on most: van Dijk & de Croon, ICCV 2019) and nearer objects are the lower ones.
OBJECT_DEPTH = (0.15, 0.75)
BACKGROUND_DEPTH = (1.0, 0.85)
BACKGROUND_RGB = ((232, 230, 224), (190, 188, 182))  # top, bottom

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class _Rand:
    """SplitMix64 (Steele, Lea & Flood, 2014) in plain Python: floats in [0, 1).

    Chosen over numpy's Generator because it is defined by these few lines (so it yields the
    same stream on any machine and numpy version) and seeding it costs nothing, where building a
    ``SeedSequence`` per sample would take a sizable part of the sample's budget.
    """
    __slots__ = ("state",)

    def __init__(self, *keys: int):
        state = _GOLDEN
        for key in keys:
            state = _mix64(((state ^ (key & _MASK64)) + _GOLDEN) & _MASK64)
        self.state = state

    def __call__(self) -> float:
        z = self.state = (self.state + _GOLDEN) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64  # _mix64, inlined: it runs ~30x a sample
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return ((z ^ (z >> 31)) >> 11) * (1.0 / (1 << 53))


# ---------------------------------------------------------------------------------- drawing
# A five-pointed star, one point up, inner radius half the outer one. The vertices are written
# out (sin/cos of multiples of 36 degrees) so that no libm difference between machines can move
# a pixel: every shape test below is +, -, *, / and comparisons, which IEEE 754 fixes exactly.
_S36, _C36, _S72, _C72 = 0.5877852522924731, 0.8090169943749475, 0.9510565162951535, 0.30901699437494745
_STAR = ((0.0, -1.0), (0.5 * _S36, -0.5 * _C36), (_S72, -_C72), (0.5 * _S72, 0.5 * _C72), (_S36, _C36),
         (0.0, 0.5), (-_S36, _C36), (-0.5 * _S72, 0.5 * _C72), (-_S72, -_C72), (-0.5 * _S36, -0.5 * _C36))


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices) -> np.ndarray:
    """Even-odd rule over a grid of points (u to the right, v down)."""
    u, v = np.broadcast_arrays(u, v)
    inside = np.zeros(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1]):
        if y0 == y1:
            continue
        crosses = (y0 > v) != (y1 > v)
        inside ^= crosses & (u < (x1 - x0) * (v - y0) / (y1 - y0) + x0)
    return inside

@functools.lru_cache(maxsize=None)
def _stamp(shape: str, r: int) -> np.ndarray:
    """Boolean (2r+1, 2r+1) mask of a shape centred on the middle pixel; cached per radius."""
    d = np.arange(-r, r + 1, dtype=np.float64) / (r + 0.5)  # pixel centres, unit = radius
    u, v = d[None, :], d[:, None]                               # x to the right, y down
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        m = u * u + v * v <= 1.0
    elif shape == "square":
        m = (au <= 0.8) & (av <= 0.8)
    elif shape == "triangle":  # apex up, base at v = 0.8
        m = (v <= 0.8) & (au <= 0.95 * (v + 0.95) / 1.75)
    elif shape == "diamond":
        m = au + av <= 1.0
    elif shape == "cross":
        m = ((au <= 0.95) & (av <= 0.32)) | ((au <= 0.32) & (av <= 0.95))
    elif shape == "star":
        m = _inside_polygon(u, v, _STAR)
    else:  # pragma: no cover - SHAPES is closed
        raise InputError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    m = np.ascontiguousarray(m)
    m.flags.writeable = False
    return m


@functools.lru_cache(maxsize=None)
def _stamp_area(shape: str, r: int) -> int:
    return int(_stamp(shape, r).sum())


@functools.lru_cache(maxsize=None)
def _stamp_extent(shape: str, r: int) -> tuple[int, int, int, int]:
    """(col0, row0, col1, row1), the stamp's tight extent, end exclusive."""
    m = _stamp(shape, r)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _pack(rgb) -> int:
    """An RGB triple as one little-endian uint32 (R in the low byte), so a pixel is one element."""
    r, g, b = (int(c) for c in rgb)
    return r | g << 8 | b << 16


_PACKED = {name: _pack(rgb) for name, rgb in COLORS.items()}


def _floor_depth(base_row: int, size: int) -> float:
    """Depth of an object whose base is at ``base_row`` (0 = top, ``size`` = bottom edge)."""
    near, far = OBJECT_DEPTH
    return far + (near - far) * base_row / size


@functools.lru_cache(maxsize=8)
def _background(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(packed RGB '<u4' (S, S), depth float32 (S, S)) of the empty scene, cached per size."""
    t = (np.arange(size, dtype=np.float64) + 0.5) / size  # 0 at the top, 1 at the bottom
    top, bottom = np.array(BACKGROUND_RGB[0], float), np.array(BACKGROUND_RGB[1], float)
    rows = np.rint(top[None, :] * (1 - t[:, None]) + bottom[None, :] * t[:, None]).astype(np.uint32)
    packed = (rows[:, 0] | rows[:, 1] << 8 | rows[:, 2] << 16).astype("<u4")
    rgb = np.ascontiguousarray(np.broadcast_to(packed[:, None], (size, size)))
    far, near = BACKGROUND_DEPTH
    depth = np.ascontiguousarray(np.broadcast_to((far + (near - far) * t).astype(np.float32)[:, None], (size, size)))
    rgb.flags.writeable = False
    depth.flags.writeable = False
    return rgb, depth


class _Obj:
    """One placed object; ``vis`` is its visible mask inside its window, ``center`` its box centre."""
    __slots__ = ("shape", "color", "size", "r", "cx", "cy", "depth", "ys", "xs", "clean",
                 "box", "center", "vis", "visible")

    def __init__(self, shape, color, size, r, cx, cy, depth):
        self.shape, self.color, self.size, self.r, self.cx, self.cy, self.depth = shape, color, size, r, cx, cy, depth
        # Rows and columns of the (2r+1)^2 window the shape is stamped into.
        self.ys, self.xs = slice(cy - r, cy + r + 1), slice(cx - r, cx + r + 1)
        self.clean = True  # no other object's window meets this one

    @property
    def name(self) -> str:  # unique within a scene by construction
        return f"{self.color} {self.shape}"

    @property
    def label(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@functools.lru_cache(maxsize=None)
def _min_visible(shape: str, r: int) -> int:
    return max(MIN_VISIBLE_PIXELS, int(np.ceil(MIN_VISIBLE_FRACTION * _stamp_area(shape, r))))
