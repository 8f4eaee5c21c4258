"""Image pairs of the shapes world with true and false statements about them (NLVR2-style reasoning).

``ShapesPairs(64, seed=0)[i]`` is a dict, the same for the same seed and index on any machine:

- ``images``: ``[left, right]``, scenes ``2 i`` and ``2 i + 1`` of ``ShapesWorld(64, seed=0)``;
- ``objects``: ``[left objects, right objects]``, those scenes' object dicts (box, shape, colour,
  size, label, mask, depth);
- ``statements``: ``[(text, "true" | "false"), ...]``, as many true as false, each comparing the
  two images the way NLVR2 (Suhr et al., 2019) does: counts ("the left image has more circles
  than the right image", "the two images show the same number of objects", "the right image has
  exactly two objects") and presence ("both images contain a red object", "only the right image
  has a star", "neither image has a blue square", "at least one image has a large object").

Statements come in pairs of one wording, one true and one false ("neither image has a cross",
"neither image has a circle"), so a wording alone does not give the answer away.
Every label is computed from the objects; the words are the shapes world's (shape and colour
names, sizes, number words) plus the few that compare two images. The statements are drawn from
their own SplitMix64 stream (seed, index, a fixed salt), after the scenes, so the pictures are
exactly the shapes world's.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import InputError
from .formats import WorldSource
from .language import NUMBER_WORDS, article
from .shapes import MAX_IMAGE_SIZE, MAX_OBJECTS, MIN_IMAGE_SIZE, PLURALS, ShapesWorld
from .shapes_draw import COLORS, SHAPES, SIZES, _Rand
from .world import SeededWorld

__all__ = ["ShapesPairs", "ShapesPairsSource", "pair_statements", "TRUE", "FALSE", "SIDES", "FAMILIES"]

TRUE, FALSE = "true", "false"
SIDES = ("left", "right")
FAMILIES = ("compare", "number", "presence")  # drawn uniformly, then a statement of the wanted truth in it
_SALT = 0x5041495253  # "PAIRS": the statements' stream, apart from the scenes'
_COMBOS = tuple((s, c) for s in SHAPES for c in COLORS)


# ---------------------------------------------------------------------------------- subjects
class _Subject:
    """What a statement counts or looks for: a test on an object and how to say one / several."""

    __slots__ = ("kind", "one", "many", "test")

    def __init__(self, kind: str, one: str, many: str, test):
        self.kind, self.one, self.many, self.test = kind, one, many, test

    def count(self, objects: list[dict]) -> int:
        return sum(1 for o in objects if self.test(o))


def _shape(s: str) -> _Subject:
    return _Subject("shape", article(s), PLURALS[s], lambda o: o["shape"] == s)


def _color(c: str) -> _Subject:
    return _Subject("color", article(f"{c} object"), f"{c} objects", lambda o: o["color"] == c)


def _combo(s: str, c: str) -> _Subject:
    return _Subject("combo", article(f"{c} {s}"), f"{c} {PLURALS[s]}", lambda o: o["shape"] == s and o["color"] == c)


def _size(z: str) -> _Subject:
    return _Subject("size", article(f"{z} object"), f"{z} objects", lambda o: o["size"] == z)


_ANY = _Subject("any", "an object", "objects", lambda o: True)


def _draw(items: list, rand):
    return items[int(rand() * len(items))]


def _subjects(left: list[dict], right: list[dict], rand) -> tuple[list[_Subject], list[_Subject]]:
    """(subjects to count: every object, each present shape and colour; subjects to look for: each
    present shape, colour and shape+colour with one absent of each, and both sizes)."""
    both = left + right
    shapes = list(dict.fromkeys(o["shape"] for o in both))
    colors = list(dict.fromkeys(o["color"] for o in both))
    combos = list(dict.fromkeys((o["shape"], o["color"]) for o in both))
    counted = [_ANY] + [_shape(s) for s in shapes] + [_color(c) for c in colors]
    looked = [_shape(s) for s in shapes] + [_color(c) for c in colors] + [_combo(*p) for p in combos]
    looked += [_size(z) for z in SIZES]
    absent = (([s for s in SHAPES if s not in shapes], _shape), ([c for c in COLORS if c not in colors], _color),
              ([p for p in _COMBOS if p not in combos], lambda p: _combo(*p)))
    for pool, make in absent:
        if pool:
            looked.append(make(_draw(pool, rand)))
    return counted, looked


def _number(n: int, subject: _Subject) -> str:
    return f"{NUMBER_WORDS[n]} {subject.one.split(' ', 1)[1] if n == 1 else subject.many}"


# ---------------------------------------------------------------------------------- statements
# Each generator returns (template, text, truth); a template is a wording with the subject left out.
def _compare(counted, L, R) -> list[tuple[str, str, bool]]:
    out = []
    for sub in counted:
        a, b = sub.count(L), sub.count(R)
        out += [("left more", f"the left image has more {sub.many} than the right image", a > b),
                ("right more", f"the right image has more {sub.many} than the left image", b > a),
                ("same number", f"the two images show the same number of {sub.many}", a == b)]
    return out


def _numbers(counted, L, R, rand) -> list[tuple[str, str, bool]]:
    """The true count of each side's objects and shapes, and a count one off (never zero); colours
    are compared only (fewer near-duplicate statements)."""
    out = []
    for sub in (s for s in counted if s.kind in ("any", "shape")):
        for side, objects in zip(SIDES, (L, R)):
            n = sub.count(objects)
            if n == 0:
                continue
            wrong = [m for m in (n - 1, n + 1) if 1 <= m < len(NUMBER_WORDS)]
            out.append(("exactly", f"the {side} image has exactly {_number(n, sub)}", True))
            out.append(("exactly", f"the {side} image has exactly {_number(_draw(wrong, rand), sub)}", False))
    return out


def _presence(looked, L, R) -> list[tuple[str, str, bool]]:
    out = []
    for sub in looked:
        a, b = sub.count(L) > 0, sub.count(R) > 0
        out += [("both", f"both images contain {sub.one}", a and b),
                ("only left", f"only the left image has {sub.one}", a and not b),
                ("only right", f"only the right image has {sub.one}", b and not a),
                ("neither", f"neither image has {sub.one}", not a and not b),
                ("at least one", f"at least one image has {sub.one}", a or b)]
    return out


def pair_statements(left: list[dict], right: list[dict], rand, per_side: int = 3) -> list[tuple[str, str]]:
    """Up to ``per_side`` true and as many false statements about two images' objects (dicts with
    ``shape``, ``color``, ``size``), in pairs: a family of :data:`FAMILIES` drawn uniformly, then a
    wording of it, then one true and one false statement of that wording: every wording is as often
    true as false, so it does not give the answer away.

    There is always at least one pair: "at least one image has ..." is true of a present object
    and false of an absent shape and colour (42 of them, at most 8 objects)."""
    counted, looked = _subjects(left, right, rand)
    families = {"compare": _compare(counted, left, right), "number": _numbers(counted, left, right, rand),
                "presence": _presence(looked, left, right)}
    pools: dict[str, dict[str, dict[bool, list[str]]]] = {}
    for family in FAMILIES:
        for template, text, truth in families[family]:
            texts = pools.setdefault(family, {}).setdefault(template, {True: [], False: []})[truth]
            if text not in texts:
                texts.append(text)
    out = []
    for _ in range(per_side):
        ready = {f: [w for w, by in pools.get(f, {}).items() if by[True] and by[False]] for f in FAMILIES}
        ready = {f: ws for f, ws in ready.items() if ws}
        if not ready:
            break
        family = _draw(sorted(ready, key=FAMILIES.index), rand)
        by_truth = pools[family][_draw(ready[family], rand)]
        for truth in (True, False):
            texts = by_truth[truth]
            out.append((texts.pop(int(rand() * len(texts))), TRUE if truth else FALSE))
    return out


# ---------------------------------------------------------------------------------- the world
class ShapesPairs(SeededWorld):
    """An endless, seeded dataset of shapes-world image pairs with statements: ``ShapesPairs(64, seed=0)[i]``.

    Args:
        image_size, seed, max_objects, min_objects, length: as :class:`~unio.data.shapes.ShapesWorld`'s;
            pair ``i`` shows its scenes ``2 i`` (left) and ``2 i + 1`` (right).
        statements: true statements per pair (as many false ones come with them), at least 1.
    """

    MAX_OBJECTS = MAX_OBJECTS

    def __init__(self, image_size: int = 64, seed: int = 0, max_objects: int = 4, min_objects: int = 1,
                 statements: int = 3, length: int = 2**31 - 1):
        self._set_common(image_size, seed, max_objects, min_objects, length)
        if isinstance(statements, bool) or not isinstance(statements, (int, np.integer)) or statements < 1:
            raise InputError(f"ShapesPairs statements={statements!r} must be an int >= 1 (true statements per "
                             "pair; as many false ones come with them)")
        self.statements = int(statements)
        self.world = ShapesWorld(self.image_size, self.seed, self.max_objects, self.min_objects)

    def _check_image_size(self, image_size: int) -> None:
        if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
            raise InputError(f"ShapesPairs image_size={image_size} is out of range; "
                             f"use {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels")

    def __repr__(self) -> str:
        return (f"ShapesPairs(image_size={self.image_size}, seed={self.seed}, max_objects={self.max_objects}, "
                f"min_objects={self.min_objects}, statements={self.statements})")

    def sample(self, index: int) -> dict:
        index = self._check_index(index)
        left, right = self.world[2 * index], self.world[2 * index + 1]
        rand = _Rand(self.seed, index, _SALT)
        return {"images": [left["image"], right["image"]],
                "objects": [left["objects"], right["objects"]],
                "statements": pair_statements(left["objects"], right["objects"], rand, self.statements)}

    def texts(self, n: int) -> Iterator[str]:
        """Every statement of pairs 0..n-1 and the two answers (tokenizer corpus)."""
        yield from (TRUE, FALSE)
        for i in range(n):
            for text, _ in self[i]["statements"]:
                yield text


class ShapesPairsSource(WorldSource):
    """Shapes-world image pairs with statements (``shapes-pairs:SEED`` specs, recipes' entries):
    endless unless ``n`` is given. Its samples have ``images`` (two), no ``image``: tasks that read
    one image leave them alone."""

    name = "shapes-pairs"
    OPTIONS = {"seed": 0, "image_size": 64, "max_objects": 4, "min_objects": 1, "statements": 3}

    def __init__(self, seed=0, image_size=64, max_objects=4, min_objects=1, statements=3, on_bad_record="error"):
        super().__init__(on_bad_record)
        self.world = ShapesPairs(image_size=int(image_size), seed=int(seed), max_objects=int(max_objects),
                                 min_objects=int(min_objects), statements=int(statements))
        self.n: int | None = None

    def texts(self, limit: int | None = None) -> list[str]:
        return list(self.world.texts(min(limit or 5000, len(self))))

    def _labels(self) -> dict[str, list[str]]:
        return {"image": [], "object": []}  # no closed label set of images or objects: statements are judged
