"""Image-text retrieval: contrastive embeddings, retrieve-then-rerank, recall@K.

Training (CoCa, Yu et al. 2022): a ``retrieve`` example is a captioning example (the caption is the
target, so the decoder learns its likelihood) that also carries the caption's ids in
``meta["contrast_ids"]``; collate passes them to the network, whose embedding head adds the symmetric
InfoNCE loss of the batch's image-caption pairs (:mod:`unio.model.contrastive`). The model needs the
head: ``--set model.projection_dim=256``.

Inference (ALBEF, Li et al. 2021; BLIP, Li et al. 2022): embed the gallery once
(:func:`embed_images`, :func:`embed_texts`), rank it for each query by cosine similarity (one matrix
product), and optionally re-rank each query's top ``rerank`` candidates by the log-likelihood of the
text as the image's caption under the decoder (one decoder pass per pair, like ``Pipeline.score``)::

    >>> gallery = pipe.embed_images([Path("a.png"), Path("b.png"), ...])
    >>> pipe.retrieve("a small red circle", gallery, top_k=5, rerank=20)   # [Hit(index, similarity, loglik, item)]
    >>> pipe.retrieve(image, pipe.embed_texts(captions), top_k=5)          # image -> text

Evaluation (``unio eval --tasks retrieve``): the gallery is the evaluated examples themselves (their
images and first captions, so ``-n 1000`` ranks 1,000 images against 1,000 captions), scored by
recall@1/5/10 both ways, before and after re-ranking the top ``rerank`` (default 10) candidates.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .. import viz
from ..errors import InputError, TaskError
from ..images import letterbox, load_image, to_pixel_values
from ..metrics import retrieval_ranks
from .base import Example, Task, TaskContext, pick, short
from .inputs import is_batch
from .options import Option
from .registry import get_task, register
from .text import captions_of

__all__ = ["Retrieve", "Embeddings", "Hit", "embed_images", "embed_texts", "retrieve", "pair_logliks",
           "model_fingerprint", "text_ids", "KS"]

KS = (1, 5, 10)        # recall@K reported by evaluation
READ_SIDE = 4          # pictures are decoded with a long side of at least this many times the input side
CHUNK = 1024           # query rows per similarity block (bounds memory: CHUNK x gallery floats)


def text_ids(ctx: TaskContext, text: str) -> list[int]:
    """A text as the encoder reads it for its embedding: its pieces then eos (as in training)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"texts to embed must be non-empty strings, got {text!r:.80}")
    return ctx.encode_text(text.strip()) + [ctx.vocab.eos_id]


def _captions(sample: dict) -> list[str]:
    return captions_of(sample)


# ---------------------------------------------------------------------- embeddings
@dataclass(frozen=True, eq=False)
class Embeddings:
    """Unit-norm float32 ``vectors`` (N, D) of N images or texts (``kind``), with the ``fingerprint``
    of the model that made them (only that model's embeddings compare with them) and the ``items``
    they were made from (texts, or the images as given), which re-ranking reads."""

    vectors: np.ndarray
    kind: str
    fingerprint: str
    items: tuple | None = None

    def __len__(self) -> int:
        return len(self.vectors)

    def __repr__(self) -> str:
        return f"Embeddings({len(self)} {self.kind}s, dim={self.vectors.shape[1]}, model={self.fingerprint})"

    def save(self, path) -> Path:
        """Write an ``.npz`` (no pickles): the vectors, kind, fingerprint, and the items when they are
        texts or file paths."""
        path = Path(path)
        arrays = {"vectors": self.vectors, "kind": np.array(self.kind), "fingerprint": np.array(self.fingerprint)}
        if self.items is not None and all(isinstance(x, (str, Path)) for x in self.items):
            arrays["items"] = np.array([str(x) for x in self.items])
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path) -> "Embeddings":
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                items = tuple(str(x) for x in z["items"]) if "items" in z else None
                return cls(z["vectors"].astype(np.float32), str(z["kind"]), str(z["fingerprint"]), items)
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{path} is not an embeddings file written by Embeddings.save: {exc}") from None


def _model(pipe):
    """The network, if it has an embedding head; else a TaskError saying how to get one."""
    model = pipe.model
    if not callable(getattr(model, "get_image_features", None)) or pipe.meta.get("backend") == "onnxruntime":
        raise TaskError("embeddings run on the torch backend; load the model with unio.load(dir) (not "
                        "backend='onnxruntime') to embed images and texts")
    if not getattr(model.config, "projection_dim", 0):
        raise TaskError("this model has no embedding head (config.projection_dim=0), so it cannot embed images or "
                        "texts; train one: add the retrieve task to the recipe's tasks with "
                        "--set model.projection_dim=256 (fine-tuning an export: --set model.init=DIR), or rank texts "
                        "for one image with "
                        "pipe.score(image, texts)")
    return model


def model_fingerprint(pipe) -> str:
    """What identifies the embedding space: the vocabulary fingerprint, the head's weights, and a
    strided sample of every encoder weight (the same at any dtype the model is loaded in)."""
    model = _model(pipe)
    h = hashlib.sha256(str(pipe.ctx.vocab.fingerprint).encode())
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if not name.startswith(("encoder.", "contrastive.", "shared.")):
                continue
            flat = p.detach().reshape(-1)
            if not name.startswith("contrastive."):  # the head whole, the encoder sampled
                flat = flat[:: max(1, flat.numel() // 4096)][:4096]
            h.update(f"{name}{tuple(p.shape)}".encode())
            h.update(flat.to(torch.bfloat16).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _batches(items: list, size) -> list:
    size = max(1, int(size))
    return [items[i:i + size] for i in range(0, len(items), size)]


@torch.inference_mode()
def embed_images(pipe, images, *, batch_size=None) -> Embeddings:
    """:class:`Embeddings` of one image or a list (PIL, numpy, path), each letterboxed to the model's input."""
    model = _model(pipe)
    items = list(images) if is_batch(images) else [images]
    if not items:
        raise InputError("embed_images got an empty list of images")
    S = pipe.ctx.image_size
    out = []
    for chunk in _batches(items, batch_size or pipe.batch_size):
        boxed = [letterbox(load_image(im, max_side=READ_SIDE * S), S)[0] for im in chunk]
        pixels = to_pixel_values(boxed).to(pipe.device, pipe.dtype)
        out.append(model.get_image_features(pixels).float().cpu().numpy())
    return Embeddings(np.concatenate(out).astype(np.float32), "image", model_fingerprint(pipe), tuple(items))


@torch.inference_mode()
def embed_texts(pipe, texts, *, batch_size=None) -> Embeddings:
    """:class:`Embeddings` of one text or a list of texts."""
    model = _model(pipe)
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise InputError("embed_texts got an empty list of texts")
    ids = [text_ids(pipe.ctx, t) for t in items]
    out = []
    for chunk in _batches(ids, batch_size or pipe.batch_size):
        L = max(map(len, chunk))
        batch = torch.full((len(chunk), L), int(pipe.ctx.vocab.pad_id), dtype=torch.long)
        mask = torch.zeros((len(chunk), L), dtype=torch.long)
        for r, row in enumerate(chunk):
            batch[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1
        out.append(model.get_text_features(batch.to(pipe.device), mask.to(pipe.device)).float().cpu().numpy())
    return Embeddings(np.concatenate(out).astype(np.float32), "text", model_fingerprint(pipe), tuple(items))


def _embeddings(pipe, x, role: str) -> tuple[Embeddings, bool]:
    """``x`` as Embeddings of this model, and whether it was one item: strings are texts, anything else
    images (give image files as pathlib.Path, or embed them first with embed_images)."""
    if isinstance(x, Embeddings):
        mine = model_fingerprint(pipe)
        if x.fingerprint != mine:
            raise InputError(f"the {role} embeddings were made by another model (fingerprint {x.fingerprint}, this "
                             f"model's is {mine}); embed them again with this model")
        return x, False
    if isinstance(x, str):
        return embed_texts(pipe, [x]), True
    if isinstance(x, (list, tuple)):
        if not x:
            raise InputError(f"the {role} is an empty list")
        strings = [isinstance(v, str) for v in x]
        if any(strings) and not all(strings):
            raise InputError(f"the {role} mixes texts (str) with images; give one kind (image files as "
                             "pathlib.Path, or embedded with embed_images)")
        return (embed_texts(pipe, x) if all(strings) else embed_images(pipe, x)), False
    return embed_images(pipe, x), not is_batch(x)


# ---------------------------------------------------------------------- retrieval
@dataclass
class Hit:
    """One retrieved gallery item: its ``index`` in the gallery, the cosine ``similarity`` of the two
    embeddings, the re-ranking ``loglik`` (log-likelihood of the text as the image's caption; None
    unless re-ranked) and the gallery ``item`` itself when known (a text, or the image as given)."""

    index: int
    similarity: float
    loglik: float | None = None
    item: Any = None

    def to_dict(self) -> dict:
        item = self.item if isinstance(self.item, str) else str(self.item) if isinstance(self.item, Path) else None
        return {"index": self.index, "similarity": self.similarity, "loglik": self.loglik, "item": item}


def _top(sim: np.ndarray, k: int) -> np.ndarray:
    """Indices (Q, k) of the k largest of each row, best first, ties to the lower index."""
    G = sim.shape[1]
    k = min(k, G)
    part = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < G else np.broadcast_to(np.arange(G), sim.shape)
    vals = np.take_along_axis(sim, part, 1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, 1)


def _count(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def retrieve(pipe, queries, gallery, *, top_k: int = 5, rerank: int = 0, batch_size=None):
    """The ``top_k`` gallery items closest to each query, as :class:`Hit` lists (one list for one query).

    ``queries`` and ``gallery``: texts (str) or images (PIL, numpy, pathlib.Path), one or a list, or
    :class:`Embeddings` of this model (made by :func:`embed_images` / :func:`embed_texts`); text ->
    image and image -> text (same-kind pairs rank by similarity alone). ``rerank`` = N > 0 re-scores
    each query's N most similar candidates by the log-likelihood of the text as the image's caption
    (the decoder, one pass per pair) and re-orders them by it; the rest follow in similarity order.
    """
    top_k, rerank = _count("top_k", top_k, 1), _count("rerank", rerank, 0)
    q, single = _embeddings(pipe, queries, "queries")
    g, _ = _embeddings(pipe, gallery, "gallery")
    if q.vectors.shape[1] != g.vectors.shape[1]:
        raise InputError(f"queries ({q.vectors.shape[1]}-d) and gallery ({g.vectors.shape[1]}-d) embeddings differ")
    if rerank and q.kind == g.kind:
        raise InputError(f"rerank scores a text as an image's caption; the queries and the gallery are both "
                         f"{q.kind}s: pass rerank=0, or texts on one side and images on the other")
    if rerank and (q.items is None or g.items is None):
        raise InputError("rerank reads the images and texts themselves, and these embeddings carry none (a file "
                         "keeps only texts and file paths); pass the raw inputs, or embeddings made from them")
    depth = max(top_k, rerank)
    tops, sims = [], []
    for start in range(0, len(q), CHUNK):
        block = q.vectors[start:start + CHUNK] @ g.vectors.T  # (chunk, G) cosine similarities
        idx = _top(block, depth)
        tops.append(idx)
        sims.append(np.take_along_axis(block, idx, 1))
    top, sim = np.concatenate(tops), np.concatenate(sims)
    logliks = None
    if rerank:
        n = min(rerank, top.shape[1])
        triples = []  # (which image, the image, the text) of each query's n candidates
        for qi in range(len(q)):
            for gi in map(int, top[qi, :n]):
                triples.append((("q", qi), q.items[qi], g.items[gi]) if q.kind == "image" else
                               (("g", gi), g.items[gi], q.items[qi]))
        logliks = pair_logliks(pipe, triples, batch_size).reshape(len(q), n)
        order = np.lexsort((np.arange(n)[None].repeat(len(q), 0), -logliks), axis=1)
        top[:, :n] = np.take_along_axis(top[:, :n], order, 1)
        sim[:, :n] = np.take_along_axis(sim[:, :n], order, 1)
        logliks = np.take_along_axis(logliks, order, 1)
    out = []
    for r in range(len(q)):
        out.append([Hit(int(top[r, c]), float(sim[r, c]),
                        None if logliks is None or c >= logliks.shape[1] else float(logliks[r, c]),
                        None if g.items is None else g.items[int(top[r, c])]) for c in range(min(top_k, top.shape[1]))])
    return out[0] if single else out


def pair_logliks(pipe, pairs: Sequence[tuple], batch_size=None) -> np.ndarray:
    """log p(text | image) under the decoder (the retrieve prompt, teacher forcing) of (key, image,
    text) triples; each distinct ``key`` names one image, built once. An image may be an
    :class:`Example` already built for it."""
    task, built = get_task(Retrieve.name), {}
    examples, targets = [], []
    for key, image, text in pairs:
        if key not in built:
            built[key] = image if isinstance(image, Example) else task.build({"image": image}, pipe.ctx)
        examples.append(built[key])
        targets.append(text_ids(pipe.ctx, text))
    return pipe.target_loglik(examples, targets, batch_size)


# ---------------------------------------------------------------------- the task
@register
class Retrieve(Task):
    """Image-text retrieval (see the module's documentation). Trains as captioning plus the
    contrastive loss; evaluated on a gallery of the evaluated examples by ``i2t_rK`` (the fraction
    of images whose caption is among the K texts nearest them) and ``t2i_rK`` (of captions whose
    image is among the K nearest images), K = 1, 5, 10, and the same after re-ranking
    (``..._reranked``) the top ``rerank`` candidates by the caption likelihood."""

    name = "retrieve"
    headline = "t2i_r1"
    means = {f"{d}_r{k}{s}": f"{d}_hit{k}{s}" for d in ("i2t", "t2i") for k in KS for s in ("", "_reranked")}
    options = {"rerank": Option(int, 10, min=0, doc="evaluation: re-rank each query's top N candidates by the "
                                                    "caption likelihood (0: embeddings alone)")}
    max_new_tokens = 48

    def can_build(self, sample: dict) -> bool:
        return super().can_build(sample) and bool(_captions(sample))

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        image, info = self._image(sample, ctx)
        prompt, ids = self._prompt(ctx, rng, (info.width, info.height), template=inputs.get("prompt"))
        refs = _captions(sample)
        text = pick(refs, rng) if refs else None
        labels = text_ids(ctx, text) if text else []
        return self._example(ctx, prompt, ids, image, info, labels, references=refs, text=text,
                             contrast_ids=list(labels) or None)

    def unavailable(self, model, ctx) -> str | None:
        if not getattr(getattr(model, "config", None), "projection_dim", 0):
            return ("the model has no embedding head (config.projection_dim=0); train one with the retrieve task "
                    "and --set model.projection_dim=256")
        return None

    def before_run(self, ctx, options) -> None:
        raise TaskError("retrieve ranks a gallery rather than answering about one image: use "
                        "pipe.retrieve(queries, gallery) (with pipe.embed_images / pipe.embed_texts), or "
                        "unio eval --tasks retrieve")

    def parse(self, ids, ctx, info=None, **kw) -> str:
        return ctx.decode_text(ids)

    # -- evaluation: the whole set at once
    def predict_set(self, pipe, examples: list[Example], samples=None, *, batch_size=None, rerank=None,
                    **options) -> list[dict]:
        """Rank the examples' captions for each example's image and the other way round (a gallery of
        the examples themselves), then re-rank each query's top ``rerank``: one dict per example."""
        rerank = _count("rerank", self.options["rerank"].default if rerank is None else rerank, 0)
        texts = [e.meta["text"] for e in examples]
        images = embed_images(pipe, [e.image for e in examples], batch_size=batch_size)
        sim = images.vectors @ embed_texts(pipe, texts, batch_size=batch_size).vectors.T  # (I, T), truth: i <-> i
        i2t, t2i = retrieval_ranks(sim)
        n = min(rerank, len(examples))
        depth = max(n, 5)
        order_t, order_i = _top(sim, depth), _top(sim.T, depth)  # each row's best, best first
        preds = [{"i2t_rank": int(a), "t2i_rank": int(b), "top_texts": order_t[i, :5].tolist()}
                 for i, (a, b) in enumerate(zip(i2t, t2i))]
        if n:
            cand = {(i, int(j)) for i in range(len(examples)) for j in order_t[i, :n]}
            cand = sorted(cand | {(int(i), t) for t in range(len(texts)) for i in order_i[t, :n]})
            ll = dict(zip(cand, pair_logliks(pipe, [(i, examples[i], texts[j]) for i, j in cand], batch_size)))
            for i, p in enumerate(preds):
                texts_i = sorted(order_t[i, :n].tolist(), key=lambda j: -ll[(i, j)])  # stable: ties by similarity
                images_i = sorted(order_i[i, :n].tolist(), key=lambda k: -ll[(k, i)])
                p["i2t_rank_reranked"] = texts_i.index(i) if i in texts_i else p["i2t_rank"]
                p["t2i_rank_reranked"] = images_i.index(i) if i in images_i else p["t2i_rank"]
                p["top_texts"] = (texts_i + order_t[i, n:].tolist())[:5]
        for p in preds:
            p["top_texts"] = [texts[j] for j in p["top_texts"]]
        return preds

    def metric(self, predictions, examples, samples=None, judge=None) -> dict[str, float]:
        out: dict[str, float] = {"gallery": float(len(predictions))}
        for s in ("", "_reranked"):
            for d in ("i2t", "t2i"):
                ranks = [p.get(f"{d}_rank{s}") for p in predictions]
                if ranks and all(r is not None for r in ranks):
                    out.update({f"{d}_r{k}{s}": float(np.mean(np.asarray(ranks) < k)) for k in KS})
        return out

    def example_record(self, prediction, example, sample) -> dict:
        hits = {f"{d}_hit{k}{s}": prediction[f"{d}_rank{s}"] < k for d in ("i2t", "t2i") for k in KS
                for s in ("", "_reranked") if f"{d}_rank{s}" in prediction}
        return {"prediction": prediction, "truth": example.meta["text"], **hits}

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        return str(example.meta.get("text") or ""), str((prediction.get("top_texts") or [""])[0])

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        if image is None or not isinstance(result, dict):
            return []
        said = f"{self.name}: {short((result.get('top_texts') or [''])[0], 60)}"
        if example is not None:
            said += f" (truth: {short(example.meta.get('text') or '', 40)})"
        return [(viz.enlarge(load_image(image) if not isinstance(image, Image.Image) else image, scale), said)]
