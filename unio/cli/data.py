"""``unio data``: tools for datasets. ``unio data pack SPEC --out DIR --shard-size N`` writes
WebDataset shards from any data spec unio reads (:func:`unio.data.pack.pack`)."""
from __future__ import annotations

import sys

from ..data.pack import INDEX_NAME, pack

__all__ = ["main"]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def main(args) -> int:
    if args.action != "pack":  # argparse only lets known actions through
        raise SystemExit(f"unknown data action {args.action!r}")
    index = pack(args.spec, args.out, shard_size=args.shard_size, n=args.n, overwrite=args.overwrite,
                 on_bad_record=args.on_bad_record, progress=sys.stderr.isatty())
    shards = index["shards"]
    names = shards[0]["name"] if len(shards) == 1 else f"{shards[0]['name']} .. {shards[-1]['name']}"
    rate = index["samples"] / max(index["seconds"], 1e-9)
    print(f"wrote {len(shards)} shard{'s' * (len(shards) != 1)} ({names}) with {index['samples']:,} samples, "
          f"{_size(index['bytes'])}, to {args.out} in {index['seconds']:.1f} s ({rate:.0f} samples/s)")
    print("  fields: " + ", ".join(f"{k} {v:,}" for k, v in index["fields"].items()))
    print("  members: " + ", ".join(f".{k} {v:,}" for k, v in index["members"].items()))
    if index["skipped"]:
        print(f"  skipped {index['skipped']} unreadable samples" +
              (f", e.g. {index['skipped_examples'][0]}" if index["skipped_examples"] else ""))
    print(f"  index: {args.out.rstrip('/')}/{INDEX_NAME}; read them with --data webdataset:{args.out} "
          f"or {{source: webdataset, path: {args.out}}} in a recipe")
    return 0
