"""The language of the fashion-scenes world (:mod:`unio.data.fashion`): canonical captions,
question/answer pairs and referring expressions, written from the placed items alone.

The templates are the shapes world's, with Fashion-MNIST classes for shapes: items are listed left
to right, relations and extremes ("the leftmost bag") are said only where box centres differ by
more than a tenth of the image, region answers ("where is the red dress?" -> "top left") only where
the centre lies more than a twentieth of the image from the lines that cut it in thirds, and
existence questions are balanced (one absent (class, colour) pair for every present item).
"""
from __future__ import annotations

from collections import Counter

from .fashion_items import CATEGORIES, COLORS, PLURALS

__all__ = ["caption", "questions", "refexps", "uniqueness", "relation_margin", "region_of", "NUMBER_WORDS",
           "REGIONS"]

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# (row third, column third) of a centre -> its name, as an answer and in one-item captions.
REGIONS = {
    ("top", "left"): "top left", ("top", "middle"): "top", ("top", "right"): "top right",
    ("middle", "left"): "left", ("middle", "middle"): "center", ("middle", "right"): "right",
    ("bottom", "left"): "bottom left", ("bottom", "middle"): "bottom", ("bottom", "right"): "bottom right",
}
_PHRASES = {"top": "at the top", "bottom": "at the bottom", "left": "on the left", "right": "on the right",
            "center": "in the center"}
_COMBOS = tuple((c, k) for c in CATEGORIES for k in COLORS)
_EXTREMES = (("leftmost", 0, 1), ("rightmost", 0, -1), ("topmost", 1, 1), ("bottommost", 1, -1))


def relation_margin(image_size: int) -> float:
    """Centres must differ by more than this many pixels for "left of" / "above" to be said."""
    return 0.1 * image_size


def region_of(cx: float, cy: float, image_size: int, margin: float = 0.0) -> str | None:
    """The region ("top left", "center", ...) of a point by thirds of the image; None when the
    point lies within ``margin`` pixels of a line between thirds."""
    third = image_size / 3.0
    if margin and any(abs(v - t) <= margin for v in (cx, cy) for t in (third, 2 * third)):
        return None
    col = "left" if cx < third else ("right" if cx >= 2 * third else "middle")
    row = "top" if cy < third else ("bottom" if cy >= 2 * third else "middle")
    return REGIONS[(row, col)]


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _relation(a, b, S: int) -> str | None:
    """The canonical relation of ``a`` to ``b`` (horizontal, else vertical), None if neither is clear."""
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
    return None


def caption(objs: list, S: int) -> str:
    """"a large red dress, a small blue bag and ... . the red dress is left of the blue bag." (the
    first pair in canonical order with a clear relation), or "a large red dress in the top left."."""
    listed = _join([_a(o.label) for o in objs])
    if len(objs) == 1:
        where = region_of(*objs[0].center, S)
        return f"{listed} {_PHRASES.get(where, 'in the ' + where)}."
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            word = _relation(objs[i], objs[j], S)
            if word:
                return f"{listed}. the {objs[i].name} is {word} the {objs[j].name}."
    return f"{listed}."


def uniqueness(objs: list) -> list[tuple[bool, bool, bool, bool, bool]]:
    """Per item: is its (class, colour, size, size+class, size+colour) unique in the scene?"""
    keys = [(("c", o.category), ("k", o.color), ("s", o.size), (o.size, o.category), ("sk", o.size, o.color))
            for o in objs]
    counts = Counter(k for row in keys for k in row)
    return [tuple(counts[k] == 1 for k in row) for row in keys]


def questions(objs: list, S: int, rand, unique) -> list[tuple[str, str]]:
    m = relation_margin(S)
    qa = [("how many objects are there?", NUMBER_WORDS[len(objs)])]
    for o, (u_cat, u_color, _, u_size_cat, u_size_color) in zip(objs, unique):
        if u_cat:
            qa.append((f"what color is the {o.category}?", o.color))
        elif u_size_cat:
            qa.append((f"what color is the {o.size} {o.category}?", o.color))
        if u_color:
            qa.append((f"what is the {o.color} object?", o.category))
        elif u_size_color:
            qa.append((f"what is the {o.size} {o.color} object?", o.category))
        qa.append((f"what size is the {o.name}?", o.size))
        where = region_of(*o.center, S, margin=0.05 * S)
        if where:
            qa.append((f"where is the {o.name}?", where))
    cats = [o.category for o in objs]
    colors = [o.color for o in objs]
    absent_cats = [c for c in CATEGORIES if c not in cats]
    absent_colors = [c for c in COLORS if c not in colors]
    for c in dict.fromkeys(cats):
        qa.append((f"how many {PLURALS[c]} are there?", NUMBER_WORDS[cats.count(c)]))
    if absent_cats:
        qa.append((f"how many {PLURALS[absent_cats[int(rand() * len(absent_cats))]]} are there?", "zero"))
    for c in dict.fromkeys(colors):
        qa.append((f"how many {c} objects are there?", NUMBER_WORDS[colors.count(c)]))
    if absent_colors:
        qa.append((f"how many {absent_colors[int(rand() * len(absent_colors))]} objects are there?", "zero"))
    # Existence: every item present, and as many absent (class, colour) pairs.
    present = {(o.category, o.color) for o in objs}
    absent = [p for p in _COMBOS if p not in present]
    for o in objs:
        qa.append((f"is there {_a(o.name)}?", "yes"))
        c, k = absent.pop(int(rand() * len(absent)))
        qa.append((f"is there {_a(k + ' ' + c)}?", "no"))
    c = CATEGORIES[int(rand() * len(CATEGORIES))]
    qa.append((f"is there {_a(c)}?", "yes" if c in cats else "no"))
    # What is where: the class of the item at an extreme, where the margin makes it clear.
    if len(objs) > 1:
        for word, axis, sign in _EXTREMES:
            for k, o in enumerate(objs):
                if all(sign * o.center[axis] + m < sign * p.center[axis] for p in objs if p is not o):
                    qa.append((f"what is the {word} object?", o.category))
    # Relative position where the margin makes the answer clear; the direction asked is random so
    # "yes" and "no" are equally likely.
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            a, b = objs[i], objs[j]
            (ax, ay), (bx, by) = a.center, b.center
            if abs(ax - bx) > m:
                word = "left of" if rand() < 0.5 else "right of"
                qa.append((f"is the {a.name} {word} the {b.name}?", "yes" if (ax < bx) == (word == "left of") else "no"))
            if abs(ay - by) > m:
                word = "above" if rand() < 0.5 else "below"
                qa.append((f"is the {a.name} {word} the {b.name}?", "yes" if (ay < by) == (word == "above") else "no"))
    return qa


def _extreme(mine: float, others: list[float], m: float) -> bool:
    return bool(others) and all(mine + m < x for x in others)


def refexps(objs: list, S: int, unique) -> list[tuple[str, int]]:
    m = relation_margin(S)
    out = []
    for k, (o, (u_cat, u_color, u_size, u_size_cat, _)) in enumerate(zip(objs, unique)):
        out.append((f"the {o.name}", k))
        out.append((f"the {o.label}", k))
        if u_cat:
            out.append((f"the {o.category}", k))
        elif u_size_cat:
            out.append((f"the {o.size} {o.category}", k))
        if u_color:
            out.append((f"the {o.color} object", k))
        if len(objs) == 1:
            continue
        if u_size:
            out.append((f"the {o.size} object", k))
        others = [p for p in objs if p is not o]
        twins = [p for p in others if p.category == o.category]  # "the leftmost bag" among 2+ bags
        for word, axis, sign in _EXTREMES:
            mine = sign * o.center[axis]
            if _extreme(mine, [sign * p.center[axis] for p in others], m):
                out.append((f"the {word} object", k))
            if twins and len(twins) < len(others) and _extreme(mine, [sign * p.center[axis] for p in twins], m):
                out.append((f"the {word} {o.category}", k))
    return out
