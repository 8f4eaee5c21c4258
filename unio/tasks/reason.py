"""Reasoning over an image pair: is a statement about two images true or false? (NLVR2's task,
Suhr et al., 2019; the shapes world's pairs are :mod:`unio.data.shapes_pairs`.)

Both images reach the encoder together, each with its image-index embedding; the prompt carries
the statement. The answer is "true" or "false", decoded through a trie over the two labels, so the
output is always one of them, with its probability among the two as its score.
"""
from __future__ import annotations

from PIL import Image

from .. import viz
from ..errors import DataError
from .base import Example
from .classify import ClosedAnswer
from .registry import register

__all__ = ["Reason", "LABELS", "truth_label", "item_images", "side_by_side"]

LABELS = ("true", "false")


def truth_label(value, statement: str) -> str:
    """A statement's label as "true" / "false" (a bool or either word, any case); DataError otherwise."""
    if isinstance(value, bool):
        return LABELS[0] if value else LABELS[1]
    if isinstance(value, str) and value.strip().lower() in LABELS:
        return value.strip().lower()
    raise DataError(f"the statement {statement!r} is labelled {value!r}; label statements \"true\" or \"false\"")


def item_images(image, example: Example | None) -> list:
    """The pictures of one item: ``image`` when it is a list, else the example's images, else ``[image]``."""
    if isinstance(image, (list, tuple)):
        return list(image)
    if example is not None and example.images:
        return list(example.images)
    return [] if image is None else [image]


def side_by_side(images, scale: float = 1.0, pad: int = 4) -> Image.Image:
    """The images of one item in a row, each enlarged ``scale`` times."""
    return viz.image_grid([viz.enlarge(im, scale) for im in images], cols=max(1, len(images)), pad=pad)


@register
class Reason(ClosedAnswer):
    """A statement about two images (``images=[left, right]``) -> "true" or "false".

    Scored by ``accuracy``, and by ``accuracy_true`` / ``accuracy_false``: the accuracy on the true
    and on the false statements (a model that always says one word scores 1 on one and 0 on the other).
    """

    name = "reason"
    num_images = 2
    world = "shapes-pairs"
    placeholders = frozenset({"text"})
    inputs = ("statement",)
    headline = "accuracy"
    answers = LABELS
    needs_scores = True
    max_new_tokens = 4
    items = "statements"

    def can_build(self, sample: dict) -> bool:
        images = sample.get("images")
        return isinstance(images, (list, tuple)) and len(images) == self.num_images and bool(sample.get("statements"))

    def answer_of(self, value, text: str) -> str:
        return truth_label(value, text)

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        images = item_images(image, example)
        return [(side_by_side(images, scale), self.said(result, example, inputs))] if images else []
