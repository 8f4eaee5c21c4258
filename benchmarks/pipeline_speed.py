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

Mixed tasks (``pipe.run_many``, shapes-demo): the five tasks caption, vqa, detect, ground and depth
asked of one image, as one ``run_many`` against five ``pipe.run`` calls (for each of 8 images);
and --mixed requests spread over those tasks and as many images, as one ``run_many`` against one
batched ``pipe.run`` per task and against one call per request. Answers must be identical (depth
maps within 1e-4).
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


MIXED_TASKS = (("caption", {}), ("vqa", {"question": "how many circles are there?"}), ("detect", {}),
               ("ground", {"expression": "the red circle"}), ("depth", {}))


def _same(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "dtype") and hasattr(a, "shape"):
        return a.shape == b.shape and float(abs(a - b).max()) < 1e-4
    if hasattr(a, "to_dict"):  # boxes, detections: scores to float rounding, the rest exactly
        da, db = a.to_dict(), b.to_dict()
        return da.keys() == db.keys() and all(
            abs(da[k] - db[k]) < 1e-4 if k == "score" else da[k] == db[k] for k in da)
    if hasattr(a, "score") and isinstance(a, str):
        return str(a) == str(b) and abs(a.score - b.score) < 1e-4
    return a == b


def mixed(args) -> list[dict]:
    """Requests of five tasks: run_many against separate calls (and against per-task batches)."""
    pipe = unio.load("shapes-demo", device=args.device)
    world = ShapesWorld(image_size=64, seed=2)
    images = [world[i]["image"] for i in range(max(8, args.mixed))]

    def one(r):
        return pipe.run(r["task"], r["image"], **{k: v for k, v in r.items() if k not in ("task", "image")})

    def by_task(reqs):
        out = [None] * len(reqs)
        for task, kw in MIXED_TASKS:
            idx = [i for i, r in enumerate(reqs) if r["task"] == task]
            if idx:
                got = pipe.run(task, [reqs[i]["image"] for i in idx], batch_size=len(idx),
                               **{k: [v] * len(idx) for k, v in kw.items()})
                for i, g in zip(idx, got):
                    out[i] = g
        return out

    rows = []
    per_image = [[{"task": t, "image": im, **kw} for t, kw in MIXED_TASKS] for im in images[:8]]
    spread = [{"task": MIXED_TASKS[i % 5][0], "image": images[i], **MIXED_TASKS[i % 5][1]} for i in range(args.mixed)]
    for reqs_list, name in ((per_image, "5 tasks on 1"), ([spread], f"{args.mixed} mixed")):
        pipe.run_many(reqs_list[0])  # warm-up
        want = [[one(r) for r in reqs] for reqs in reqs_list]
        if not _same([pipe.run_many(reqs) for reqs in reqs_list], want):
            raise SystemExit(f"mixed tasks ({name}): run_many's answers differ from separate calls")
        single = best_time(lambda: [[one(r) for r in reqs] for reqs in reqs_list], args.repeats)
        batched = best_time(lambda: [pipe.run_many(reqs) for reqs in reqs_list], args.repeats)
        n = sum(len(reqs) for reqs in reqs_list)
        row = {"task": name, "model": "shapes-demo", "images": len({id(r["image"]) for rs in reqs_list for r in rs}),
               "requests": n, "single_ms_per_image": 1000 * single / n, "batched_ms_per_image": 1000 * batched / n,
               "speedup": single / batched, "target": 1.0, "meets_target": single / batched >= 1.0}
        if len(reqs_list) == 1:  # also one batch per task
            if not _same(by_task(spread), want[0]):
                raise SystemExit("mixed tasks: per-task batches' answers differ from separate calls")
            per_task = best_time(lambda: by_task(spread), args.repeats)
            row.update(per_task_ms_per_request=1000 * per_task / n, speedup_over_per_task=per_task / batched)
        rows.append(row)
    return rows


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
    p.add_argument("--mixed", type=int, default=16, help="requests over five tasks for the mixed-tasks rows (0: skip)")
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
    if args.mixed:
        rows += mixed(args)
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
    for r in rows:
        if "per_task_ms_per_request" in r:
            print(f"{r['task']}: one batched pipe.run per task {r['per_task_ms_per_request']:.1f} ms per request; "
                  f"run_many {r['speedup_over_per_task']:.2f}x faster than that")
    print("(ms per image; for ask-many, per question; for mixed tasks, per request; mixed rows have no issue "
          "target: 1x = not slower)")
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
