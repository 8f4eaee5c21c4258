"""A task defined outside unio: "How many objects are there?" -> a number (README, "Adding a task").

It is what a user writes in their own package: a Task subclass registered with ``@register``,
its prompt templates on the class (prompts/*.yaml has no entry for it), and an entry point so
that ``unio predict``, ``unio eval`` and ``unio train`` find it::

    [project.entry-points."unio.tasks"]
    count = "unio_count_task"
"""
from __future__ import annotations

from unio.tasks import Task, register
from unio.viz import enlarge


@register
class Count(Task):
    name = "count"
    headline = "exact_match"        # the figure `unio demo` shows
    max_new_tokens = 4
    prompts = {"canonical": "How many objects are there?",
               "paraphrases": ["Count the objects.", "How many things are in the picture?",
                               "Give the number of objects.", "What is the number of objects in the image?",
                               "Count everything you see."]}

    def can_build(self, sample):
        return super().can_build(sample) and sample.get("objects") is not None

    def build(self, sample, ctx, rng=None, **inputs):     # a sample -> prompt ids, image, target ids
        image, info = self._image(sample, ctx)
        prompt, ids = self._prompt(ctx, rng, (info.width, info.height), template=inputs.get("prompt"))
        objects = sample.get("objects")
        target = self._text_target(ctx, str(len(objects))) if objects is not None else []
        return self._example(ctx, prompt, ids, image, info, target,
                             count=len(objects) if objects is not None else None)

    def parse(self, ids, ctx, info=None, **kw):           # the number written, None if something else
        text = ctx.decode_text(ids)
        return int(text) if text.isdigit() else None

    def metric(self, predictions, examples, samples=None, judge=None):
        right = [p == e.meta["count"] for p, e in zip(predictions, examples)]
        return {"exact_match": sum(right) / len(right) if right else float("nan")}

    def example_record(self, prediction, example, sample) -> dict:
        return {"prediction": prediction, "truth": example.meta["count"],
                "correct": prediction == example.meta["count"]}

    def to_record(self, result, inputs, files, stem) -> dict:
        return {"count": result}

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        return str(example.meta["count"]), str(prediction)

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        said = f"{result} objects" if result is not None else "(no number)"
        if example is not None:
            said += f" (truth: {example.meta['count']})"
        return [(enlarge(image, scale), said)]
