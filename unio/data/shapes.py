"""The shapes world: a procedural, seeded, endless dataset every unio task can train on.

Each sample is a small scene of flat-coloured shapes on a light background with full ground
truth: visible masks, tight boxes, a per-pixel depth map, a caption, question/answer pairs,
referring expressions and a class label (the schema of DESIGN.md). It plays the role CLEVR
(Johnson et al., 2017) and Sort-of-CLEVR play in the literature: small enough to learn on a
CPU, rich enough to exercise captioning, VQA, detection, grounding, segmentation and depth.

Why it is built this way:

- Same seed and index -> the same sample on any machine. Masks are stamped from boolean arrays
  computed with numpy (no anti-aliasing, no font or Pillow version in the loop) and every random
  draw comes from a SplitMix64 stream seeded with (seed, index), written out (with the shape
  stamps) in :mod:`unio.data.shapes_draw` so no library version can change it.
- Objects are drawn back to front (far first) and keep only their visible pixels, as COCO
  annotates; an object that would be hidden beyond recognition is not placed, and no placed
  object may be hidden beyond recognition by a later one.
- Depth is seen, not guessed: objects stand on a floor, so the lower an object's base the nearer
  it is, and a nearer object covers a farther one. A depth drawn independently of the picture
  would leave only the occlusion order to go on (the best constant guess then scores AbsRel
  ~0.38 on object pixels) and make the depth task a lottery.
- Every (shape, colour) pair appears at most once per scene and objects of one colour never
  touch, so "the red circle" always names exactly one object and never a merged blob.
- The language is templated and canonical (objects listed left to right, one relation, fixed
  wording) so a small model can reproduce captions exactly; relations hold with a margin of
  a tenth of the image so "left of" is never a coin toss.

``unio shapes`` (:mod:`unio.cli.shapes`) writes previews and the text corpus of this world.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterator

import numpy as np
from PIL import Image

from ..errors import DataError, InputError
from .shapes_draw import (COLORS, MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS, OBJECT_DEPTH, SHAPES, SIZE_RADIUS, SIZES,
                          _PACKED, _background, _floor_depth, _min_visible, _Obj, _Rand, _stamp, _stamp_area,
                          _stamp_extent)

__all__ = [
    "ShapesWorld", "shapes_classes", "SHAPES", "COLORS", "SIZES", "CLASSES", "PLURALS", "NUMBER_WORDS", "REGIONS",
    "MIN_IMAGE_SIZE", "MAX_IMAGE_SIZE", "MAX_OBJECTS", "MIN_VISIBLE_FRACTION", "MIN_VISIBLE_PIXELS", "OBJECT_DEPTH",
    "shapes_texts", "relation_margin", "region_of",
]

PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
           "cross": "crosses", "star": "stars"}
CLASSES = SHAPES  # classification label: the shape of the largest visible object


def shapes_classes() -> dict[str, list[str]]:
    """Label sets of the shapes world: image classes (classify) and object labels (detect, regions);
    what a model trained on it stores in its export (``unio.json`` ``classes``)."""
    return {"image": list(CLASSES),
            "object": [f"{size} {color} {shape}" for size in SIZES for color in COLORS for shape in SHAPES]}


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 512
MAX_OBJECTS = 8
MIN_RADIUS_PX = 3
DEPTH_JITTER = 0.002  # a tie-breaker between objects on one row, far below what depth metrics resolve
# (vertical third, horizontal third) of a box centre -> phrase, used for one-object captions.
REGIONS = {
    ("top", "left"): "in the top left", ("top", "middle"): "at the top", ("top", "right"): "in the top right",
    ("middle", "left"): "on the left", ("middle", "middle"): "in the center", ("middle", "right"): "on the right",
    ("bottom", "left"): "in the bottom left", ("bottom", "middle"): "at the bottom",
    ("bottom", "right"): "in the bottom right",
}
_COMBOS = tuple((s, c) for s in SHAPES for c in COLORS)


def relation_margin(image_size: int) -> float:
    """Centres must differ by more than this many pixels for "left of" / "above" to be said."""
    return 0.1 * image_size


def region_of(cx: float, cy: float, image_size: int) -> str:
    """The phrase ("in the top left", "in the center", ...) for a point, by thirds of the image."""
    third = image_size / 3.0
    col = "left" if cx < third else ("right" if cx >= 2 * third else "middle")
    row = "top" if cy < third else ("bottom" if cy >= 2 * third else "middle")
    return REGIONS[(row, col)]


# ---------------------------------------------------------------------------------- the world
class ShapesWorld:
    """An endless, seeded dataset of shape scenes: ``ShapesWorld(64, seed=0)[i]`` is a sample dict.

    Args:
        image_size: side S of the square images, 16..512; object sizes scale with it.
        seed: non-negative int; with the index it fixes the sample on any machine.
        max_objects, min_objects: each scene has between these many objects (1..8); a crowded
            scene may end up with fewer than drawn, never fewer than ``min_objects``.
        length: what ``len()`` reports (the world itself is unbounded); any index >= 0 works.
    """

    def __init__(self, image_size: int = 64, seed: int = 0, max_objects: int = 4, min_objects: int = 1,
                 length: int = 2**31 - 1):
        for name, value in (("image_size", image_size), ("seed", seed), ("max_objects", max_objects),
                            ("min_objects", min_objects), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"ShapesWorld {name} must be an int, got {value!r}")
        if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
            raise InputError(f"ShapesWorld image_size={image_size} is out of range; "
                             f"use {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels")
        if seed < 0:
            raise InputError(f"ShapesWorld seed={seed} is negative; use a seed >= 0")
        if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
            raise InputError(f"ShapesWorld needs 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got "
                             f"min_objects={min_objects}, max_objects={max_objects}; adjust them")
        if length < 1:
            raise InputError(f"ShapesWorld length={length} must be positive")
        self.image_size, self.seed = int(image_size), int(seed)
        self.max_objects, self.min_objects, self.length = int(max_objects), int(min_objects), int(length)

    def __repr__(self) -> str:
        return (f"ShapesWorld(image_size={self.image_size}, seed={self.seed}, "
                f"max_objects={self.max_objects}, min_objects={self.min_objects})")

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(self.length))

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.start or 0, index.stop, index.step or 1
            if stop is None or start < 0 or stop < 0 or step < 1:
                raise InputError(f"ShapesWorld slice {index} must have a non-negative start and stop "
                                 "and a positive step, e.g. world[0:16]")
            return [self[i] for i in range(start, stop, step)]
        return self.sample(index)

    def take(self, n: int, start: int = 0) -> Iterator[dict]:
        """Samples ``start .. start + n - 1``."""
        return (self[i] for i in range(start, start + n))

    # -------------------------------------------------------------- scene generation
    def _check_index(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise InputError(f"ShapesWorld index must be an int >= 0, got {index!r}")
        return int(index)

    def _scene(self, index: int, rand: _Rand) -> list[_Obj]:
        """Place the objects of sample ``index`` (in canonical order, visible masks filled in)."""
        S = self.image_size
        n_target = self.min_objects + int(rand() * (self.max_objects - self.min_objects + 1))
        objs: list[_Obj] = []
        owner = np.full((S, S), -1, dtype=np.int8)  # which object each pixel shows, -1 = background
        depth_of = np.full(MAX_OBJECTS + 1, np.inf)  # depth_of[owner]: background (-1) is infinitely far
        visible: list[int] = []      # visible pixel count per object
        min_visible: list[int] = []  # the least each object may keep
        used: set[tuple[str, str]] = set()
        attempts = 0
        while len(objs) < n_target:
            attempts += 1
            if attempts > 60 * n_target:
                if len(objs) >= self.min_objects:
                    break
                raise DataError(f"could not place {self.min_objects} objects in a {S}x{S} shapes scene "
                                f"(index {index}); lower min_objects or raise image_size")
            shape, color = _COMBOS[int(rand() * len(_COMBOS))]
            size = SIZES[int(rand() * len(SIZES))]
            lo, hi = SIZE_RADIUS[size]
            r = max(MIN_RADIUS_PX + (size == "large"), int(round((lo + (hi - lo) * rand()) * S)))
            span = S - 2 * r  # centres keep the whole shape inside the image
            cx, cy = r + int(rand() * span), r + int(rand() * span)
            depth = round(_floor_depth(cy + r, S) + DEPTH_JITTER * (rand() - 0.5), 4)
            if (shape, color) in used or any(o.depth == depth for o in objs):
                continue
            # Same-coloured objects must not touch (they would read as one blob).
            if any(o.color == color and abs(o.cx - cx) <= o.r + r + 1 and abs(o.cy - cy) <= o.r + r + 1
                   for o in objs):
                continue
            cand = _Obj(shape, color, size, r, cx, cy, depth)
            need = _min_visible(shape, r)
            stamp = _stamp(shape, r)
            # Windows that meet the candidate's: only these objects can occlude it or be occluded.
            near = [k for k, o in enumerate(objs) if abs(o.cx - cx) <= o.r + r and abs(o.cy - cy) <= o.r + r]
            win = owner[cand.ys, cand.xs]  # a view: writing into it paints the scene
            if near:
                # Painter's algorithm, order-free: the candidate covers what is farther than it.
                take = stamp & (depth_of[win] > depth)
                taken = np.bincount((win[take] + 1).astype(np.intp), minlength=len(objs) + 1)[1:].tolist()
                if any(visible[k] - taken[k] < min_visible[k] for k in near):
                    continue  # it would hide an object placed earlier
                n_take = int(np.count_nonzero(take))
                if n_take < need:
                    continue  # it would itself be hidden
                visible = [v - t for v, t in zip(visible, taken)]
                for k in near:
                    objs[k].clean = cand.clean = False
            else:
                take, n_take = stamp, _stamp_area(shape, r)
            win[take] = len(objs)
            depth_of[len(objs)] = depth
            visible.append(n_take)
            min_visible.append(need)
            used.add((shape, color))
            objs.append(cand)
        for k, o in enumerate(objs):
            o.visible = visible[k]
            if o.clean:  # no other window meets this one: the stamp is all visible
                o.vis = _stamp(o.shape, o.r)
                c0, r0, c1, r1 = _stamp_extent(o.shape, o.r)
            else:
                o.vis = owner[o.ys, o.xs] == k
                rows, cols = np.flatnonzero(o.vis.any(axis=1)), np.flatnonzero(o.vis.any(axis=0))
                c0, r0, c1, r1 = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
            x0, y0 = o.cx - o.r, o.cy - o.r
            o.box = (float(x0 + c0), float(y0 + r0), float(x0 + c1), float(y0 + r1))
            o.center = ((o.box[0] + o.box[2]) / 2.0, (o.box[1] + o.box[3]) / 2.0)
        # Canonical order: left to right by box centre, then top to bottom.
        objs.sort(key=lambda o: o.center)
        return objs

    def _paste(self, objs: list[_Obj], base: np.ndarray, values) -> np.ndarray:
        out = base.copy()
        for o, value in zip(objs, values):
            out[o.ys, o.xs][o.vis] = value
        return out

    def _image(self, objs: list[_Obj]) -> Image.Image:
        S = self.image_size
        packed = self._paste(objs, _background(S)[0], [_PACKED[o.color] for o in objs])
        return Image.frombytes("RGB", (S, S), memoryview(packed), "raw", "RGBX")

    def image(self, index: int) -> Image.Image:
        """Only the picture of sample ``index`` (what ``world[index]["image"]`` is), faster."""
        index = self._check_index(index)
        return self._image(self._scene(index, _Rand(self.seed, index)))

    def layout(self, index: int) -> list[dict]:
        """How sample ``index`` was drawn, object by object in the order of its ``objects``:
        shape, colour, size, centre pixel, radius, depth and the full (unoccluded) mask.

        The masks in ``world[index]`` are what remains visible of these after nearer objects
        are painted over farther ones; tests use this to check exactly that.
        """
        index = self._check_index(index)
        out = []
        for o in self._scene(index, _Rand(self.seed, index)):
            full = np.zeros((self.image_size, self.image_size), dtype=bool)
            full[o.ys, o.xs] = _stamp(o.shape, o.r)
            out.append({"shape": o.shape, "color": o.color, "size": o.size, "center": (o.cx, o.cy),
                        "radius": o.r, "depth": o.depth, "full_mask": full})
        return out

    def sample(self, index: int) -> dict:
        """The full sample dict of DESIGN.md for ``index``."""
        index = self._check_index(index)
        S = self.image_size
        rand = _Rand(self.seed, index)  # one stream: the scene first, then the language
        objs = self._scene(index, rand)
        bg_depth = _background(S)[1]
        objects = []
        for o in objs:
            mask = np.zeros((S, S), dtype=bool)
            mask[o.ys, o.xs] = o.vis
            objects.append({"box": o.box, "shape": o.shape, "color": o.color, "size": o.size, "label": o.label,
                            "mask": mask, "depth": o.depth})
        uniqueness = _uniqueness(objs)
        largest = max(range(len(objs)), key=lambda k: (objs[k].visible, -objs[k].depth))
        return {
            "image": self._image(objs),
            "objects": objects,
            "depth": self._paste(objs, bg_depth, [o.depth for o in objs]),
            "caption": _caption(objs, S),
            "qa": _questions(objs, S, rand, uniqueness),
            "refexps": _refexps(objs, S, uniqueness),
            "label": objs[largest].shape,
        }


# ---------------------------------------------------------------------------------- language
def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _relation(a: _Obj, b: _Obj, S: int) -> str:
    """The canonical relation of ``a`` to ``b``: horizontal, else vertical, else depth."""
    m = relation_margin(S)
    (ax, ay), (bx, by) = a.center, b.center
    if bx - ax > m:
        return "left of"
    if ax - bx > m:
        return "right of"
    if by - ay > m:
        return "above"
    if ay - by > m:
        return "below"
    return "in front of" if a.depth < b.depth else "behind"


def _caption(objs: list[_Obj], S: int) -> str:
    listed = _join([_a(o.label) for o in objs])
    if len(objs) == 1:
        return f"{listed} {region_of(*objs[0].center, S)}."
    a, b = objs[0], objs[1]
    return f"{listed}. the {a.name} is {_relation(a, b, S)} the {b.name}."


def _uniqueness(objs: list[_Obj]) -> list[tuple[bool, bool, bool, bool, bool]]:
    """Per object: is its (shape, colour, size, size+shape, size+colour) unique in the scene?"""
    keys = [(o.shape, o.color, o.size, (o.size, o.shape), (o.size, o.color)) for o in objs]
    counts = Counter(k for row in keys for k in row)  # attribute values never collide across kinds
    return [tuple(counts[k] == 1 for k in row) for row in keys]


def _questions(objs: list[_Obj], S: int, rand: "_Rand", uniqueness) -> list[tuple[str, str]]:
    m = relation_margin(S)
    qa = [("how many objects are there?", NUMBER_WORDS[len(objs)])]
    for o, (u_shape, u_color, _, u_size_shape, u_size_color) in zip(objs, uniqueness):
        if u_shape:
            qa.append((f"what color is the {o.shape}?", o.color))
        elif u_size_shape:
            qa.append((f"what color is the {o.size} {o.shape}?", o.color))
        if u_color:
            qa.append((f"what shape is the {o.color} object?", o.shape))
        elif u_size_color:
            qa.append((f"what shape is the {o.size} {o.color} object?", o.shape))
        qa.append((f"what size is the {o.name}?", o.size))
    shapes = [o.shape for o in objs]
    colors = [o.color for o in objs]
    absent_shapes = [s for s in SHAPES if s not in shapes]
    absent_colors = [c for c in COLORS if c not in colors]
    for s in dict.fromkeys(shapes):
        qa.append((f"how many {PLURALS[s]} are there?", NUMBER_WORDS[shapes.count(s)]))
    if absent_shapes:
        qa.append((f"how many {PLURALS[absent_shapes[int(rand() * len(absent_shapes))]]} are there?", "zero"))
    for c in dict.fromkeys(colors):
        qa.append((f"how many {c} objects are there?", NUMBER_WORDS[colors.count(c)]))
    if absent_colors:
        qa.append((f"how many {absent_colors[int(rand() * len(absent_colors))]} objects are there?", "zero"))
    # Existence: every object present, and as many absent (shape, colour) pairs.
    present = {(o.shape, o.color) for o in objs}
    absent = [c for c in _COMBOS if c not in present]
    for o in objs:
        qa.append((f"is there {_a(o.name)}?", "yes"))
        s, c = absent.pop(int(rand() * len(absent)))
        qa.append((f"is there {_a(c + ' ' + s)}?", "no"))
    s = SHAPES[int(rand() * len(SHAPES))]
    qa.append((f"is there {_a(s)}?", "yes" if s in shapes else "no"))
    # Relative position, only where the margin makes the answer clear; the direction asked is
    # random so "yes" and "no" are equally likely.
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            a, b = objs[i], objs[j]
            (ax, ay), (bx, by) = a.center, b.center
            if abs(ax - bx) > m:
                word = "left of" if rand() < 0.5 else "right of"
                truth = (ax < bx) == (word == "left of")
                qa.append((f"is the {a.name} {word} the {b.name}?", "yes" if truth else "no"))
            if abs(ay - by) > m:
                word = "above" if rand() < 0.5 else "below"
                truth = (ay < by) == (word == "above")
                qa.append((f"is the {a.name} {word} the {b.name}?", "yes" if truth else "no"))
    return qa


_EXTREMES = (("leftmost", 0, 1), ("rightmost", 0, -1), ("topmost", 1, 1), ("bottommost", 1, -1))


def _extreme(mine: float, others: list[float], m: float) -> bool:
    """Is ``mine`` below every one of ``others`` (at least one) by more than the margin?"""
    return bool(others) and all(mine + m < x for x in others)


def _refexps(objs: list[_Obj], S: int, uniqueness) -> list[tuple[str, int]]:
    m = relation_margin(S)
    out = []
    for k, (o, (u_shape, u_color, u_size, u_size_shape, _)) in enumerate(zip(objs, uniqueness)):
        out.append((f"the {o.name}", k))
        out.append((f"the {o.label}", k))
        if u_shape:
            out.append((f"the {o.shape}", k))
        elif u_size_shape:
            out.append((f"the {o.size} {o.shape}", k))
        if u_color:
            out.append((f"the {o.color} object", k))
        if len(objs) == 1:
            continue
        if u_size:
            out.append((f"the {o.size} object", k))
        others = [p for p in objs if p is not o]
        twins = [p for p in others if p.shape == o.shape]  # "the leftmost star" among 2+ stars
        for word, axis, sign in _EXTREMES:
            mine = sign * o.center[axis]
            if _extreme(mine, [sign * p.center[axis] for p in others], m):
                out.append((f"the {word} object", k))
            if twins and len(twins) < len(others) and _extreme(mine, [sign * p.center[axis] for p in twins], m):
                out.append((f"the {word} {o.shape}", k))
    return out


def shapes_texts(n: int, seed: int = 0, image_size: int = 64, max_objects: int = 4) -> Iterator[str]:
    """Every caption, question, answer and referring expression of samples 0..n-1 (tokenizer corpus)."""
    world = ShapesWorld(image_size=image_size, seed=seed, max_objects=max_objects)
    for i in range(n):
        s = world[i]
        yield s["caption"]
        for q, a in s["qa"]:
            yield q
            yield a
        for expression, _ in s["refexps"]:
            yield expression
