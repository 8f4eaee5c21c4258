"""Tasks over the frames of a clip: video_classify (which action) and video_caption (what happens).

A clip is any number of frames of one size (``images=[frame, ...]``); they reach the encoder
together, each with its image-index (time) embedding. The shapes world's clips are
:mod:`unio.data.shapes_clips`: one object moves, grows, shrinks, appears, disappears or changes
colour while the others stay still.
"""
from __future__ import annotations

from ..data.shapes_clips import ACTIONS
from .base import Example, pick, short
from .classify import Classify, label_set, label_trie
from .constraints import TrieProcessor
from .options import Option
from .reason import item_images, side_by_side
from .registry import register
from .text import Described, captions_of

__all__ = ["VideoClassify", "VideoCaption", "has_frames", "FRAMES"]


# How many frames to read of a clip (a list of pictures, a folder of frames, an animated GIF, a video
# file), spread evenly with the first and the last included; left out, every frame is read.
FRAMES = Option(int, min=1, max=64, doc="frames read of a clip, spread evenly (default: all of them)")


def has_frames(sample: dict) -> bool:
    """Does the sample carry a clip (a non-empty list of frames under ``images``)?"""
    images = sample.get("images")
    return isinstance(images, (list, tuple)) and len(images) > 0


def _strip_panel(image, said: str, example: Example | None, scale: float) -> list:
    frames = item_images(image, example)
    return [(side_by_side(frames, scale, pad=2), said)] if frames else []


@register
class VideoClassify(Classify):
    """The frames of a clip -> one action of a closed set, decoded through a trie over the actions.

    The label set is the caller's ``labels``, else the model's ``action`` class list, else the
    shapes world's :data:`~unio.data.shapes_clips.ACTIONS`. Scored by ``accuracy``.
    """

    name = "video_classify"
    kind = "action"
    num_images = None
    world = "shapes-clips"
    options = {"labels": Option("labels", doc="the actions to choose from (default: the model's, else the "
                                              "shapes clips' actions)"), "frames": FRAMES}
    max_new_tokens = 8

    def actions(self, ctx, given=None) -> list[str]:
        """The label set: ``given`` (a list or "a,b,c"), else the model's class list, else ACTIONS."""
        return label_set(given, ctx, self.kind) or list(ACTIONS)

    def can_build(self, sample: dict) -> bool:
        return has_frames(sample) and isinstance(sample.get("action"), str) and bool(sample["action"].strip())

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        frames, infos = self._images(sample, ctx)
        action = sample.get("action")
        target = action.strip() if isinstance(action, str) and action.strip() else None
        prompt, ids = self._prompt(ctx, rng, (infos[0].width, infos[0].height), template=inputs.get("prompt"))
        target_ids = self._text_target(ctx, target) if target else []
        return self._example(ctx, prompt, ids, frames, infos[0], target_ids, label=target,
                             label_set=self.actions(ctx, inputs.get("labels")), frames=len(frames))

    def logits_processors(self, ctx, example: Example | None = None, **overrides) -> list:
        labels = (example.meta.get("label_set") if example is not None else None) or self.actions(ctx)
        return [TrieProcessor(ctx.vocab, label_trie(ctx, labels))]

    def generation_kwargs(self, ctx, **overrides) -> dict:
        if overrides.get("max_new_tokens"):
            return {"max_new_tokens": int(overrides["max_new_tokens"])}
        labels = self.actions(ctx, overrides.get("labels"))
        return {"max_new_tokens": max(len(ctx.encode_text(s)) for s in labels) + 1}

    def before_run(self, ctx, options) -> None:
        """Nothing to check: without labels or a class list the shapes clips' actions apply."""

    def eval_options(self, ctx, examples) -> dict:
        return {}

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        said = f"{result} {getattr(result, 'score', float('nan')):.2f}"
        if example is not None:
            said = f"{self.name}: {result} (truth: {example.meta.get('label')})"
        return _strip_panel(image, said, example, scale)


@register
class VideoCaption(Described):
    """The frames of a clip -> a sentence saying what happens. Scored like caption: BLEU-4, CIDEr-D
    and exact match against the clip's reference sentences."""

    name = "video_caption"
    num_images = None
    world = "shapes-clips"
    options = {"frames": FRAMES}
    headline = "exact_match"
    means = {"exact_match": "exact_match"}
    max_new_tokens = 24

    def can_build(self, sample: dict) -> bool:
        return has_frames(sample) and bool(captions_of(sample))

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        frames, infos = self._images(sample, ctx)
        prompt, ids = self._prompt(ctx, rng, (infos[0].width, infos[0].height), template=inputs.get("prompt"))
        refs = captions_of(sample)
        labels = self._text_target(ctx, pick(refs, rng)) if refs else []
        return self._example(ctx, prompt, ids, frames, infos[0], labels, references=refs, frames=len(frames))

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        said = short(result or "(empty)", 60)
        if example is not None:
            said = f"{self.name}: {said} (truth: {self.summary(result, example)[0]})"
        return _strip_panel(image, said, example, scale)
