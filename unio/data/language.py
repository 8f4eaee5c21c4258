"""The templated language the seeded worlds share (:mod:`unio.data.shapes`, :mod:`unio.data.fashion`):
articles and lists, relations and extremes said only with a margin of a tenth of the image,
uniqueness of attributes, the questions and referring expressions both worlds word alike.

A world's objects have ``color``, ``size``, ``name`` ("red circle"), ``label`` ("small red
circle"), ``center`` (of the box) and a kind attribute named by ``kind`` ("shape" in the shapes
world, "category" in the fashion world). Random draws come from the world's stream in a fixed
order, so the same scene always gets the same words.
"""
from __future__ import annotations

from collections import Counter

__all__ = ["NUMBER_WORDS", "EXTREMES", "relation_margin", "thirds", "article", "join", "relation", "extreme",
           "uniqueness", "attribute_questions", "count_questions", "existence_questions", "relative_questions",
           "refexps"]

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
EXTREMES = (("leftmost", 0, 1), ("rightmost", 0, -1), ("topmost", 1, 1), ("bottommost", 1, -1))


def relation_margin(image_size: int) -> float:
    """Centres must differ by more than this many pixels for "left of" / "above" to be said."""
    return 0.1 * image_size


def thirds(cx: float, cy: float, image_size: int) -> tuple[str, str]:
    """(row, column) third of a point: each of "top"/"middle"/"bottom", "left"/"middle"/"right"."""
    third = image_size / 3.0
    col = "left" if cx < third else ("right" if cx >= 2 * third else "middle")
    row = "top" if cy < third else ("bottom" if cy >= 2 * third else "middle")
    return row, col


def article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def relation(p, q, S: int) -> str | None:
    """The canonical relation of ``p`` to ``q`` (horizontal, else vertical), None if neither is clear."""
    m = relation_margin(S)
    (ax, ay), (bx, by) = p.center, q.center
    if bx - ax > m:
        return "left of"
    if ax - bx > m:
        return "right of"
    if by - ay > m:
        return "above"
    if ay - by > m:
        return "below"
    return None


def extreme(mine: float, others: list[float], m: float) -> bool:
    """Is ``mine`` below every one of ``others`` (at least one) by more than the margin?"""
    return bool(others) and all(mine + m < x for x in others)


def uniqueness(objs: list, kind: str) -> list[tuple[bool, bool, bool, bool, bool]]:
    """Per object: is its (kind, colour, size, size+kind, size+colour) unique in the scene?"""
    keys = [(("c", getattr(o, kind)), ("k", o.color), ("s", o.size), (o.size, getattr(o, kind)),
             ("sk", o.size, o.color)) for o in objs]
    counts = Counter(k for row in keys for k in row)
    return [tuple(counts[k] == 1 for k in row) for row in keys]


def attribute_questions(objs: list, unique, kind: str, ask_kind: str, where=None) -> list[tuple[str, str]]:
    """Per object: its colour, its kind ("{ask_kind} the red object?"), its size and, where
    ``where(o)`` names one, its region; each asked only by a description that names one object."""
    qa = []
    for o, (u_kind, u_color, _, u_size_kind, u_size_color) in zip(objs, unique):
        k = getattr(o, kind)
        if u_kind:
            qa.append((f"what color is the {k}?", o.color))
        elif u_size_kind:
            qa.append((f"what color is the {o.size} {k}?", o.color))
        if u_color:
            qa.append((f"{ask_kind} the {o.color} object?", k))
        elif u_size_color:
            qa.append((f"{ask_kind} the {o.size} {o.color} object?", k))
        qa.append((f"what size is the {o.name}?", o.size))
        place = where(o) if where else None
        if place:
            qa.append((f"where is the {o.name}?", place))
    return qa


def count_questions(objs: list, rand, kind: str, kinds, colors, plurals: dict) -> list[tuple[str, str]]:
    """How many of each present kind and colour, and of one absent kind and colour (drawn)."""
    qa = []
    present_kinds = [getattr(o, kind) for o in objs]
    present_colors = [o.color for o in objs]
    absent_kinds = [k for k in kinds if k not in present_kinds]
    absent_colors = [c for c in colors if c not in present_colors]
    for k in dict.fromkeys(present_kinds):
        qa.append((f"how many {plurals[k]} are there?", NUMBER_WORDS[present_kinds.count(k)]))
    if absent_kinds:
        qa.append((f"how many {plurals[absent_kinds[int(rand() * len(absent_kinds))]]} are there?", "zero"))
    for c in dict.fromkeys(present_colors):
        qa.append((f"how many {c} objects are there?", NUMBER_WORDS[present_colors.count(c)]))
    if absent_colors:
        qa.append((f"how many {absent_colors[int(rand() * len(absent_colors))]} objects are there?", "zero"))
    return qa


def existence_questions(objs: list, rand, kind: str, kinds, combos) -> list[tuple[str, str]]:
    """Every object present, as many absent (kind, colour) pairs of ``combos`` (drawn), and one
    drawn kind."""
    qa = []
    present = {(getattr(o, kind), o.color) for o in objs}
    absent = [p for p in combos if p not in present]
    for o in objs:
        qa.append((f"is there {article(o.name)}?", "yes"))
        k, c = absent.pop(int(rand() * len(absent)))
        qa.append((f"is there {article(c + ' ' + k)}?", "no"))
    k = kinds[int(rand() * len(kinds))]
    qa.append((f"is there {article(k)}?", "yes" if any(getattr(o, kind) == k for o in objs) else "no"))
    return qa


def relative_questions(objs: list, S: int, rand) -> list[tuple[str, str]]:
    """Relative position, only where the margin makes the answer clear; the direction asked is
    random so "yes" and "no" are equally likely."""
    m = relation_margin(S)
    qa = []
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            p, q = objs[i], objs[j]
            (ax, ay), (bx, by) = p.center, q.center
            if abs(ax - bx) > m:
                word = "left of" if rand() < 0.5 else "right of"
                truth = (ax < bx) == (word == "left of")
                qa.append((f"is the {p.name} {word} the {q.name}?", "yes" if truth else "no"))
            if abs(ay - by) > m:
                word = "above" if rand() < 0.5 else "below"
                truth = (ay < by) == (word == "above")
                qa.append((f"is the {p.name} {word} the {q.name}?", "yes" if truth else "no"))
    return qa


def refexps(objs: list, S: int, unique, kind: str) -> list[tuple[str, int]]:
    """Referring expressions of each object: by name and label, by kind, colour or size where that
    is unique, and as the leftmost/... object (or of its kind) where the margin makes it clear."""
    m = relation_margin(S)
    out = []
    for k, (o, (u_kind, u_color, u_size, u_size_kind, _)) in enumerate(zip(objs, unique)):
        mine_kind = getattr(o, kind)
        out.append((f"the {o.name}", k))
        out.append((f"the {o.label}", k))
        if u_kind:
            out.append((f"the {mine_kind}", k))
        elif u_size_kind:
            out.append((f"the {o.size} {mine_kind}", k))
        if u_color:
            out.append((f"the {o.color} object", k))
        if len(objs) == 1:
            continue
        if u_size:
            out.append((f"the {o.size} object", k))
        others = [p for p in objs if p is not o]
        twins = [p for p in others if getattr(p, kind) == mine_kind]  # "the leftmost star" among 2+ stars
        for word, axis, sign in EXTREMES:
            mine = sign * o.center[axis]
            if extreme(mine, [sign * p.center[axis] for p in others], m):
                out.append((f"the {word} object", k))
            if twins and len(twins) < len(others) and extreme(mine, [sign * p.center[axis] for p in twins], m):
                out.append((f"the {word} {mine_kind}", k))
    return out
