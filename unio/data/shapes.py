"""The shapes world: a procedural, seeded, endless dataset every unio task can train on.

Each sample is a small scene of flat-coloured shapes on a light background with full ground
truth: visible masks, tight boxes, a per-pixel depth map, a caption, question/answer pairs,
referring expressions and a class label (the schema of DESIGN.md). It plays the role CLEVR
(Johnson et al., 2017) and Sort-of-CLEVR play in the literature: small enough to learn on a
CPU, rich enough to exercise captioning, VQA, detection, grounding, segmentation and depth.
Besides, ``hypotheses`` for visual entailment (SNLI-VE, Xie et al., 2019): ``(text, "entailment"
| "neutral" | "contradiction")``, two of each label, computed from the objects; every object is
visible, so neutral ones speak of what no picture shows and their wording gives them away, as
SNLI-VE's partly does (:func:`unio.data.language.hypotheses`). And ``absent``: expressions in the
grammar of the referring expressions that name no object ("not there" for ground and segment).

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

from typing import Iterator

import numpy as np
from PIL import Image

from ..errors import InputError
from .language import (NUMBER_WORDS, absent_expressions, article, attribute_questions, count_questions,
                       existence_questions, hypotheses, join, refexps, relation, relation_margin, relative_questions,
                       thirds, uniqueness)
from .shapes_draw import (COLORS, MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS, OBJECT_DEPTH, SHAPES, SIZE_RADIUS, SIZES,
                          _PACKED, _background, _floor_depth, _min_visible, _Obj, _Rand, _stamp, _stamp_area,
                          _stamp_extent)
from .world import SeededWorld

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


def region_of(cx: float, cy: float, image_size: int) -> str:
    """The phrase ("in the top left", "in the center", ...) for a point, by thirds of the image."""
    return REGIONS[thirds(cx, cy, image_size)]


# ---------------------------------------------------------------------------------- the world
class ShapesWorld(SeededWorld):
    """An endless, seeded dataset of shape scenes: ``ShapesWorld(64, seed=0)[i]`` is a sample dict.

    Args:
        image_size: side S of the square images, 16..512; object sizes scale with it.
        seed: non-negative int; with the index it fixes the sample on any machine.
        max_objects, min_objects: each scene has between these many objects (1..8); a crowded
            scene may end up with fewer than drawn, never fewer than ``min_objects``.
        length: what ``len()`` reports (the world itself is unbounded); any index >= 0 works.
    """

    MAX_OBJECTS = MAX_OBJECTS

    def __init__(self, image_size: int = 64, seed: int = 0, max_objects: int = 4, min_objects: int = 1,
                 length: int = 2**31 - 1):
        self._set_common(image_size, seed, max_objects, min_objects, length)

    def _check_image_size(self, image_size: int) -> None:
        if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
            raise InputError(f"ShapesWorld image_size={image_size} is out of range; "
                             f"use {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels")

    def __repr__(self) -> str:
        return (f"ShapesWorld(image_size={self.image_size}, seed={self.seed}, "
                f"max_objects={self.max_objects}, min_objects={self.min_objects})")

    # -------------------------------------------------------------- scene generation
    def _scene(self, index: int, rand: _Rand) -> list[_Obj]:
        """Place the objects of sample ``index`` (in canonical order, visible masks filled in)."""
        S = self.image_size
        n_target = self._object_count(rand)
        objs: list[_Obj] = []
        owner = np.full((S, S), -1, dtype=np.int8)  # which object each pixel shows, -1 = background
        depth_of = np.full(MAX_OBJECTS + 1, np.inf)  # depth_of[owner]: background (-1) is infinitely far
        visible: list[int] = []      # visible pixel count per object
        min_visible: list[int] = []  # the least each object may keep
        used: set[tuple[str, str]] = set()
        for _ in self._attempts(objs, n_target, index, "objects", "shapes"):
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
        unique = uniqueness(objs, "shape")
        largest = max(range(len(objs)), key=lambda k: (objs[k].visible, -objs[k].depth))
        sample = {
            "image": self._image(objs),
            "objects": objects,
            "depth": self._paste(objs, bg_depth, [o.depth for o in objs]),
            "caption": _caption(objs, S),
            "qa": _questions(objs, S, rand, unique),
            "refexps": refexps(objs, S, unique, "shape"),
            "label": objs[largest].shape,
        }
        # Drawn after every draw above, so the fields above stay what they were before these existed.
        sample["hypotheses"] = hypotheses(objs, S, rand, "shape", SHAPES, COLORS, SIZES, PLURALS)
        sample["absent"] = absent_expressions(objs, rand, "shape", SHAPES, COLORS, SIZES)
        return sample


# ---------------------------------------------------------------------------------- language
# The templates the fashion world shares live in unio.data.language; what is the shapes world's
# own: a relation falls back on depth, the caption relates the first two objects, and no
# extremes or regions are asked.
def _relation(a: _Obj, b: _Obj, S: int) -> str:
    """The canonical relation of ``a`` to ``b``: horizontal, else vertical, else depth."""
    return relation(a, b, S) or ("in front of" if a.depth < b.depth else "behind")


def _caption(objs: list[_Obj], S: int) -> str:
    listed = join([article(o.label) for o in objs])
    if len(objs) == 1:
        return f"{listed} {region_of(*objs[0].center, S)}."
    first, second = objs[0], objs[1]
    return f"{listed}. the {first.name} is {_relation(first, second, S)} the {second.name}."


def _questions(objs: list[_Obj], S: int, rand: "_Rand", unique) -> list[tuple[str, str]]:
    qa = [("how many objects are there?", NUMBER_WORDS[len(objs)])]
    qa += attribute_questions(objs, unique, "shape", "what shape is")
    qa += count_questions(objs, rand, "shape", SHAPES, COLORS, PLURALS)
    qa += existence_questions(objs, rand, "shape", SHAPES, _COMBOS)
    qa += relative_questions(objs, S, rand)
    return qa


def shapes_texts(n: int, seed: int = 0, image_size: int = 64, max_objects: int = 4) -> Iterator[str]:
    """Every caption, question, answer and referring expression of samples 0..n-1 (tokenizer corpus)."""
    world = ShapesWorld(image_size=image_size, seed=seed, max_objects=max_objects)
    yield from world.texts(n)
