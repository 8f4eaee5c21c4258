"""What the seeded, endless worlds (:mod:`unio.data.shapes`, :mod:`unio.data.fashion`) share: the
checks of their common arguments and the dataset protocol (``len``, iteration, ``world[i]``,
``world[a:b]``, ``take``) around the ``sample(index)`` each world defines."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import DataError, InputError

__all__ = ["SeededWorld"]


class SeededWorld:
    """Base of an endless dataset whose sample ``index`` is fixed by its seed: a subclass sets
    ``MAX_OBJECTS``, checks its image size in ``_check_image_size`` and defines ``sample``."""

    MAX_OBJECTS: int

    def _check_image_size(self, image_size: int) -> None:
        raise NotImplementedError

    def _set_common(self, image_size, seed, max_objects, min_objects, length) -> None:
        """Check the arguments every world takes (errors name the world's class) and keep them."""
        world = type(self).__name__
        for name, value in (("image_size", image_size), ("seed", seed), ("max_objects", max_objects),
                            ("min_objects", min_objects), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"{world} {name} must be an int, got {value!r}")
        self._check_image_size(image_size)
        if seed < 0:
            raise InputError(f"{world} seed={seed} is negative; use a seed >= 0")
        if not 1 <= min_objects <= max_objects <= self.MAX_OBJECTS:
            raise InputError(f"{world} needs 1 <= min_objects <= max_objects <= {self.MAX_OBJECTS}, got "
                             f"min_objects={min_objects}, max_objects={max_objects}; adjust them")
        if length < 1:
            raise InputError(f"{world} length={length} must be positive")
        self.image_size, self.seed = int(image_size), int(seed)
        self.max_objects, self.min_objects, self.length = int(max_objects), int(min_objects), int(length)

    def sample(self, index: int) -> dict:
        raise NotImplementedError

    def _object_count(self, rand) -> int:
        """How many objects a scene tries to place: drawn uniformly in min_objects..max_objects."""
        return self.min_objects + int(rand() * (self.max_objects - self.min_objects + 1))

    def _attempts(self, placed: list, n_target: int, index: int, what: str, scene: str) -> Iterator[None]:
        """One step per attempt to place an object while fewer than ``n_target`` are ``placed``; after
        60 attempts per object the scene stops with what it has, or fails if that is below
        ``min_objects``. ``what`` ("objects") and ``scene`` ("shapes") word the error."""
        attempts = 0
        while len(placed) < n_target:
            attempts += 1
            if attempts > 60 * n_target:
                if len(placed) >= self.min_objects:
                    return
                S = self.image_size
                raise DataError(f"could not place {self.min_objects} {what} in a {S}x{S} {scene} scene (index "
                                f"{index}); lower min_objects or raise image_size")
            yield

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(self.length))

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.start or 0, index.stop, index.step or 1
            if stop is None or start < 0 or stop < 0 or step < 1:
                raise InputError(f"{type(self).__name__} slice {index} must have a non-negative start and stop "
                                 "and a positive step, e.g. world[0:16]")
            return [self[i] for i in range(start, stop, step)]
        return self.sample(index)

    def take(self, n: int, start: int = 0) -> Iterator[dict]:
        """Samples ``start .. start + n - 1``."""
        return (self[i] for i in range(start, start + n))

    def texts(self, n: int) -> Iterator[str]:
        """Every caption, question, answer and referring expression of samples 0..n-1 (tokenizer corpus)."""
        for i in range(n):
            s = self[i]
            yield s["caption"]
            for q, a in s["qa"]:
                yield q
                yield a
            for expression, _ in s["refexps"]:
                yield expression

    def _check_index(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise InputError(f"{type(self).__name__} index must be an int >= 0, got {index!r}")
        return int(index)
