"""The fashion-scenes world: seeded multi-object scenes composed from real Fashion-MNIST photos.

``FashionScenes(image_size=128, seed=0, split="train")[i]`` is a sample dict of the shared schema
(DESIGN.md): ``image``, ``objects``, ``caption``, ``qa``, ``refexps``, ``label``. Each scene places
1..``max_objects`` product photos of Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017) on a light plain
or gradient background, each at one of two integer scales ("small": 14 px per 64 px of image,
"large": twice that) and tinted with one of six colours that the language names ("a large red
dress"). It is the shapes world's counterpart with real photographs: the same schema, the same
language templates with Fashion-MNIST's ten classes ("t-shirt", "trouser", "pullover", "dress",
"coat", "sandal", "shirt", "sneaker", "bag", "ankle boot") for shapes, and the same guarantees:

- Same seed, split and index -> the same sample (identical bytes) on any machine, given the
  official Fashion-MNIST files (checked by their sha256 when the world opens). Every random draw
  is a SplitMix64 stream (:mod:`unio.data.shapes_draw`) seeded with (seed, index, split); every
  pixel operation is integer arithmetic in numpy (:mod:`unio.data.fashion_items`): nearest
  repetition and 2x2 box averages to scale, a threshold for the silhouette, integer tinting, no
  resampling filter, font or anti-aliasing.
- ``split="train"`` composes scenes from the 60,000 training photos only, ``split="test"`` from
  the 10,000 test photos only; each object records its photo (``item``, the index in its split's
  file). Classes are drawn uniformly, then a photo of the class; photos with fewer than 64 pixels
  of intensity >= 32 (faint or near-empty ones) are never used.
- An item's pixels are those of its photo with intensity >= 32 (after scaling); only those are
  painted, so every non-background pixel belongs to exactly one object and an object's ``mask`` is
  exactly the pixels painted with it: its silhouette minus what nearer items cover. Items whose
  silhouette reaches lower in the picture are nearer (ties: the later placed) and cover farther
  ones. No object keeps less than 70% of its silhouette (and 8 pixels), boxes are tight around
  the visible mask, and the picture alone tells items from background (an item pixel's darkest
  channel is below 128, a background pixel's above 180).
- Every (class, colour) pair appears at most once per scene, items of one colour never touch, and
  any two items' centres differ by more than a tenth of the image horizontally or vertically, so
  "the red dress" names one object and a relation between two objects can be said.

There is no depth map: pasted product photos have no depth worth learning, so the depth task
skips this data (``unio eval`` lists it under ``run.skipped_tasks``). Backgrounds are synthetic:
crops of bundled photos (matplotlib's or scikit-learn's sample images) were left out because
those are JPEG files, whose decoded pixels may differ between libjpeg versions, and because they
are not installed everywhere.

``unio fashion`` (:mod:`unio.cli.fashion`) writes previews and the text corpus of this world.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from PIL import Image

from ..errors import DataError, InputError
from .fashion_items import (BACKGROUNDS, CATEGORIES, COLORS, MIN_ITEM_PIXELS, PLURALS, SIZES, THRESHOLD, FashionItems,
                            background, item_sides, load_items, scale_item, tint)
from .fashion_language import caption, questions, refexps, uniqueness
from .formats import WorldSource, sample_texts
from .shapes_draw import _Rand
from .world import SeededWorld

__all__ = ["FashionScenes", "FashionScenesSource", "fashion_classes", "fashion_texts", "CATEGORIES", "COLORS",
           "SIZES", "PLURALS", "MAX_OBJECTS", "MIN_VISIBLE_FRACTION", "MIN_VISIBLE_PIXELS", "THRESHOLD",
           "MIN_ITEM_PIXELS", "IMAGE_SIZES"]

MAX_OBJECTS = 6
MIN_VISIBLE_FRACTION = 0.7
MIN_VISIBLE_PIXELS = 8
IMAGE_SIZES = tuple(range(64, 513, 64))  # item sides are whole multiples of 14 px
_STREAM = {"train": 0xFA5410, "test": 0xFA5411}  # keys the random stream apart from other worlds'


def fashion_classes() -> dict[str, list[str]]:
    """Label sets of the world: image classes (classify) and object labels (detect, regions)."""
    return {"image": list(CATEGORIES),
            "object": [f"{size} {color} {c}" for size in SIZES for color in COLORS for c in CATEGORIES]}


class _Item:
    """One placed item: its photo, where its window lies, its nearness, and (once the scene is done)
    its visible mask inside the window, tight box and box centre."""
    __slots__ = ("category", "color", "size", "item", "x0", "y0", "side", "z", "key", "pixels", "full", "extent",
                 "vis", "visible", "box", "center")

    def __init__(self, category, color, size, item, x0, y0, side, pixels, full):
        self.category, self.color, self.size, self.item = category, color, size, item
        self.x0, self.y0, self.side, self.pixels, self.full = x0, y0, side, pixels, full
        rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
        self.extent = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)

    @property
    def window(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.side), slice(self.x0, self.x0 + self.side)

    @property
    def name(self) -> str:  # unique within a scene by construction
        return f"{self.color} {self.category}"

    @property
    def label(self) -> str:
        return f"{self.size} {self.color} {self.category}"


class FashionScenes(SeededWorld):
    """An endless, seeded dataset of Fashion-MNIST scenes: ``FashionScenes(128, seed=0)[i]``.

    Args:
        image_size: side S of the square images, a multiple of 64 in 64..512 (items are 14*S/64
            and 28*S/64 px).
        seed: non-negative int; with the split and the index it fixes the sample.
        split: "train" (scenes of training photos) or "test" (of test photos).
        max_objects, min_objects: each scene has between these many items (1..6); a crowded scene
            may end up with fewer than drawn, never fewer than ``min_objects``.
        root: folder of the Fashion-MNIST IDX files (default ``$UNIO_FASHION_MNIST``, else
            /usr/share/datasets/fashion-mnist of Debian's dataset-fashion-mnist).
        verify: check the files' sha256 against the official ones (scenes are defined on those).
        length: what ``len()`` reports; any index >= 0 works.
    """

    MAX_OBJECTS = MAX_OBJECTS

    def __init__(self, image_size: int = 128, seed: int = 0, split: str = "train", max_objects: int = 4,
                 min_objects: int = 1, root=None, verify: bool = True, length: int = 2**31 - 1):
        if split not in _STREAM:
            raise InputError(f"FashionScenes split={split!r}: use 'train' (training photos) or 'test' (test photos)")
        self._set_common(image_size, seed, max_objects, min_objects, length)
        self.split = split
        self.root, self.verify = root, bool(verify)
        self.items: FashionItems = load_items(root, split, verify)  # DataError saying how to install them
        self.sides = item_sides(self.image_size)

    def _check_image_size(self, image_size: int) -> None:
        if image_size not in IMAGE_SIZES:
            raise InputError(f"FashionScenes image_size={image_size} is not available; use a multiple of 64 in "
                             "64..512 (e.g. 128)")

    def __getstate__(self) -> dict:  # DataLoader workers re-read the photos (once per process), not a pickle
        return {k: v for k, v in self.__dict__.items() if k != "items"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.items = load_items(self.root, self.split, self.verify)

    def __repr__(self) -> str:
        return (f"FashionScenes(image_size={self.image_size}, seed={self.seed}, split={self.split!r}, "
                f"max_objects={self.max_objects}, min_objects={self.min_objects})")

    # -------------------------------------------------------------- scene generation
    def _scene(self, index: int, rand: _Rand) -> tuple[list[_Item], int]:
        """Place the items of sample ``index``; (items in canonical order, background kind)."""
        S = self.image_size
        margin = 0.1 * S
        kind = int(rand() * len(BACKGROUNDS))
        n_target = self._object_count(rand)
        objs: list[_Item] = []
        owner = np.full((S, S), -1, dtype=np.int8)  # which item each pixel shows, -1 = background
        z_of = np.full(MAX_OBJECTS + 1, -1, dtype=np.int64)  # z_of[owner]: background (-1) is farthest
        visible: list[int] = []
        need: list[int] = []
        used: set[tuple[str, str]] = set()
        for _ in self._attempts(objs, n_target, index, "items", "fashion"):
            c = int(rand() * len(CATEGORIES))
            color = tuple(COLORS)[int(rand() * len(COLORS))]
            size = SIZES[int(rand() * len(SIZES))]
            pool = self.items.by_class[c]
            item = int(pool[int(rand() * len(pool))])
            side = self.sides[size]
            x0, y0 = int(rand() * (S - side + 1)), int(rand() * (S - side + 1))
            if (CATEGORIES[c], color) in used:
                continue
            pixels = scale_item(self.items.images[item], side)
            full = pixels >= THRESHOLD
            if np.count_nonzero(full) < MIN_VISIBLE_PIXELS:  # a thin photo averaged away at the smallest scale
                continue
            cand = _Item(CATEGORIES[c], color, size, item, x0, y0, side, pixels, full)
            ex = cand.extent
            # Items of one colour never touch (they would read as one), and any two centres are
            # apart by more than the margin along some axis (a relation between them can be said).
            if any(o.color == color and ex[0] <= o.extent[2] and o.extent[0] <= ex[2] and ex[1] <= o.extent[3]
                   and o.extent[1] <= ex[3] for o in objs):
                continue
            cx, cy = (ex[0] + ex[2]) / 2.0, (ex[1] + ex[3]) / 2.0
            if any(abs(cx - (o.extent[0] + o.extent[2]) / 2.0) <= margin
                   and abs(cy - (o.extent[1] + o.extent[3]) / 2.0) <= margin for o in objs):
                continue
            cand.z = ex[3] * 16 + len(objs)  # the lower its silhouette reaches, the nearer; then the later
            win = owner[cand.window]  # a view: writing into it paints the scene
            take = cand.full & (z_of[win] < cand.z)  # painter's algorithm, order-free
            taken = np.bincount((win[take] + 1).astype(np.intp), minlength=len(objs) + 1)[1:].tolist()
            if any(v - t < n for v, t, n in zip(visible, taken, need)):
                continue  # it would hide an item placed earlier beyond recognition
            n_take = int(np.count_nonzero(take))
            own_need = max(MIN_VISIBLE_PIXELS, int(np.ceil(MIN_VISIBLE_FRACTION * np.count_nonzero(cand.full))))
            if n_take < own_need:
                continue  # it would itself be hidden
            visible = [v - t for v, t in zip(visible, taken)]
            win[take] = len(objs)
            cand.key = len(objs)
            z_of[cand.key] = cand.z
            visible.append(n_take)
            need.append(own_need)
            used.add((cand.category, color))
            objs.append(cand)
        for o in objs:
            o.visible = visible[o.key]
            o.vis = owner[o.window] == o.key
            rows, cols = np.flatnonzero(o.vis.any(axis=1)), np.flatnonzero(o.vis.any(axis=0))
            o.box = (float(o.x0 + cols[0]), float(o.y0 + rows[0]), float(o.x0 + cols[-1] + 1),
                     float(o.y0 + rows[-1] + 1))
            o.center = ((o.box[0] + o.box[2]) / 2.0, (o.box[1] + o.box[3]) / 2.0)
        objs.sort(key=lambda o: o.center)  # canonical order: left to right, then top to bottom
        return objs, kind

    def _image(self, objs: list[_Item], kind: int) -> Image.Image:
        canvas = background(self.image_size, kind).copy()
        for o in objs:
            canvas[o.window][o.vis] = tint(o.pixels[o.vis], COLORS[o.color])
        return Image.fromarray(canvas, "RGB")

    def image(self, index: int) -> Image.Image:
        """Only the picture of sample ``index`` (what ``world[index]["image"]`` is)."""
        index = self._check_index(index)
        return self._image(*self._scene(index, self._rand(index)))

    def _rand(self, index: int) -> _Rand:
        return _Rand(self.seed, index, _STREAM[self.split])

    def layout(self, index: int) -> list[dict]:
        """How sample ``index`` was composed, item by item in the order of its ``objects``: class,
        colour, size, the photo's index in the split (``item``), its window (x0, y0, side), its
        nearness ``z`` (larger covers smaller), and its full (unoccluded) silhouette. The masks of
        ``world[index]`` are what remains visible of these; tests use this to check exactly that."""
        index = self._check_index(index)
        S = self.image_size
        objs, kind = self._scene(index, self._rand(index))
        out = []
        for o in objs:
            full = np.zeros((S, S), dtype=bool)
            full[o.window] = o.full
            out.append({"category": o.category, "color": o.color, "size": o.size, "item": o.item,
                        "window": (o.x0, o.y0, o.side), "z": o.z, "full_mask": full, "background": kind})
        return out

    def sample(self, index: int) -> dict:
        """The full sample dict for ``index`` (no ``depth``: see the module's documentation)."""
        index = self._check_index(index)
        S = self.image_size
        rand = self._rand(index)  # one stream: the scene first, then the language
        objs, kind = self._scene(index, rand)
        objects = []
        for o in objs:
            mask = np.zeros((S, S), dtype=bool)
            mask[o.window] = o.vis
            objects.append({"box": o.box, "category": o.category, "color": o.color, "size": o.size,
                            "label": o.label, "mask": mask, "item": o.item})
        unique = uniqueness(objs)
        largest = max(range(len(objs)), key=lambda k: (objs[k].visible, objs[k].z))
        return {
            "image": self._image(objs, kind),
            "objects": objects,
            "caption": caption(objs, S),
            "qa": questions(objs, S, rand, unique),
            "refexps": refexps(objs, S, unique),
            "label": objs[largest].category,
        }


def fashion_texts(n: int, seed: int = 0, split: str = "train", image_size: int = 128, max_objects: int = 4,
                  root=None) -> Iterator[str]:
    """Every caption, question, answer and referring expression of samples 0..n-1 (tokenizer corpus)."""
    world = FashionScenes(image_size=image_size, seed=seed, split=split, max_objects=max_objects, root=root)
    yield from world.texts(n)


# ---------------------------------------------------------------------------------- data source
class FashionScenesSource(WorldSource):
    """The fashion-scenes world as a data source (``fashion-scenes:SEED`` specs, recipes' entries):
    endless unless ``n`` is given. ``split`` must be named (``train`` in training recipes, ``test``
    to evaluate); the spec string ``fashion-scenes:SEED`` means the test split."""

    name = "fashion-scenes"
    OPTIONAL_PATHS = ("root",)
    OPTIONS = {"seed": 0, "split": None, "image_size": 128, "max_objects": 4, "min_objects": 1, "verify": True}

    def __init__(self, seed=0, split=None, image_size=128, max_objects=4, min_objects=1, verify=True, root=None,
                 on_bad_record="error"):
        super().__init__(on_bad_record)
        if split not in ("train", "test"):
            raise DataError(f"the fashion-scenes source needs split: train (scenes of the training photos, for "
                            f"training) or split: test (of the test photos, for evaluation); got {split!r}")
        self.world = FashionScenes(image_size=int(image_size), seed=int(seed), split=split,
                                   max_objects=int(max_objects), min_objects=int(min_objects), root=root,
                                   verify=bool(verify))
        self.n: int | None = None

    def texts(self, limit: int | None = None) -> list[str]:
        n = min(limit or 20000, len(self))
        return [t for i in range(n) for t in sample_texts(self.world[i])]

    def _labels(self) -> dict[str, list[str]]:
        return fashion_classes()
