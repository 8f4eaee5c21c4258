"""Visual grounding: a referring expression -> one box (four location tokens, then eos)."""
from __future__ import annotations

import numpy as np

from ..errors import TaskError
from .base import Box, Example, Task, TaskContext, location_limits, pick
from .constraints import BoxesProcessor


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


class Ground(Task):
    name = "ground"
    placeholders = frozenset({"expression"})
    max_new_tokens = 5

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

    def metric(self, predictions, examples) -> dict[str, float]:
        from ..metrics import grounding_acc
        return {"grounding_acc": float(grounding_acc(
            [tuple(p) if p is not None else None for p in predictions], [e.meta.get("box") for e in examples]))}
