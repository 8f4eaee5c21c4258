"""WebDataset shards as a data source: ``webdataset:DIR`` or ``webdataset:PATTERN`` in a data spec,
``{source: webdataset, path: DIR}`` in a recipe. ``unio data pack`` writes them (:mod:`.pack`);
the sample format is :mod:`.shard_format`'s.

Two ways to read, neither holding more than the shard list and a shuffle buffer in memory:

- **streaming** (training): :meth:`WebDatasetSource.stream` gives one epoch of one reader's samples.
  Readers are the (rank, DataLoader worker) pairs, rank and world size from ``torch.distributed``
  when it is initialised, the worker from ``torch.utils.data.get_worker_info()``. Each epoch the
  shard order is shuffled (seeded by ``seed`` and the epoch, the same on every reader) and reader
  ``k`` of ``R`` takes shards ``k, k + R, ...`` of it, so no sample is read twice in an epoch; with
  fewer shards than readers, the readers sharing a shard take every m-th sample of it. A seeded
  buffer of ``shuffle`` samples shuffles within the reader's stream (different per epoch).
  :class:`ShardStream` is the ``IterableDataset`` of that for a plain DataLoader (``set_epoch``);
  the training mixture takes a source's next sample with :meth:`WebDatasetSource.next_sample`.
- **by index** (evaluation, ``unio data pack``): ``source[i]`` is the i-th sample in shard order,
  read sequentially; going back reopens the shard and reads from its start.

A sample with a missing or unreadable member, or the rest of a damaged shard, is skipped with a
warning naming the shard and counted (``source.skipped``, ``source.skipped_by_shard``), never
stopping an epoch; ``on_bad_record: stop`` raises :class:`~unio.errors.DataError` instead. Sample
counts come from the ``index.json`` that ``unio data pack`` writes beside the shards (read by
scanning the tar headers when there is none).
"""
from __future__ import annotations

import glob
import json
import os
import re
import tarfile
import warnings
import zlib
from bisect import bisect_right
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import DataError
from .formats import BadRecords, Source, sample_texts
from .shard_format import IMAGE_MEMBERS, decode_sample, decode_texts, split_name, tar_samples

__all__ = ["WebDatasetSource", "ShardStream", "ShardWarning", "find_shards", "reader_slot"]

_BROKEN = (tarfile.TarError, OSError, EOFError, zlib.error)
_MAX_WARNINGS = 20


class ShardWarning(UserWarning):
    """A sample or a shard was skipped (``on_bad_record: skip``)."""


def _expand(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar``, ``a-001.tar``, ``a-002.tar`` (WebDataset's brace ranges)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
    return [p for k in range(lo, hi + 1) for p in _expand(pattern[:m.start()] + f"{k:0{width}d}" + pattern[m.end():])]


def find_shards(path) -> list[str]:
    """The shard files a spec names: the .tar files of a folder, or those a glob / brace pattern matches."""
    text = os.path.expanduser(str(path))
    if os.path.isdir(text):
        found = [p for p in glob.glob(os.path.join(glob.escape(text), "*")) if p.endswith((".tar", ".tar.gz", ".tgz"))]
    else:
        found = [p for pat in _expand(text) for p in (glob.glob(pat) if glob.has_magic(pat) else [pat])
                 if os.path.isfile(p)]
    shards = sorted(set(found))
    if not shards:
        raise DataError(f"no WebDataset shards (.tar files) at {path}; give a folder of shards, a pattern such as "
                        "DIR/shard-{000000..000009}.tar or DIR/*.tar, or write shards with "
                        "`unio data pack SPEC --out DIR`")
    return shards


def reader_slot(rank=None, world_size=None, worker=None, num_workers=None) -> tuple[int, int]:
    """(this reader, readers): rank x DataLoader worker, from torch.distributed and the worker info
    unless given."""
    if rank is None or world_size is None:
        ready = dist.is_available() and dist.is_initialized()
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if ready else (0, 1)
    if worker is None or num_workers is None:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise DataError(f"reader rank {rank} of {world_size}, worker {worker} of {num_workers} is out of range")
    return rank * num_workers + worker, world_size * num_workers


def _buffer_shuffle(items, size: int, rng: np.random.Generator):
    """Items in a seeded random order, holding at most ``size`` of them (WebDataset's shuffle buffer)."""
    buf = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


class WebDatasetSource(Source):
    """WebDataset shards: ``path`` is a folder of ``.tar`` shards or a pattern of them
    (``DIR/shard-{000000..000099}.tar``, ``DIR/*.tar``). ``shuffle`` is the shuffle buffer of a
    stream (0: shard order shuffled, samples in their order), ``seed`` seeds both shuffles."""

    name = "webdataset"
    REQUIRED = ("path",)
    FOLDER_KEYS = ("path",)
    PATTERN_KEYS = ("path",)   # a folder or a pattern of files: not resolved as one path
    OPTIONS = {"shuffle": 1000, "seed": 0}
    BAD_RECORD_DEFAULT = "skip"
    streaming = True           # the training mixture takes next_sample(), not source[i]

    def __init__(self, path, shuffle=1000, seed=0, on_bad_record="skip"):
        if on_bad_record not in ("skip", "stop", "error"):
            raise DataError(f"on_bad_record of the webdataset source must be skip or stop, got {on_bad_record!r}")
        super().__init__(BadRecords("skip" if on_bad_record == "skip" else "error"))
        self.path, self.shuffle, self.seed = str(path), int(shuffle), int(seed)
        if self.shuffle < 0:
            raise DataError(f"shuffle must be a buffer size >= 0, got {shuffle}")
        self.skipped_by_shard: Counter = Counter()
        self.info: dict = {}
        self._resume_at, self._live, self._cursor, self._warned = 0, None, None, set()
        self.shards = self._counted(find_shards(self.path))  # [(path, samples)]
        self.classes = list(self.info.get("classes") or [])
        samples = self.info.get("samples")  # members every sample has, by the index
        self.required = tuple(e for e, c in (self.info.get("members") or {}).items()
                              if c == samples and e not in IMAGE_MEMBERS)
        self.object_labels = list(self.info.get("object_labels") or [])
        self._set_starts()

    # ------------------------------------------------------------------ shard list
    def _counted(self, paths: list[str]) -> list[tuple[str, int]]:
        """Each shard with its sample count: from index.json beside it, else by reading the tar headers."""
        known: dict[str, int] = {}
        for folder in sorted({os.path.dirname(p) for p in paths}):
            index = os.path.join(folder, "index.json")
            if os.path.isfile(index):
                try:
                    with open(index, encoding="utf-8") as f:
                        info = json.load(f)
                    known.update({os.path.join(folder, s["name"]): int(s["samples"]) for s in info["shards"]})
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise DataError(f"{index} is not a shard index ({exc}); delete it to count the samples "
                                    "from the shards themselves") from None
                self.info = self.info or {k: v for k, v in info.items() if k != "shards"}
        if os.path.isdir(self.path) and known:  # a packed folder: its index says which shards it holds
            for p in sorted(set(known) - set(paths)):
                self._bad(os.path.basename(p), None, "is listed in index.json but missing", known[p])
            paths = [p for p in paths if p in known]
            if not paths:
                raise DataError(f"none of the shards {os.path.join(self.path, 'index.json')} lists is there; "
                                "pack the data again (`unio data pack SPEC --out DIR --overwrite`)")
        return [(p, known[p] if p in known else self._scan(p)) for p in paths]

    def _scan(self, path: str) -> int:
        n, last = 0, None
        try:
            with tarfile.open(path) as tar:
                for info in tar:
                    key = split_name(info.name)[0] if info.isfile() else None
                    if key is not None and key != last:
                        n, last = n + 1, key
        except _BROKEN as exc:
            self._bad(os.path.basename(path), None, f"could not be read to the end ({exc}); {n} samples counted")
        return n

    def _set_starts(self):
        self._starts = np.cumsum([0] + [n for _, n in self.shards]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def limit(self, n: int) -> None:
        """Keep the first ``n`` samples in shard order (the last shard kept in part)."""
        kept, left = [], int(n)
        for path, count in self.shards:
            if left <= 0:
                break
            kept.append((path, min(count, left)))
            left -= count
        self.shards = kept
        self._set_starts()

    @property
    def skipped_shards(self) -> list[str]:
        return sorted(self.skipped_by_shard)

    # ------------------------------------------------------------------ bad records
    def _bad(self, shard: str, key, problem: str, count: int = 1) -> None:
        where = f"{shard}" + (f" sample {key}" if key is not None else "")
        if self.bad.policy == "error":
            raise DataError(f"{where}: {problem}; re-pack or remove the shard, or set on_bad_record: skip to leave "
                            "such samples out")
        self.bad.count += count
        self.skipped_by_shard[shard] += count
        if len(self.bad.examples) < 5:
            self.bad.examples.append(f"{where}: {problem}")
        if len(self._warned) < _MAX_WARNINGS:
            self._warned.add(where)
            more = "; further bad samples are counted silently" if len(self._warned) == _MAX_WARNINGS else ""
            warnings.warn(f"{where}: {problem}; skipped ({self.bad.count} bad sample(s) in "
                          f"{len(self.skipped_by_shard)} shard(s) of {self.path} so far){more}", ShardWarning,
                          stacklevel=3)

    def _raw(self, index: int, every: int = 1, offset: int = 0):
        """(shard name, key, members) of shard ``index``'s samples k with k % every == offset; a
        damaged tar ends the shard, its unread samples counted as skipped."""
        path, take = self.shards[index]
        name, k = os.path.basename(path), 0
        try:
            with open(path, "rb") as f:
                for key, members in tar_samples(f):
                    if k >= take:
                        return
                    if k % every == offset:
                        yield name, key, members
                    k += 1
        except _BROKEN as exc:
            problem = f"is damaged after {k} of its {take} samples ({exc})"
        else:
            if k >= take:
                return
            problem = f"holds {k} samples, not the {take} its index lists (a truncated shard?)"
        first = k + (offset - k) % every  # the unread samples this reader would have taken
        self._bad(name, None, problem, len(range(first, max(take, k + 1), every)))

    def _decode(self, shard: str, key: str, members: dict):
        try:
            return decode_sample(key, members, self.required)
        except DataError as exc:
            self._bad(shard, key, str(exc))
            return None

    # ------------------------------------------------------------------ streaming
    def _plan(self, epoch: int, slot: int, slots: int) -> list[tuple[int, int, int]]:
        """(shard index, every, offset) read by reader ``slot`` of ``slots`` in ``epoch``."""
        n = len(self.shards)
        order = np.random.default_rng([self.seed, epoch, 0x5AAD]).permutation(n) if n > 1 else np.arange(n)
        if slots <= n:
            return [(int(s), 1, 0) for s in order[slot::slots]]
        if "few" not in self._warned:
            self._warned.add("few")
            warnings.warn(f"{n} shard(s) in {self.path} for {slots} readers (ranks x workers): readers share shards, "
                          "each reading all of one; pack smaller shards (--shard-size) to give each its own",
                          ShardWarning, stacklevel=3)
        return [(int(order[slot % n]), len(range(slot % n, slots, n)), slot // n)]

    def reader_samples(self, epoch: int = 0, **reader) -> int:
        """How many samples one reader (``rank=``, ``world_size=``, ``worker=``, ``num_workers=``) gets in ``epoch``."""
        plan = self._plan(epoch, *reader_slot(**reader))
        return sum(len(range(offset, self.shards[i][1], every)) for i, every, offset in plan)

    def stream(self, epoch: int = 0, *, rank=None, world_size=None, worker=None, num_workers=None, skip: int = 0):
        """One epoch of this reader's samples, shuffled (see the module's docstring); ``skip``
        passes over the first samples without decoding them."""
        slot, slots = reader_slot(rank, world_size, worker, num_workers)
        raw = (item for i, every, offset in self._plan(epoch, slot, slots) for item in self._raw(i, every, offset))
        if self.shuffle > 1:
            raw = _buffer_shuffle(raw, self.shuffle, np.random.default_rng([self.seed, epoch, slot, 0xB0FF]))
        for shard, key, members in raw:
            if skip > 0:
                skip -= 1
                continue
            sample = self._decode(shard, key, members)
            if sample is not None:
                yield sample

    def resume(self, position: int) -> None:
        """Continue the mixture's stream at its ``position``-th draw (a resumed run): the epoch it
        falls in, less the share of it this reader already read (in proportion, at sample grain)."""
        self._resume_at, self._live = int(position), None

    def next_sample(self, position=None) -> dict:
        """The next sample of this reader's endless stream (epoch after epoch), for the training
        mixture; ``position`` (the draw's count) is not needed: the stream keeps its own place."""
        if self._live is None or self._live[0] != os.getpid():
            self._live = (os.getpid(), self._endless())
        try:
            return next(self._live[1])
        except (StopIteration, DataError) as exc:
            self._live = None
            if isinstance(exc, DataError):
                raise
            raise DataError(f"no readable sample in the shards of {self.path} for this reader") from None

    def _endless(self):
        n = max(len(self), 1)
        epoch, done = divmod(self._resume_at, n)
        skip = round(done / n * self.reader_samples(epoch))
        empty = 0
        while empty < 2:
            got = False
            for sample in self.stream(epoch, skip=skip):
                got = True
                yield sample
            empty, epoch, skip = (0 if got else empty + 1), epoch + 1, 0

    # ------------------------------------------------------------------ by index
    def __getitem__(self, index: int) -> dict:
        """The ``index``-th sample in shard order, read sequentially (cheap when indices go up)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"webdataset source has {n} samples, index {index} is out of range")
        index %= n
        shard = bisect_right(self._starts, index) - 1
        offset = index - self._starts[shard]
        cur = self._cursor
        if cur is None or cur[0] != shard or cur[1] > offset:
            cur = self._cursor = [shard, 0, self._raw(shard)]
        item = None
        while cur[1] <= offset and cur[2] is not None:
            item = next(cur[2], None)
            if item is None:
                cur[2] = None
            else:
                cur[1] += 1
        name = os.path.basename(self.shards[shard][0])
        if cur[1] <= offset or item is None:
            raise DataError(f"{name}: sample {offset + 1} of the shard could not be read (damaged shard)")
        sample = self._decode(*item)
        if sample is None:  # counted and warned; the index is there but unusable
            raise DataError(f"{name} sample {item[1]} is unreadable: {self.bad.examples[-1]}")
        return sample

    def __iter__(self):
        """Every readable sample in shard order (no shuffle), bad ones skipped."""
        for i in range(len(self.shards)):
            for shard, key, members in self._raw(i):
                sample = self._decode(shard, key, members)
                if sample is not None:
                    yield sample

    def texts(self, limit: int | None = None) -> list[str]:
        out: list[str] = []
        for count, (shard, key, members) in enumerate(item for i in range(len(self.shards)) for item in self._raw(i)):
            if limit is not None and count >= limit:
                break
            try:
                out.extend(sample_texts(decode_texts(members)))
            except DataError as exc:
                self._bad(shard, key, str(exc))
        return out

    def __getstate__(self):  # open readers stay in the process that opened them
        state = dict(self.__dict__)
        state["_live"] = state["_cursor"] = None
        return state

    def __repr__(self) -> str:
        return (f"WebDatasetSource({self.path!r}: {len(self.shards)} shards, {len(self)} samples, "
                f"{self.skipped} bad samples skipped)")


class ShardStream(torch.utils.data.IterableDataset):
    """A DataLoader's dataset over shards: each iteration is one epoch of this reader's samples
    (split over ranks and workers by shard, shuffled; see :class:`WebDatasetSource`), passed
    through ``transform`` when given. Call :meth:`set_epoch` before each epoch (as with
    ``DistributedSampler``); with ``persistent_workers`` the workers keep the epoch they started with.

        >>> stream = ShardStream("shards/", shuffle=1000, seed=0)
        >>> loader = DataLoader(stream, batch_size=64, num_workers=4, collate_fn=...)
        >>> for epoch in range(3):
        ...     stream.set_epoch(epoch)
        ...     for batch in loader: ...
    """

    def __init__(self, source, transform=None, *, epoch: int = 0, rank=None, world_size=None, **options):
        self.source = source if isinstance(source, WebDatasetSource) else WebDatasetSource(source, **options)
        self.transform, self.epoch, self.rank, self.world_size = transform, int(epoch), rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        for sample in self.source.stream(self.epoch, rank=self.rank, world_size=self.world_size):
            yield sample if self.transform is None else self.transform(sample)
