"""The training loss: token cross-entropy over the unified vocabulary, with per-token weights
(Pix2Seq's sequence augmentation weights noise boxes and eos differently)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["token_loss"]


def token_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
               used_vocab_size: int | None = None) -> torch.Tensor:
    """Token cross-entropy with -100 ignored; with ``weights`` a weighted mean over non-ignored tokens."""
    if labels.shape != logits.shape[:2]:
        raise InputError(f"labels {tuple(labels.shape)} must be (B, T) = {tuple(logits.shape[:2])}")
    used = used_vocab_size or logits.shape[-1]
    bad = (labels != -100) & ((labels < 0) | (labels >= used))
    if bool(bad.any()):
        raise InputError(f"labels must be -100 (ignored) or global ids in [0, {used}); got {labels[bad][:5].tolist()}")
    flat_logits, flat_labels = logits.float().view(-1, logits.shape[-1]), labels.reshape(-1)
    if weights is None:
        return F.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
    if weights.shape != labels.shape:
        raise InputError(f"label_weights {tuple(weights.shape)} must match labels {tuple(labels.shape)}")
    ce = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="none")
    w = weights.reshape(-1).to(ce.dtype) * (flat_labels != -100)
    return (ce * w).sum() / w.sum().clamp_min(1e-8)
