"""Visual entailment: does the image entail a hypothesis, contradict it, or neither? (SNLI-VE,
Xie et al., 2019: "Visual Entailment: A Novel Task for Fine-Grained Image Understanding".)

The prompt carries the hypothesis; the answer is one of "entailment", "neutral", "contradiction",
decoded through a trie over the three labels, so the output is always one of them, with its
probability among the three as its score. The shapes world's samples list ``hypotheses``, two of
each label (:func:`unio.data.language.hypotheses`); as in SNLI-VE, neutral hypotheses are in part
recognisable by their wording alone (they speak of what no picture shows: weight, material, a
hidden face, before and after), so ``accuracy_neutral`` says less about the picture than the
other two figures do.
"""
from __future__ import annotations

from .. import viz
from ..data.language import HYPOTHESIS_LABELS
from ..errors import DataError
from .classify import ClosedAnswer
from .registry import register

__all__ = ["Entail", "LABELS"]

LABELS = HYPOTHESIS_LABELS  # ("entailment", "neutral", "contradiction")


def hypothesis_label(value, hypothesis: str) -> str:
    """A hypothesis' label as one of LABELS (any case); DataError otherwise."""
    if isinstance(value, str) and value.strip().lower() in LABELS:
        return value.strip().lower()
    raise DataError(f"the hypothesis {hypothesis!r} is labelled {value!r}; label hypotheses "
                    + ", ".join(repr(w) for w in LABELS))


@register
class Entail(ClosedAnswer):
    """An image and a hypothesis (``hypothesis="..."``) -> "entailment", "neutral" or "contradiction".

    Scored by ``accuracy`` and by the accuracy on the hypotheses of each label (``accuracy_entailment``,
    ``accuracy_neutral``, ``accuracy_contradiction``): a model that always says one label scores 1 on
    it and 0 on the other two.
    """

    name = "entail"
    placeholders = frozenset({"text"})
    inputs = ("hypothesis",)
    headline = "accuracy"
    answers = LABELS
    needs_scores = True
    max_new_tokens = 12

    items = "hypotheses"

    def answer_of(self, value, text: str) -> str:
        return hypothesis_label(value, text)

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        return [(viz.enlarge(image, scale), self.said(result, example, inputs))] if image is not None else []
