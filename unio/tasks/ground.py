"""Visual grounding: a referring expression -> one box (four location tokens, then eos)."""
from __future__ import annotations

import numpy as np

from .. import viz
from ..errors import TaskError
from ..metrics import box_iou, grounding_acc
from .registry import register
from .base import Box, Example, Task, TaskContext, box_list, fmt_box, location_limits, pick
from .constraints import BoxesProcessor


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
class Ground(Task):
    """Referring expression -> one box. Scored by ``acc50`` (IoU >= 0.5) and ``mean_iou``."""

    name = "ground"
    placeholders = frozenset({"expression"})
    inputs = ("expression",)
    headline = "acc50"
    means = {"acc50": "hit50", "mean_iou": "iou"}
    max_new_tokens = 5

    def pick_item(self, sample, rng):
        return one_expression(sample, rng)

    def can_build(self, sample: dict) -> bool:
        return super().can_build(sample) and bool(sample.get("refexps")) and bool(sample.get("objects"))

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        image, info = self._image(sample, ctx)
        expression, obj = expression_and_object(sample, rng, inputs, self.name)
        size = (info.width, info.height)
        prompt, ids = self._prompt(ctx, rng, size, template=inputs.get("prompt"), expression=expression)
        labels, box = [], None
        if obj is not None:
            box = tuple(float(v) for v in obj["box"])
            labels = self._box_ids(ctx, box, size) + [ctx.vocab.eos_id]
        return self._example(ctx, prompt, ids, image, info, labels, expression=expression, box=box)

    def logits_processors(self, ctx, example=None, **overrides) -> list:
        batch = overrides.get("batch") or ([example] if example is not None else [])
        return [BoxesProcessor(ctx.vocab, labels=False, min_boxes=1, max_boxes=1, limits=location_limits(ctx, batch))]

    def parse(self, ids, ctx: TaskContext, info=None, **kw) -> Box | None:
        """The first four location tokens as a box in the original image; None if there are fewer."""
        ids = [int(i) for i in ids]
        if ctx.vocab.eos_id in ids:
            ids = ids[: ids.index(ctx.vocab.eos_id)]
        loc = [i for i, k in zip(ids, ctx.vocab.kinds(ids).tolist() if ids else []) if k == 1][:4]
        if len(loc) < 4:
            return None
        b = np.asarray(ctx.vocab.to_local(loc, "location"))
        b = np.array([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])])
        return Box(*(float(v) for v in ctx.locations.decode_boxes(b, self._size(info, ctx))))

    def metric(self, predictions, examples, samples=None, judge=None) -> dict[str, float]:
        truth = [e.meta.get("box") for e in examples]
        return {"acc50": float(grounding_acc([tuple(p) if p is not None else None for p in predictions], truth)),
                "mean_iou": float(np.mean([iou(p, b) for p, b in zip(predictions, truth)]))}

    def example_record(self, prediction, example, sample) -> dict:
        m = example.meta
        return {"prediction": box_list(prediction), "truth": box_list(m["box"]), "expression": m.get("expression"),
                "iou": iou(prediction, m["box"]), "hit50": iou(prediction, m["box"]) >= 0.5}

    def to_record(self, result, inputs, files, stem) -> dict:
        return {"expression": inputs.get("expression"), "box": box_list(result)}

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        m = example.meta
        return f"{m['expression']} {fmt_box(m['box'])}", f"{fmt_box(prediction)} IoU {iou(prediction, m['box']):.2f}"

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        if example is None:
            expression = (inputs or {}).get("expression") or ""
            return [(viz.boxes_panel(image, [tuple(result)] if result is not None else [],
                                     [expression] if result is not None else None, scale=scale), "")]
        m = example.meta
        boxes, colors = [m["box"]], [viz.TRUTH]
        if result is not None:
            boxes, colors = boxes + [tuple(result)], colors + [viz.PRED]
        return [(viz.boxes_panel(image, boxes, colors=colors, scale=scale),
                 f"ground '{m['expression']}': IoU {iou(result, m['box']):.2f} (green: truth)")]


def iou(pred, box) -> float:
    """IoU of a predicted box (None: no box, 0) with the true one."""
    return box_iou(np.ravel(tuple(pred)), np.ravel(box)) if pred is not None else 0.0
