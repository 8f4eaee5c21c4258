"""Tasks whose answer is free text: caption, vqa, describe_region.

The target is the text's SentencePiece pieces then eos; decoding may emit text pieces only.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .. import viz
from ..errors import TaskError
from ..metrics import bleu4, cider, exact_match, normalize_answer, vqa_accuracy
from .registry import register
from .base import Example, Task, TaskContext, box_list, check_box, fmt_box, one_object, pick, short

VQA_HUMANS = 10   # the VQAv2 rule needs the 10 human answers of VQAv2


def _texts(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [str(v) for v in value if str(v).strip()]


def captions_of(sample: dict) -> list[str]:
    """The reference captions of a sample (its ``caption`` field: one string or a list)."""
    return _texts(sample.get("caption"))


class TextTask(Task):
    """Shared parse: the text pieces of the output, decoded (other modalities ignored)."""

    def parse(self, ids, ctx: TaskContext, info=None, **kw) -> str:
        return ctx.decode_text(ids)

    def to_record(self, result, inputs, files, stem) -> dict:
        rec = {"text": result}
        if inputs.get(self.text_input):
            rec["question" if self.text_input == "question" else "prompt_text"] = inputs[self.text_input]
        return rec

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        said = short(result or "(empty)", 60)
        if example is not None:
            asked = f"Q: {example.meta['question']} " if "question" in self.inputs else ""
            said = f"{self.name}: {asked}{said} (truth: {self.summary(result, example)[0]})"
        return [(viz.enlarge(image, scale), said)]


class Described(TextTask):
    """Free text scored against reference texts: BLEU-4, CIDEr-D and exact match with any reference."""

    def metric(self, predictions, examples, samples=None, judge=None) -> dict[str, float]:
        refs = [e.meta.get("references", []) for e in examples]
        return {"bleu4": float(bleu4(predictions, refs)), "cider": float(cider(predictions, refs)),
                "exact_match": float(exact_match(predictions, refs))}

    def example_record(self, prediction, example, sample) -> dict:
        refs = list(example.meta["references"])
        return {"prediction": prediction, "truth": refs, "exact_match": exact_match([prediction], [refs]) == 1.0}

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        return (example.meta.get("references") or [""])[0], str(prediction)


@register
class Caption(Described):
    name = "caption"
    headline = "exact_match"
    means = {"exact_match": "exact_match"}
    max_new_tokens = 48

    def can_build(self, sample: dict) -> bool:
        return super().can_build(sample) and bool(captions_of(sample))

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        image, info = self._image(sample, ctx)
        prompt, ids = self._prompt(ctx, rng, (info.width, info.height), template=inputs.get("prompt"))
        refs = captions_of(sample)
        labels = self._text_target(ctx, pick(refs, rng)) if refs else []
        return self._example(ctx, prompt, ids, image, info, labels, references=refs)


@register
class VQA(TextTask):
    """Visual question answering. Scored by ``accuracy``: the VQAv2 rule where a question has 10
    human answers, exact match (after VQA answer normalisation) where it has fewer (the VQAv2 rule
    cannot reach 1 with fewer than 4 answers); ``exact_match``; and VQAv2's split by the type of
    the most common reference answer (``accuracy_yes_no``, ``accuracy_number``, ``accuracy_other``)."""

    name = "vqa"
    placeholders = frozenset({"question"})
    inputs = ("question",)
    headline = "accuracy"
    means = {"accuracy": "accuracy"}
    max_new_tokens = 16

    def pick_item(self, sample, rng):
        if not sample.get("qa"):
            return sample
        return {**sample, "qa": [sample["qa"][int(rng.integers(len(sample["qa"])))]]}

    def can_build(self, sample: dict) -> bool:
        return super().can_build(sample) and bool(sample.get("qa"))

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        image, info = self._image(sample, ctx)
        question = inputs.get("question")
        answers: list[str] = []
        if question is None:
            if not sample.get("qa"):
                raise TaskError("vqa needs a question: pass question='...' (or a sample with 'qa' pairs)")
            question, answer = pick(sample["qa"], rng)
            answers = _texts(answer)
        if not isinstance(question, str) or not question.strip():
            raise TaskError(f"vqa needs a non-empty question string, got {question!r}")
        prompt, ids = self._prompt(ctx, rng, (info.width, info.height), template=inputs.get("prompt"),
                                   question=question.strip())
        labels = self._text_target(ctx, answers[0]) if answers else []
        return self._example(ctx, prompt, ids, image, info, labels, question=question, answers=answers)

    def metric(self, predictions, examples, samples=None, judge=None) -> dict[str, float]:
        acc, em, by_type = [], [], {}
        for p, e in zip(predictions, examples):
            a, match, kind = vqa_item(p, list(e.meta.get("answers") or []))
            acc.append(a)
            em.append(match)
            by_type.setdefault(kind, []).append(a)
        out = {"accuracy": float(np.mean(acc)), "exact_match": float(np.mean(em))}
        for kind in ("yes/no", "number", "other"):
            if kind in by_type:
                out[f"accuracy_{kind.replace('/', '_')}"] = float(np.mean(by_type[kind]))
        return out

    def example_record(self, prediction, example, sample) -> dict:
        answers = list(example.meta.get("answers") or [])
        acc, _, kind = vqa_item(prediction, answers)
        return {"prediction": prediction, "truth": answers, "accuracy": acc, "answer_type": kind}

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        return (example.meta.get("answers") or [""])[0], str(prediction)


def answer_type(normalized: list[str]) -> str:
    """VQAv2's answer types: "yes/no", "number" or "other", of the most common reference answer."""
    top = Counter(normalized).most_common(1)[0][0] if normalized else ""
    if top in ("yes", "no"):
        return "yes/no"
    return "number" if top.replace(".", "", 1).isdigit() else "other"


def vqa_item(pred, answers: list) -> tuple[float, bool, str]:
    """One answer's accuracy (see :class:`VQA`), exact match and VQAv2 answer type."""
    normalized = [normalize_answer(a) for a in answers]
    match = normalize_answer(pred) in set(normalized)
    acc = vqa_accuracy(pred, answers) if len(answers) >= VQA_HUMANS else float(match)
    return acc, match, answer_type(normalized)


@register
class DescribeRegion(Described):
    """Region captioning: a box (as location tokens in the prompt) -> a short description."""

    name = "describe_region"
    placeholders = frozenset({"region"})
    inputs = ("box",)
    headline = "cider"
    means = {"exact_match": "exact_match"}
    max_new_tokens = 24

    def pick_item(self, sample, rng):
        return one_object(sample, rng)

    def can_build(self, sample: dict) -> bool:
        return super().can_build(sample) and bool(sample.get("objects"))

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        image, info = self._image(sample, ctx)
        box, refs = inputs.get("box"), []
        if box is None:
            objects = sample.get("objects") or []
            if not objects:
                raise TaskError("describe_region needs box=(x1, y1, x2, y2) in pixels (or a sample with objects)")
            k = 0 if rng is None else int(rng.integers(len(objects)))
            box = objects[k]["box"]
            # Referring expressions of that object describe it best; its label is the fallback.
            refs = [e for e, i in sample.get("refexps", []) if i == k] + _texts(objects[k].get("label"))
        box = check_box(box)
        prompt, ids = self._prompt(ctx, rng, (info.width, info.height), template=inputs.get("prompt"), region=box)
        labels = self._text_target(ctx, pick(refs, rng)) if refs else []
        return self._example(ctx, prompt, ids, image, info, labels, box=box, references=refs)

    def example_record(self, prediction, example, sample) -> dict:
        return {**super().example_record(prediction, example, sample), "box": box_list(example.meta["box"])}

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        truth, pred = super().summary(prediction, example, judge)
        return f"{truth} at {fmt_box(example.meta['box'])}", pred

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        if example is None:
            return super().panels(image, result, scale=scale)
        truth = (example.meta.get("references") or [""])[0]
        return [(viz.boxes_panel(image, [example.meta["box"]], colors=[viz.TRUTH], scale=scale),
                 f"{self.name}: {short(result, 60)} (truth: {truth})")]
