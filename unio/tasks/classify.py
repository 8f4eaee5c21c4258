"""Closed-set classification: classify (the image) and classify_region (a box).

The answer is one label of a label set, written as its text pieces; decoding follows a trie over
the labels' token sequences, so the output is always one of them (OFA's constrained decoding,
Wang et al., 2022). The score is the label's probability under that constrained distribution,
i.e. its share among the candidate labels.
"""
from __future__ import annotations

import math

from .. import viz
from ..errors import DataError, InputError, TaskError
from ..metrics import accuracy
from .registry import register
from .base import Example, Label, Task, TaskContext, box_list, check_box, finite, fmt_box, one_object, pick, short
from .constraints import AllowedIdsProcessor, LabelTrie, TrieProcessor
from .options import Option


def label_set(labels, ctx: TaskContext, kind: str) -> list[str] | None:
    """The caller's labels (list or comma-separated string), else the model's class list."""
    if labels is None:
        return ctx.class_list(kind)
    if isinstance(labels, str):
        labels = [s for s in (p.strip() for p in labels.split(",")) if s]
    try:
        labels = list(labels)
    except TypeError:
        raise InputError(f"labels must be a list of strings, got {type(labels).__name__}") from None
    if not labels or not all(isinstance(s, str) and s.strip() for s in labels):
        raise InputError(f"labels must be a non-empty list of non-empty strings, got {labels!r}")
    return [s.strip() for s in labels]


def label_trie(ctx: TaskContext, labels: list[str]) -> LabelTrie:
    return LabelTrie(ctx.encode_text(s) for s in labels)


def sequence_score(ids, logprobs) -> float:
    """exp(sum of log-probabilities) up to and including eos; NaN without probabilities."""
    if logprobs is None:
        return float("nan")
    total = 0.0
    for lp in list(logprobs)[: len(ids)]:
        total += float(lp)
    return math.exp(total) if math.isfinite(total) else 0.0


@register
class Classify(Task):
    name = "classify"
    kind = "image"           # which class list of the model applies
    options = {"labels": Option("labels", doc="the label set to choose from (default: the model's classes)")}
    headline = "accuracy"
    means = {"accuracy": "correct"}
    needs_scores = True
    max_new_tokens = 16

    def can_build(self, sample: dict) -> bool:
        return super().can_build(sample) and bool(sample.get("label"))

    def _spec(self, sample, rng, inputs) -> tuple[dict, dict, str | None]:
        """(prompt values, meta, target label) for this sample."""
        return {}, {}, sample.get("label")

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        image, info = self._image(sample, ctx)
        values, meta, target = self._spec(sample, rng, inputs)
        labels = label_set(inputs.get("labels"), ctx, self.kind)
        prompt, ids = self._prompt(ctx, rng, (info.width, info.height), template=inputs.get("prompt"), **values)
        target_ids = self._text_target(ctx, target) if isinstance(target, str) and target else []
        return self._example(ctx, prompt, ids, image, info, target_ids, label=target, label_set=labels, **meta)

    def logits_processors(self, ctx, example: Example | None = None, **overrides) -> list:
        labels = (example.meta.get("label_set") if example is not None else None) or ctx.class_list(self.kind)
        if not labels:  # no label set known: any text
            return [AllowedIdsProcessor(ctx.vocab.allowed_mask("text"))]
        return [TrieProcessor(ctx.vocab, label_trie(ctx, labels))]

    def generation_kwargs(self, ctx, **overrides) -> dict:
        kw = super().generation_kwargs(ctx, **overrides)
        labels = label_set(overrides.get("labels"), ctx, self.kind)
        if labels and not overrides.get("max_new_tokens"):
            kw["max_new_tokens"] = max(len(ctx.encode_text(s)) for s in labels) + 1
        return kw

    def parse(self, ids, ctx, info=None, *, logprobs=None, **kw) -> Label:
        ids = [int(i) for i in ids]
        end = ids.index(ctx.vocab.eos_id) + 1 if ctx.vocab.eos_id in ids else len(ids)
        return Label(ctx.decode_text(ids[:end]), sequence_score(ids[:end], logprobs))

    def before_run(self, ctx, options) -> None:
        if options.get("labels") is None and not ctx.class_list(self.kind):
            raise TaskError(f"this model stores no {self.kind} class list; pass labels=[...]")

    def eval_options(self, ctx, examples) -> dict:
        """Without a class list in the model, choose among the labels of the data."""
        if ctx.class_list(self.kind):
            return {}
        return {"labels": sorted({e.meta["label"] for e in examples if e.meta.get("label")})}

    def metric(self, predictions, examples, samples=None, judge=None) -> dict[str, float]:
        pairs = [(str(p).strip(), e.meta["label"]) for p, e in zip(predictions, examples) if e.meta.get("label")]
        return {"accuracy": accuracy([p for p, _ in pairs], [t for _, t in pairs]) if pairs else float("nan")}

    def example_record(self, prediction, example, sample) -> dict:
        return {"prediction": str(prediction), "score": float(getattr(prediction, "score", float("nan"))),
                "truth": example.meta["label"], "correct": str(prediction) == example.meta["label"]}

    def to_record(self, result, inputs, files, stem) -> dict:
        return {"label": str(result), "score": finite(result.score)}

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        return str(example.meta.get("label")), str(prediction)

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        said = f"{result} {result.score:.2f}"
        if example is not None:
            said = f"{self.name}: {result} (truth: {example.meta.get('label')})"
        return [(viz.enlarge(image, scale), said)]


@register
class ClassifyRegion(Classify):
    """The label of the object inside a box given as location tokens."""

    name = "classify_region"
    kind = "object"
    placeholders = frozenset({"region"})
    inputs = ("box",)

    def pick_item(self, sample, rng):
        return one_object(sample, rng)

    def example_record(self, prediction, example, sample) -> dict:
        return {**super().example_record(prediction, example, sample), "box": box_list(example.meta["box"])}

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        return f"{example.meta.get('label')} at {fmt_box(example.meta['box'])}", str(prediction)

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        if example is None:
            return super().panels(image, result, scale=scale)
        return [(viz.boxes_panel(image, [example.meta["box"]], colors=[viz.TRUTH], scale=scale),
                 f"{self.name}: {result} (truth: {example.meta.get('label')})")]

    def can_build(self, sample: dict) -> bool:
        return Task.can_build(self, sample) and bool(sample.get("objects"))

    def _spec(self, sample, rng, inputs):
        box = inputs.get("box")
        if box is not None:
            box = check_box(box)
            return {"region": box}, {"box": box}, None
        objects = sample.get("objects") or []
        if not objects:
            raise TaskError("classify_region needs box=(x1, y1, x2, y2) in pixels (or a sample with objects)")
        obj = pick(objects, rng)
        return {"region": check_box(obj["box"])}, {"box": tuple(obj["box"])}, obj.get("label")


class ClosedAnswer(Task):
    """A task whose answer is one word of a fixed set (``answers``: reason's true / false, entail's
    three labels) about its one text input (``inputs[0]``): decoded through the words' trie, read
    back as a :class:`Label` with its probability, scored by accuracy overall and per true answer."""

    answers: tuple[str, ...] = ()
    items: str = ""          # the sample's list of (text, answer) pairs: "statements", "hypotheses"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.answers:
            cls.means = {"accuracy": "correct", **{f"accuracy_{w}": f"correct_{w}" for w in cls.answers}}

    def answer_of(self, value, text: str) -> str:
        """A sample's answer for ``text`` as one of ``answers``; DataError otherwise."""
        raise NotImplementedError

    def pick_item(self, sample, rng):
        items = sample.get(self.items) or []
        if not items:
            return sample
        return {**sample, self.items: [items[int(rng.integers(len(items)))]]}

    def can_build(self, sample: dict) -> bool:
        return super().can_build(sample) and bool(sample.get(self.items))

    def asked(self, sample: dict, rng, inputs: dict) -> tuple[str, str | None]:
        """(the text asked about, its answer or None): the caller's input, else one of the sample's items."""
        name = self.inputs[0]
        text = inputs.get(name)
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{self.name} needs a non-empty {name} string, got {text!r}")
            return text.strip(), None
        items = sample.get(self.items) or []
        if not items:
            raise TaskError(f"{self.name} needs {name}='...' (or a sample with '{self.items}': "
                            f"[(text, {' | '.join(repr(a) for a in self.answers)}), ...])")
        item = pick(items, rng)
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise DataError(f"a {name} of the sample is {item!r}; write {self.items} as (text, label)")
        text, answer = item
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"a {name} of the sample is {text!r}; it must be non-empty text")
        return text.strip(), self.answer_of(answer, text)

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        """Its picture (or pictures: ``num_images``), the text asked about in the prompt's ``{text}``,
        the answer as the target; the text and the answer in ``meta`` under its input's name and
        ``label``."""
        if self.num_images == 1:
            images, info = self._image(sample, ctx)
        else:
            images, infos = self._images(sample, ctx)
            info = infos[0]
        text, label = self.asked(sample, rng, inputs)
        prompt, ids = self._prompt(ctx, rng, (info.width, info.height), template=inputs.get("prompt"), text=text)
        target = self._text_target(ctx, label) if label else []
        return self._example(ctx, prompt, ids, images, info, target, **{self.inputs[0]: text}, label=label)

    def said(self, result, example=None, inputs=None) -> str:
        """A panel's caption: the text asked about and the answer (and the truth, under evaluation)."""
        name = self.inputs[0]
        text = (example.meta.get(name) if example is not None else None) or (inputs or {}).get(name) or ""
        said = f"{short(text, 80)}: {result}"
        return f"{self.name}: {said} (truth: {example.meta.get('label')})" if example is not None else said

    def logits_processors(self, ctx, example=None, **overrides) -> list:
        return [TrieProcessor(ctx.vocab, label_trie(ctx, list(self.answers)))]

    def generation_kwargs(self, ctx, **overrides) -> dict:
        longest = max(len(ctx.encode_text(s)) for s in self.answers) + 1
        return {"max_new_tokens": int(overrides.get("max_new_tokens") or longest)}

    def parse(self, ids, ctx, info=None, *, logprobs=None, **kw) -> Label:
        """The answer written (up to eos) with its probability; the text as it is where it is none of them."""
        ids = [int(i) for i in ids]
        end = ids.index(ctx.vocab.eos_id) + 1 if ctx.vocab.eos_id in ids else len(ids)
        text = ctx.decode_text(ids[:end])
        return Label(text.lower() if text.lower() in self.answers else text, sequence_score(ids[:end], logprobs))

    def metric(self, predictions, examples, samples=None, judge=None) -> dict[str, float]:
        pairs = [(str(p).strip().lower(), e.meta["label"]) for p, e in zip(predictions, examples)
                 if e.meta.get("label")]
        out = {"accuracy": accuracy(*zip(*pairs)) if pairs else float("nan")}
        for word in self.answers:
            part = [(p, t) for p, t in pairs if t == word]
            out[f"accuracy_{word}"] = accuracy(*zip(*part)) if part else float("nan")
        return out

    def example_record(self, prediction, example, sample) -> dict:
        asked, truth = self.inputs[0], example.meta["label"]
        correct = str(prediction).strip().lower() == truth
        return {asked: example.meta[asked], "prediction": str(prediction),
                "score": float(getattr(prediction, "score", float("nan"))), "truth": truth, "correct": correct,
                **{f"correct_{w}": correct if truth == w else None for w in self.answers}}

    def to_record(self, result, inputs, files, stem) -> dict:
        return {self.inputs[0]: inputs.get(self.inputs[0]), "label": str(result),
                "score": finite(getattr(result, "score", float("nan")))}

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        return f"{short(example.meta[self.inputs[0]], 60)}: {example.meta.get('label')}", str(prediction)
