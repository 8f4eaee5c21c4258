"""A seeded multi-task mixture over several sources, with a resumable position.

Each training step draws one GLOBAL batch: for every slot a source (by source weight), a task (by
that source's task weights) and a sample (the source's next one, in a fresh seeded permutation
per epoch; endless sources such as the shapes world simply count up). The draw depends only on
the seed, the step and the per-source counters, never on the number of processes, so the same
recipe gives the same samples on 1 or N processes; each rank builds its own slice. The position
(step + counters) is a few integers, saved in every checkpoint for exact resume.

Building an Example (loading the image, tokenising) is the expensive part; it happens in
:class:`ExampleDataset`, which a ``torch.utils.data.DataLoader`` may run in worker processes,
while the draws themselves are made in the main process by :class:`RankBatchSampler`.

A streaming source (``streaming = True``: WebDataset shards, :mod:`unio.data.shards`) is not read
by index: a draw from it takes the next sample of the reader's own stream (``next_sample``), each
(rank, worker) reading its own shards, epoch after epoch; the draw's index counts its draws, and a
resumed mixture tells the source where its stream stood (``resume``).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import DataError, ImageError, TaskError

__all__ = ["Draw", "Mixture", "ExampleDataset", "RankBatchSampler"]


@dataclass(frozen=True)
class Draw:
    """One slot of a global batch: which sample of which source, for which task."""

    step: int
    slot: int       # position in the global batch
    source: int     # index into the mixture's sources
    task: str
    index: int      # sample index in that source

    def rng(self, seed: int, attempt: int = 0) -> np.random.Generator:
        """The generator a task uses to build this slot (paraphrase, augmentation): a pure
        function of (seed, step, slot), so it does not depend on which rank builds the slot."""
        return np.random.default_rng([seed, self.step, self.slot, attempt, 0x5EED])


class Mixture:
    """Draws global batches from ``sources`` with per-source ``tasks`` weights.

    Args:
        sources: sequences of samples (``len`` and indexing; ``endless=True`` for procedural ones).
        tasks: per source, {task name: weight}.
        weights: per source, its share of the batch (default: equal).
        seed: fixes every draw.
        batch_size: the global batch size.
    """

    def __init__(self, sources: Sequence, tasks: Sequence[dict], weights: Sequence[float] | None = None,
                 *, seed: int = 0, batch_size: int):
        if not sources:
            raise DataError("the mixture has no sources; list at least one under data.train")
        if len(tasks) != len(sources):
            raise DataError(f"{len(sources)} sources but {len(tasks)} task weight dicts")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise DataError(f"source weights must be non-negative, one per source, not all zero; got {weights}")
        self.sources, self.seed, self.batch_size = list(sources), int(seed), int(batch_size)
        if self.batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.source_p = np.asarray(weights) / sum(weights)
        self.task_names, self.task_p = [], []
        for i, t in enumerate(tasks):
            if not t or any(float(w) < 0 for w in t.values()) or sum(float(w) for w in t.values()) <= 0:
                raise DataError(f"data.train[{i}].tasks must map task names to positive weights, got {t!r}")
            names = list(t)
            self.task_names.append(names)
            self.task_p.append(np.asarray([float(t[n]) for n in names]) / sum(float(t[n]) for n in names))
        self.task_cdf = [np.cumsum(p) for p in self.task_p]
        for i, s in enumerate(self.sources):
            if len(s) == 0:
                raise DataError(f"data.train[{i}] has no samples")
            if getattr(s, "streaming", False):
                s.resume(0)
        self.step = 0
        self.counters = [0] * len(self.sources)
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}
        self._states: OrderedDict[int, dict] = OrderedDict()

    # ------------------------------------------------------------------ drawing
    def next_batch(self) -> list[Draw]:
        """The draws of the next global batch; advances the position."""
        step = self.step
        rng = np.random.default_rng([self.seed, step])
        src = rng.choice(len(self.sources), size=self.batch_size, p=self.source_p)
        u = rng.random(self.batch_size)  # one uniform per slot picks the task of its source
        draws = []
        for slot in range(self.batch_size):
            i = int(src[slot])
            k = min(int(np.searchsorted(self.task_cdf[i], u[slot], side="right")), len(self.task_cdf[i]) - 1)
            draws.append(Draw(step, slot, i, self.task_names[i][k], self._index(i, self.counters[i])))
            self.counters[i] += 1
        self.step += 1
        self._states[self.step] = self.state_dict()
        while len(self._states) > 256:  # only the recent past can still be asked for
            self._states.popitem(last=False)
        return draws

    def _index(self, i: int, count: int) -> int:
        source = self.sources[i]
        n = len(source)
        if getattr(source, "streaming", False):  # the source's own stream decides which sample comes next
            return count
        if getattr(source, "endless", False):
            return count % n
        epoch, pos = divmod(count, n)
        key = (i, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 2 * len(self.sources):
                self._perm_cache.clear()
            self._perm_cache[key] = np.random.default_rng([self.seed, i, epoch, 0xE90C]).permutation(n)
        return int(self._perm_cache[key][pos])

    def fallback_index(self, draw: Draw, attempt: int) -> int:
        """Another sample for ``draw`` when its own cannot serve its task (or is a skipped bad
        record): random but a pure function of the draw, so every rank would pick the same one."""
        rng = np.random.default_rng([self.seed, draw.step, draw.slot, attempt, 0xFA11])
        return int(rng.integers(len(self.sources[draw.source])))

    # ------------------------------------------------------------------ position
    def state_dict(self) -> dict:
        return {"step": self.step, "counters": list(self.counters), "seed": self.seed,
                "batch_size": self.batch_size, "sizes": [len(s) for s in self.sources]}

    def state_after(self, step: int) -> dict:
        """The position right after global batch ``step - 1`` was drawn (i.e. at ``step``)."""
        if step == self.step:
            return self.state_dict()
        if step not in self._states:
            raise DataError(f"the mixture position at step {step} is no longer known (now at {self.step})")
        return dict(self._states[step])

    def load_state_dict(self, state: dict) -> None:
        if len(state["counters"]) != len(self.sources):
            raise DataError(f"the saved data position has {len(state['counters'])} sources, the recipe "
                            f"{len(self.sources)}; resume with the recipe the run was started with")
        if int(state.get("batch_size", self.batch_size)) != self.batch_size:
            raise DataError(f"the run was made with batch_size {state['batch_size']}, the recipe has "
                            f"{self.batch_size}; resume with the same global batch size")
        self.step, self.counters = int(state["step"]), [int(c) for c in state["counters"]]
        self._states.clear()
        for s, count in zip(self.sources, self.counters):
            if getattr(s, "streaming", False):
                s.resume(count)


class ExampleDataset(torch.utils.data.Dataset):
    """Turns a :class:`Draw` into an Example with ``make_example(task, sample, rng)``.

    ``make_example`` returns None when the sample lacks what the task needs; the draw then falls
    back to other samples of its source. With ``skip_bad`` a record that fails to load
    (:class:`DataError`) is also replaced and counted, in ``skipped`` and, since a DataLoader
    worker's counters stay in the worker, in the returned example's ``meta["skipped_records"]``;
    otherwise the error propagates.
    """

    def __init__(self, mixture: Mixture, make_example: Callable, *, skip_bad: bool = False, attempts: int = 32):
        self.mixture, self.make_example = mixture, make_example
        self.skip_bad, self.attempts = skip_bad, attempts
        self.skipped = 0

    def __len__(self) -> int:  # map-style by draw, not by integer
        return 2 ** 31 - 1

    def __getitem__(self, draw: Draw):
        source = self.mixture.sources[draw.source]
        index, problem, skips = draw.index, None, 0
        for attempt in range(self.attempts):
            if attempt:
                index = self.mixture.fallback_index(draw, attempt)
            try:
                sample = source.next_sample(index) if getattr(source, "streaming", False) else source[index]
            except (DataError, ImageError) as exc:
                if not self.skip_bad:
                    raise
                self.skipped += 1
                skips += 1
                problem = str(exc)
                continue
            try:
                example = self.make_example(draw.task, sample, draw.rng(self.mixture.seed, attempt))
            except TaskError as exc:  # the sample lacks an input the task needs
                example, problem = None, str(exc)
            if example is not None:
                if skips and isinstance(getattr(example, "meta", None), dict):
                    example.meta["skipped_records"] = skips
                return example
        raise DataError(f"task {draw.task!r} could not be built from data.train[{draw.source}] in "
                        f"{self.attempts} samples" + (f" (last problem: {problem})" if problem else
                        "; its samples lack what the task needs (e.g. captions, boxes, depth)")
                        + ". Remove the task from that source's tasks")


class RankBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's micro-batches of draws, step after step, from ``mixture``'s position.

    Rank r of W takes slots [r*B/W, (r+1)*B/W) of every global batch of B, split into
    ``grad_accum`` micro-batches; so the union over ranks and micro-batches is the global batch.
    """

    def __init__(self, mixture: Mixture, *, rank: int, world_size: int, grad_accum: int = 1, steps: int):
        B = mixture.batch_size
        if B % (world_size * grad_accum):
            raise DataError(f"batch_size {B} must be divisible by processes x gradient accumulation "
                            f"({world_size} x {grad_accum})")
        self.mixture, self.rank, self.world, self.accum, self.steps = mixture, rank, world_size, grad_accum, steps
        self.per_rank = B // world_size
        self.micro = self.per_rank // grad_accum

    def __len__(self) -> int:
        return max(0, self.steps - self.mixture.step) * self.accum

    def __iter__(self):
        while self.mixture.step < self.steps:
            draws = self.mixture.next_batch()
            mine = draws[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
            for m in range(self.accum):
                yield mine[m * self.micro:(m + 1) * self.micro]
