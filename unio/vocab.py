"""The unified vocabulary: one id space for text pieces, location bins and image codes.

Layout (DESIGN.md, "The unified vocabulary")::

    [0, T)          text pieces of the SentencePiece model (its own pad/eos/unk/bos ids)
    [T, T+B)        location bins <loc_0> .. <loc_{B-1}>
    [T+B, T+B+K)    image codes <img_0> .. <img_{K-1}>
    padding up to a multiple of 64; padded ids are never generated

This module is the only place that knows these offsets.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np
import torch

from .errors import TokenizerError, VocabMismatchError

__all__ = ["UnifiedVocab", "Span", "MODALITIES"]

MODALITIES = ("text", "location", "image")
LAYOUT_VERSION = 1


class Span(NamedTuple):
    """A run of consecutive ids of one modality, in that modality's *local* ids (what
    :meth:`UnifiedVocab.split` returns and :meth:`UnifiedVocab.join` takes)."""

    kind: str  # "text" | "location" | "image" | "invalid"
    ids: list[int]


class UnifiedVocab:
    """Maps local ids of each modality to global ids and back.

    Args:
        text_tokenizer: a :class:`~unio.tokenizers.text.TextTokenizer` (anything with
            ``vocab_size``, ``sha256``, ``pad_id``, ``eos_id``, ``bos_id``).
        num_bins: number of location bins (Pix2Seq uses 1000 for 1333 px images).
        codebook_size: number of image codes; taken from ``image_tokenizer`` when given.
        image_tokenizer: the VQ image tokenizer (``codebook_size`` and ``fingerprint``);
            without it the fingerprint records no image tokenizer.
        pad_multiple: the total size is rounded up to a multiple of this (GPU-friendly matmuls).
    """

    def __init__(self, text_tokenizer=None, num_bins: int = 1000, codebook_size: int | None = None, *,
                 image_tokenizer=None, pad_multiple: int = 64, _layout: dict | None = None):
        if _layout is not None:  # built by from_dict without tokenizers
            self._layout = dict(_layout)
        else:
            if text_tokenizer is None:
                raise TokenizerError("UnifiedVocab needs a text tokenizer (TextTokenizer.load(path))")
            if image_tokenizer is not None:
                if codebook_size is not None and codebook_size != image_tokenizer.codebook_size:
                    raise VocabMismatchError(
                        f"codebook_size={codebook_size} but the image tokenizer has "
                        f"{image_tokenizer.codebook_size} codes; pass only the image tokenizer")
                codebook_size = image_tokenizer.codebook_size
            if codebook_size is None:
                raise TokenizerError("UnifiedVocab needs codebook_size or an image_tokenizer")
            if int(num_bins) < 2 or int(codebook_size) < 1:
                raise TokenizerError(f"num_bins must be >= 2 and codebook_size >= 1, got {num_bins}, {codebook_size}")
            self._layout = {
                "version": LAYOUT_VERSION,
                "text_size": int(text_tokenizer.vocab_size),
                "num_bins": int(num_bins),
                "codebook_size": int(codebook_size),
                "pad_multiple": int(pad_multiple),
                "pad_id": int(text_tokenizer.pad_id),
                "eos_id": int(text_tokenizer.eos_id),
                "bos_id": int(text_tokenizer.bos_id),
                "unk_id": int(getattr(text_tokenizer, "unk_id", -1)),
                "text_sha256": text_tokenizer.sha256,
                "image_fingerprint": (getattr(image_tokenizer, "fingerprint", None)
                                      if image_tokenizer is not None else None),
            }
        L = self._layout
        T, B, K = L["text_size"], L["num_bins"], L["codebook_size"]
        self.text_range = (0, T)
        self.location_range = (T, T + B)
        self.image_range = (T + B, T + B + K)
        self.used_size = T + B + K
        m = L["pad_multiple"]
        self.size = -(-self.used_size // m) * m
        self.num_bins, self.codebook_size = B, K
        self.pad_id, self.eos_id, self.bos_id, self.unk_id = L["pad_id"], L["eos_id"], L["bos_id"], L["unk_id"]
        self._ranges = {"text": self.text_range, "location": self.location_range, "image": self.image_range}

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return (f"UnifiedVocab(text={self.text_range}, location={self.location_range}, "
                f"image={self.image_range}, size={self.size})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnifiedVocab) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    # ------------------------------------------------------------------ id mapping
    def range_of(self, modality: str) -> tuple[int, int]:
        try:
            return self._ranges[modality]
        except KeyError:
            raise TokenizerError(f"unknown modality {modality!r}; use one of {MODALITIES}") from None

    def to_global(self, local, modality: str):
        """Local ids of ``modality`` (int, list, numpy array or tensor) -> global ids, same type."""
        start, stop = self.range_of(modality)
        arr = _as_array(local)
        if arr.size and (arr.min() < 0 or arr.max() >= stop - start):
            raise TokenizerError(f"{modality} ids must lie in [0, {stop - start}), got values in "
                                 f"[{arr.min()}, {arr.max()}]")
        return _like(local, arr + start)

    def to_local(self, global_ids, modality: str):
        """Global ids that all belong to ``modality`` -> local ids, same type."""
        start, stop = self.range_of(modality)
        arr = _as_array(global_ids)
        if arr.size and (arr.min() < start or arr.max() >= stop):
            raise TokenizerError(f"global ids in [{arr.min()}, {arr.max()}] are not all {modality} ids "
                                 f"(range [{start}, {stop})); use split() for mixed sequences")
        return _like(global_ids, arr - start)

    def location_ids(self, bins):
        return self.to_global(bins, "location")

    def image_ids(self, codes):
        return self.to_global(codes, "image")

    def modality(self, global_id: int) -> str:
        """"text", "location", "image", or "invalid" (padding / negative)."""
        g = int(global_id)
        for name, (start, stop) in self._ranges.items():
            if start <= g < stop:
                return name
        return "invalid"

    def kinds(self, global_ids) -> np.ndarray:
        """Vectorised :meth:`modality` as small ints: 0 text, 1 location, 2 image, -1 invalid."""
        arr = _as_array(global_ids)
        out = np.full(arr.shape, -1, dtype=np.int8)
        for k, (start, stop) in enumerate(self._ranges.values()):
            out[(arr >= start) & (arr < stop)] = k
        return out

    def split(self, ids: Iterable[int], stop_at_eos: bool = True) -> list[Span]:
        """Cut a generated sequence into typed runs of local ids (:class:`Span`).

        pad and bos ids are dropped; eos ends the sequence (unless ``stop_at_eos`` is False,
        when it is dropped too). Never raises: ids outside every range form "invalid" runs.
        """
        spans: list[Span] = []
        names = ("text", "location", "image")
        for g in _as_array(ids).reshape(-1).tolist():
            if g == self.eos_id:
                if stop_at_eos:
                    break
                continue
            if g in (self.pad_id, self.bos_id):
                continue
            kind = self.modality(g)
            local = g - self._ranges[kind][0] if kind in names else g
            if spans and spans[-1].kind == kind:
                spans[-1].ids.append(local)
            else:
                spans.append(Span(kind, [local]))
        return spans

    def join(self, spans: Iterable[Span | tuple[str, Iterable[int]]], add_eos: bool = False) -> list[int]:
        """Inverse of :meth:`split`: typed runs of local ids -> one list of global ids."""
        out: list[int] = []
        for kind, ids in spans:
            out.extend(int(i) for i in _as_array(self.to_global(list(ids), kind)).reshape(-1))
        if add_eos:
            out.append(self.eos_id)
        return out

    # ------------------------------------------------------------------ constrained decoding
    def allowed_mask(self, *modalities: str, eos: bool = True, device=None) -> torch.Tensor:
        """Bool mask (size,) of the ids a task may emit: the given modalities, plus eos.

        Text never includes pad, bos or unk; padded ids are never allowed.
        """
        mask = torch.zeros(self.size, dtype=torch.bool, device=device)
        for name in modalities:
            start, stop = self.range_of(name)
            mask[start:stop] = True
        if "text" in modalities:
            for special in {self.pad_id, self.bos_id, self.unk_id} - {self.eos_id}:
                if special >= 0:
                    mask[special] = False
        mask[self.eos_id] = eos
        return mask

    # ------------------------------------------------------------------ identity
    @property
    def layout(self) -> dict[str, Any]:
        return dict(self._layout)

    @property
    def fingerprint(self) -> str:
        """sha256 over the SentencePiece model, the VQ tokenizer's fingerprint and the layout."""
        keys = ("version", "text_size", "num_bins", "codebook_size", "pad_multiple", "text_sha256",
                "image_fingerprint")
        blob = json.dumps({k: self._layout[k] for k in keys}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {**self._layout, "fingerprint": self.fingerprint,
                "ranges": {k: list(v) for k, v in self._ranges.items()}, "size": self.size}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, data: dict[str, Any], text_tokenizer=None, image_tokenizer=None) -> "UnifiedVocab":
        """Rebuild a vocabulary; with tokenizers given, refuse them unless they match exactly."""
        try:
            layout = {k: data[k] for k in ("version", "text_size", "num_bins", "codebook_size", "pad_multiple",
                                           "pad_id", "eos_id", "bos_id", "unk_id", "text_sha256",
                                           "image_fingerprint")}
        except KeyError as exc:
            raise VocabMismatchError(f"vocabulary description is missing {exc}; it was not written by "
                                     "UnifiedVocab.to_dict") from None
        vocab = cls(_layout=layout)
        if "fingerprint" in data and data["fingerprint"] != vocab.fingerprint:
            raise VocabMismatchError("vocabulary description is corrupt: its fingerprint does not match its layout")
        if text_tokenizer is not None:
            # the image tokenizer brings its own codebook size; check() then names any difference
            codebook = layout["codebook_size"] if image_tokenizer is None else None
            built = cls(text_tokenizer, layout["num_bins"], codebook, image_tokenizer=image_tokenizer,
                        pad_multiple=layout["pad_multiple"])
            vocab.check(built, what="the tokenizers supplied")
            return built
        return vocab

    @classmethod
    def from_json(cls, text: str, text_tokenizer=None, image_tokenizer=None) -> "UnifiedVocab":
        return cls.from_dict(json.loads(text), text_tokenizer, image_tokenizer)

    @classmethod
    def load(cls, path: str | Path, text_tokenizer=None, image_tokenizer=None) -> "UnifiedVocab":
        return cls.from_json(Path(path).read_text(), text_tokenizer, image_tokenizer)

    def check(self, other: "UnifiedVocab | dict", what: str = "the other vocabulary") -> None:
        """Raise :class:`VocabMismatchError` naming every part in which ``other`` differs."""
        other_layout = other.layout if isinstance(other, UnifiedVocab) else dict(other)
        if isinstance(other, dict) and "fingerprint" in other and other["fingerprint"] == self.fingerprint:
            return
        if isinstance(other, UnifiedVocab) and other.fingerprint == self.fingerprint:
            return
        labels = {"text_sha256": "text tokenizer (SentencePiece model)", "text_size": "text vocabulary size",
                  "image_fingerprint": "image tokenizer (VQ config + weights)", "codebook_size": "codebook size",
                  "num_bins": "number of location bins", "pad_multiple": "padding multiple",
                  "version": "layout version"}
        diffs = [f"{label}: {self._layout.get(k)!r} here vs {other_layout.get(k)!r}"
                 for k, label in labels.items() if self._layout.get(k) != other_layout.get(k)]
        raise VocabMismatchError(
            f"vocabulary mismatch with {what}: " + "; ".join(diffs or ["fingerprints differ"]) +
            ". Load the model with the tokenizers it was trained with (those in its export directory).")


def _as_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().astype(np.int64)
    return np.asarray(x, dtype=np.int64)


def _like(template, arr: np.ndarray):
    if isinstance(template, torch.Tensor):
        return torch.as_tensor(arr, dtype=torch.long, device=template.device)
    if isinstance(template, np.ndarray):
        return arr
    if isinstance(template, (list, tuple)):
        return arr.tolist()
    return int(arr)
