"""The Python inference API: ``unio.load(dir_or_name)`` -> :class:`Pipeline`.

    >>> pipe = unio.load("path/to/export")      # an export directory (unio.export) or a shipped name
    >>> pipe.detect("street.jpg")               # [Detection(box=(x1, y1, x2, y2), label=..., score=...)]
    >>> pipe.caption(["a.jpg", "b.jpg"])        # lists are batched inside (batch_size)
    >>> pipe.run("ground", "street.jpg", expression="the red car")   # any registered task by name
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .data.specs import parse_value
from .errors import CheckpointError, InputError, TaskError, UnioError
from .images import FILL, letterbox, load_image, to_pixel_values
from .metrics import text_recall
from .export import META_NAME, export_path, load_export
from .tasks import Box, Detection, Example, Label, TaskContext, get_task
from .images import check_box

__all__ = ["load", "Pipeline", "Run", "Box", "Detection", "Label"]

RERANKERS = ("recaption", "caption", "pmi")  # how generate_image chooses among candidates
CANDIDATE_ROWS = 256  # at most this many candidate rows (before guidance doubles them) per generate call
# transformers generate() options a caller may pass through the task methods
GENERATE_OPTIONS = frozenset({"max_new_tokens", "min_new_tokens", "num_beams", "do_sample", "temperature", "top_k",
                              "top_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size"})


# task -> (Pipeline method, the per-item inputs it takes after the image, in order)
TASK_METHODS = {"caption": ("caption", ()), "vqa": ("ask", ("question",)), "classify": ("classify", ()),
                "detect": ("detect", ()), "ground": ("ground", ("expression",)),
                "describe_region": ("describe_region", ("box",)), "classify_region": ("classify_region", ("box",)),
                "segment": ("segment", ("expression",)), "depth": ("depth", ()),
                "inpaint": ("inpaint", ("box", "text"))}
PER_ITEM_INPUTS = ("question", "expression", "box", "text")


def load(name_or_dir, device=None, dtype=None, device_map=None, batch_size: int = 16) -> "Pipeline":
    """A :class:`Pipeline` from an export directory or the name of a shipped model (``list_models()``).

    Device and dtype are automatic (CUDA + bfloat16 when available, else CPU + float32); pass
    ``device``/``dtype`` to override, or ``device_map="auto"`` to spread a large model over devices
    (through accelerate, as transformers does).
    """
    path = export_path(name_or_dir)
    model, ctx, meta = load_export(path, device=device, dtype=dtype, device_map=device_map)
    return Pipeline(model, ctx, {**meta, "path": str(path)}, batch_size=batch_size)


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
    """One model, every task. Each method takes one item or a list (batched with ``batch_size``)."""

    def __init__(self, model, ctx: TaskContext, meta: dict | None = None, batch_size: int = 16):
        self.model, self.ctx, self.meta = model, ctx, dict(meta or {})
        self.batch_size = int(batch_size)
        self.task_defaults = _task_defaults(self.meta)

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
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
        return [t for t in self.ctx.prompts.tasks]

    @property
    def classes(self) -> dict[str, list[str]]:
        return dict(self.ctx.classes)

    # ------------------------------------------------------------------ task methods
    def caption(self, image, *, prompt=None, batch_size=None, **gen):
        return self._call("caption", image, {}, batch_size, gen, prompt=prompt)

    def ask(self, image, question, *, prompt=None, batch_size=None, **gen):
        return self._call("vqa", image, {"question": question}, batch_size, gen, prompt=prompt)

    def classify(self, image, labels=None, *, prompt=None, batch_size=None, **gen):
        """The label (a ``str`` with a ``.score``) among ``labels`` (default: the model's image classes)."""
        return self._call("classify", image, {}, batch_size, gen, prompt=prompt, labels=self._labels(labels, "image"))

    def detect(self, image, *, max_objects=None, top_p=None, temperature=None, threshold=None, prompt=None,
               batch_size=None, **gen):
        """Detections sorted by score; ``top_p`` samples (Pix2Seq), ``threshold`` drops low scores."""
        results = self._call("detect", image, {}, batch_size, gen, prompt=prompt, max_objects=max_objects,
                             top_p=top_p, temperature=temperature)
        def clean(dets):
            dets = sorted(dets, key=lambda d: -d.score)
            return [d for d in dets if threshold is None or d.score >= threshold]
        return [clean(r) for r in results] if _is_batch(image) else clean(results)

    def ground(self, image, expression, *, prompt=None, batch_size=None, **gen):
        return self._call("ground", image, {"expression": expression}, batch_size, gen, prompt=prompt)

    def describe_region(self, image, box, *, prompt=None, batch_size=None, **gen):
        return self._call("describe_region", image, {"box": box}, batch_size, gen, prompt=prompt)

    def classify_region(self, image, box, labels=None, *, prompt=None, batch_size=None, **gen):
        return self._call("classify_region", image, {"box": box}, batch_size, gen, prompt=prompt,
                          labels=self._labels(labels, "object"))

    def segment(self, image, expression, *, refine=True, prompt=None, batch_size=None, **gen):
        """Bool mask (H, W) of the original image.

        ``refine``: when the image tokenizer has a mask refiner, the picture guides the mask's
        edges (``False``: the codes alone).
        """
        return self._call("segment", image, {"expression": expression}, batch_size, gen, prompt=prompt,
                          refine=bool(refine))

    def depth(self, image, *, refine=True, prompt=None, batch_size=None, **gen):
        """Depth float32 (H, W) of the original image (units of the image tokenizer's depth range).

        ``refine``: when the image tokenizer has a depth refiner, the picture guides the decoded
        edges (``False``: the codes alone).
        """
        return self._call("depth", image, {}, batch_size, gen, prompt=prompt, refine=bool(refine))

    def generate_image(self, text, *, guidance=None, top_k=None, top_p=None, temperature=None, seed=None,
                       candidates=None, rerank=None, size=None, prompt=None, batch_size=None, **gen):
        """PIL image(s) from text; ``guidance`` > 1 applies classifier-free guidance (1: none).

        ``candidates`` = k > 1 samples k images per text and keeps the one that matches the text
        best by ``rerank``: ``"recaption"`` (the default where the model has a caption prompt), the
        model captions each drawn picture and the one whose caption names most of the text
        (:func:`text_recall`) wins, ties going to ``"caption"``, the text's log-likelihood as the
        caption of the picture under the model itself; ``"pmi"``, log p(image | text) - log
        p(image) under the model, which needs no caption prompt. Each costs about k times the
        sampling (at most ``CANDIDATE_ROWS`` candidates are drawn in one batch). Options left at
        None take the model's ``task_defaults`` (``unio.json``), else top_p 0.9, temperature 1.0,
        no guidance and one candidate.
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if not texts:
            raise InputError("generate_image got an empty list of texts")
        items = [({}, {"text": t}) for t in texts]
        sampling = dict(guidance=guidance, top_k=top_k, top_p=top_p, temperature=temperature, seed=seed,
                        candidates=candidates, rerank=rerank)
        out = self._predict("generate_image", items, batch_size, gen, prompt=prompt, **sampling)
        if size is not None:
            out = [im.resize(tuple(size), Image.BICUBIC) for im in out]
        return out[0] if single else out

    def inpaint(self, image, box, text, *, top_k=None, top_p=None, temperature=None, seed=None, prompt=None,
                batch_size=None, **gen):
        """The image with the box redrawn to show ``text`` (content generated inside the box only)."""
        return self._call("inpaint", image, {"box": box, "text": text}, batch_size, gen, prompt=prompt,
                          top_k=top_k, top_p=top_p, temperature=temperature, seed=seed)

    def run(self, task: str, image=None, *, batch_size=None, **inputs):
        """Any registered task by name: ``pipe.run("ground", image, expression="the red circle")``.

        Takes the same inputs and options as the task's method (``num_beams=3``, ``guidance=3``,
        ``threshold=0.5`` ...); an option the task does not take raises :class:`InputError`.
        """
        get_task(task)
        if task == "generate_image":
            check_options(task, {k: v for k, v in inputs.items() if k != "text"})  # text is the input
            return self.generate_image(inputs.pop("text", None) or _required("text", task), batch_size=batch_size,
                                       **inputs)
        if image is None:
            raise TaskError(f"task {task!r} needs an image")
        per_item = {k: inputs.pop(k) for k in PER_ITEM_INPUTS if k in inputs}
        if task in TASK_METHODS:
            method, needs = TASK_METHODS[task]
            extra = sorted(set(per_item) - set(needs))
            if extra:
                raise InputError(f"{task} takes no {' or '.join(extra)}"
                                 + (f"; its inputs: {', '.join(needs)}" if needs else ""))
            check_options(task, inputs)
            return getattr(self, method)(image, **{k: per_item.get(k) for k in needs}, batch_size=batch_size,
                                         **inputs)
        gen = {k: inputs.pop(k) for k in list(inputs) if k in GENERATE_OPTIONS}  # a task registered elsewhere
        return self._call(task, image, per_item, batch_size, gen, **inputs)

    # ------------------------------------------------------------------ scoring, raw generation, parsing
    @torch.inference_mode()
    def score(self, image, texts, *, batch_size=None):
        """Log-likelihood of each text as the caption of ``image`` (image-text retrieval)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise InputError("score needs a non-empty list of non-empty texts")
        images = list(image) if _is_batch(image) else [image]
        task = get_task("caption")
        pairs = []
        for im in images:
            base = task.build({"image": load_image(im)}, self.ctx)
            for t in texts:
                pairs.append(Example(**{**base.__dict__, "labels": self.ctx.encode_text(t) + [self.ctx.vocab.eos_id]}))
        scores = self._target_loglik(pairs, [e.labels for e in pairs], batch_size or self.batch_size).tolist()
        rows = [scores[k * len(texts):(k + 1) * len(texts)] for k in range(len(images))]
        return rows if _is_batch(image) else rows[0]

    @torch.inference_mode()
    def generate(self, prompt: str | list[str], image=None, *, max_new_tokens: int = 64, batch_size=None, **gen):
        """Raw prompt -> the output as typed runs (text, boxes in the image's frame, images)."""
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        images = (list(image) if _is_batch(image) else [image] * len(prompts)) if image is not None \
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
        from .tasks.constraints import AllowedIdsProcessor
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
        if image is not None and task == "inpaint":
            meta.setdefault("original", load_image(image))
        return t.parse(ids, self.ctx, info, meta=meta, image=pil)

    # ------------------------------------------------------------------ internals
    def _labels(self, labels, kind):
        if labels is None and not self.ctx.class_list(kind):
            raise TaskError(f"this model stores no {kind} class list; pass labels=[...]")
        return labels

    def _call(self, task, image, per_item: dict, batch_size, gen: dict, **options):
        """Broadcast per-item inputs over the image(s) and run the task."""
        batch = _is_batch(image)
        images = list(image) if batch else [image]
        if not images:
            raise InputError(f"{task} got an empty list of images")
        columns = {k: _broadcast(k, v, len(images), batch) for k, v in per_item.items()}
        items = [({"image": im}, {k: columns[k][i] for k in columns}) for i, im in enumerate(images)]
        out = self._predict(task, items, batch_size, gen, **options)
        return out if batch else out[0]

    def predict_examples(self, task_name: str, examples: Sequence[Example], *, batch_size=None, gen=None,
                         **options) -> list:
        """Generate and parse already built Examples (evaluation): one result per example.

        ``options`` are the task's decoding options (``max_objects``, ``top_p``, ``guidance``, ``seed``,
        ``labels`` ...); ``gen`` holds transformers ``generate`` options (``num_beams`` ...).
        """
        task = get_task(task_name)
        gen = dict(gen or {})
        unknown = sorted(set(gen) - GENERATE_OPTIONS)
        if unknown:
            raise InputError(f"unknown option(s) {unknown} for {task_name}; decoding options are "
                             f"{sorted(GENERATE_OPTIONS)}")
        options = {**self.task_defaults.get(task_name, {}), **{k: v for k, v in options.items() if v is not None}}
        if options.get("guidance") == 1:  # guidance 1 is plain conditional sampling: skip the second branch
            del options["guidance"]
        guidance = options.get("guidance")
        if guidance is not None and not hasattr(task, "unconditional"):
            raise InputError(f"classifier-free guidance is available for generate_image only, not {task_name}")
        k = options.pop("candidates", 1)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"candidates must be a whole number >= 1, got {k!r}")
        if k > 1 and not hasattr(task, "unconditional"):
            raise InputError(f"candidates (sample several, keep the best) is available for generate_image only, "
                             f"not {task_name}")
        rerank = self._rerank(task_name, options.pop("rerank", None))
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
            rows = cond + [task.unconditional(self.ctx)] * len(cond) if guidance is not None else cond
            outs = self._generate(rows, processors, gen_kw, task.needs_scores)
            if k > 1:
                outs = self._best_of(task, cond, outs, k, rerank)
            for ex, (ids, lp, raw) in zip(chunk, outs):
                results.append(task.parse(ids, self.ctx, ex.info, logprobs=lp, raw_logprobs=raw, meta=ex.meta,
                                          image=ex.image, refine=options.get("refine", True)))
        return results

    def _rerank(self, task_name: str, rerank) -> str:
        """The checked ``rerank`` option: how best-of-k chooses among candidates."""
        if rerank is not None and task_name != "generate_image":
            raise InputError(f"rerank (how candidates are chosen) is available for generate_image only, not {task_name}")
        if rerank is None:
            return "recaption" if "caption" in self.tasks else "pmi"
        if rerank not in RERANKERS:
            raise InputError(f"rerank must be one of {', '.join(RERANKERS)}, got {rerank!r}")
        if rerank in ("caption", "recaption") and "caption" not in self.tasks:
            raise InputError(f"rerank={rerank!r} scores pictures with the model's caption prompt, and this model has "
                             f"none (its tasks: {', '.join(self.tasks)}); use rerank='pmi'")
        return rerank

    def _best_of(self, task, cond: list, outs: list, k: int, rerank: str = "pmi") -> list:
        """Of each example's ``k`` samples, the one that matches its text best.

        ``rerank="caption"``: the text's log-likelihood as the caption of the drawn picture (the
        model read as an image-to-text scorer, as DALL-E reranked its samples with CLIP, Ramesh et
        al., 2021). ``rerank="recaption"``: the model also captions each picture, and the picture
        whose caption repeats most of the text's words and word pairs wins (``text_recall``), the
        caption log-likelihood breaking ties; the likelihood alone also pays for the order the
        text lists things in, the recall only for what the picture shows. ``rerank="pmi"``:
        log p(codes | prompt) - log p(codes | unconditional prompt), the pointwise mutual
        information of image and text under the model (the implicit classifier of classifier-free
        guidance, Ho & Salimans, 2022), so a sample is kept for matching its text, not for being
        plain; the codes scored are those of the picture as drawn (decoded, then encoded again), so
        sampled codes the decoder draws alike score alike.
        """
        from .tasks.dense import image_codes
        tok, vocab = self.ctx.image_tokenizer, self.ctx.vocab
        sampled = torch.as_tensor(np.stack([image_codes(ids, self.ctx) for ids, _, _ in outs[: len(cond)]]))
        pictures = [tok.decode(sampled[i:i + 64]) for i in range(0, len(sampled), 64)]
        match = np.zeros(len(cond))
        if rerank in ("caption", "recaption"):
            from .tasks.image_gen import to_pil
            caption = get_task("caption")
            rows = [caption.build({"image": to_pil(p)}, self.ctx) for chunk in pictures for p in chunk]
            score = self._target_loglik(rows, [self.ctx.encode_text(ex.meta["text"]) + [vocab.eos_id] for ex in cond])
            if rerank == "recaption":
                said = self.predict_examples("caption", rows)
                match = np.array([text_recall(ex.meta["text"], s) for ex, s in zip(cond, said)])
        else:
            drawn = torch.cat([tok.encode(p) for p in pictures])
            targets = [[int(t) for t in vocab.image_ids(c.flatten().cpu().numpy())] + [vocab.eos_id] for c in drawn]
            score = self._target_loglik(cond, targets) - self._target_loglik(
                [task.unconditional(self.ctx)] * len(cond), targets)
        best = [j * k + max(range(k), key=lambda c: (match[j * k + c], score[j * k + c]))
                for j in range(len(cond) // k)]
        return [outs[b] for b in best]

    @torch.inference_mode()
    def _target_loglik(self, examples: Sequence[Example], targets: Sequence[list[int]],
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

    def _predict(self, task_name: str, items, batch_size, gen: dict, **options) -> list:
        """Build each item's Example (canonical prompt, or the caller's ``prompt``), then predict."""
        task = get_task(task_name)
        extra = {k: options.pop(k) for k in ("prompt", "labels") if options.get(k) is not None}
        examples = []
        for sample, inputs in items:
            sample = {"image": load_image(sample["image"])} if sample.get("image") is not None else {}
            examples.append(task.build(sample, self.ctx, None, **inputs, **extra))
        if "labels" in extra:
            options["labels"] = extra["labels"]
        return self.predict_examples(task_name, examples, batch_size=batch_size, gen=gen, **options)

    def _collate(self, examples: Sequence[Example]) -> dict:
        dev, ctx = self.device, self.ctx
        batch: dict[str, torch.Tensor] = {}
        has_image = [e.image is not None for e in examples]
        if any(has_image):
            S = ctx.image_size
            blank = Image.new("RGB", (S, S), FILL)
            pixels = to_pixel_values([e.image if e.image is not None else blank for e in examples])
            batch["pixel_values"] = pixels.to(dev, self.dtype)
            if not all(has_image):
                batch["has_image"] = torch.tensor(has_image, device=dev)
            if any(e.patch_mask is not None for e in examples):
                G = ctx.patch_grid
                pm = np.stack([e.patch_mask if e.patch_mask is not None else np.zeros((G, G), bool) for e in examples])
                batch["patch_mask"] = torch.from_numpy(pm).to(dev)
        L = max(len(e.input_ids) for e in examples)
        ids = torch.full((len(examples), L), ctx.vocab.pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), L), dtype=torch.long)
        for r, e in enumerate(examples):
            ids[r, : len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
            mask[r, : len(e.input_ids)] = 1
        batch["input_ids"], batch["attention_mask"] = ids.to(dev), mask.to(dev)
        return batch

    @torch.inference_mode()
    def _generate(self, examples, processors, gen_kw: dict, want_scores: bool):
        """-> per example: (generated ids up to eos, constrained log-probs, raw log-probs)."""
        from transformers import LogitsProcessorList
        vocab = self.ctx.vocab
        kw = dict(gen_kw)
        kw.setdefault("do_sample", False)
        kw.pop("labels", None)
        out = self.model.generate(
            **self._collate(examples), logits_processor=LogitsProcessorList(processors),
            decoder_start_token_id=vocab.bos_id, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id,
            return_dict_in_generate=True, output_scores=want_scores, output_logits=want_scores, **kw)
        seqs = out.sequences[:, 1:]  # drop the decoder start id
        lp = raw = None
        if want_scores:
            beams = getattr(out, "beam_indices", None)
            lp = self.model.compute_transition_scores(out.sequences, out.scores, beams, normalize_logits=True)
            raw = self.model.compute_transition_scores(out.sequences, out.logits, beams, normalize_logits=True)
            lp, raw = lp.float().cpu().tolist(), raw.float().cpu().tolist()
        results = []
        for r, row in enumerate(seqs.cpu().tolist()[: len(examples)]):
            n = row.index(vocab.eos_id) + 1 if vocab.eos_id in row else len(row)
            results.append((row[:n], lp[r][:n] if lp else None, raw[r][:n] if raw else None))
        return results

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
                    from .tasks.dense import image_codes
                    from .tasks.image_gen import to_pil
                    pixels = ctx.image_tokenizer.decode(image_codes(ctx.vocab.image_ids(seg.ids), ctx)[None])[0]
                    runs.append(Run("image", to_pil(pixels)))
                else:
                    runs.append(Run("codes", list(seg.ids)))
        return runs


def _is_batch(x) -> bool:
    if isinstance(x, (list, tuple)):
        return True
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x.ndim == 4
    return False


def _broadcast(name: str, value, n: int, batch: bool) -> list:
    """A per-item input (question, expression, box, text) for each of ``n`` images."""
    if value is None:
        raise TaskError(f"this task needs {name}=...; pass one (or a list, one per image)")
    if name == "box":
        rows = value.to_list() if isinstance(value, Box) else value
        try:
            arr = np.asarray([list(b) if isinstance(b, Box) else b for b in rows]
                             if isinstance(rows, (list, tuple)) else rows, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"box must be (x1, y1, x2, y2) or a list of such boxes, got {value!r}") from None
        if arr.shape == (4,):
            return [check_box(arr)] * n
        if batch and arr.shape == (n, 4):
            return [check_box(b) for b in arr]
        raise InputError(f"box must be (x1, y1, x2, y2), or one box per image ({n}, 4); got shape {arr.shape}")
    if isinstance(value, str):
        return [value] * n
    if batch and isinstance(value, (list, tuple)) and len(value) == n:
        return list(value)
    raise InputError(f"{name} must be a string, or a list of {n} strings (one per image); got {value!r:.80}")


@functools.lru_cache(maxsize=None)
def task_options(task: str) -> frozenset[str]:
    """The options ``Pipeline.run(task, ...)`` takes besides the image and per-item inputs:
    the task method's keywords plus transformers ``generate`` options."""
    import inspect
    method = "generate_image" if task == "generate_image" else TASK_METHODS.get(task, (None,))[0]
    if method is None:  # a task registered elsewhere: its own options are not known here
        return GENERATE_OPTIONS
    params = inspect.signature(getattr(Pipeline, method)).parameters.values()
    named = {p.name for p in params if p.kind != p.VAR_KEYWORD}
    return frozenset((named | GENERATE_OPTIONS) - {"self", "image", "text", "batch_size", *PER_ITEM_INPUTS})


def _task_defaults(meta: dict) -> dict[str, dict]:
    """``unio.json``'s optional ``task_defaults`` ({task: {option: value}}: decoding defaults chosen
    for this model, e.g. ``{"generate_image": {"guidance": 2.5, "temperature": 0.6}}``), checked."""
    raw = meta.get("task_defaults") or {}
    where = f"{meta.get('path', 'the export')}/{META_NAME}"
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise CheckpointError(f"task_defaults in {where} must map task names to {{option: value}}, "
                              f"e.g. {{\"generate_image\": {{\"guidance\": 2.5}}}}; got {raw!r}")
    for task, options in raw.items():
        try:
            get_task(task)
            check_options(task, options)
        except UnioError as exc:
            raise CheckpointError(f"task_defaults in {where}: {exc}") from None
    return {task: dict(options) for task, options in raw.items()}


def check_options(task: str, options: dict) -> None:
    """InputError naming what ``task`` takes when ``options`` has a key it does not."""
    if TASK_METHODS.get(task) is None and task != "generate_image":
        return
    unknown = sorted(set(options) - task_options(task))
    if unknown:
        raise InputError(f"unknown option(s) {unknown} for {task}; it takes {sorted(task_options(task))}")


def parse_options(items) -> dict:
    """The CLI's ``--option [TASK.]KEY=VALUE`` strings -> ``{TASK or None: {KEY: value}}``.

    Values read as YAML scalars do (``3`` int, ``0.9`` float, ``true``, ``none``); ``None``
    scopes an option to every task.
    """
    from .tasks import task_names
    out: dict = {}
    for item in items or []:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise InputError(f"--option {item!r} is not KEY=VALUE; write e.g. --option num_beams=3 or "
                             "--option generate_image.guidance=3")
        scope, _, name = key.rpartition(".")
        if scope and scope not in task_names():
            raise TaskError(f"--option {item!r} names unknown task {scope!r}; choose one of: {', '.join(task_names())}")
        out.setdefault(scope or None, {})[name] = _option_value(text.strip())
    return out


def options_for(task: str, options: dict, several_tasks: bool = True) -> dict:
    """The options of ``parse_options`` that apply to ``task``, checked against what it takes
    (``several_tasks``: the error tells how to scope an option to one task)."""
    merged = {**options.get(None, {}), **options.get(task, {})}
    try:
        check_options(task, merged)
    except InputError as exc:
        hint = ""
        unscoped = sorted(set(options.get(None, {})) - task_options(task))
        if unscoped and several_tasks:
            takers = [t for t in [*TASK_METHODS, "generate_image"] if unscoped[0] in task_options(t)]
            hint = (" (an option written without TASK. applies to every task; scope it"
                    + (f", e.g. --option {takers[0]}.{unscoped[0]}=..." if takers else "") + ")")
        raise InputError(f"{exc}{hint}") from None
    return merged


def _option_value(text: str):
    return None if text.lower() in ("none", "null") else parse_value(text)


def _required(name, task):
    raise TaskError(f"task {task!r} needs {name}=...")
