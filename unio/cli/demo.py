"""``unio demo``: one model doing every task on shapes images it has never seen.

It loads the model shipped with unio (``unio.load("shapes-demo")``; nothing is trained or
downloaded) or, with ``--model DIR``, any export directory, then

- evaluates every task on fresh seeded shapes images (seed 1000 by default; training recipes use
  seed 0 and evaluation seed 1) through :func:`unio.evaluate.evaluate`;
- prints one table: for each task, the truth and the prediction on one example and the task's
  headline metric over ``n`` images;
- writes ``DIR/demo.png`` (one sheet: boxes, masks, colour-mapped depth, answers, generated and
  inpainted images) and ``DIR/metrics.json`` (every metric, as ``unio eval`` writes it).

Image-output tasks (segment, depth, generate_image, inpaint) decode a whole code grid per image,
so they get a fifth of ``n`` images.

``unio demo --web [--model M] [--host 127.0.0.1 --port 8000]`` instead serves the model with
``unio serve``'s server and prints the address of its page, where one uploads an image (or picks a
shapes-world sample), chooses a task and sees the answer drawn beside its JSON record.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import CheckpointError, InputError
from ..evaluate import evaluate, set_threads, write_json
from ..export import list_models
from ..images import load_image
from ..pipeline import Pipeline, load
from ..tasks import get_task
from ..tasks.base import short
from ..viz import image_grid
from .serve import run as run_server

__all__ = ["run_demo", "run_web", "main", "DEMO_MODEL"]

DEMO_MODEL = "shapes-demo"
CELL = 192          # side of one picture on the sheet (shapes images are 64 px: drawn 3x)


def _demo_model(model):
    if model is not None:
        return model
    if DEMO_MODEL not in list_models():
        raise CheckpointError(f"the {DEMO_MODEL} model is not installed in this unio package (shipped models: "
                              f"{', '.join(list_models()) or 'none'}); install a unio release that ships it, or "
                              "run the demo on your own export directory: unio demo --model DIR "
                              "(e.g. one written by `unio init` or `unio export`)")
    return DEMO_MODEL


def _fmt(v) -> str:
    return "n/a" if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def run_demo(model=None, out="unio-demo", n: int = 50, seed: int = 1000, device=None, batch_size: int = 32,
             progress: bool = True) -> dict:
    """Run the demo (see the module docstring) and return the metrics written to ``out/metrics.json``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"--n must be a positive number of images per task, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"--seed must be an integer >= 0, got {seed!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder; choose a folder for demo.png and metrics.json")
    name = _demo_model(model) if not isinstance(model, Pipeline) else model
    pipe = name if isinstance(name, Pipeline) else load(name, device=device, batch_size=batch_size)
    counts = {"default": n, **{t: max(1, n // 5) for t in pipe.tasks if get_task(t).writes_image}}
    results, details = evaluate(pipe, f"shapes:{seed}", n=counts, batch_size=batch_size, seed=seed,
                                progress=progress, return_details=True)
    # tasks of image pairs and clips: on the shapes world's pairs and clips of the same seed
    skipped = results["run"]["skipped_tasks"]
    elsewhere: dict[str, list[str]] = {}
    for t in list(skipped):
        task = get_task(t)
        if task.world != "shapes" and task.unavailable(pipe.model, pipe.ctx) is None:
            elsewhere.setdefault(task.world, []).append(t)
    for world, names in elsewhere.items():
        more, more_details = evaluate(pipe, f"{world}:{seed}", tasks=names, n=counts, batch_size=batch_size,
                                      seed=seed, progress=progress, return_details=True)
        for t in names:
            results[t], details[t] = more[t], more_details[t]
            skipped.pop(t, None)
        results["run"]["seconds"] += more["run"]["seconds"]
        results["run"].setdefault("data_by_task", {}).update({t: more["run"]["data"] for t in names})
    results["run"]["model"] = str(name) if not isinstance(name, Pipeline) else results["run"]["model"]
    cells, rows = [], [("task", "truth (one example)", "prediction", "metric on n images")]
    for task_name, (examples, samples, preds) in details.items():
        task, example, sample, figures = get_task(task_name), examples[0], samples[0], results[task_name]
        image = (sample.get("image") if task.num_images == 1 else sample.get("images")) if task.needs_image else None
        first = image[0] if isinstance(image, (list, tuple)) else image
        scale = CELL / max(load_image(first).size if first is not None else preds[0].size)
        cells += task.panels(image, preds[0], example, scale=scale, judge=pipe)
        truth, pred = task.summary(preds[0], example, judge=pipe)
        key = task.headline
        metric = f"{key} {_fmt(figures.get(key))} (n={figures['n']})" if key else f"n={figures['n']}"
        rows.append((task_name, short(truth), short(pred), metric))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print("\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows))
    for task, why in results["run"]["skipped_tasks"].items():
        print(f"(skipped {task}: {why})")
    out.mkdir(parents=True, exist_ok=True)
    if cells:
        image_grid([c[0] for c in cells], [c[1] for c in cells], cols=4).save(out / "demo.png")
    write_json(results, out / "metrics.json")
    print(f"wrote {out / 'demo.png'} and {out / 'metrics.json'} ({results['run']['seconds']:.0f} s of evaluation)")
    return results


def run_web(model=None, host: str = "127.0.0.1", port: int = 8000, *, token=None, device=None, threads=1) -> None:
    """Serve ``model`` (default: the shipped shapes-demo) with its page until interrupted."""
    def announce(url, pipe):
        print(f"unio demo: open {url} in a browser to try {name} on your own images or "
              "on shapes-world samples (Ctrl-C stops)", flush=True)

    name = _demo_model(model)
    run_server(name, host, port, token=token, device=device, threads=threads, log_level="warning", announce=announce)


def main(args) -> int:
    """``unio demo [--model DIR] [--out DIR] [--n N] [--seed S] [--device D] [--threads T]``, or
    ``unio demo --web [--model DIR] [--host H] [--port P] [--token T]``."""
    if getattr(args, "web", False):
        run_web(args.model, args.host, args.port, token=args.token, device=args.device, threads=args.threads)
        return 0
    set_threads(getattr(args, "threads", None))
    run_demo(getattr(args, "model", None), out=args.out, n=args.n, seed=args.seed, device=args.device)
    return 0
