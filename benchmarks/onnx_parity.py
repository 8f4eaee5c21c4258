"""The onnxruntime backend against the torch backend: identical outputs and time per image, task by task.

    python benchmarks/onnx_parity.py                               # shapes-demo, every task, 100 images each
    python benchmarks/onnx_parity.py --tasks caption detect --n 20 --out /tmp/onnx_parity.json

The model (default: the shipped ``shapes-demo``) is exported with ``unio export MODEL OUT --onnx``
(:func:`unio.backends.onnx_export.export_onnx`) into a scratch folder, then loaded twice in one process:
``unio.load(MODEL)`` (torch, CPU, float32) and ``unio.load(OUT, backend="onnxruntime")``, both on
--threads threads (onnxruntime takes torch's thread count when it loads). Each task runs on --n
held-out shapes-world images (``shapes:31``; seed 31 is used nowhere else), built and predicted
as ``unio eval`` does (:mod:`unio.evaluate`: the same seeded question / expression / box of each
image, ``Pipeline.run`` in batches of --batch-size), after one warm-up batch of each backend; the
backends take turns batch by batch, so that load from other processes hits both alike. Decoding is greedy; text-to-image samples codes with
its seeded sampler (guidance 2.5, temperature 0.6, the same seed in both backends) and draws one
candidate per text here (``candidates=1``: the export's default of 64, reranked by the model's own
captions, costs 64 times as much and runs through the same graphs).

"identical": the two results are equal (texts, labels, boxes, masks, depth maps, pictures), scores
(log-probabilities through different float32 kernels) within 1e-5. Prints a table and writes JSON
(default benchmarks/results/onnx_parity.json).
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

import numpy as np
import onnxruntime
import torch
from transformers.utils import logging as hf_logging

import unio
from unio.backends.onnx_export import export_onnx
from unio.data.specs import open_data
from unio.evaluate import _build, _predict, _Samples
from unio.tasks import get_task, task_names

hf_logging.set_verbosity_error()
SEED = 31
OPTIONS = {"generate_image": {"candidates": 1}}  # see the module's documentation


def same(a, b, tol: float = 1e-5) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b))
    if hasattr(a, "convert"):  # PIL
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, float):
        return abs(a - b) <= tol
    if hasattr(a, "to_dict"):
        da, db = a.to_dict(), b.to_dict()
        return da.keys() == db.keys() and all(same(da[k], db[k], tol) for k in da)
    if isinstance(a, str) and hasattr(a, "score"):
        return str(a) == str(b) and same(float(a.score), float(b.score), tol)
    return a == b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes-demo", help="export directory or shipped model name")
    p.add_argument("--tasks", nargs="+", default=None, help="default: every task the model has a prompt for")
    p.add_argument("--n", type=int, default=100, help="held-out images per task")
    p.add_argument("--seed", type=int, default=SEED, help="shapes world seed of the held-out images")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "onnx_parity.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = export_onnx(args.model, Path(tmp) / "onnx")
        export_s = time.perf_counter() - t0
        sizes = {f.name: f.stat().st_size for f in out.glob("*.onnx")}
        pipes = {"torch": unio.load(args.model, device="cpu", batch_size=args.batch_size),
                 "onnxruntime": unio.load(out, backend="onnxruntime", batch_size=args.batch_size)}
    ctx = pipes["torch"].ctx
    tasks = args.tasks or [t for t in task_names() if t in pipes["torch"].tasks]
    samples = _Samples(open_data(f"shapes:{args.seed}")[0])
    rows = []
    for name in tasks:
        task = get_task(name)
        examples, used, _, _ = _build(task, ctx, samples, args.n, args.seed)
        options = OPTIONS.get(name, {})
        results, seconds = {b: [] for b in pipes}, dict.fromkeys(pipes, 0.0)
        for pipe in pipes.values():
            _predict(pipe, task, examples[:2], used[:2], 2, args.seed, user_options=options)  # warm-up
        for c, start in enumerate(range(0, len(examples), args.batch_size)):  # the backends take turns
            chunk, chunk_used = examples[start:start + args.batch_size], used[start:start + args.batch_size]
            for backend, pipe in pipes.items():
                t0 = time.perf_counter()
                results[backend] += _predict(pipe, task, chunk, chunk_used, args.batch_size, args.seed * 1000 + c,
                                             user_options=options)
                seconds[backend] += time.perf_counter() - t0
        identical = sum(same(a, b) for a, b in zip(results["torch"], results["onnxruntime"]))
        n = len(examples)
        rows.append({"task": name, "n": n, "identical": identical, "identical_fraction": identical / n,
                     "torch_ms_per_image": 1000 * seconds["torch"] / n,
                     "onnxruntime_ms_per_image": 1000 * seconds["onnxruntime"] / n,
                     "speedup": seconds["torch"] / seconds["onnxruntime"]})
        r = rows[-1]
        print(f"  {name:16s} {identical}/{n} identical, torch {r['torch_ms_per_image']:.1f} ms, "
              f"onnxruntime {r['onnxruntime_ms_per_image']:.1f} ms per image", file=sys.stderr, flush=True)

    total = {k: sum(r[k] for r in rows) for k in ("n", "identical")}
    print(f"unio ONNX parity: {args.model}, {args.n} held-out shapes:{args.seed} images per task, CPU float32, "
          f"{args.threads} thread(s), batch {args.batch_size}; export {export_s:.1f} s")
    print(f"{'task':18s} {'identical':>12s} {'torch ms':>9s} {'ort ms':>8s} {'speedup':>8s}")
    for r in rows:
        print(f"{r['task']:18s} {r['identical']:>5d}/{r['n']:<4d} {100 * r['identical_fraction']:3.0f}% "
              f"{r['torch_ms_per_image']:8.1f} {r['onnxruntime_ms_per_image']:8.1f} {r['speedup']:7.2f}x")
    print(f"{'all':18s} {total['identical']:>5d}/{total['n']:<4d} {100 * total['identical'] / total['n']:3.0f}%")
    print("(ms per image, one pass after a warm-up batch; identical: equal results, scores within 1e-5)")
    result = {"benchmark": "onnx_parity", "command": "python benchmarks/onnx_parity.py " + " ".join(argv or sys.argv[1:]),
              "model": args.model, "data": f"shapes:{args.seed}", "n_per_task": args.n, "threads": args.threads,
              "batch_size": args.batch_size, "options": OPTIONS, "export_seconds": export_s, "graph_bytes": sizes,
              "rows": rows, "identical_fraction": total["identical"] / total["n"],
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
              "machine": platform.machine()}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
