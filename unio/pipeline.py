"""The Python inference API: ``unio.load(dir_or_name)`` -> :class:`Pipeline`.

    >>> pipe = unio.load("path/to/export")      # an export directory (unio.export) or a shipped name
    >>> pipe.detect("street.jpg")               # [Detection(box=(x1, y1, x2, y2), label=..., score=...)]
    >>> pipe.caption(["a.jpg", "b.jpg"])        # lists are batched inside (batch_size)
    >>> pipe.run(task, "street.jpg", **inputs)   # any registered task by name, e.g. ground + expression=...
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from .data.collate import collate
from .errors import InputError, TaskError
from . import export
from .export import export_path, load_export
from .backends.ort import load_onnx_export
from .images import letterbox, load_image
from .model.decoding import greedy_decode, until_end
from .tasks import Box, Detection, Example, Label, TaskContext, get_task, task_names
from .tasks.constraints import AllowedIdsProcessor
from .batching import lean, run_many, shares_decoding
from .tasks.inputs import broadcast, count_items, is_batch, several_image_items
from .tasks import classify, detect, ground, text
from .tasks import retrieve as retrieval
from .tasks.dense import Depth, Segment, image_codes
from .tasks.image_gen import GenerateImage, Inpaint, to_pil

__all__ = ["load", "Pipeline", "Run", "Box", "Detection", "Label"]

# Names that moved to unio.export in 0.1 (the export directory format has its own module): still
# importable from here for one release, with a DeprecationWarning.
_MOVED = {name: "unio.export" for name in ("save_export", "read_meta", "load_export", "init_export",
                                             "swap_image_tokenizer", "list_models", "EXPORT_FILES")}


READ_SIDE = 4  # images are decoded with a long side of at least this many times the model's input side


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(f"unio.pipeline.{name} moved to {_MOVED[name]}.{name}; import it from there",
                      DeprecationWarning, stacklevel=2)
        return getattr(export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


CANDIDATE_ROWS = 256  # at most this many candidate rows (before guidance doubles them) per generate call


def load(name_or_dir, device=None, dtype=None, device_map=None, batch_size: int = 16,
         backend: str = "torch") -> "Pipeline":
    """A :class:`Pipeline` from an export directory or the name of a shipped model (``list_models()``).

    Device and dtype are automatic (CUDA + bfloat16 when available, else CPU + float32); pass
    ``device``/``dtype`` to override, or ``device_map="auto"`` to spread a large model over devices
    (through accelerate, as transformers does). ``backend="onnxruntime"`` runs the ONNX graphs that
    ``unio export DIR OUT --onnx`` wrote instead (:mod:`unio.backends.ort`; beam search needs torch).
    """
    path = export_path(name_or_dir)
    if backend not in ("torch", "onnxruntime"):
        raise InputError(f"unknown backend {backend!r}; choose torch or onnxruntime")
    loader = load_export if backend == "torch" else load_onnx_export
    model, ctx, meta = loader(path, device=device, dtype=dtype, device_map=device_map)
    return Pipeline(model, ctx, {**meta, "path": str(path), "backend": backend}, batch_size=batch_size)


@dataclass
class Run:
    """A typed run of a raw generation: text (str), boxes (list[Box]), image (PIL) or codes (list[int])."""

    kind: str
    value: Any

    def to_dict(self) -> dict:
        v = self.value
        if self.kind == "boxes":
            v = [b.to_list() for b in v]
        elif isinstance(v, Image.Image):
            v = {"size": list(v.size)}
        return {"kind": self.kind, "value": v}


# ---------------------------------------------------------------------- the pipeline
class Pipeline:
    """One model, every task. Each method takes one item or a list (batched with ``batch_size``).

    :meth:`run` is the one path (``pipe.run(task_name, image, **inputs, **options)``);
    the named methods (:meth:`caption`, :meth:`detect`, ...) are conveniences over it that
    name the task's inputs as positional arguments. Options are the task's own (see
    ``unio.tasks.get_task(name).option_specs()``): checked and typed before the model runs.
    """

    def __init__(self, model, ctx: TaskContext, meta: dict | None = None, batch_size: int = 16):
        self.model, self.ctx, self.meta = model, ctx, dict(meta or {})
        self.batch_size = int(batch_size)
        self.task_defaults = export.task_defaults(self.meta)
        self.progress = False  # a bar over the decoding steps of each generate call (stderr, terminals only)
        self.lean = True       # greedy decoding through unio.model.decoding (False: transformers' generate)

    def __repr__(self) -> str:
        n = self.model.num_parameters()
        return (f"Pipeline({n / 1e6:.1f}M parameters, image_size={self.ctx.image_size}, device={self.device}, "
                f"dtype={self.dtype}, tasks={self.tasks})")

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def tasks(self) -> list[str]:
        """The tasks the model has prompts for (what it was trained on)."""
        return list(self.ctx.prompts.tasks)

    @property
    def classes(self) -> dict[str, list[str]]:
        return dict(self.ctx.classes)

    # ------------------------------------------------------------------ the one path
    def run(self, task: str, image=None, *, batch_size=None, **kwargs):
        """Any registered task by name: ``pipe.run(name, image, **inputs)`` (ground: ``expression=...``).

        ``kwargs`` are the task's inputs (``question``, ``expression``, ``box``, ``text``: one, or a
        list with one per image; with ONE image, a list asks all of them about that image in one
        batch: ``pipe.ask(image, [q1, q2, q3])``) and its options (``num_beams=3``, ``threshold=0.5``, ``guidance=3``,
        ``prompt=...``). An input or option the task does not take, or an option of the wrong type,
        raises :class:`InputError` before the model runs. A task without an image input
        (generate_image) takes its text as the batch instead.
        """
        t, examples, own, gen, batch = self._prepare(task, image, kwargs)
        out = self.predict_examples(task, examples, batch_size=batch_size, gen=gen, **own)
        return out if batch else out[0]

    def run_many(self, requests: Sequence[dict], *, batch_size=None) -> list:
        """Several :meth:`run` calls at once, of any tasks: each request is a dict ``{"task": name,
        "image": ..., **inputs, **options}`` as ``run`` takes them, and gets what ``run`` returns
        for it, in order.

        Requests decoded greedily (no beams, sampling, candidates or guidance: every task's default
        but generate_image's) share one encoder pass and one decoding loop whatever their tasks:
        each row keeps its own task's constraints and its own ``max_new_tokens``, and leaves the
        network's batch when it ends. The answers are those of separate ``run`` calls. The other
        requests run one by one. A bad request raises before the model runs.
        """
        return run_many(self, requests, batch_size=batch_size)

    def shares_decoding(self, task: str, options: dict) -> bool:
        """Whether ``run_many`` decodes a request of ``task`` with these checked options together
        with other tasks' requests (greedy, one candidate, no guidance)."""
        return shares_decoding(self, task, options)

    def resolve_options(self, task_name: str, options: dict, gen: dict | None = None):
        """-> (task, its options checked and filled from the export's ``task_defaults``, checked
        generate options), after the task's own checks against this model (``before_run``)."""
        task = get_task(task_name)
        gen = task.check_options(dict(gen or {}))
        options = task.check_options({**self.task_defaults.get(task_name, {}),
                                      **{k: v for k, v in options.items() if v is not None}})
        task.before_run(self.ctx, options)
        return task, options, gen

    def _prepare(self, task: str, image, kwargs: dict):
        """``run``'s arguments -> (task, built examples, the task's own options, generate options, batch?)."""
        t = get_task(task)
        known = {name for n in task_names() for name in get_task(n).inputs}  # any task's inputs
        inputs = {k: kwargs.pop(k) for k in list(kwargs) if k in known or k in t.inputs}
        extra = sorted(set(inputs) - set(t.inputs))
        if extra:
            raise InputError(f"{task} takes no {' or '.join(extra)}"
                             + (f"; its inputs: {', '.join(t.inputs)}" if t.inputs else ""))
        options = t.check_options({k: v for k, v in kwargs.items() if v is not None})
        if not t.needs_image and image is not None:  # generate_image("a red star"): the text is the batch
            if inputs.get(t.text_input) is not None:
                raise InputError(f"{task} makes its output from {t.text_input} alone; pass no image")
            inputs[t.text_input], image = image, None
        missing = [name for name in t.inputs if inputs.get(name) is None]
        if missing:
            raise TaskError(f"task {task!r} needs {missing[0]}=...; pass one (or a list, one per image)")
        if t.needs_image:
            if image is None:
                raise TaskError(f"task {task!r} needs an image")
            # A file far larger than the model's input is decoded small (JPEG draft), and answers
            # still come back in its own pixels; tasks answering with a full-size picture read it all.
            side = None if t.picture_files else READ_SIDE * self.ctx.image_size
            if t.num_images != 1:  # pairs, clips: an item is several pictures (a list, a folder, a video)
                frames = t.frames(options)
                items, batch = several_image_items(image, t.num_images, frames, side)
                rows = [{"images": ims} for ims in items]
            else:
                batch = is_batch(image)
                rows = None
            asks = {k: count_items(k, v) for k, v in inputs.items()} if not batch else {}
            many = max((c for c in asks.values() if c is not None), default=None)
            if many is not None:  # one item, a list of questions / expressions / boxes: read it once
                one = rows[0] if rows else {"image": load_image(image, max_side=side)}
                batch, rows = True, [one] * many
            elif rows is None:
                rows = [{"image": load_image(im, max_side=side)} for im in (list(image) if batch else [image])]
        else:
            batch = not isinstance(inputs[t.text_input], str)
            rows = [{}] * (len(inputs[t.text_input]) if batch else 1)
        n = len(rows)
        if not n:
            raise InputError(f"{task} got an empty list of {'images' if t.needs_image else t.text_input + 's'}")
        columns = {k: broadcast(k, v, n, batch) for k, v in inputs.items()}
        own, gen = t.split_options(options)
        examples = [t.build(row, self.ctx, None, **{k: columns[k][i] for k in columns}, **own)
                    for i, row in enumerate(rows)]
        return t, examples, own, gen, batch

    def predict_examples(self, task_name: str, examples: Sequence[Example], *, batch_size=None, gen=None,
                         **options) -> list:
        """Generate and parse already built Examples (evaluation): one result per example.

        ``options`` are the task's own options (``max_objects``, ``top_p``, ``guidance``, ``seed``,
        ``labels`` ...), the export's ``task_defaults`` filling those left out; ``gen`` holds
        transformers ``generate`` options (``num_beams`` ...).
        """
        task, options, gen = self.resolve_options(task_name, options, gen)
        k = task.candidates(options)
        bs = int(batch_size or self.batch_size)
        if k > 1:  # k samples of each example share one call: keep the call's rows bounded
            bs = max(1, min(bs, CANDIDATE_ROWS // k))
        results = []
        for i in range(0, len(examples), bs):
            chunk = list(examples[i:i + bs])
            gen_kw = task.generation_kwargs(self.ctx, **options)
            gen_kw.update(gen)
            processors = task.logits_processors(self.ctx, chunk[0], batch=chunk, **options)
            cond = [ex for ex in chunk for _ in range(k)]  # k samples of each example, side by side
            outs = self._generate(cond + task.extra_rows(self.ctx, cond, options), processors, gen_kw,
                                  task.needs_scores)
            outs = task.choose(self, cond, outs, k, options) if k > 1 else outs
            for ex, (ids, lp, raw) in zip(chunk, outs):
                results.append(task.parse(ids, self.ctx, ex.info, logprobs=lp, raw_logprobs=raw, meta=ex.meta,
                                          image=ex.image, refine=options.get("refine", True)))
        return task.finish(results, options)

    # ------------------------------------------------------------------ named conveniences over run()
    def caption(self, image, **options):
        """A caption of each image (str)."""
        return self.run(text.Caption.name, image, **options)

    def ask(self, image, question, **options):
        """The answer (str) to ``question`` about each image (visual question answering)."""
        return self.run(text.VQA.name, image, question=question, **options)

    def classify(self, image, labels=None, **options):
        """The label (a ``str`` with a ``.score``) among ``labels`` (default: the model's image classes)."""
        return self.run(classify.Classify.name, image, labels=labels, **options)

    def detect(self, image, **options):
        """Detections sorted by score; ``top_p`` samples (Pix2Seq), ``threshold`` drops low scores."""
        return self.run(detect.Detect.name, image, **options)

    def ground(self, image, expression, **options):
        """The :class:`Box` (original pixels) of the object ``expression`` refers to (None if none)."""
        return self.run(ground.Ground.name, image, expression=expression, **options)

    def describe_region(self, image, box, **options):
        """A short description (str) of the object inside ``box`` (x1, y1, x2, y2 pixels)."""
        return self.run(text.DescribeRegion.name, image, box=box, **options)

    def classify_region(self, image, box, labels=None, **options):
        """The label of the object inside ``box`` (default labels: the model's object classes)."""
        return self.run(classify.ClassifyRegion.name, image, box=box, labels=labels, **options)

    def segment(self, image, expression, **options):
        """Bool mask (H, W) of the original image; ``refine=False`` reads the codes alone (no guide)."""
        return self.run(Segment.name, image, expression=expression, **options)

    def depth(self, image, **options):
        """Depth float32 (H, W) of the original image (units of the image tokenizer's depth range);
        ``refine=False`` reads the codes alone (no guide)."""
        return self.run(Depth.name, image, **options)

    def generate_image(self, text, **options):
        """PIL image(s) from text; ``guidance`` > 1 applies classifier-free guidance (1: none).

        ``candidates`` = k > 1 samples k images per text and keeps the one that matches the text
        best by ``rerank``: ``recaption`` (the default where the model has a caption prompt), the
        model captions each drawn picture and the one whose caption names most of the text wins,
        ties going to ``caption``, the text's log-likelihood as the caption of the picture under
        the model itself; ``"pmi"``, log p(image | text) - log p(image) under the model, which needs
        no caption prompt. Each costs about k times the sampling. Options left out take the model's
        ``task_defaults`` (``unio.json``), else top_p 0.9, temperature 1.0, no guidance and one
        candidate; ``size=(W, H)`` resizes the result.
        """
        if isinstance(text, (list, tuple)) and not text:
            raise InputError("generate_image got an empty list of texts")
        return self.run(GenerateImage.name, text=text, **options)

    def inpaint(self, image, box, text, **options):
        """The image with the box redrawn to show ``text`` (content generated inside the box only)."""
        return self.run(Inpaint.name, image, box=box, text=text, **options)

    # ------------------------------------------------------------------ embeddings and retrieval (unio.tasks.retrieve)
    def embed_images(self, images, *, batch_size=None):
        """Contrastive embeddings of images: ``Embeddings`` (unit-norm float32 (N, D) + the model's fingerprint)."""
        return retrieval.embed_images(self, images, batch_size=batch_size)

    def embed_texts(self, texts, *, batch_size=None):
        """Contrastive embeddings of texts: ``Embeddings`` (unit-norm float32 (N, D) + the model's fingerprint)."""
        return retrieval.embed_texts(self, texts, batch_size=batch_size)

    def retrieve(self, queries, gallery, *, top_k: int = 5, rerank: int = 0, batch_size=None):
        """The ``top_k`` gallery items nearest each query (texts <-> images; raw or ``Embeddings``), the top
        ``rerank`` re-ordered by the caption likelihood: ``Hit`` lists (:func:`unio.tasks.retrieve.retrieve`)."""
        return retrieval.retrieve(self, queries, gallery, top_k=top_k, rerank=rerank, batch_size=batch_size)

    # ------------------------------------------------------------------ scoring, raw generation, parsing
    @torch.inference_mode()
    def score(self, image, texts, *, batch_size=None):
        """Log-likelihood of each text as the caption of ``image`` (image-text retrieval)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise InputError("score needs a non-empty list of non-empty texts")
        images = list(image) if is_batch(image) else [image]
        task = get_task(text.Caption.name)
        pairs = []
        for im in images:
            base = task.build({"image": load_image(im)}, self.ctx)
            for t in texts:
                pairs.append(Example(**{**base.__dict__, "labels": self.ctx.encode_text(t) + [self.ctx.vocab.eos_id]}))
        scores = self.target_loglik(pairs, [e.labels for e in pairs], batch_size or self.batch_size).tolist()
        rows = [scores[k * len(texts):(k + 1) * len(texts)] for k in range(len(images))]
        return rows if is_batch(image) else rows[0]

    @torch.inference_mode()
    def generate(self, prompt: str | list[str], image=None, *, max_new_tokens: int = 64, batch_size=None, **gen):
        """Raw prompt -> the output as typed runs (text, boxes in the image's frame, images)."""
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        images = (list(image) if is_batch(image) else [image] * len(prompts)) if image is not None \
            else [None] * len(prompts)
        if len(images) != len(prompts):
            raise InputError(f"generate got {len(prompts)} prompts and {len(images)} images; pass one of each")
        examples = []
        for p, im in zip(prompts, images):
            if not isinstance(p, str) or not p.strip():
                raise InputError("generate needs a non-empty prompt string")
            pil, info = letterbox(im, self.ctx.image_size) if im is not None else (None, None)
            examples.append(Example("generate", p, self.ctx.encode_text(p) + [self.ctx.vocab.eos_id], pil, None, [],
                                    None, info, {}))
        allowed = self.ctx.vocab.allowed_mask("text", "location", "image")
        out = []
        bs = int(batch_size or self.batch_size)
        for i in range(0, len(examples), bs):
            chunk = examples[i:i + bs]
            for ex, (ids, _, _) in zip(chunk, self._generate(chunk, [AllowedIdsProcessor(allowed)],
                                                             {"max_new_tokens": max_new_tokens, **gen}, False)):
                out.append(self._runs(ids, ex.info))
        return out[0] if single else out

    def parse(self, task: str, ids, image=None, **meta):
        """Read a raw generation (global ids) as ``task``'s result; with ``image``, in its frame."""
        t = get_task(task)
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        pil, info = letterbox(image, self.ctx.image_size) if image is not None else (None, None)
        if image is not None:
            meta.setdefault("original", load_image(image))
        return t.parse(ids, self.ctx, info, meta=meta, image=pil)

    @torch.inference_mode()
    def target_loglik(self, examples: Sequence[Example], targets: Sequence[list[int]],
                       batch_size: int | None = None) -> np.ndarray:
        """Sum of log-probabilities of each target (global ids) after its example's prompt (teacher
        forcing), ``batch_size`` rows at a time (default: four times the pipeline's)."""
        scores: list[float] = []
        bs = int(batch_size or self.batch_size * 4)
        for i in range(0, len(examples), bs):
            chunk, tg = list(examples[i:i + bs]), list(targets[i:i + bs])
            batch = self._collate(chunk)
            T = max(1, max(len(t) for t in tg))
            labels = torch.full((len(chunk), T), -100, dtype=torch.long)
            for r, t in enumerate(tg):
                labels[r, : len(t)] = torch.tensor(t, dtype=torch.long)
            labels = labels.to(self.device)
            logits = self.model(**batch, labels=labels).logits.float()
            logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
            scores += (logp * (labels != -100)).sum(-1).tolist()
        return np.asarray(scores, dtype=np.float64)

    # ------------------------------------------------------------------ internals
    def _collate(self, examples: Sequence[Example]) -> dict:
        """The model's inputs of ``examples`` (prompts padded to the longest), on the model's device."""
        batch = collate(examples, self.ctx.vocab, 1)
        out = {}
        for key in ("pixel_values", "has_image", "patch_mask", "input_ids", "attention_mask"):
            if batch[key] is not None:
                value = batch[key].to(self.device)
                out[key] = value.to(self.dtype) if key == "pixel_values" else value
        return out

    @torch.inference_mode()
    def _generate(self, examples, processors, gen_kw: dict, want_scores: bool, limits=None):
        """-> per example: (generated ids up to eos, constrained log-probs, raw log-probs); ``limits``:
        each row's own token budget (rows past it were ended by :class:`RowSegments`)."""
        vocab = self.ctx.vocab
        kw = dict(gen_kw)
        kw.setdefault("do_sample", False)
        kw.pop("labels", None)
        if self.progress:
            processors = [*processors, _Progress(kw.get("max_new_tokens"), len(examples))]
        special = {"eos_token_id": vocab.eos_id, "pad_token_id": vocab.pad_id, "decoder_start_token_id": vocab.bos_id}
        if lean(self, kw):
            out = greedy_decode(self.model, max_new_tokens=kw["max_new_tokens"], logits_processor=processors,
                                want_scores=want_scores, **special, **self._collate(examples))
            beams = None
        else:  # beam search, transformers' samplers and the other generate options
            out = self.model.generate(
                **self._collate(examples), logits_processor=LogitsProcessorList(processors), **special,
                return_dict_in_generate=True, output_scores=want_scores, output_logits=want_scores, **kw)
            beams = getattr(out, "beam_indices", None)
        lp = raw = None
        if want_scores and beams is None and getattr(out, "logprobs", None) is not None:  # the lean loop's
            lp, raw = out.logprobs, out.raw_logprobs
        elif want_scores:
            lp = self.model.compute_transition_scores(out.sequences, out.scores, beams, normalize_logits=True)
            raw = self.model.compute_transition_scores(out.sequences, out.logits, beams, normalize_logits=True)
        # the decoder start id dropped
        return until_end(out.sequences[: len(examples), 1:], lp, raw, vocab.eos_id, limits)

    def _runs(self, ids, info) -> list[Run]:
        ctx = self.ctx
        size = (info.width, info.height) if info is not None else (ctx.image_size, ctx.image_size)
        runs = []
        for seg in ctx.vocab.split(ids):
            if seg.kind == "text":
                try:
                    runs.append(Run("text", ctx.text.decode(seg.ids)))
                except Exception:
                    runs.append(Run("text", ""))
            elif seg.kind == "location":
                bins = np.asarray(seg.ids[: len(seg.ids) // 4 * 4]).reshape(-1, 4)
                bins = np.concatenate([np.minimum(bins[:, :2], bins[:, 2:]), np.maximum(bins[:, :2], bins[:, 2:])], 1)
                boxes = [Box(*map(float, b)) for b in ctx.locations.decode_boxes(bins, size)] if len(bins) else []
                runs.append(Run("boxes", boxes))
            elif seg.kind == "image":
                if ctx.image_tokenizer is not None and len(seg.ids) == ctx.image_codes:
                    pixels = ctx.image_tokenizer.decode(image_codes(ctx.vocab.image_ids(seg.ids), ctx)[None])[0]
                    runs.append(Run("image", to_pil(pixels)))
                else:
                    runs.append(Run("codes", list(seg.ids)))
        return runs


class _Progress(LogitsProcessor):
    """Counts decoding steps on a progress bar (a long generation, e.g. many image candidates);
    changes nothing."""

    def __init__(self, total: int | None, rows: int):
        self.bar = tqdm(total=total, unit="tok", desc=f"decoding {rows} row{'s' * (rows > 1)}", file=sys.stderr,
                        leave=False, disable=None)

    def __call__(self, input_ids, scores):
        self.bar.update(1)
        return scores

    def __del__(self):
        self.bar.close()


def options_for(task: str, options: dict, several_tasks: bool = True) -> dict:
    """The parsed ``--option`` values (``{task or None: {key: value}}``) that apply to ``task``,
    typed and checked by the task (``several_tasks``: the error tells how to scope an option)."""
    t = get_task(task)
    merged = {**options.get(None, {}), **options.get(task, {})}
    try:
        return t.check_options(merged)
    except InputError as exc:
        hint = ""
        unscoped = sorted(set(options.get(None, {})) - set(t.option_specs()))
        if unscoped and several_tasks:
            takers = [n for n in task_names() if unscoped[0] in get_task(n).option_specs()]
            hint = (" (an option written without TASK. applies to every task; scope it"
                    + (f", e.g. --option {takers[0]}.{unscoped[0]}=..." if takers else "") + ")")
        raise InputError(f"{exc}{hint}") from None
