"""Batched inference through unio.load: 64 images in one call vs 64 single calls, and 10 questions
about one image in one call vs 10 calls.

    python benchmarks/pipeline_speed.py                          # tiny untrained model, CPU, 1 thread
    python benchmarks/pipeline_speed.py --tasks caption --n 32 --out /tmp/speed.json

An untrained ``tiny`` export (``unio init``) reads the same --n shapes-world images, letterboxed to
64 px, once per call (``pipe.caption(images[i])`` for each i) and once as a list
(``pipe.caption(images, batch_size=n)``). Both decode greedily with the same length limits, so they
produce the same outputs (tests/test_pipeline.py checks this) and do the same work; the batched
call shares each decoding step over the batch. Target: >= 4x faster per image batched.

Ask many: the shipped ``shapes-demo`` model answers --questions questions about each of 8 images,
``pipe.ask(image, [q1, ..., qn])`` (one call: the image is read and letterboxed once, the questions
share the decoding steps) against ``pipe.ask(image, q)`` per question; answers must be identical.
Target: >= 3x. The encoder reads patches and prompt jointly (patches attend to the prompt), so its
image states differ per question and are not reused; the gain is batching.
Each figure is the best of --repeats timed passes after a warm-up. Prints a table and writes JSON
(default benchmarks/results/pipeline_speed.json).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

import unio
from unio.data.shapes import ShapesWorld
from unio.export import init_export

hf_logging.set_verbosity_error()
TARGET = 4.0

CALLS = {
    "caption": lambda pipe, x, bs: pipe.caption(x, max_new_tokens=16, batch_size=bs),
    "detect": lambda pipe, x, bs: pipe.detect(x, max_objects=4, batch_size=bs),
    "ground": lambda pipe, x, bs: pipe.ground(x, "the red circle", batch_size=bs),
    "classify": lambda pipe, x, bs: pipe.classify(x, batch_size=bs),
    "depth": lambda pipe, x, bs: pipe.depth(x, batch_size=bs),
}


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def ask_many(args) -> dict:
    """--questions questions about each of 8 shapes images: one call per image vs one per question."""
    pipe = unio.load("shapes-demo", device=args.device)
    world = ShapesWorld(image_size=64, seed=2)
    cases = []
    for i in range(8):
        sample = world[i]
        questions = [q for q, _ in sample["qa"]]
        cases.append((sample["image"], (questions * args.questions)[: args.questions]))
    pipe.ask(cases[0][0], cases[0][1])  # warm-up
    one_by_one = [[pipe.ask(im, q) for q in qs] for im, qs in cases]
    if [pipe.ask(im, qs) for im, qs in cases] != one_by_one:
        raise SystemExit("ask-many: the batched answers differ from the one-by-one answers")
    single = best_time(lambda: [[pipe.ask(im, q) for q in qs] for im, qs in cases], args.repeats)
    batched = best_time(lambda: [pipe.ask(im, qs) for im, qs in cases], args.repeats)
    n = len(cases) * args.questions
    return {"task": f"ask {args.questions} on 1", "model": "shapes-demo", "images": len(cases), "questions": n,
            "single_ms_per_image": 1000 * single / n, "batched_ms_per_image": 1000 * batched / n,
            "speedup": single / batched, "target": 3.0, "meets_target": single / batched >= 3.0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["caption", "detect"], choices=sorted(CALLS))
    p.add_argument("--n", type=int, default=64, help="images per measurement")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--tokenizers", default="tokenizers/shapes")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--questions", type=int, default=10, help="questions per image for the ask-many row (0: skip)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "pipeline_speed.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        export = init_export(args.preset, args.tokenizers, Path(tmp) / "model", quiet=True)
        pipe = unio.load(export, device=args.device)
    world = ShapesWorld(image_size=64, seed=1)
    images = [world[i]["image"] for i in range(args.n)]

    rows = []
    if args.questions:
        rows.append(ask_many(args))
    for task in args.tasks:
        call = CALLS[task]
        call(pipe, images[:2], 2)  # warm-up
        call(pipe, images[0], 1)
        single = best_time(lambda: [call(pipe, im, 1) for im in images], args.repeats)
        batched = best_time(lambda: call(pipe, images, args.n), args.repeats)
        rows.append({"task": task, "model": f"untrained {args.preset}", "images": args.n, "single_ms_per_image": 1000 * single / args.n,
                     "batched_ms_per_image": 1000 * batched / args.n, "speedup": single / batched,
                     "target": TARGET, "meets_target": single / batched >= TARGET})

    print(f"unio pipeline speed: {args.preset} untrained model, {args.n} images of 64 px, device {args.device}, "
          f"{args.threads} thread(s)")
    print(f"{'task':18s} {'model':16s} {'one by one ms':>14s} {'one call ms':>12s} {'speedup':>8s}  target")
    for r in rows:
        print(f"{r['task']:18s} {r['model']:16s} {r['single_ms_per_image']:14.1f} {r['batched_ms_per_image']:12.1f} "
              f"{r['speedup']:7.1f}x  >= {r['target']:g}x {'ok' if r['meets_target'] else 'MISSED'}")
    print("(ms per image; for ask-many, per question)")
    result = {"benchmark": "pipeline_speed", "command": "python benchmarks/pipeline_speed.py " + " ".join(argv or sys.argv[1:]),
              "preset": args.preset, "params_m": sum(q.numel() for q in pipe.model.parameters()) / 1e6,
              "device": args.device, "threads": args.threads, "repeats": args.repeats, "rows": rows,
              "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["meets_target"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
