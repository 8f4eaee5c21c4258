"""Visual grounding: a referring expression -> one box (four location tokens, then eos).

"Not there": a sample may list ``absent`` expressions that name no object of its scene. In
training, ``ground`` and ``segment`` ask about one of them with probability ``negative_rate``
(never at inference, ``rng=None``); the answer is the text ``none`` for ground (parsed as None)
and an empty mask for segment. A model trained so says it in its export: ``unio.json`` ``classes``
holds ``"not_found": ["none"]``, the answers ground may give instead of a box. Only then does
decoding admit that answer, and evaluation ask about absent expressions (a seeded share
``eval_negatives`` of the samples that list some), reporting ``not_found_precision`` and
``not_found_recall`` beside the figures on the other examples. A model without it (shapes-demo)
decodes and is evaluated exactly as before.
"""
from __future__ import annotations

import numpy as np

from .. import viz
from ..errors import TaskError
from ..metrics import box_iou, grounding_acc, mean_interval95
from .registry import register
from .base import Box, Example, Task, TaskContext, box_list, finite, fmt_box, location_limits, pick
from .classify import label_trie, sequence_score
from .constraints import BoxesProcessor, LabelTrie

NONE = "none"              # ground's answer, in training, for an expression that names nothing
NOT_FOUND = "not_found"    # the class list (unio.json "classes") of the answers that say "not there"
ASK_ABSENT = "ask_absent"  # set by pick_item: evaluation asks about the sample's first absent expression


def says_not_found(ctx: TaskContext) -> list[str]:
    """The model's "not there" answers (empty: it was trained without negatives)."""
    return ctx.class_list(NOT_FOUND) or []


def ask_absent(item: dict, rng, share: float) -> dict:
    """Evaluation's choice (after the item's own draws): for a seeded ``share`` of the samples that
    list absent expressions, one of them, asked instead of the item where the model says "not there"."""
    absent = item.get("absent") or []
    if not absent or share <= 0 or rng.random() >= share:
        return item
    return {**item, "absent": [absent[int(rng.integers(len(absent)))]], ASK_ABSENT: True}


def not_found_figures(said_none: list[bool], negative: list[bool]) -> dict:
    """Precision and recall of "not there" (None / an empty mask) on negatives, with their 95%
    percentile-bootstrap intervals (from two examples on); {} without negatives."""
    n_neg = sum(negative)
    if not n_neg:
        return {}
    out: dict = {"negatives": n_neg}
    rng = np.random.default_rng(95)
    for key, values in (("not_found_precision", [n for s, n in zip(said_none, negative) if s]),
                        ("not_found_recall", [s for s, n in zip(said_none, negative) if n])):
        out[key] = float(np.mean(values)) if values else float("nan")
        if len(values) >= 2:
            out[f"{key}_ci95"] = mean_interval95(values, rng, 2000)
    return out


def not_found_record(said_none: bool, negative: bool) -> dict:
    """Per-example keys of the not-found figures: their means over the records that have them
    are the precision (``none_correct``) and the recall (``none_found``)."""
    rec = {"negative": True, "none_found": said_none} if negative else {}
    if said_none:
        rec["none_correct"] = negative
    return rec


class NotThere:
    """What ground and segment share about negatives (see the module's documentation).

    Args:
        negative_rate: share of training examples (of samples with ``absent``) asking about an absent expression.
        eval_negatives: share of evaluation examples that do, where the model was trained to say "not there".
    """

    def __init__(self, negative_rate: float = 0.15, eval_negatives: float = 0.2):
        for key, value in (("negative_rate", negative_rate), ("eval_negatives", eval_negatives)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise TaskError(f"{key} must be a number in [0, 1], got {value!r}")
        self.negative_rate, self.eval_negatives = float(negative_rate), float(eval_negatives)

    def negative(self, sample: dict, ctx: TaskContext, rng, inputs: dict) -> str | None:
        """The absent expression to ask about: in training with probability ``negative_rate``, in
        evaluation where pick_item chose one and the model says "not there"; else None."""
        absent = sample.get("absent") or []
        if inputs.get("expression") is not None or not absent:
            return None
        if rng is not None:
            return str(pick(absent, rng)) if self.negative_rate and rng.random() < self.negative_rate else None
        return str(absent[0]) if sample.get(ASK_ABSENT) and says_not_found(ctx) else None


class BoxOrAnswer(BoxesProcessor):
    """One box (4 location tokens), or one of ``answers`` (a label trie), then eos."""

    def __init__(self, vocab, answers: LabelTrie, limits=None):
        super().__init__(vocab, labels=False, min_boxes=1, max_boxes=1, limits=limits)
        self.answers = answers

    def _answer(self, node):
        ends = [self.eos] if LabelTrie.is_end(node) else []
        return self._mask(("answer", id(node)), lambda: self._ids_mask(LabelTrie.children(node) + ends))

    def allowed(self, generated: list[int], limit=None):
        if generated and not self.loc0 <= generated[0] < self.loc1:
            node = self.answers.walk(generated)
            return self._answer(node) if node is not None else self._mask("eos", lambda: self._ids_mask([self.eos]))
        box = super().allowed(generated, limit)
        return box if generated else box | self._answer(self.answers.root)


def one_expression(sample: dict, rng, with_mask: bool = False) -> dict:
    """The sample narrowed to one seeded referring expression (``with_mask``: of an object with a mask)."""
    refs = sample.get("refexps")
    if not refs:
        return sample
    if with_mask:
        objects = sample.get("objects") or []
        refs = [r for r in refs if 0 <= int(r[1]) < len(objects) and objects[int(r[1])].get("mask") is not None]
        if not refs:
            return {**sample, "refexps": []}
    return {**sample, "refexps": [refs[int(rng.integers(len(refs)))]]}


def expression_and_object(sample: dict, rng, inputs: dict, task: str) -> tuple[str, dict | None]:
    """The caller's expression, or a referring expression of the sample with its object."""
    expression = inputs.get("expression")
    if expression is not None:
        if not isinstance(expression, str) or not expression.strip():
            raise TaskError(f"{task} needs a non-empty expression string, got {expression!r}")
        return expression.strip(), None
    refexps = sample.get("refexps") or []
    objects = sample.get("objects") or []
    refexps = [(e, i) for e, i in refexps if 0 <= int(i) < len(objects)]
    if not refexps:
        raise TaskError(f"{task} needs expression='...' (or a sample with referring expressions)")
    expression, k = pick(refexps, rng)
    return expression, objects[int(k)]


@register
class Ground(NotThere, Task):
    """Referring expression -> one box (None: "not there"), with its probability as ``.score``.
    Scored by ``acc50`` (IoU >= 0.5) and ``mean_iou`` on the expressions that name an object, and
    by ``not_found_precision`` / ``not_found_recall`` where there are negatives (the module's
    documentation)."""

    name = "ground"
    placeholders = frozenset({"expression"})
    inputs = ("expression",)
    headline = "acc50"
    means = {"acc50": "hit50", "mean_iou": "iou"}
    needs_scores = True
    max_new_tokens = 5

    def pick_item(self, sample, rng):
        return ask_absent(one_expression(sample, rng), rng, self.eval_negatives)

    def can_build(self, sample: dict) -> bool:
        return super().can_build(sample) and bool(sample.get("refexps")) and bool(sample.get("objects"))

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        image, info = self._image(sample, ctx)
        expression, obj = expression_and_object(sample, rng, inputs, self.name)
        size = (info.width, info.height)
        negative = self.negative(sample, ctx, rng, inputs)
        prompt, ids = self._prompt(ctx, rng, size, template=inputs.get("prompt"), expression=negative or expression)
        if negative is not None:
            return self._example(ctx, prompt, ids, image, info, self._text_target(ctx, NONE), expression=negative,
                                 box=None, negative=True)
        labels, box = [], None
        if obj is not None:
            box = tuple(float(v) for v in obj["box"])
            labels = self._box_ids(ctx, box, size) + [ctx.vocab.eos_id]
        return self._example(ctx, prompt, ids, image, info, labels, expression=expression, box=box)

    def logits_processors(self, ctx, example=None, **overrides) -> list:
        batch = overrides.get("batch") or ([example] if example is not None else [])
        answers = says_not_found(ctx)
        if answers:
            return [BoxOrAnswer(ctx.vocab, label_trie(ctx, answers), limits=location_limits(ctx, batch))]
        return [BoxesProcessor(ctx.vocab, labels=False, min_boxes=1, max_boxes=1, limits=location_limits(ctx, batch))]

    def generation_kwargs(self, ctx, **overrides) -> dict:
        kw = super().generation_kwargs(ctx, **overrides)
        answers = says_not_found(ctx)
        if answers and not overrides.get("max_new_tokens"):
            kw["max_new_tokens"] = max(self.max_new_tokens, *(len(ctx.encode_text(a)) + 1 for a in answers))
        return kw

    def parse(self, ids, ctx: TaskContext, info=None, *, logprobs=None, **kw) -> Box | None:
        """The first four location tokens as a box in the original image, its probability (up to
        eos) as ``.score``; None if there are fewer (the answer "none" among them)."""
        ids = [int(i) for i in ids]
        end = ids.index(ctx.vocab.eos_id) if ctx.vocab.eos_id in ids else len(ids)
        loc = [i for i, k in zip(ids[:end], ctx.vocab.kinds(ids[:end]).tolist() if end else []) if k == 1][:4]
        if len(loc) < 4:
            return None
        b = np.asarray(ctx.vocab.to_local(loc, "location"))
        b = np.array([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])])
        box = Box(*(float(v) for v in ctx.locations.decode_boxes(b, self._size(info, ctx))))
        box.score = sequence_score(ids[: end + 1], logprobs)
        return box

    def metric(self, predictions, examples, samples=None, judge=None) -> dict[str, float]:
        negative = [bool(e.meta.get("negative")) for e in examples]
        pairs = [(p, e.meta.get("box")) for p, e, n in zip(predictions, examples, negative) if not n]
        out = {"acc50": float("nan"), "mean_iou": float("nan")}
        if pairs:
            out = {"acc50": float(grounding_acc([tuple(p) if p is not None else None for p, _ in pairs],
                                                [b for _, b in pairs])),
                   "mean_iou": float(np.mean([iou(p, b) for p, b in pairs]))}
        return {**out, **not_found_figures([p is None for p in predictions], negative)}

    def example_record(self, prediction, example, sample) -> dict:
        m = example.meta
        said_none, negative = prediction is None, bool(m.get("negative"))
        if negative:
            return {"prediction": box_list(prediction), "truth": None, "expression": m.get("expression"),
                    **not_found_record(said_none, True)}
        return {"prediction": box_list(prediction), "truth": box_list(m["box"]), "expression": m.get("expression"),
                "iou": iou(prediction, m["box"]), "hit50": iou(prediction, m["box"]) >= 0.5,
                **not_found_record(said_none, False)}

    def to_record(self, result, inputs, files, stem) -> dict:
        """``found`` and, for a box, its ``score`` (a None result carries no score)."""
        return {"expression": inputs.get("expression"), "box": box_list(result), "found": result is not None,
                "score": finite(getattr(result, "score", float("nan")))}

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        m = example.meta
        if m.get("negative"):
            return f"{m['expression']} (not there)", fmt_box(prediction)
        return f"{m['expression']} {fmt_box(m['box'])}", f"{fmt_box(prediction)} IoU {iou(prediction, m['box']):.2f}"

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        if example is None:
            expression = (inputs or {}).get("expression") or ""
            return [(viz.boxes_panel(image, [tuple(result)] if result is not None else [],
                                     [expression] if result is not None else None, scale=scale), "")]
        m = example.meta
        boxes, colors = ([m["box"]], [viz.TRUTH]) if m.get("box") is not None else ([], [])
        if result is not None:
            boxes, colors = boxes + [tuple(result)], colors + [viz.PRED]
        said = (f"ground '{m['expression']}' (not there): {fmt_box(result)}" if m.get("negative") else
                f"ground '{m['expression']}': IoU {iou(result, m['box']):.2f} (green: truth)")
        return [(viz.boxes_panel(image, boxes, colors=colors, scale=scale), said)]


def iou(pred, box) -> float:
    """IoU of a predicted box (None: no box, 0) with the true one."""
    return box_iou(np.ravel(tuple(pred)), np.ravel(box)) if pred is not None else 0.0
