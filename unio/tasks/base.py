"""What every task shares: the context (tokenizers, vocabulary, prompts), the Example record, and
the Task base class with its prompt / target helpers.

A task turns a sample into an :class:`Example` (``build``), says which ids may come next while
decoding (``logits_processors``), reads generated ids back into a typed result (``parse``, which
never raises) and scores predictions (``metric``). See notes in DESIGN.md, "Tasks and prompts".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import InputError, TaskError
from ..images import Letterbox, check_box, letterbox, load_image
from ..prompts import Prompts, parts_to_text
from ..tokenizers.locations import LocationTokenizer
from ..tokenizers.text import TextTokenizer
from ..vocab import UnifiedVocab

__all__ = ["TaskContext", "Example", "Task", "Box", "Detection", "Label", "check_box"]


@dataclass
class TaskContext:
    """Everything a task needs besides the sample."""

    vocab: UnifiedVocab
    text: TextTokenizer
    locations: LocationTokenizer
    image_tokenizer: Any | None          # unio.tokenizers.image.ImageTokenizer
    prompts: Prompts
    image_size: int                      # S, the model's input side
    patch_size: int                      # P
    # Closed label sets: "image" for classify, "object" for detect / classify_region. Exports store
    # them in unio.json so that classify(labels=None) knows what the model was trained on.
    classes: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        # Catch a template whose placeholders do not match its task when the context is made,
        # not when the first sample of that task is drawn mid-training.
        from . import placeholders_by_task
        expected = placeholders_by_task()
        self.prompts.check({t: expected[t] for t in self.prompts.tasks if t in expected})

    @classmethod
    def from_dir(cls, tokenizers_dir, *, image_size: int, patch_size: int, prompts_dir=None,
                 num_bins: int = 1000, classes: dict[str, list[str]] | None = None,
                 device=None) -> "TaskContext":
        """Tokenizers from a folder holding ``text.model`` and ``image/`` (tokenizers/shapes, an export)."""
        from ..resources import data_path
        d = Path(tokenizers_dir)
        if not d.exists() and not d.is_absolute():
            d = data_path(*d.parts)
        text = TextTokenizer.load(d / "text.model" if (d / "text.model").is_file() else d)
        image_tok = None
        if (d / "image").is_dir():
            from ..tokenizers.image import ImageTokenizer
            image_tok = ImageTokenizer.load(d / "image", device=device)
        vocab = UnifiedVocab(text, num_bins=num_bins, image_tokenizer=image_tok,
                             codebook_size=None if image_tok is not None else 1)
        return cls(vocab=vocab, text=text, locations=LocationTokenizer(num_bins), image_tokenizer=image_tok,
                   prompts=Prompts.load(prompts_dir), image_size=int(image_size), patch_size=int(patch_size),
                   classes={k: list(v) for k, v in (classes or {}).items()})

    # -- small conveniences shared by tasks
    @property
    def patch_grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def image_codes(self) -> int:
        """Codes of one generated image (h * w of the VQ grid)."""
        if self.image_tokenizer is None:
            raise TaskError("this task writes images through the VQ image tokenizer, but none is loaded; "
                            "load tokenizers that include image/ (e.g. tokenizers/shapes)")
        return int(self.image_tokenizer.tokens_per_image)

    def encode_text(self, text: str) -> list[int]:
        return [int(i) for i in self.vocab.to_global(self.text.encode(text), "text")]

    def decode_text(self, global_ids: Sequence[int]) -> str:
        """Text pieces of a mixed sequence, other modalities skipped; never raises."""
        pieces = [loc for seg in self.vocab.split(list(global_ids)) if seg.kind == "text" for loc in seg.ids]
        try:
            return self.text.decode(pieces).strip()
        except Exception:  # a corrupt piece id must not break parsing
            return ""

    def class_list(self, kind: str) -> list[str] | None:
        labels = self.classes.get(kind)
        return list(labels) if labels else None


@dataclass
class Example:
    """One training / inference item: the prompt ids and target ids of one task on one sample, with
    the letterboxed input image (or None), an optional patch mask (inpainting), per-token label
    weights (Pix2Seq's sequence augmentation) and the letterbox that maps model coordinates back."""

    task: str
    prompt: str
    input_ids: list[int]
    image: Image.Image | None
    patch_mask: np.ndarray | None
    labels: list[int]
    label_weights: list[float] | None
    info: Letterbox | None
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- result types
@dataclass
class Box:
    """An (x1, y1, x2, y2) pixel box in the caller's original image; unpacks like a tuple."""

    x1: float
    y1: float
    x2: float
    y2: float

    def __iter__(self):
        return iter((self.x1, self.y1, self.x2, self.y2))

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        return (self.x1, self.y1, self.x2, self.y2)[i]

    def to_list(self) -> list[float]:
        return [float(v) for v in self]

    def to_dict(self) -> dict:
        return {"box": self.to_list()}


@dataclass
class Detection:
    box: tuple[float, float, float, float]
    label: str
    score: float

    def to_dict(self) -> dict:
        return {"box": [float(v) for v in self.box], "label": self.label, "score": float(self.score)}


class Label(str):
    """A class name (a plain ``str``) that also carries the model's confidence in ``score``."""

    score: float

    def __new__(cls, label: str, score: float = float("nan")):
        obj = super().__new__(cls, label)
        obj.score = float(score)
        return obj

    def to_dict(self) -> dict:
        return {"label": str(self), "score": self.score}

    def __reduce__(self):
        return (Label, (str(self), self.score))


# ---------------------------------------------------------------------- the base class
class Task:
    """Base class: subclasses set ``name``, ``placeholders`` and override build / parse / metric."""

    name: str = ""
    placeholders: frozenset = frozenset()   # prompt placeholders the task fills
    needs_image: bool = True
    needs_scores: bool = False              # parse reads token log-probabilities (scores, confidences)
    max_new_tokens: int = 32

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- to override
    def can_build(self, sample: dict) -> bool:
        return not self.needs_image or sample.get("image") is not None

    def build(self, sample: dict, ctx: TaskContext, rng: np.random.Generator | None = None, **inputs) -> Example:
        raise NotImplementedError

    def logits_processors(self, ctx: TaskContext, example: Example | None = None, **overrides) -> list:
        from .constraints import AllowedIdsProcessor
        return [AllowedIdsProcessor(ctx.vocab.allowed_mask("text"))]

    def generation_kwargs(self, ctx: TaskContext, **overrides) -> dict:
        return {"max_new_tokens": int(overrides.get("max_new_tokens") or self.max_new_tokens)}

    def parse(self, ids, ctx: TaskContext, info: Letterbox | None = None, **kw):
        raise NotImplementedError

    def metric(self, predictions: list, examples: list[Example]) -> dict[str, float]:
        raise NotImplementedError

    # -- helpers for subclasses
    def _image(self, sample: dict, ctx: TaskContext) -> tuple[Image.Image, Letterbox]:
        if sample.get("image") is None:
            raise TaskError(f"task {self.name!r} needs an image; pass one (PIL image, numpy array or path)")
        return letterbox(load_image(sample["image"]), ctx.image_size)

    def _prompt(self, ctx: TaskContext, rng, size: tuple[int, int] | None, template: str | None = None,
                **values) -> tuple[str, list[int]]:
        """Render this task's prompt -> (readable text, global ids ending with eos).

        ``size`` is the (W, H) of the original image, the frame a ``{region}`` box is given in.
        """
        for key in ("text", "expression"):
            if isinstance(values.get(key), str):
                values[key] = values[key].strip().rstrip(".").strip() or values[key]
        parts = ctx.prompts.render(self.name, rng=rng, template=template, **values)
        ids: list[int] = []
        for kind, value in parts:
            if kind == "region":
                ids.extend(self._box_ids(ctx, value, size))
            else:
                ids.extend(ctx.encode_text(value))
        if not ids:
            raise InputError(f"the prompt of task {self.name!r} is empty; give a non-empty prompt")
        return parts_to_text(parts), ids + [ctx.vocab.eos_id]

    @staticmethod
    def _box_ids(ctx: TaskContext, box, size: tuple[int, int] | None) -> list[int]:
        size = size or (ctx.image_size, ctx.image_size)
        bins = ctx.locations.encode_boxes(check_box(box), size)
        return [int(i) for i in ctx.vocab.location_ids(bins)]

    @staticmethod
    def _text_target(ctx: TaskContext, text: str) -> list[int]:
        return ctx.encode_text(text) + [ctx.vocab.eos_id]

    @staticmethod
    def _size(info: Letterbox | None, ctx: TaskContext) -> tuple[int, int]:
        return (info.width, info.height) if info is not None else (ctx.image_size, ctx.image_size)

    def _example(self, ctx, prompt, ids, image, info, target=(), weights=None, /, *, patch_mask=None,
                 **meta) -> Example:
        return Example(task=self.name, prompt=prompt, input_ids=ids, image=image, patch_mask=patch_mask,
                       labels=list(target), label_weights=weights, info=info, meta=meta)


def location_limits(ctx: TaskContext, examples) -> list[tuple[int, int]] | None:
    """Per example, how many x and y location bins fall inside its image (bins span the long side)."""
    if not examples or any(e.info is None for e in examples):
        return None
    B = ctx.vocab.num_bins
    out = []
    for e in examples:
        long = max(e.info.width, e.info.height)
        out.append((min(B, int(e.info.width * B // long) + 1), min(B, int(e.info.height * B // long) + 1)))
    return out


def pick(items: Sequence, rng) -> Any:
    """The first item at inference (rng None), a random one in training."""
    return items[0] if rng is None else items[int(rng.integers(len(items)))]


def as_dict(result) -> Any:
    """A task result as JSON-ready data (dataclasses, Label, lists of them)."""
    if hasattr(result, "to_dict"):
        return result.to_dict()
    if isinstance(result, list):
        return [as_dict(r) for r in result]
    if hasattr(result, "__dataclass_fields__"):
        return asdict(result)
    return result
