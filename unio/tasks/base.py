"""What every task shares: the context (tokenizers, vocabulary, prompts), the Example record, and
the Task base class with its prompt / target helpers.

A task turns a sample into an :class:`Example` (``build``), says which ids may come next while
decoding (``logits_processors``), reads generated ids back into a typed result (``parse``, which
never raises) and scores predictions (``metric``). See notes in DESIGN.md, "Tasks and prompts".
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .. import viz
from ..errors import InputError, TaskError
from ..images import Letterbox, check_box, letterbox, load_image
from ..prompts import Prompts, parts_to_text
from ..resources import data_path
from ..tokenizers.image import ImageTokenizer
from ..tokenizers.locations import LocationTokenizer
from ..tokenizers.text import TextTokenizer
from ..vocab import UnifiedVocab
from .constraints import AllowedIdsProcessor
from .options import GENERATE, PROMPT, Option
from .registry import get_task, placeholders_by_task

__all__ = ["TaskContext", "Example", "Task", "Box", "Detection", "Label", "check_box", "box_list", "fmt_box",
           "one_object", "finite"]


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
        expected = placeholders_by_task()
        self.prompts.check({t: expected[t] for t in self.prompts.tasks if t in expected})

    @classmethod
    def from_dir(cls, tokenizers_dir, *, image_size: int, patch_size: int, prompts_dir=None,
                 num_bins: int = 1000, classes: dict[str, list[str]] | None = None,
                 device=None) -> "TaskContext":
        """Tokenizers from a folder holding ``text.model`` and ``image/`` (tokenizers/shapes, an export)."""
        d = Path(tokenizers_dir)
        if not d.exists() and not d.is_absolute():
            d = data_path(*d.parts)
        text = TextTokenizer.load(d / "text.model" if (d / "text.model").is_file() else d)
        image_tok = None
        if (d / "image").is_dir():
            image_tok = ImageTokenizer.load(d / "image", device=device)
        vocab = UnifiedVocab(text, num_bins=num_bins, image_tokenizer=image_tok,
                             codebook_size=None if image_tok is not None else 1)
        return cls(vocab=vocab, text=text, locations=LocationTokenizer(num_bins), image_tokenizer=image_tok,
                   prompts=Prompts.load(prompts_dir), image_size=int(image_size), patch_size=int(patch_size),
                   classes={k: list(v) for k, v in (classes or {}).items()})

    def add_task_prompts(self, names) -> None:
        """Give the context the own templates of tasks ``names`` where its prompts have none, so an
        export written from it (training) carries them."""
        own = {n: get_task(n).prompts for n in names if n not in self.prompts and get_task(n).prompts}
        self.prompts = self.prompts.with_entries(own)

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
    # Every image of an item that has several (a pair, a clip's frames), letterboxed alike; ``image``
    # is then the first of them. None: one image (``image``) or none.
    images: list | None = None

    @property
    def all_images(self) -> list:
        """The item's images in order: ``images``, else ``[image]``, else []."""
        if self.images:
            return list(self.images)
        return [] if self.image is None else [self.image]


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
    """Base class of every task; a subclass sets ``name`` and overrides what differs.

    What a task declares (class attributes):

    - ``inputs``: the per-item inputs besides the image, in the order the Pipeline's named method
      takes them (``"question"``, ``"expression"``, ``"text"``: strings; ``"box"``: a pixel box);
      evaluation reads them from ``example.meta``. ``text_input`` is the one ``unio predict --text``
      fills (default: the first text input).
    - ``options``: its own decoding options (:class:`~unio.tasks.options.Option`, typed and checked);
      every task also takes transformers' ``generate`` options and ``prompt``.
    - ``headline``: the metric ``unio demo`` shows; ``writes_image``: the answer is VQ codes (the
      model needs an image tokenizer, and the demo scores fewer of them); ``prompts``: templates
      used when prompts/*.yaml has no entry for the task (``{"canonical": ..., "paraphrases": [...]}``).

    What it does (methods): ``build`` a sample into an :class:`Example`, constrain decoding
    (``logits_processors``, ``generation_kwargs``), ``parse`` generated ids (never raises),
    ``finish`` the parsed results with the caller's options, ``metric`` (every figure ``unio eval``
    reports), ``example_record`` (one line of ``eval --predictions``), ``to_record`` (one line of
    ``unio predict``), ``panels`` (pictures for ``--viz`` and the demo sheet).
    """

    name: str = ""
    placeholders: frozenset = frozenset()   # prompt placeholders the task fills
    inputs: tuple[str, ...] = ()
    text_input: str | None = None
    options: dict[str, Option] = {}
    headline: str = ""
    means: dict[str, str] = {}              # metric -> the per-example record key it is the mean of (CIs)
    writes_image: bool = False
    prompts: dict | None = None
    needs_image: bool = True
    # Images per item: 1; a fixed number (2: an image pair, ``reason``); or None, a clip of any number
    # of frames (``sample["images"]``, :meth:`_images`). Several images reach the encoder together,
    # each with its image-index embedding (UnioEncoder).
    num_images: int | None = 1
    # The seeded world of this project whose samples carry what the task reads (``unio demo`` shows
    # each task on its world): the shapes world, or its pairs / clips.
    world: str = "shapes"
    needs_scores: bool = False              # parse reads token log-probabilities (scores, confidences)
    max_new_tokens: int = 32

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.text_input is None:
            cls.text_input = next((i for i in cls.inputs if i != "box"), None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- options
    def option_specs(self) -> dict[str, Option]:
        """Every option the task takes: generate options, ``prompt``, then its own (which win)."""
        return {**GENERATE, "prompt": PROMPT, **self.options}

    def check_options(self, options: dict) -> dict:
        """``options`` typed and checked; InputError naming an unknown option and what the task takes."""
        specs = self.option_specs()
        unknown = sorted(set(options) - set(specs))
        if unknown:
            raise InputError(f"unknown option(s) {unknown} for {self.name}; it takes {sorted(specs)}")
        return {k: specs[k].check(k, v, self.name) for k, v in options.items()}

    def split_options(self, options: dict) -> tuple[dict, dict]:
        """Checked options -> (the task's own + prompt, transformers generate options)."""
        gen = {k: v for k, v in options.items() if k in GENERATE and k not in self.options and v is not None}
        return {k: v for k, v in options.items() if k not in gen}, gen

    # -- to override
    def can_build(self, sample: dict) -> bool:
        return not self.needs_image or sample.get("image") is not None

    def build(self, sample: dict, ctx: TaskContext, rng: np.random.Generator | None = None, **inputs) -> Example:
        raise NotImplementedError

    def pick_item(self, sample: dict, rng: np.random.Generator) -> dict:
        """The sample narrowed to the one item (question, expression, object) evaluation asks about.

        ``build`` with ``rng=None`` takes the first item of each list; this lets evaluation ask
        about a seeded choice instead (else every VQA example would be the first question).
        """
        return sample

    def logits_processors(self, ctx: TaskContext, example: Example | None = None, **overrides) -> list:
        return [AllowedIdsProcessor(ctx.vocab.allowed_mask("text"))]

    def generation_kwargs(self, ctx: TaskContext, **overrides) -> dict:
        return {"max_new_tokens": int(overrides.get("max_new_tokens") or self.max_new_tokens)}

    def parse(self, ids, ctx: TaskContext, info: Letterbox | None = None, **kw):
        raise NotImplementedError

    def frames(self, options: dict) -> int | None:
        """How many frames of a clip to read (the ``frames`` option, else its default; None: all)."""
        return options.get("frames", getattr(self.options.get("frames"), "default", None))

    def unavailable(self, model, ctx: TaskContext) -> str | None:
        """Why ``model`` cannot run this task at all (a part it lacks), else None: evaluation leaves
        such a task out of its default list, and names the reason when the task is asked for."""
        need = self.num_images or getattr(self.options.get("frames"), "default", None) or 2
        have = getattr(getattr(model, "config", None), "max_images", 1)
        if need > have:
            return (f"{self.name} reads {need} images per example but the model reads at most {have} "
                    f"(max_images={have}); fine-tune it with --set model.max_images={max(need, 4)}")
        return None

    def before_run(self, ctx: TaskContext, options: dict) -> None:
        """Checks of checked options against the model (its class lists, its prompts), before any
        example is built; raise an InputError or TaskError saying what to pass instead."""

    def candidates(self, options: dict) -> int:
        """How many samples to draw per example (best-of-k; see ``choose``)."""
        return 1

    def extra_rows(self, ctx: TaskContext, rows: list, options: dict) -> list:
        """Rows decoded beside ``rows`` in the same batch (classifier-free guidance's unconditional
        branch); their outputs are dropped."""
        return []

    def choose(self, runner, cond: list, outs: list, k: int, options: dict) -> list:
        """One output of each example's ``k`` candidates (``outs`` in ``cond``'s order)."""
        return outs[::k]

    def finish(self, results: list, options: dict) -> list:
        """Parsed results after the caller's options (detect's ``threshold``); default unchanged."""
        return results

    def eval_options(self, ctx: TaskContext, examples: list[Example]) -> dict:
        """Options evaluation passes (classify without a class list: the labels of the data)."""
        return {}

    def metric(self, predictions: list, examples: list[Example], samples: list | None = None, judge=None) -> dict:
        """Every figure evaluation reports. ``samples`` are the examples' samples; ``judge`` runs
        other tasks on the predictions where a figure needs that (text-to-image consistency).
        A figure computed per example may come back under ``"per_example"`` (a list of dicts, one
        per example): evaluation adds them to the ``--predictions`` records, not to the metrics."""
        raise NotImplementedError

    def example_record(self, prediction, example: Example, sample: dict) -> dict:
        """``eval --predictions``: the prediction, the truth and this example's own figure."""
        return {"prediction": as_dict(prediction)}

    def to_record(self, result, inputs: dict, files: Path, stem: str) -> dict:
        """``unio predict``: one result as JSON fields (large outputs written under ``files``)."""
        return {"result": as_dict(result)}

    def panels(self, image, result, example: Example | None = None, scale: float = 1.0, judge=None,
               inputs: dict | None = None, threshold: float | None = None) -> list:
        """Pictures of one result: [(PIL image, caption)], each ``scale`` times the input's size;
        with ``example``, its truth beside (the demo sheet). A picture that says everything itself
        (boxes drawn with their labels) has an empty caption: ``--viz`` then saves it as it is.
        ``threshold``: results scored below it are not drawn (detections)."""
        return [(viz.enlarge(image, scale), short(as_text(result)))] if image is not None else []

    def summary(self, prediction, example: Example, judge=None) -> tuple[str, str]:
        """(truth, prediction) of one example as short text (the demo's table)."""
        return "", short(as_text(prediction))

    picture_files: tuple[str, ...] = ()     # suffixes ``unio predict --out`` may name the answer's picture with

    def save_picture(self, result, path: Path) -> None:
        """Write the answer as the picture file ``path`` (a suffix of ``picture_files``)."""
        raise TaskError(f"{self.name} writes JSON records, not a picture")

    def prompts_in(self, ctx: TaskContext) -> Prompts:
        """The context's prompts, with this task's own templates where prompts/ has none for it."""
        if self.name in ctx.prompts or not self.prompts:
            return ctx.prompts
        return ctx.prompts.with_entries({self.name: self.prompts}, f"{type(self).__name__}.prompts")

    # -- helpers for subclasses
    def _image(self, sample: dict, ctx: TaskContext) -> tuple[Image.Image, Letterbox]:
        if sample.get("image") is None:
            raise TaskError(f"task {self.name!r} needs an image; pass one (PIL image, numpy array or path)")
        return letterbox(load_image(sample["image"]), ctx.image_size)

    def _images(self, sample: dict, ctx: TaskContext) -> tuple[list[Image.Image], list[Letterbox]]:
        """The item's several images (``sample["images"]``: paths, arrays or PIL images), checked
        against ``num_images`` and letterboxed -> (images, letterboxes). A clip's frames must share
        one size (one frame of reference for everything said about them)."""
        items = sample.get("images")
        if items is None and sample.get("image") is not None:
            items = [sample["image"]]
        if isinstance(items, (str, Path, Image.Image, np.ndarray)) or items is None:
            items = [] if items is None else [items]
        items = list(items)
        want = self.num_images
        if want is not None and len(items) != want:
            raise InputError(f"task {self.name!r} reads {want} images per item, got {len(items)}; "
                             f"pass them together, e.g. images=[left, right]")
        if not items:
            raise InputError(f"task {self.name!r} reads the frames of a clip, got none; pass a list of images, "
                             "a folder of frames or a video file")
        loaded = [load_image(im) for im in items]
        if want is None and len({im.size for im in loaded}) > 1:
            raise InputError(f"the frames of one clip must share one size, got {sorted({im.size for im in loaded})}")
        boxed = [letterbox(im, ctx.image_size) for im in loaded]
        return [b[0] for b in boxed], [b[1] for b in boxed]

    def _prompt(self, ctx: TaskContext, rng, size: tuple[int, int] | None, template: str | None = None,
                **values) -> tuple[str, list[int]]:
        """Render this task's prompt -> (readable text, global ids ending with eos).

        ``size`` is the (W, H) of the original image, the frame a ``{region}`` box is given in.
        """
        for key in ("text", "expression"):
            if isinstance(values.get(key), str):
                values[key] = values[key].strip().rstrip(".").strip() or values[key]
        parts = self.prompts_in(ctx).render(self.name, rng=rng, template=template, **values)
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
        """An Example; ``image`` may be a list (an item of several images: ``images``, the first as ``image``)."""
        images = None
        if isinstance(image, (list, tuple)):
            images, image = list(image), (image[0] if image else None)
        return Example(task=self.name, prompt=prompt, input_ids=ids, image=image, patch_mask=patch_mask,
                       labels=list(target), label_weights=weights, info=info, meta=meta, images=images)


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


def short(text, n: int = 44) -> str:
    """One line of at most ``n`` characters (pictures' captions, the demo table)."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def as_text(result) -> str:
    return "(empty)" if result is None or result == "" else str(result)


def as_dict(result) -> Any:
    """A task result as JSON-ready data (dataclasses, Label, lists of them)."""
    if hasattr(result, "to_dict"):
        return result.to_dict()
    if isinstance(result, list):
        return [as_dict(r) for r in result]
    if hasattr(result, "__dataclass_fields__"):
        return asdict(result)
    return result


def box_list(box) -> list[float] | None:
    """A box as JSON: 4 numbers rounded to 0.01 px (None stays None)."""
    return None if box is None else [round(float(v), 2) for v in np.ravel(tuple(box))]


def fmt_box(box) -> str:
    return "none" if box is None else "(" + ", ".join(f"{float(v):.0f}" for v in box) + ")"


def one_object(sample: dict, rng) -> dict:
    """The sample narrowed to one seeded object, with its referring expressions (region tasks)."""
    if not sample.get("objects"):
        return sample
    k = int(rng.integers(len(sample["objects"])))
    refexps = [(e, 0) for e, i in sample.get("refexps") or [] if int(i) == k]
    return {**sample, "objects": [sample["objects"][k]], "refexps": refexps}


def finite(v) -> float | None:
    """A float for JSON: None where it is NaN or infinite."""
    v = float(v)
    return v if math.isfinite(v) else None
