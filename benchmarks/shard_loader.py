"""WebDataset shards at scale: loader throughput at 224 px, and memory flat in the number of samples.

    python benchmarks/shard_loader.py                         # 1,000 samples packed, a 50,000-sample set
    python benchmarks/shard_loader.py --large 100000 --workers 0 2 --shuffle 250

Packs ``--n`` shapes-world samples at ``--image-size`` px with ``unio data pack`` (image PNG, JSON
annotations with RLE masks, depth map .npy: about 210 KB a sample at 224 px) into shards of
``--shard-size``. The large set repeats those shards under new names (hard links, else copies)
with its own index.json, ``--large`` samples in all: packing 100k samples on a 2-core machine takes
longer than reading them, and a reader cannot tell a repeated shard from a new one (it reads every
byte of each). Each set is then streamed for one epoch by a DataLoader over ``ShardStream`` (the
seeded shuffle buffer of ``--shuffle`` samples per reader, split over ``--workers`` workers by
shard), every sample decoded (image, masks, depth, annotations), letterboxed to ``--image-size``
and made a uint8 (3, S, S) tensor, batches of ``--batch-size`` stacked. Memory: the resident set
(RSS) of the main process and its workers together, sampled every 0.1 s; its peak for the small
and the large set at each worker count. Prints a table and writes JSON (default
benchmarks/results/shard_loader.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MiB = 2 ** 20


def to_tensor(sample, size=224):
    """The loader's per-sample work besides decoding: letterbox to size x size, uint8 (3, S, S)."""
    from unio.images import letterbox

    image, _ = letterbox(sample["image"], size)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def _one_thread(_):
    torch.set_num_threads(1)


class _Rss:
    """Peak RSS of this process plus its children (DataLoader workers), sampled in a thread, and
    the CPU seconds they used (the workers' as last seen before they exit)."""

    def __init__(self, every: float = 0.1):
        self.me, self.every, self.peak, self.stop = psutil.Process(), every, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.cpu0, self.children_cpu = self._cpu(self.me), {}

    @staticmethod
    def _cpu(p) -> float:
        t = p.cpu_times()
        return t.user + t.system

    def now(self) -> int:
        total = 0
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
                if p.pid != self.me.pid:
                    self.children_cpu[p.pid] = self._cpu(p)
            except psutil.Error:
                pass
        return total

    @property
    def cpu_s(self) -> float:
        return self._cpu(self.me) - self.cpu0 + sum(self.children_cpu.values())

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.every)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.now())


def _replicate(small: Path, big: Path, samples: int) -> dict:
    """A shard set of ``samples`` samples: ``small``'s shards again and again, under new names."""
    index = json.loads((small / "index.json").read_text())
    big.mkdir(parents=True)
    shards, total, k = [], 0, 0
    linked = True
    while total < samples:
        for s in index["shards"]:
            if total >= samples:
                break
            name = f"shard-{k:06d}.tar"
            try:
                os.link(small / s["name"], big / name)
            except OSError:
                linked = False
                shutil.copyfile(small / s["name"], big / name)
            shards.append({**s, "name": name})
            total, k = total + s["samples"], k + 1
    big_index = {**index, "samples": total, "shards": shards, "replicated_from": str(small),
                 "bytes": sum(s["bytes"] for s in shards)}
    big_index["members"] = {m: c * total // index["samples"] for m, c in index["members"].items()}
    (big / "index.json").write_text(json.dumps(big_index))
    return {"samples": total, "shards": len(shards), "bytes": big_index["bytes"], "hard_links": linked}


def _stream(path: Path, workers: int, args) -> dict:
    from functools import partial

    from unio.data.shards import ShardStream, WebDatasetSource

    t0 = time.perf_counter()
    source = WebDatasetSource(path, shuffle=args.shuffle, seed=0)
    open_s = time.perf_counter() - t0
    stream = ShardStream(source, transform=partial(to_tensor, size=args.image_size))
    loader = torch.utils.data.DataLoader(stream, batch_size=args.batch_size, num_workers=workers,
                                         worker_init_fn=_one_thread if workers else None,
                                         prefetch_factor=2 if workers else None)
    n, first = 0, None
    with _Rss() as rss:
        start = time.perf_counter()
        for batch in loader:
            n += len(batch)
            if first is None:  # workers started, first batch in: the steady rate counts from here
                first, t1, n0 = time.perf_counter() - start, time.perf_counter(), n
        elapsed = time.perf_counter() - t1
    assert n == len(source), (n, len(source))
    steady = (n - n0) / max(elapsed, 1e-9)
    return {"samples": n, "workers": workers, "samples_per_s": steady, "epoch_s": time.perf_counter() - start,
            "first_batch_s": first, "open_s": open_s, "peak_rss_mib": rss.peak / MiB,
            "cpu_ms_per_sample": 1000 * rss.cpu_s / n, "samples_per_cpu_s": n / max(rss.cpu_s, 1e-9)}


def main(argv=None) -> dict:
    from unio.data.pack import pack

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="samples packed (the small set)")
    p.add_argument("--large", type=int, default=50000, help="samples in the large set (repeated shards)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--shuffle", type=int, default=250, help="shuffle buffer per reader, in samples")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--tmp", default=None, help="folder for the shards (default: a temporary one, removed after)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shard_loader.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    tmp = Path(tempfile.mkdtemp(prefix="shards-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        index = pack(f"shapes:0,image_size={args.image_size}", tmp / "small", shard_size=args.shard_size, n=args.n)
        pack_s = time.perf_counter() - t0
        big = _replicate(tmp / "small", tmp / "large", args.large)
        rows = []
        for workers in args.workers:
            for name, path in (("small", tmp / "small"), ("large", tmp / "large")):
                row = {"set": name, **_stream(path, workers, args)}
                rows.append(row)
                print(f"  {name:>5} w={workers}: {row['samples']:,} samples, {row['samples_per_s']:.0f} samples/s, "
                      f"peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    per_sample = index["bytes"] / index["samples"]
    print(f"\npacked {index['samples']:,} shapes samples at {args.image_size} px in {pack_s:.1f} s "
          f"({index['samples'] / pack_s:.0f} samples/s), {per_sample / 1e3:.0f} KB a sample, "
          f"{len(index['shards'])} shards of {args.shard_size}; large set {big['samples']:,} samples in "
          f"{big['shards']} shards ({big['bytes'] / 1e9:.1f} GB, {'hard links' if big['hard_links'] else 'copies'})")
    print(f"shuffle buffer {args.shuffle} samples per reader, batch {args.batch_size}, torch threads 1 per process\n")
    print(f"{'set':>6} {'samples':>8} {'workers':>8} {'samples/s':>10} {'per CPU s':>10} {'epoch s':>8} {'open ms':>8} "
          f"{'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['set']:>6} {r['samples']:>8,} {r['workers']:>8} {r['samples_per_s']:>10.0f} "
              f"{r['samples_per_cpu_s']:>10.0f} {r['epoch_s']:>8.1f} {1000 * r['open_s']:>8.1f} {r['peak_rss_mib']:>13.0f}")
    flat = {}
    for workers in args.workers:
        small, large = (next(r for r in rows if r["set"] == s and r["workers"] == workers) for s in ("small", "large"))
        flat[str(workers)] = {"small_mib": small["peak_rss_mib"], "large_mib": large["peak_rss_mib"],
                              "ratio": large["peak_rss_mib"] / small["peak_rss_mib"]}
        print(f"workers {workers}: peak RSS {large['peak_rss_mib']:.0f} MiB for {large['samples']:,} samples vs "
              f"{small['peak_rss_mib']:.0f} MiB for {small['samples']:,} ({flat[str(workers)]['ratio']:.2f}x for "
              f"{large['samples'] / small['samples']:.0f}x the samples)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"load average {load} on {os.cpu_count()} CPUs (samples/s falls when other jobs share them; "
          "samples per CPU second does not)")
    result = {"n": args.n, "large": big, "image_size": args.image_size, "shard_size": args.shard_size,
              "shuffle": args.shuffle, "batch_size": args.batch_size, "pack_s": pack_s,
              "pack_samples_per_s": index["samples"] / pack_s, "bytes_per_sample": per_sample, "rows": rows,
              "rss_large_over_small": flat, "cpus": os.cpu_count(),
              "load_avg": load}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
