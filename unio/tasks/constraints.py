"""Constrained decoding: transformers LogitsProcessors derived from the unified vocabulary.

Each processor sets the scores of ids that may not come next to -inf, so greedy search, beam
search and sampling of ``model.generate`` only ever produce well-formed outputs:

- :class:`AllowedIdsProcessor`: a fixed set (text tasks never emit location or image ids).
- :class:`TrieProcessor`: the answer is one of a closed set of token sequences (classification
  over a label set, as OFA does with its trie-constrained decoding; Wang et al., 2022).
- :class:`BoxesProcessor`: boxes of exactly 4 location tokens, each optionally followed by a
  label (free text or a label trie), then eos (detection after Pix2Seq; grounding).
- :class:`ImageCodesProcessor`: exactly ``n`` image codes, then eos (dense outputs, images).
- :class:`GuidedSampler`: top-k / top-p sampling with optional classifier-free guidance
  (Ho & Salimans, 2022) over a doubled batch (conditional rows, then unconditional rows).
- :class:`RowSegments`: rows of several tasks in one batch, each range of rows with its own
  processors and its own length.

The ``input_ids`` a processor sees are the decoder ids so far, starting with ``prefix_len``
decoder-start ids (1 for unio's models).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from transformers import LogitsProcessor

from ..vocab import UnifiedVocab

__all__ = ["AllowedIdsProcessor", "TrieProcessor", "BoxesProcessor", "ImageCodesProcessor", "GuidedSampler",
           "LabelTrie", "RowSegments"]

NEG_INF = float("-inf")


def _apply(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~allowed.to(scores.device), NEG_INF)


class AllowedIdsProcessor(LogitsProcessor):
    """Only ids in a fixed bool mask (``UnifiedVocab.allowed_mask``) may be generated."""

    def __init__(self, allowed: torch.Tensor):
        self.allowed = allowed.bool()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return _apply(scores, self.allowed[: scores.shape[-1]])


class LabelTrie:
    """A prefix tree over token sequences (global ids)."""

    END = -1

    def __init__(self, sequences: Iterable[Sequence[int]]):
        self.root: dict = {}
        self.size = 0
        for seq in sequences:
            seq = [int(t) for t in seq]
            if not seq:
                continue
            node = self.root
            for t in seq:
                node = node.setdefault(t, {})
            if self.END not in node:
                node[self.END] = True
                self.size += 1
        if not self.size:
            raise ValueError("a label trie needs at least one non-empty label")

    def walk(self, prefix: Sequence[int]) -> dict | None:
        node = self.root
        for t in prefix:
            node = node.get(int(t))
            if node is None:
                return None
        return node

    @classmethod
    def children(cls, node: dict) -> list[int]:
        return [t for t in node if t != cls.END]

    @classmethod
    def is_end(cls, node: dict | None) -> bool:
        return node is not None and cls.END in node


class _RowProcessor(LogitsProcessor):
    """A processor whose allowed set depends on each row's ids so far; finished rows get eos only."""

    def __init__(self, vocab: UnifiedVocab, prefix_len: int = 1):
        self.vocab = vocab
        self.prefix_len = int(prefix_len)
        self.eos = vocab.eos_id
        self._masks: dict = {}

    def _mask(self, key, build) -> torch.Tensor:
        if key not in self._masks:
            self._masks[key] = build()
        return self._masks[key]

    def _ids_mask(self, ids: Iterable[int]) -> torch.Tensor:
        m = torch.zeros(self.vocab.size, dtype=torch.bool)
        m[list(ids)] = True
        return m

    def allowed(self, generated: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        rows = []
        eos_only = self._mask("eos", lambda: self._ids_mask([self.eos]))
        for seq in input_ids[:, self.prefix_len:].tolist():
            rows.append(eos_only if self.eos in seq else self.allowed(seq))
        allowed = torch.stack(rows)[:, : scores.shape[-1]]
        return _apply(scores, allowed)


class TrieProcessor(_RowProcessor):
    """The generated ids spell one sequence of ``trie``, then eos."""

    def __init__(self, vocab: UnifiedVocab, trie: LabelTrie, prefix_len: int = 1):
        super().__init__(vocab, prefix_len)
        self.trie = trie

    def allowed(self, generated: list[int]) -> torch.Tensor:
        node = self.trie.walk(generated)
        if node is None:
            return self._mask("eos", lambda: self._ids_mask([self.eos]))
        key = ("trie", id(node))
        return self._mask(key, lambda: self._ids_mask(
            LabelTrie.children(node) + ([self.eos] if LabelTrie.is_end(node) else [])))


class BoxesProcessor(_RowProcessor):
    """Boxes of 4 location tokens x1 y1 x2 y2 (x2 > x1, y2 > y1, inside the image), each then a label.

    Args:
        labels: ``None`` for a free-text label of 1..``max_label_len`` pieces, a :class:`LabelTrie`
            for a closed label set, ``False`` for boxes without labels (grounding).
        min_boxes / max_boxes: how many boxes the output holds (eos is refused before
            ``min_boxes``; no new box is started after ``max_boxes``).
    """

    def __init__(self, vocab: UnifiedVocab, labels: LabelTrie | None | bool = None, min_boxes: int = 0,
                 max_boxes: int | None = None, max_label_len: int = 16, prefix_len: int = 1,
                 limits: Sequence[tuple[int, int]] | None = None):
        super().__init__(vocab, prefix_len)
        # limits: per batch row, the number of x and y bins inside the image (a non-square image
        # only uses the first bins of its short side); rows beyond len(limits) repeat them in
        # blocks, as beam search and sampling expand a batch.
        self.limits = [(int(x), int(y)) for x, y in limits] if limits else None
        self.labels = labels
        self.min_boxes, self.max_boxes = int(min_boxes), max_boxes
        self.max_label_len = int(max_label_len)
        self.loc0, self.loc1 = vocab.location_range
        self.text_ok = vocab.allowed_mask("text", eos=False)
        self.loc_ok = vocab.allowed_mask("location", eos=False)

    def _after_box(self, n_boxes: int, limit, extra: torch.Tensor | None = None) -> torch.Tensor:
        """May start another box (its x1 inside the image) and/or stop."""
        more = self.max_boxes is None or n_boxes < self.max_boxes
        stop = n_boxes >= self.min_boxes
        nx = limit[0] if limit is not None else self.loc1 - self.loc0
        key = ("after", more, stop, nx)
        base = self._mask(key, lambda: (self._range_mask(self.loc0, self.loc0 + nx) if more
                                        else torch.zeros_like(self.loc_ok)) | self._ids_mask([self.eos] if stop else []))
        return base if extra is None else base | extra

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        rows = []
        eos_only = self._mask("eos", lambda: self._ids_mask([self.eos]))
        B = input_ids.shape[0]
        for r, seq in enumerate(input_ids[:, self.prefix_len:].tolist()):
            if self.eos in seq:
                rows.append(eos_only)
                continue
            limit = None
            if self.limits:
                limit = self.limits[min(r * len(self.limits) // B, len(self.limits) - 1)]
            rows.append(self.allowed(seq, limit))
        return _apply(scores, torch.stack(rows)[:, : scores.shape[-1]])

    def allowed(self, generated: list[int], limit: tuple[int, int] | None = None) -> torch.Tensor:
        loc = [self.loc0 <= t < self.loc1 for t in generated]
        n_loc = sum(loc)
        n_boxes = n_loc // 4
        k = 0  # trailing location tokens
        while k < len(loc) and loc[-1 - k]:
            k += 1
        if not generated:
            return self._after_box(0, limit)
        if k % 4:  # inside a box: x2 > x1 and y2 > y1 (when room is left), all inside the image
            pos = k % 4
            nx, ny = limit if limit is not None else (self.loc1 - self.loc0, self.loc1 - self.loc0)
            hi = self.loc0 + (nx if pos in (0, 2) else ny)
            lo = self.loc0
            if pos in (2, 3):
                lo = min(generated[-2] + 1, hi - 1)
            return self._mask(("coord", lo, hi), lambda: self._range_mask(lo, hi))
        if k:  # a box just ended
            if self.labels is False:
                return self._after_box(n_boxes, limit)
            if isinstance(self.labels, LabelTrie):
                node = self.labels.root
                return self._mask(("trie", id(node)), lambda: self._ids_mask(LabelTrie.children(node)))
            return self.text_ok
        # inside a label: the pieces since the last location token
        start = len(loc) - 1
        while start >= 0 and not loc[start]:
            start -= 1
        label = generated[start + 1:]
        if start < 0 or self.labels is False:  # text before any box (not produced under this processor)
            return self._after_box(n_boxes, limit)
        if isinstance(self.labels, LabelTrie):
            node = self.labels.walk(label)
            if node is None:
                return self._after_box(n_boxes, limit)
            children = self._mask(("trie", id(node)), lambda: self._ids_mask(LabelTrie.children(node)))
            return children | self._after_box(n_boxes, limit) if LabelTrie.is_end(node) else children
        if len(label) >= self.max_label_len:
            return self._after_box(n_boxes, limit)
        return self._after_box(n_boxes, limit, self.text_ok)

    def _range_mask(self, lo: int, hi: int) -> torch.Tensor:
        m = torch.zeros(self.vocab.size, dtype=torch.bool)
        m[lo:hi] = True
        return m


class ImageCodesProcessor(LogitsProcessor):
    """Exactly ``num_codes`` image codes, then eos (Unified-IO's dense outputs)."""

    def __init__(self, vocab: UnifiedVocab, num_codes: int, prefix_len: int = 1):
        self.num_codes, self.prefix_len = int(num_codes), int(prefix_len)
        self.codes = vocab.allowed_mask("image", eos=False)
        self.eos = torch.zeros(vocab.size, dtype=torch.bool)
        self.eos[vocab.eos_id] = True

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        position = input_ids.shape[1] - self.prefix_len
        allowed = self.codes if position < self.num_codes else self.eos
        return _apply(scores, allowed[: scores.shape[-1]])


class GuidedSampler(LogitsProcessor):
    """Samples the next id itself and returns scores that make it the only choice.

    With ``guidance`` set, the batch holds the conditional rows first and the matching
    unconditional rows after them; both rows of a pair receive the same id, drawn from
    ``log p_u + guidance * (log p_c - log p_u)`` (classifier-free guidance, Ho & Salimans 2022),
    after temperature, top-k and top-p (nucleus, Holtzman et al., 2020) filtering. Run
    ``generate`` greedily (``do_sample=False``) with this processor last in the list.
    """

    def __init__(self, guidance: float | None = None, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None):
        self.guidance = guidance
        self.temperature = max(float(temperature), 1e-5)
        self.top_k, self.top_p = top_k, top_p
        self.generator = generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(scores.float(), dim=-1)
        if self.guidance is not None:
            half = scores.shape[0] // 2
            cond, uncond = logp[:half], logp[half:]
            mixed = uncond + self.guidance * (cond - uncond)
            logp = torch.where(torch.isfinite(cond) & torch.isfinite(uncond), mixed,
                               torch.full_like(cond, NEG_INF))
        logits = logp / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(int(self.top_k), logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, NEG_INF)
        if self.top_p is not None and self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
            drop = cum - torch.softmax(sorted_logits, dim=-1) > self.top_p  # keep the first token past top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)
        probs = torch.softmax(logits, dim=-1)
        probs = torch.nan_to_num(probs, nan=0.0)
        empty = probs.sum(-1) <= 0
        if empty.any():  # every id filtered out (cannot happen with a valid constraint): fall back to argmax
            probs[empty] = torch.nn.functional.one_hot(scores[empty].argmax(-1), scores.shape[-1]).float()
        # Sampled on the CPU so that a seeded CPU generator gives the same image on any device.
        choice = torch.multinomial(probs.cpu(), 1, generator=self.generator)
        choice = choice.to(scores.device)
        if self.guidance is not None:
            choice = torch.cat([choice, choice], dim=0)
        out = torch.full_like(scores, NEG_INF)
        return out.scatter(-1, choice, 0.0)


class RowSegments(LogitsProcessor):
    """Several tasks' rows in one batch: each segment ``(start, stop, processors, limit)`` (a range
    of rows) gets its own processors, on its own rows only, and ends after ``limit`` tokens: the
    next id is forced to ``eos_id`` there, an end the caller cuts off again, so each row is what
    a batch of its own task with ``max_new_tokens=limit`` decodes."""

    def __init__(self, segments: Sequence[tuple], eos_id: int):
        self.segments = [(int(a), int(b), list(procs), int(limit)) for a, b, procs, limit in segments]
        self.eos = int(eos_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        written = input_ids.shape[1] - 1  # the decoder start id, then the ids written so far
        out = scores.clone()
        for a, b, processors, limit in self.segments:
            if written >= limit:
                out[a:b] = NEG_INF
                out[a:b, self.eos] = 0.0
                continue
            part = scores[a:b]
            for processor in processors:
                part = processor(input_ids[a:b], part)
            out[a:b] = part
        return out
