"""The learning-rate schedule of both trainers (``unio train`` and ``unio tokenizer image``): a
linear warmup to the base rate, then a cosine down to ``min_ratio`` of it at the last step.

transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` is close but not the same: its
warmup starts at 0 (``step / warmup``; here ``(step + 1) / warmup``, so no step is wasted at
rate 0) and its cosine rises again after the last step (here it stays at ``min_ratio``).
"""
from __future__ import annotations

import math

__all__ = ["lr_at", "WarmupCosine"]


def lr_at(step: int, base: float, steps: int, warmup: int, min_ratio: float = 0.0) -> float:
    """The learning rate of step ``step`` (0-based) for a base rate ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class WarmupCosine:
    """:func:`lr_at` as the multiplier a ``torch.optim.lr_scheduler.LambdaLR`` takes. Its attributes
    are what the scheduler's state (and so a checkpoint) records of it."""

    def __init__(self, warmup: int, steps: int, min_ratio: float):
        self.warmup, self.steps, self.min_ratio = int(warmup), int(steps), float(min_ratio)

    def __call__(self, step: int) -> float:
        return lr_at(step, 1.0, self.steps, self.warmup, self.min_ratio)
