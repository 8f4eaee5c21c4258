"""A non-learned judge of shapes-world pictures: what a picture shows, and whether a text holds of it.

Text-to-image figures judged by the model that drew the pictures measure the model reading its own
output; a choice of candidates made by that same reading is then optimised against the judge. This
judge has no learned part at all, so it can grade any generator of shapes-world pictures, the
tokenizer's reconstructions and the world's own images alike:

1. **Palette.** Every pixel goes to the nearest of the world's seven colours or to the background
   (the vertical grey gradient the world paints, :data:`~unio.data.shapes_draw.BACKGROUND_RGB`);
   a pixel farther than :data:`MAX_COLOR_DISTANCE` from all of them is *unknown*.
2. **Components.** Per colour, a morphological opening (3x3 cross) removes one-pixel fringes (the
   blend of two colours along an edge reads as a third colour), then 4-connected components larger
   than :func:`min_area` are the candidate objects; the opening's neighbours are given back so an
   object keeps its edge.
3. **Template fit.** Each component is fitted by the world's own boolean stamps (every shape, every
   radius the world can draw, centres around the component's extent) by intersection over union,
   where stamp pixels covered by another colour or by unknown pixels count neither way (something
   nearer may hide them, as the world's occlusion does). The best stamp gives the shape and the
   radius, and the radius the size (small below :data:`SIZE_SPLIT` of the side, large above). Two
   pieces of one colour that one stamp fits better together are one object split by an occluder. A
   component no stamp fits to :data:`MIN_FIT` is an unrecognised object.
4. **Claims.** :func:`read_text` reads the objects a text asks for (``a``/``an``/number words +
   optional size and colour + shape; ``the ...`` only refers back), the world's relation sentence
   (``the red circle is left of the blue star``) and, for one object, its region (``in the top
   left``). :func:`judge` holds a picture to them: every object found with its attributes, nothing
   else drawn, the relation or region true of the fitted objects' positions (depth relations by
   the height of the object's base on the floor, as the world places them).

On the world's own images at 64 px the judge reads 1,000 of 1,000 pictures of the development seed
right (``benchmarks/vq_quality.py`` reports it beside the reconstructions).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..images import load_image
from .shapes import region_of
from .shapes_draw import BACKGROUND_RGB, COLORS, SHAPES, SIZE_RADIUS, _stamp, _stamp_extent

__all__ = ["Seen", "Claims", "Verdict", "read_picture", "read_text", "judge", "judge_many", "min_area",
           "MAX_COLOR_DISTANCE", "MIN_FIT", "SIZE_SPLIT"]

MAX_COLOR_DISTANCE = 60.0   # RGB distance beyond which a pixel is of no palette colour (unknown)
MIN_FIT = 0.6               # the least template IoU for a component to count as a shape of the world
NEAR_TIE = 0.02             # fits this close to the best are ties, broken by the fewest hidden pixels
MIN_SHARE = 0.1             # a pixel with less of a colour than this (over the background) has none
SIZE_SPLIT = (SIZE_RADIUS["small"][1] + SIZE_RADIUS["large"][0]) / 2  # radius / side: small below, large above
_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[c] for c in _NAMES], dtype=np.float64)
_CROSS = ndimage.generate_binary_structure(2, 1)
_PLURAL = {"circles": "circle", "squares": "square", "triangles": "triangle", "diamonds": "diamond",
           "crosses": "cross", "stars": "star"}
_COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
_RELATIONS = ("left of", "right of", "above", "below", "in front of", "behind")
_REGION_PHRASES = ("in the top left", "in the top right", "in the bottom left", "in the bottom right", "at the top",
                   "at the bottom", "on the left", "on the right", "in the center")
_SHAPE_WORD = "|".join(sorted(list(SHAPES) + list(_PLURAL), key=len, reverse=True))
_COLOR_WORD = "|".join(_NAMES)
_MENTION = re.compile(rf"\b(?:(?P<det>the|a|an|{'|'.join(k for k in _COUNTS if k not in ('a', 'an'))})\s+)?"
                      rf"(?:(?P<size>small|large)\s+)?(?:(?P<color>{_COLOR_WORD})\s+)?(?P<shape>{_SHAPE_WORD})\b")
_RELATION = re.compile(rf"\bthe\s+(?:(?:small|large)\s+)?(?P<a_color>{_COLOR_WORD})?\s*(?P<a_shape>{_SHAPE_WORD})\s+"
                       rf"is\s+(?:to\s+the\s+)?(?P<rel>{'|'.join(_RELATIONS)})\s+the\s+(?:(?:small|large)\s+)?"
                       rf"(?P<b_color>{_COLOR_WORD})?\s*(?P<b_shape>{_SHAPE_WORD})\b")


@dataclass
class Seen:
    """One object the judge found: fitted stamp (shape, radius, centre), colour, size and the box
    of its pixels; ``fit`` is the template IoU (shape is None below :data:`MIN_FIT`)."""
    color: str
    shape: str | None
    size: str | None
    radius: int
    center: tuple[float, float]   # the fitted stamp's centre pixel (x, y)
    box: tuple[float, float, float, float]
    fit: float
    pixels: int

    @property
    def label(self) -> str | None:
        return None if self.shape is None else f"{self.size} {self.color} {self.shape}"

    @property
    def box_center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0

    @property
    def base(self) -> float:
        """Image row of the bottom of the object's circumscribed circle (where it stands)."""
        return self.center[1] + self.radius


@dataclass
class Claims:
    """What a text says: ``objects`` (size or None, colour or None, shape), one entry per object
    asked for; ``relation`` ((colour, shape), word, (colour, shape)) or None; ``region`` or None."""
    objects: list[tuple[str | None, str | None, str]] = field(default_factory=list)
    relation: tuple | None = None
    region: str | None = None


@dataclass
class Verdict:
    ok: bool                 # everything the text says holds, and nothing else is drawn
    wanted: int              # objects the text asks for
    found: int               # of those, found with every attribute the text gives
    extra: int               # objects drawn that the text does not ask for (unrecognised ones included)
    relation_ok: bool | None  # None: the text states no relation / region, or its objects are not found
    seen: list[str]          # labels of what the judge read ("?" for unrecognised)


def min_area(side: int) -> int:
    """Fewest pixels of a component that can be an object: 40% of the smallest stamp the world
    draws at this side (the world keeps at least 70% of an object visible)."""
    r = max(3, int(round(SIZE_RADIUS["small"][0] * side)))
    return max(6, int(0.4 * min(int(_stamp(s, r).sum()) for s in SHAPES)))


def _radii(side: int) -> range:
    lo = max(3, int(np.floor(SIZE_RADIUS["small"][0] * side)) - 1)
    return range(lo, int(np.ceil(SIZE_RADIUS["large"][1] * side)) + 2)


def _background_rows(H: int) -> np.ndarray:
    t = (np.arange(H, dtype=np.float64) + 0.5) / H
    top, bottom = np.array(BACKGROUND_RGB[0], float), np.array(BACKGROUND_RGB[1], float)
    return top[None, :] * (1 - t[:, None]) + bottom[None, :] * t[:, None]               # (H, 3)


def _segment(rgb, ca, cb) -> tuple[np.ndarray, np.ndarray]:
    """(share of ``cb`` in [0, 1], distance) of each pixel's nearest point on the segment ca-cb."""
    seg = cb - ca
    u = np.clip(((rgb - ca) * seg).sum(-1) / np.maximum((seg * seg).sum(-1), 1e-9), 0, 1)
    return u, np.linalg.norm(rgb - (ca + u[..., None] * seg), axis=-1)


def _classes(rgb: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Per pixel: 0..6 a palette colour, 7 the background, 8 unknown (far from every colour, or a
    blend along the edge between two others)."""
    H, W = rgb.shape[:2]
    colors = np.concatenate([np.broadcast_to(_PALETTE[None, None], (H, W, 7, 3)),
                             np.broadcast_to(bg[:, None, None, :], (H, W, 1, 3))], axis=2)  # (H, W, 8, 3)
    d = np.linalg.norm(rgb[:, :, None, :] - colors, axis=-1)                            # (H, W, 8)
    out = d.argmin(-1)
    own = d.min(-1)
    # An edge between two colours blends them (a red-yellow edge reads as orange): a pixel lying
    # nearer the segment between two colours found around it than its own colour is a blend.
    near = np.stack([ndimage.binary_dilation(out == k, np.ones((5, 5), bool)) for k in range(8)], axis=-1)
    blend = np.zeros((H, W), dtype=bool)
    for a in range(8):
        for b in range(a + 1, 8):
            both = near[..., a] & near[..., b] & (out != a) & (out != b)
            if both.any():
                blend |= both & (_segment(rgb, colors[:, :, a], colors[:, :, b])[1] < own)
    out[(own > MAX_COLOR_DISTANCE) | blend] = 8
    return out


def _fit(alpha: np.ndarray, pixels: np.ndarray, hidden: np.ndarray, side: int) -> tuple[float, str | None, int, int, int]:
    """(IoU, shape, r, cx, cy) of the stamp that fits a component best. ``alpha`` is the colour's
    coverage of each pixel (1 inside, a fraction on a soft edge, 0 elsewhere), so a blurred edge
    weighs what it covers (soft IoU: sum of min / sum of max); stamp pixels on ``hidden`` (another
    colour, unknown) count neither way. ``pixels`` (the component) sets where centres are tried."""
    H, W = alpha.shape
    ys, xs = np.nonzero(pixels)
    mass = float(alpha.sum())
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    occluded = bool(ndimage.binary_dilation(pixels, _CROSS)[hidden].any())
    slack = 2 if occluded else 1
    tried = []
    for shape in SHAPES:
        for r in _radii(side):
            m = _stamp(shape, r)
            area = int(m.sum())
            c0, r0, c1, r1 = _stamp_extent(shape, r)
            if area < 0.7 * mass or area * 0.5 > mass or (c1 - c0) + 3 < x1 - x0 or (r1 - r0) + 3 < y1 - y0:
                continue
            cxs = {x0 - c0 + r, x1 - c1 + r}
            cys = {y0 - r0 + r, y1 - r1 + r}
            for cx in range(min(cxs) - slack, max(cxs) + slack + 1):
                for cy in range(min(cys) - slack, max(cys) + slack + 1):
                    a0, b0 = max(0, cx - r), max(0, cy - r)
                    a1, b1 = min(W, cx + r + 1), min(H, cy + r + 1)
                    if a1 <= a0 or b1 <= b0:
                        continue
                    ms = m[b0 - (cy - r):b1 - (cy - r), a0 - (cx - r):a1 - (cx - r)]
                    aw, hw = alpha[b0:b1, a0:a1], hidden[b0:b1, a0:a1]
                    inter = float(aw[ms].sum())
                    excused = int(np.count_nonzero(ms & hw))
                    union = mass + area - inter - excused
                    tried.append((inter / union if union > 0 else 0.0, excused, shape, r, cx, cy))
    if not tried:
        return (0.0, None, 0, 0, 0)
    # Hidden pixels excuse any stamp larger than what shows (a small square inside a ring of another
    # colour fits a circle as well): of the stamps that fit about as well as the best, the one
    # that needs the fewest hidden pixels.
    top = max(t[0] for t in tried)
    iou, _, shape, r, cx, cy = min((t for t in tried if t[0] >= top - NEAR_TIE), key=lambda t: (t[1], -t[0]))
    return (iou, shape, r, cx, cy)


def _seen(color: int, pixels: np.ndarray, side: int, fitted) -> Seen:
    iou, shape, r, cx, cy = fitted
    ys, xs = np.nonzero(pixels)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    if iou < MIN_FIT:
        shape = None
    size = None if shape is None else ("small" if r < SIZE_SPLIT * side else "large")
    if shape is None:
        cx, cy, r = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, int(max(box[2] - box[0], box[3] - box[1]) / 2)
    return Seen(_NAMES[color], shape, size, int(r), (float(cx), float(cy)), box, float(iou), len(ys))


def read_picture(image) -> list[Seen]:
    """The objects a shapes-world picture shows (a path, PIL image or HxWx3 uint8 array), left to
    right. Pictures are read at their own resolution; the side sets the world's radii."""
    rgb = np.asarray(load_image(image) if not isinstance(image, np.ndarray) else image, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"the shapes judge reads RGB pictures (H, W, 3), got an array of shape {rgb.shape}")
    H, W = rgb.shape[:2]
    side = min(H, W)
    bg = _background_rows(H)
    classes = _classes(rgb, bg)
    smallest = min_area(side)
    out: list[Seen] = []
    for c in range(len(_NAMES)):
        mask = classes == c
        if not mask.any():
            continue
        core = ndimage.binary_opening(mask, _CROSS)
        kept = mask & ndimage.binary_dilation(core, _CROSS)
        labels, n = ndimage.label(kept, _CROSS)
        pieces = [p for p in (labels == k for k in range(1, n + 1)) if int(p.sum()) >= smallest]
        if not pieces:
            continue
        # Coverage of this colour over the background: the share of the colour in a pixel lying on
        # the background-colour segment (a soft edge), 0 off it.
        share, dist = _segment(rgb, bg[:, None, :], _PALETTE[c][None, None, :])
        on_edge = dist < MAX_COLOR_DISTANCE / 2
        cover = np.where(mask, 1.0, np.where(on_edge & (share >= MIN_SHARE), share, 0.0))
        hidden = (classes != c) & (classes != 7) & ~on_edge
        taken = np.zeros((H, W), dtype=bool)
        for p in pieces:
            taken |= p

        def alpha_of(piece):  # the piece's own coverage: its pixels and the soft edge around it
            around = ndimage.binary_dilation(piece, _CROSS, iterations=2) & ~(taken & ~piece)
            return np.where(around, cover, 0.0)

        fits = [_fit(alpha_of(p), p, hidden, side) for p in pieces]
        merged = True
        while merged and len(pieces) > 1:   # pieces one occluder split: one stamp fits them better together
            merged = False
            for i in range(len(pieces)):
                for j in range(i + 1, len(pieces)):
                    union = pieces[i] | pieces[j]
                    f = _fit(alpha_of(union), union, hidden, side)
                    if f[0] >= MIN_FIT and f[0] > max(fits[i][0], fits[j][0]):
                        pieces[i], fits[i] = union, f
                        del pieces[j], fits[j]
                        merged = True
                        break
                if merged:
                    break
        out += [_seen(c, p, side, f) for p, f in zip(pieces, fits)]
    return sorted(out, key=lambda s: s.box_center)


def read_text(text: str) -> Claims | None:
    """The claims of a text about a shapes-world picture, or None when it names no shape."""
    if not isinstance(text, str):
        raise InputError(f"the shapes judge reads a text, got {text!r}")
    low = text.lower()
    claims = Claims()
    for m in _MENTION.finditer(low):
        det = m.group("det")
        if det == "the":
            continue
        word = m.group("shape")
        count = _COUNTS.get(det, 1)
        claims.objects += [(m.group("size"), m.group("color"), _PLURAL.get(word, word))] * count
    if not claims.objects:
        return None
    rel = _RELATION.search(low)
    if rel:
        claims.relation = ((rel.group("a_color"), _PLURAL.get(rel.group("a_shape"), rel.group("a_shape"))),
                           rel.group("rel"),
                           (rel.group("b_color"), _PLURAL.get(rel.group("b_shape"), rel.group("b_shape"))))
    elif len(claims.objects) == 1:
        claims.region = next((p for p in _REGION_PHRASES if p in low), None)
    return claims


def _agrees(want: tuple, seen: Seen) -> bool:
    size, color, shape = want
    return seen.shape == shape and (color is None or seen.color == color) and (size is None or seen.size == size)


def _holds(word: str, a: Seen, b: Seen) -> bool:
    (ax, ay), (bx, by) = a.box_center, b.box_center
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by,
            "in front of": a.base > b.base, "behind": a.base < b.base}[word]


def judge(picture, text: str) -> Verdict | None:
    """Does ``text`` hold of ``picture`` (a path, PIL image or HxWx3 array)? None when the text
    names no shapes-world object."""
    claims = read_text(text)
    if claims is None:
        return None
    rgb = np.asarray(load_image(picture) if not isinstance(picture, np.ndarray) else picture)
    side = min(rgb.shape[:2])
    seen = read_picture(rgb)
    free = list(range(len(seen)))
    match: dict[tuple, list[int]] = {}
    # Most specific requests first, so "a red circle" does not take the object "a small red circle" needs.
    for want in sorted(claims.objects, key=lambda w: -sum(v is not None for v in w)):
        k = next((k for k in free if _agrees(want, seen[k])), None)
        if k is not None:
            free.remove(k)
            match.setdefault((want[1], want[2]), []).append(k)
    found = sum(len(v) for v in match.values())
    relation_ok = None
    if claims.relation is not None:
        (ac, ash), word, (bc, bsh) = claims.relation
        a = [k for (c, s), ks in match.items() for k in ks if s == ash and (ac is None or c == ac)]
        b = [k for (c, s), ks in match.items() for k in ks if s == bsh and (bc is None or c == bc)]
        if a and b and a[0] != b[0]:
            relation_ok = _holds(word, seen[a[0]], seen[b[0]])
    elif claims.region is not None and found == 1:
        relation_ok = region_of(*seen[next(iter(match.values()))[0]].box_center, side) == claims.region
    missing = len(claims.objects) - found
    extra = max(0, len(free) - missing)  # a wrong object drawn for a requested one is missing, not extra
    ok = missing == 0 and not free and relation_ok is not False
    return Verdict(ok, len(claims.objects), found, extra, relation_ok, [s.label or "?" for s in seen])


def judge_many(pictures, texts) -> dict:
    """Verdicts over many (picture, text) pairs, summarised: ``consistency`` (everything the text
    says holds, nothing else drawn), ``all_found`` (every object asked for is there, extras and
    positions aside: GenEval's object rule), ``object_recall``, ``extra_rate`` (pictures with more
    objects than asked for), ``position_accuracy`` (relation / region right, over texts stating one
    whose objects were found)
    and ``by_objects`` (consistency by the number of objects asked for). Texts naming no
    shapes-world object are left out (all NaN when none is left); ``verdicts`` has one entry per
    pair (None where left out)."""
    verdicts = [judge(p, t) for p, t in zip(pictures, texts)]
    kept = [v for v in verdicts if v is not None]
    nan = float("nan")
    if not kept:
        return {"consistency": nan, "all_found": nan, "object_recall": nan, "extra_rate": nan,
                "position_accuracy": nan, "by_objects": {}, "verdicts": verdicts}
    positioned = [v.relation_ok for v in kept if v.relation_ok is not None]
    by: dict[int, list[bool]] = {}
    for v in kept:
        by.setdefault(v.wanted, []).append(v.ok)
    return {"consistency": float(np.mean([v.ok for v in kept])),
            "all_found": float(np.mean([v.found == v.wanted for v in kept])),
            "object_recall": float(np.mean([v.found / v.wanted for v in kept])),
            "extra_rate": float(np.mean([v.extra > 0 for v in kept])),
            "position_accuracy": float(np.mean(positioned)) if positioned else nan,
            "by_objects": {str(c): float(np.mean(v)) for c, v in sorted(by.items())},
            "verdicts": verdicts}
