"""Short clips of the shapes world: one object does one thing while the others stay still.

``ShapesClips(64, seed=0, frames=4)[i]`` is a dict, the same for the same seed and index on any
machine:

- ``images``: the ``frames`` frames (PIL RGB, all ``image_size`` square);
- ``action``: what the acting object does, one of :data:`ACTIONS` ("moves left", "grows",
  "appears", "changes color", ...);
- ``caption``: the clip in words, e.g. "the red circle moves left.", "the blue star turns green.";
- ``objects``: per frame, the objects seen in it (dicts: ``id`` the same object across frames,
  ``box``, ``shape``, ``color``, ``size``, ``label``, ``mask``);
- ``subject``: the ``id`` of the acting object.

Drawn with the shapes world's stamps, colours, sizes and background (:mod:`unio.data.shapes_draw`)
from a SplitMix64 stream seeded with (seed, index, a fixed salt). Each action can be seen at 64
pixels: a move covers 20-30% of the image side, growing or shrinking goes from one size class to
the other (small: 8-10% of the side in radius, large: 15-18%), an object appears or disappears
between two frames, a colour is replaced by another one. Objects never touch or cover each other
in any frame (their windows over the whole clip are apart), so every mask is the whole shape.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from PIL import Image

from ..errors import InputError
from .formats import WorldSource
from .shapes import MAX_IMAGE_SIZE, MIN_RADIUS_PX
from .shapes_draw import COLORS, SHAPES, SIZE_RADIUS, _PACKED, _background, _Rand, _stamp
from .world import SeededWorld

__all__ = ["ShapesClips", "ShapesClipsSource", "ACTIONS", "MOVES", "MIN_FRAMES", "MAX_FRAMES", "MIN_CLIP_SIZE",
           "MOVE_FRACTION"]

ACTIONS = ("moves left", "moves right", "moves up", "moves down", "grows", "shrinks", "appears", "disappears",
           "changes color")
MOVES = {"moves left": (-1, 0), "moves right": (1, 0), "moves up": (0, -1), "moves down": (0, 1)}
MIN_FRAMES, MAX_FRAMES = 2, 16
MIN_CLIP_SIZE = 32            # below it a small and a large shape differ by a pixel or two
MOVE_FRACTION = (0.2, 0.3)    # how far a moving object travels over the clip, as a share of the side
GAP = 2                       # pixels kept between the windows of two objects
_SALT = 0x434C495053          # "CLIPS": the clips' stream, apart from the still scenes'
_COMBOS = tuple((s, c) for s in SHAPES for c in COLORS)


class _Track:
    """One object through the clip: per frame its centre, radius, size class, colour and whether it is seen."""

    __slots__ = ("shape", "cx", "cy", "r", "size", "color", "seen")

    def __init__(self, shape: str, cx: list[int], cy: list[int], r: list[int], size: list[str], color: list[str],
                 seen: list[bool]):
        self.shape, self.cx, self.cy, self.r, self.size, self.color, self.seen = shape, cx, cy, r, size, color, seen

    def extent(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), end inclusive, of every pixel its window covers in any frame."""
        ts = [t for t, s in enumerate(self.seen) if s]
        return (min(self.cx[t] - self.r[t] for t in ts), min(self.cy[t] - self.r[t] for t in ts),
                max(self.cx[t] + self.r[t] for t in ts), max(self.cy[t] + self.r[t] for t in ts))

    def apart(self, other: "_Track") -> bool:
        a, b = self.extent(), other.extent()
        return a[2] + GAP < b[0] or b[2] + GAP < a[0] or a[3] + GAP < b[1] or b[3] + GAP < a[1]


def _radius(size: str, S: int, rand) -> int:
    lo, hi = SIZE_RADIUS[size]
    return max(MIN_RADIUS_PX + (size == "large"), int(round((lo + (hi - lo) * rand()) * S)))


def _inside(r: int, S: int, rand, travel: int = 0) -> int:
    """A centre coordinate keeping a radius-``r`` window, moved ``travel`` pixels on, inside the image."""
    return r + int(rand() * (S - 2 * r - travel))


def _interpolate(a: int, b: int, T: int) -> list[int]:
    return [a + int(round((b - a) * t / (T - 1))) for t in range(T)]


class ShapesClips(SeededWorld):
    """An endless, seeded dataset of shapes-world clips: ``ShapesClips(64, seed=0, frames=4)[i]``.

    Args:
        image_size: side S of the square frames, 32..512.
        seed: non-negative int; with the index it fixes the clip on any machine.
        frames: frames per clip, 2..16.
        max_objects, min_objects: objects per clip (the acting one included), 1..3.
        length: what ``len()`` reports; any index >= 0 works.
    """

    MAX_OBJECTS = 3

    def __init__(self, image_size: int = 64, seed: int = 0, frames: int = 4, max_objects: int = 3,
                 min_objects: int = 1, length: int = 2**31 - 1):
        self._set_common(image_size, seed, max_objects, min_objects, length)
        if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not \
                MIN_FRAMES <= frames <= MAX_FRAMES:
            raise InputError(f"ShapesClips frames={frames!r} must be an int in {MIN_FRAMES}..{MAX_FRAMES} "
                             "(an action needs a frame before and one after)")
        self.frames = int(frames)

    def _check_image_size(self, image_size: int) -> None:
        if not MIN_CLIP_SIZE <= image_size <= MAX_IMAGE_SIZE:
            raise InputError(f"ShapesClips image_size={image_size} is out of range; use {MIN_CLIP_SIZE}.."
                             f"{MAX_IMAGE_SIZE} pixels (smaller frames could not show a change of size)")

    def __repr__(self) -> str:
        return (f"ShapesClips(image_size={self.image_size}, seed={self.seed}, frames={self.frames}, "
                f"max_objects={self.max_objects}, min_objects={self.min_objects})")

    # -------------------------------------------------------------- the clip
    def _actor(self, action: str, rand) -> tuple[_Track, str]:
        """The acting object's track and the colour it turns to (its own where it keeps it)."""
        S, T = self.image_size, self.frames
        shape, color = _COMBOS[int(rand() * len(_COMBOS))]
        small, large = _radius("small", S, rand), _radius("large", S, rand)
        size = ("small", "large")[int(rand() * 2)]
        r, sizes = [small if size == "small" else large] * T, [size] * T
        if action in ("grows", "shrinks"):  # the size class turns halfway between the two radii
            r = _interpolate(small, large, T) if action == "grows" else _interpolate(large, small, T)
            sizes = ["large" if 2 * v >= small + large else "small" for v in r]
        switch = 1 + int(rand() * (T - 1))  # the first frame after the change (appears, disappears, colour)
        seen = [True] * T
        if action in ("appears", "disappears"):
            seen = [(t >= switch) == (action == "appears") for t in range(T)]
        new = color
        if action == "changes color":
            others = [c for c in COLORS if c != color]
            new = others[int(rand() * len(others))]
        colors = [new if t >= switch else color for t in range(T)]
        R = max(r)
        dx, dy = MOVES.get(action, (0, 0))
        travel = int(round((MOVE_FRACTION[0] + (MOVE_FRACTION[1] - MOVE_FRACTION[0]) * rand()) * S)) if dx or dy else 0
        x0, y0 = _inside(R, S, rand, travel * abs(dx)), _inside(R, S, rand, travel * abs(dy))
        if dx < 0 or dy < 0:  # start where the move ends up inside the image
            x0, y0 = x0 + travel * abs(dx), y0 + travel * abs(dy)
        track = _Track(shape, _interpolate(x0, x0 + dx * travel, T), _interpolate(y0, y0 + dy * travel, T), r, sizes,
                       colors, seen)
        return track, new

    def _clip(self, index: int) -> tuple[str, list[_Track], int]:
        """(action, tracks in canonical order, the acting track's position in them)."""
        S, T = self.image_size, self.frames
        rand = _Rand(self.seed, index, _SALT)
        action = ACTIONS[int(rand() * len(ACTIONS))]
        n_target = self._object_count(rand)
        actor, new = self._actor(action, rand)
        tracks = [actor]
        used = {(actor.shape, actor.color[0]), (actor.shape, new)}  # every name names one object in every frame
        for _ in self._attempts(tracks, n_target, index, "objects", "clip"):
            shape, color = _COMBOS[int(rand() * len(_COMBOS))]
            size = ("small", "large")[int(rand() * 2)]
            r = _radius(size, S, rand)
            cx, cy = _inside(r, S, rand), _inside(r, S, rand)
            track = _Track(shape, [cx] * T, [cy] * T, [r] * T, [size] * T, [color] * T, [True] * T)
            if (shape, color) in used or not all(track.apart(o) for o in tracks):
                continue
            used.add((shape, color))
            tracks.append(track)
        # Canonical order: left to right, then top to bottom, by the first frame each is seen in.
        first = lambda k: tracks[k].seen.index(True)  # noqa: E731
        order = sorted(range(len(tracks)), key=lambda k: (tracks[k].cx[first(k)], tracks[k].cy[first(k)], k))
        return action, [tracks[k] for k in order], order.index(0)

    def _frame(self, tracks: list[_Track], t: int) -> Image.Image:
        S = self.image_size
        packed = _background(S)[0].copy()
        for o in tracks:
            if o.seen[t]:
                cx, cy, r = o.cx[t], o.cy[t], o.r[t]
                packed[cy - r:cy + r + 1, cx - r:cx + r + 1][_stamp(o.shape, r)] = _PACKED[o.color[t]]
        return Image.frombytes("RGB", (S, S), memoryview(packed), "raw", "RGBX")

    def _objects(self, tracks: list[_Track], t: int) -> list[dict]:
        S, out = self.image_size, []
        for k, o in enumerate(tracks):
            if not o.seen[t]:
                continue
            cx, cy, r = o.cx[t], o.cy[t], o.r[t]
            mask = np.zeros((S, S), dtype=bool)
            mask[cy - r:cy + r + 1, cx - r:cx + r + 1] = _stamp(o.shape, r)
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            size = o.size[t]
            out.append({"id": k, "box": (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)),
                        "shape": o.shape, "color": o.color[t], "size": size,
                        "label": f"{size} {o.color[t]} {o.shape}", "mask": mask})
        return out

    def sample(self, index: int) -> dict:
        """The clip ``index``: frames, action, caption, per-frame objects and the acting object's id."""
        index = self._check_index(index)
        action, tracks, subject = self._clip(index)
        T = self.frames
        return {"images": [self._frame(tracks, t) for t in range(T)], "action": action,
                "caption": _caption(action, tracks[subject]),
                "objects": [self._objects(tracks, t) for t in range(T)], "subject": subject}

    def texts(self, n: int) -> Iterator[str]:
        """Every caption of clips 0..n-1 and every action (tokenizer corpus), without drawing frames."""
        yield from ACTIONS
        for i in range(n):
            action, tracks, subject = self._clip(self._check_index(i))
            yield _caption(action, tracks[subject])


def _caption(action: str, o: _Track) -> str:
    first = o.seen.index(True)
    name = f"{o.color[first]} {o.shape}"
    if action == "changes color":
        return f"the {name} turns {o.color[-1]}."
    return f"the {name} {action}."


class ShapesClipsSource(WorldSource):
    """Shapes-world clips (``shapes-clips:SEED`` specs, recipes' entries; option ``frames``): endless
    unless ``n`` is given. Its samples have ``images`` (the frames), no ``image``: tasks that read
    one image leave them alone."""

    name = "shapes-clips"
    OPTIONS = {"seed": 0, "image_size": 64, "frames": 4, "max_objects": 3, "min_objects": 1}

    def __init__(self, seed=0, image_size=64, frames=4, max_objects=3, min_objects=1, on_bad_record="error"):
        super().__init__(on_bad_record)
        self.world = ShapesClips(image_size=int(image_size), seed=int(seed), frames=int(frames),
                                 max_objects=int(max_objects), min_objects=int(min_objects))
        self.n: int | None = None

    def texts(self, limit: int | None = None) -> list[str]:
        return list(self.world.texts(min(limit or 20000, len(self))))

    @property
    def actions(self) -> list[str]:
        """The closed label set of ``video_classify`` on these clips."""
        return list(ACTIONS)

    def _labels(self) -> dict[str, list[str]]:
        return {"image": [], "object": [], "action": list(ACTIONS)}
