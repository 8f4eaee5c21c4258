"""The language of the fashion-scenes world (:mod:`unio.data.fashion`): canonical captions,
question/answer pairs and referring expressions, written from the placed items alone.

The templates are the shapes world's (shared in :mod:`unio.data.language`), with Fashion-MNIST
classes for shapes: items are listed left to right, relations and extremes ("the leftmost bag")
are said only where box centres differ by more than a tenth of the image, region answers ("where
is the red dress?" -> "top left") only where the centre lies more than a twentieth of the image
from the lines that cut it in thirds, and existence questions are balanced (one absent (class,
colour) pair for every present item).
"""
from __future__ import annotations

from . import language
from .fashion_items import CATEGORIES, COLORS, PLURALS
from .language import (EXTREMES, NUMBER_WORDS, article, attribute_questions, count_questions, existence_questions,
                       join, relation, relation_margin, relative_questions, thirds)

__all__ = ["caption", "questions", "refexps", "uniqueness", "relation_margin", "region_of", "NUMBER_WORDS",
           "REGIONS"]

# (row third, column third) of a centre -> its name, as an answer and in one-item captions.
REGIONS = {
    ("top", "left"): "top left", ("top", "middle"): "top", ("top", "right"): "top right",
    ("middle", "left"): "left", ("middle", "middle"): "center", ("middle", "right"): "right",
    ("bottom", "left"): "bottom left", ("bottom", "middle"): "bottom", ("bottom", "right"): "bottom right",
}
_PHRASES = {"top": "at the top", "bottom": "at the bottom", "left": "on the left", "right": "on the right",
            "center": "in the center"}
_COMBOS = tuple((c, k) for c in CATEGORIES for k in COLORS)


def region_of(cx: float, cy: float, image_size: int, margin: float = 0.0) -> str | None:
    """The region ("top left", "center", ...) of a point by thirds of the image; None when the
    point lies within ``margin`` pixels of a line between thirds."""
    third = image_size / 3.0
    if margin and any(abs(v - t) <= margin for v in (cx, cy) for t in (third, 2 * third)):
        return None
    return REGIONS[thirds(cx, cy, image_size)]


def caption(objs: list, S: int) -> str:
    """"a large red dress, a small blue bag and ... . the red dress is left of the blue bag." (the
    first pair in canonical order with a clear relation), or "a large red dress in the top left."."""
    listed = join([article(o.label) for o in objs])
    if len(objs) == 1:
        where = region_of(*objs[0].center, S)
        return f"{listed} {_PHRASES.get(where, 'in the ' + where)}."
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            word = relation(objs[i], objs[j], S)
            if word:
                return f"{listed}. the {objs[i].name} is {word} the {objs[j].name}."
    return f"{listed}."


def uniqueness(objs: list) -> list[tuple[bool, bool, bool, bool, bool]]:
    """Per item: is its (class, colour, size, size+class, size+colour) unique in the scene?"""
    return language.uniqueness(objs, "category")


def questions(objs: list, S: int, rand, unique) -> list[tuple[str, str]]:
    """The shapes world's questions (with "what is the red object?") plus each item's region where
    it is clear, and the class of the item at an extreme where the margin makes it clear."""
    m = relation_margin(S)
    qa = [("how many objects are there?", NUMBER_WORDS[len(objs)])]
    qa += attribute_questions(objs, unique, "category", "what is",
                              where=lambda o: region_of(*o.center, S, margin=0.05 * S))
    qa += count_questions(objs, rand, "category", CATEGORIES, COLORS, PLURALS)
    qa += existence_questions(objs, rand, "category", CATEGORIES, _COMBOS)
    if len(objs) > 1:
        for word, axis, sign in EXTREMES:
            for o in objs:
                if all(sign * o.center[axis] + m < sign * p.center[axis] for p in objs if p is not o):
                    qa.append((f"what is the {word} object?", o.category))
    qa += relative_questions(objs, S, rand)
    return qa


def refexps(objs: list, S: int, unique) -> list[tuple[str, int]]:
    return language.refexps(objs, S, unique, "category")
