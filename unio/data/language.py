"""The templated language the seeded worlds share (:mod:`unio.data.shapes`, :mod:`unio.data.fashion`):
articles and lists, relations and extremes said only with a margin of a tenth of the image,
uniqueness of attributes, the questions and referring expressions both worlds word alike.

A world's objects have ``color``, ``size``, ``name`` ("red circle"), ``label`` ("small red
circle"), ``center`` (of the box) and a kind attribute named by ``kind`` ("shape" in the shapes
world, "category" in the fashion world). Random draws come from the world's stream in a fixed
order, so the same scene always gets the same words.
"""
from __future__ import annotations

import math
from collections import Counter

__all__ = ["NUMBER_WORDS", "EXTREMES", "relation_margin", "thirds", "article", "join", "relation", "extreme",
           "uniqueness", "attribute_questions", "count_questions", "existence_questions", "relative_questions",
           "refexps", "HYPOTHESIS_LABELS", "clear_relations", "hypotheses", "absent_expressions"]

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


# ---------------------------------------------------------------------------------- entailment
# Visual entailment (SNLI-VE, Xie et al., 2019): a hypothesis the picture entails (true of the
# scene), contradicts (refuted by it) or leaves open (neutral). Every object of a world is visible,
# so a neutral hypothesis speaks of what no picture shows: weight, material, the hidden back of a
# flat shape, what happened before or happens next. Neutral items are therefore recognisable by
# their wording alone, as SNLI-VE's are known to be in part; entailed and contradicted ones share
# their wording (counts, presence, size, relations), so only the picture tells them apart.
HYPOTHESIS_LABELS = ("entailment", "neutral", "contradiction")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
MATERIALS = ("wood", "metal", "paper", "glass", "stone")
MOVES = ("left", "right", "up", "down")


def clear_relations(p, q, S: int) -> list[str]:
    """Every relation of ``p`` to ``q`` that holds with the margin ("left of", "above", ...)."""
    m = relation_margin(S)
    (ax, ay), (bx, by) = p.center, q.center
    return [word for word, holds in (("left of", bx - ax > m), ("right of", ax - bx > m), ("above", by - ay > m),
                                     ("below", ay - by > m)) if holds]


def _there(n: int, one: str, many: str) -> str:
    return f"there is one {one}" if n == 1 else f"there are {NUMBER_WORDS[n]} {many}"


def _draw(families: list, k: int, rand) -> list[str]:
    """``k`` distinct items of ``families``. A family is a (template, axes, excluded), or a function
    that makes one when the family is first drawn (most never are): its items are the template
    filled with one value of each axis (a value is a string or a tuple of strings), but for the
    value tuples in ``excluded``. A family is drawn among those with items left (or not yet made),
    then one of its items left, uniformly (by rejection); only the chosen items are written out."""
    made: list = [None] * len(families)
    left: list = [None] * len(families)
    used: list[set] = [set() for _ in families]
    out: list[str] = []
    while len(out) < k:
        live = [f for f, n in enumerate(left) if n is None or n > 0]
        if not live:
            break
        f = live[int(rand() * len(live))]
        if made[f] is None:
            made[f] = families[f]() if callable(families[f]) else families[f]
            left[f] = math.prod(len(a) for a in made[f][1]) - len(made[f][2])
            if left[f] <= 0:
                continue
        template, axes, excluded = made[f]
        while True:
            values = tuple(axis[int(rand() * len(axis))] for axis in axes)
            if values not in excluded and values not in used[f]:
                break
        used[f].add(values)
        left[f] -= 1
        out.append(template.format(*(w for v in values for w in (v if isinstance(v, tuple) else (v,)))))
    return out


def _one_of(items: list[str]) -> tuple:
    return "{}", [items], ()


def _counts(present: Counter, kinds, plurals: dict, true: bool) -> tuple:
    """How many objects of each kind there are (``true``), or a wrong count of each."""
    out = []
    for k in kinds:
        c = present.get(k, 0)
        if true:
            out.append(_there(c, k, plurals[k]) if c else f"there are no {plurals[k]}")
        elif c:
            out += [_there(w, k, plurals[k]) for w in (c - 1, c + 1) if 0 < w < len(NUMBER_WORDS)]
            out.append(f"there are no {plurals[k]}")
        else:
            out.append(_there(1, k, plurals[k]))
    return _one_of(out)


def _relations(objs: list, S: int, kind: str, true: bool) -> tuple:
    """Relations between two named objects, and "there is a red object left of a star" (some object
    of the colour is clearly so placed, or every one is clearly placed the other way), true or false."""
    pairs = [(a, b, clear_relations(a, b, S)) for a in objs for b in objs if a is not b]
    out = [f"the {a.name} is {w if true else OPPOSITE[w]} the {b.name}" for a, b, said in pairs for w in said]
    groups: dict = {}  # (colour, kind) -> the relations of each pair (a of that colour, b of that kind)
    for a, b, said in pairs:
        groups.setdefault((a.color, getattr(b, kind)), []).append(said)
    for (c, k), rels in sorted(groups.items()):
        for w in OPPOSITE:
            entailed = any(w in r for r in rels)
            refuted = not entailed and all(OPPOSITE[w] in r for r in rels)
            if entailed if true else refuted:  # neither: the picture leaves it unclear, not said
                out.append(f"there is {article(c + ' object')} {w} {article(k)}")
    return _one_of(out)


def hypotheses(objs: list, S: int, rand, kind: str, kinds, colors, sizes, plurals: dict,
               per_label: int = 2) -> list[tuple[str, str]]:
    """``per_label`` hypotheses of each label of HYPOTHESIS_LABELS, in a drawn order; each label is
    computed from the objects (relations only where the margin makes them clear)."""
    n, colors, kinds = len(objs), list(colors), list(kinds)
    names = [o.name for o in objs]
    shown = sorted({o.color for o in objs})
    present = Counter(getattr(o, kind) for o in objs)
    named_pairs = [(a.name, b.name) for a in objs for b in objs if a is not b]
    ent = [_one_of([_there(n, "object", "objects")]), lambda: _counts(present, kinds, plurals, True),
           ("no object is {}", [colors], {(c,) for c in shown}),
           lambda: _one_of([f"the picture shows {article(x)}" for x in names]),
           lambda: _one_of([f"the {o.name} is {o.size}" for o in objs]), lambda: _relations(objs, S, kind, True)]
    a_color = [(article(c).split()[0], c) for c in colors]  # ("an", "orange")
    con = [_one_of([_there(w, "object", "objects") for w in range(max(1, n - 2), min(n + 3, len(NUMBER_WORDS)))
                    if w != n]), lambda: _counts(present, kinds, plurals, False), ("no object is {}", [shown], ()),
           lambda: ("the picture shows {} {} {}", [a_color, kinds],
                    {(ac, getattr(o, kind)) for o in objs for ac in a_color if ac[1] == o.color}),
           lambda: _one_of([f"the {o.name} is {s}" for o in objs for s in sizes if s != o.size]),
           lambda: _relations(objs, S, kind, False)]
    neu = [("the {} is made of {}", [names, MATERIALS], ()), ("the back of the {} is {}", [names, colors], ()),
           ("the {} is about to move {}", [names, MOVES], ()), ("the {} is heavier than the {}", [named_pairs], ()),
           ("a moment ago the {0} was {2} the {1}", [named_pairs, list(OPPOSITE)], ())]
    out = [(h, label) for label, families in zip(HYPOTHESIS_LABELS, (ent, neu, con))
           for h in _draw(families, per_label, rand)]
    for i in range(len(out) - 1, 0, -1):  # Fisher-Yates: the position says nothing of the label
        j = int(rand() * (i + 1))
        out[i], out[j] = out[j], out[i]
    return out


def absent_expressions(objs: list, rand, kind: str, kinds, colors, sizes, n: int = 3) -> list[str]:
    """``n`` referring expressions in the grammar of :func:`refexps` that name no object of the
    scene: an absent kind, colour, size or combination of them (drawn)."""
    have = {(o.size, o.color, getattr(o, kind)) for o in objs}
    kinds, colors, sizes = list(kinds), list(colors), list(sizes)
    families = [
        ("the {} {}", [colors, kinds], {h[1:] for h in have}),
        ("the {} {} {}", [sizes, colors, kinds], have),
        ("the {}", [kinds], {h[2:] for h in have}),
        ("the {} object", [colors], {h[1:2] for h in have}),
        ("the {} {}", [sizes, kinds], {(h[0], h[2]) for h in have}),
        ("the {} object", [sizes], {h[:1] for h in have}),
    ]
    return _draw(families, n, rand)
