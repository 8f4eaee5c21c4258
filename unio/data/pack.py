"""Writing WebDataset shards from any data spec unio reads: ``unio data pack SPEC --out DIR``.

    >>> info = pack("shapes:0", "shards/", shard_size=1000, n=100_000)
    >>> info = pack("coco:images=val2017,instances=instances_val2017.json", "coco-shards/")

Samples are read in order (``source[i]``) and written to ``DIR/shard-000000.tar``,
``DIR/shard-000001.tar``, ... with ``shard_size`` samples each, in the format of
:mod:`.shard_format` (images as the bytes of the files they came from, annotations as JSON, arrays
as .npy). ``DIR/index.json`` records the counts, the spec, the fields and the label sets, so that
the ``webdataset`` source knows its size without opening a shard. A shard is written under a
temporary name and renamed when complete.
"""
from __future__ import annotations

import json
import os
import tarfile
import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DataError, ImageError
from .shard_format import add_member, encode_sample
from .specs import open_data, spec_text

__all__ = ["pack", "SHARD_NAME", "INDEX_NAME"]

SHARD_NAME = "shard-{:06d}.tar"
INDEX_NAME = "index.json"


def _unio_version() -> str:
    try:
        return version("unio")
    except PackageNotFoundError:
        return "unknown"


class _Writer:
    """Shards of ``size`` samples in ``out``, each renamed from ``.part`` when it is complete."""

    def __init__(self, out: Path, size: int):
        self.out, self.size = out, size
        self.shards: list[dict] = []
        self.tar, self.count, self.part = None, 0, None

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        if self.tar is None:
            self.part = self.out / (SHARD_NAME.format(len(self.shards)) + ".part")
            self.tar, self.count = tarfile.open(self.part, "w", format=tarfile.PAX_FORMAT), 0
        for ext, data in members:
            add_member(self.tar, f"{key}.{ext}", data)
        self.count += 1
        if self.count >= self.size:
            self.finish()

    def finish(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        final = self.part.with_suffix("")  # drop .part
        os.replace(self.part, final)
        self.shards.append({"name": final.name, "samples": self.count, "bytes": final.stat().st_size})
        self.tar = None

    def abort(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.part.unlink(missing_ok=True)
            self.tar = None


def _prepare(out: Path, overwrite: bool) -> None:
    old = sorted(out.glob("shard-*.tar")) + sorted(out.glob("shard-*.tar.part")) + \
        ([out / INDEX_NAME] if (out / INDEX_NAME).exists() else [])
    if old and not overwrite:
        raise DataError(f"{out} already holds shards ({old[0].name}, ...); choose another --out, or pass --overwrite "
                        "to replace them")
    out.mkdir(parents=True, exist_ok=True)
    for p in old:
        p.unlink()


def _fields(sample: dict, fields: Counter) -> None:
    for key, value in sample.items():
        if not key.startswith("__") and value is not None:
            fields[key] += 1
    objects = sample.get("objects") or []
    if any("mask" in o for o in objects):
        fields["objects.mask"] += 1
    if any("box" in o for o in objects):
        fields["objects.box"] += 1


def pack(spec, out, shard_size: int = 1000, n: int | None = None, *, overwrite: bool = False,
         on_bad_record: str = "error", progress: bool = False) -> dict:
    """Write the samples of data ``spec`` as WebDataset shards in ``out``; returns the index
    (also written to ``out/index.json``). ``n`` keeps the first n samples (needed for the endless
    shapes world); ``on_bad_record="skip"`` leaves out samples that cannot be read, counted."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise DataError(f"--shard-size must be a whole number of samples >= 1, got {shard_size!r}")
    if on_bad_record not in ("error", "skip"):
        raise DataError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
    source, entry = open_data(spec)
    if n is not None:
        if n < 1:
            raise DataError(f"--n must be >= 1, got {n}")
        source.limit(int(n))
        entry["n"] = int(n)
    if getattr(source, "endless", False):
        raise DataError(f"{spec_text(spec, entry)} is endless; say how many samples to pack with --n")
    out = Path(out)
    _prepare(out, overwrite)
    writer, fields, members = _Writer(out, shard_size), Counter(), Counter()
    skipped, problems, start = 0, [], time.perf_counter()
    try:
        for i in tqdm(range(len(source)), desc="pack", disable=not progress, dynamic_ncols=True):
            try:
                sample = source[i]
                files = encode_sample(sample)
            except (DataError, ImageError) as exc:
                if on_bad_record != "skip":
                    raise DataError(f"sample {i} of {spec_text(spec, entry)}: {exc}; set on_bad_record skip "
                                    "(--on-bad-record skip) to leave such samples out") from None
                skipped += 1
                problems.append(f"sample {i}: {exc}")
                continue
            writer.add(f"{i:08d}", files)
            _fields(sample, fields)
            members.update(ext for ext, _ in files)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    total = sum(s["samples"] for s in writer.shards)
    if not total:
        raise DataError(f"no sample of {spec_text(spec, entry)} could be packed" +
                        (f" (e.g. {problems[0]})" if problems else ""))
    index = {
        "format": "webdataset", "writer": "unio data pack", "unio": _unio_version(),
        "spec": spec_text(spec, entry), "entry": entry, "samples": total, "shard_size": shard_size,
        "bytes": sum(s["bytes"] for s in writer.shards), "skipped": skipped + source.skipped,
        "skipped_examples": problems[:5], "fields": dict(sorted(fields.items())),
        "members": dict(sorted(members.items())),
        "classes": list(getattr(source, "classes", None) or []),
        "object_labels": list(getattr(source, "object_labels", None) or []),
        "seconds": round(time.perf_counter() - start, 3), "shards": writer.shards,
    }
    (out / INDEX_NAME).write_text(json.dumps(index, indent=1, default=str) + "\n", encoding="utf-8")
    return index
