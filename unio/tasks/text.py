"""Tasks whose answer is free text: caption, vqa, describe_region.

The target is the text's SentencePiece pieces then eos; decoding may emit text pieces only.
"""
from __future__ import annotations

from ..errors import TaskError
from .base import Example, Task, TaskContext, check_box, pick


def _texts(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [str(v) for v in value if str(v).strip()]


class TextTask(Task):
    """Shared parse: the text pieces of the output, decoded (other modalities ignored)."""

    def parse(self, ids, ctx: TaskContext, info=None, **kw) -> str:
        return ctx.decode_text(ids)


class Caption(TextTask):
    name = "caption"
    max_new_tokens = 48

    def can_build(self, sample: dict) -> bool:
        return super().can_build(sample) and bool(_texts(sample.get("caption")))

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        image, info = self._image(sample, ctx)
        prompt, ids = self._prompt(ctx, rng, (info.width, info.height), template=inputs.get("prompt"))
        refs = _texts(sample.get("caption"))
        labels = self._text_target(ctx, pick(refs, rng)) if refs else []
        return self._example(ctx, prompt, ids, image, info, labels, references=refs)

    def metric(self, predictions, examples) -> dict[str, float]:
        from ..metrics import bleu4, cider
        refs = [e.meta.get("references", []) for e in examples]
        return {"bleu4": float(bleu4(predictions, refs)), "cider": float(cider(predictions, refs))}


class VQA(TextTask):
    name = "vqa"
    placeholders = frozenset({"question"})
    max_new_tokens = 16

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

    def metric(self, predictions, examples) -> dict[str, float]:
        """Exact match (normalised answers) always; VQAv2 accuracy over the questions that carry
        several human answers (its leave-one-out formula needs them)."""
        from ..metrics import exact_match, vqa_accuracy
        pairs = [(p, e.meta.get("answers") or []) for p, e in zip(predictions, examples)]
        pairs = [(p, a) for p, a in pairs if a]
        if not pairs:
            return {"exact_match": float("nan")}
        out = {"exact_match": float(exact_match([p for p, _ in pairs], [a for _, a in pairs]))}
        multi = [(p, a) for p, a in pairs if len(a) > 1]
        if multi:
            out["vqa_accuracy"] = float(vqa_accuracy([p for p, _ in multi], [a for _, a in multi]))
        return out


class DescribeRegion(TextTask):
    """Region captioning: a box (as location tokens in the prompt) -> a short description."""

    name = "describe_region"
    placeholders = frozenset({"region"})
    max_new_tokens = 24

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

    def metric(self, predictions, examples) -> dict[str, float]:
        from ..metrics import bleu4, cider
        refs = [e.meta.get("references", []) for e in examples]
        return {"bleu4": float(bleu4(predictions, refs)), "cider": float(cider(predictions, refs))}
