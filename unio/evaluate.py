"""Evaluation of one model on one dataset, task by task: ``unio eval`` and :func:`evaluate`.

    >>> from unio.evaluate import evaluate
    >>> results = evaluate("path/to/export", "shapes:1", tasks=["caption", "detect"], n=200)
    >>> results["detect"]["map50"], results["caption"]["exact_match"]

Each task runs the same path, whatever the task: held-out samples -> ``task.pick_item`` (one
seeded question / expression / object of the sample) -> ``task.build(sample, ctx, rng=None)``
(the canonical prompt and the ground truth in ``example.meta``) -> batched generation through
``Pipeline.run`` (the path users get; its inputs read from ``example.meta``) -> ``task.metric``,
which reports every figure of the task (each task's docstring says which). A task whose predictions
depend on the whole set (``task.predict_set``: retrieval ranks a gallery of the examples) predicts
them in one call instead of through ``Pipeline.run``. Judges: text-to-image
and inpainting are read by a non-learned judge of shapes-world pictures
(:mod:`unio.data.shapes_judge`), never by the model under test; ``task.metric`` also gets the
pipeline under test, and a figure it reads with it is named ``self_*``: a diagnostic of the
model reading its own output, not an independent measurement.

Every task entry also has ``n`` (examples scored) and ``seconds`` (building, generation and
scoring). Determinism: samples are chosen by index, items within a sample by a generator seeded
with (seed, sample index, task), image sampling by ``seed``; the same model, data spec, seed and
batch size give the same numbers.

``predictions=PATH`` (``unio eval --predictions PATH``) also writes one JSON line per scored
example, to see which examples a model gets wrong: ``task``, ``i`` (its place in the task's
examples), ``sample`` (the index of its sample in the data), ``prompt``, then the task's own
``example_record``: ``prediction`` (text; a label with its ``score``; detections; a box; a
segmentation mask as COCO RLE; ``null`` for depth maps and images), ``truth``, and the
example's own figure where the task has one (``exact_match``, ``accuracy``, ``correct``,
``iou``, ``absrel``, ``psnr``, ``judged_ok`` for images, with what the judge read).
"""
from __future__ import annotations

import json
import math
import platform
import time
import zlib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from tqdm.auto import tqdm

from . import __version__
from .data.specs import open_data, spec_text
from .errors import DataError, InputError, TaskError, UnioError
from .images import load_image
from .metrics import interval95, mean_interval95
from .pipeline import Pipeline, load, options_for
from .tasks import get_task, task_names
from .tasks.options import parse_options

__all__ = ["evaluate", "format_table", "write_json", "write_jsonl", "set_threads", "main", "DEFAULT_N"]

DEFAULT_N = 200


def _rng(seed: int, index: int, task: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), zlib.crc32(task.encode())])


class _Samples:
    """Samples of a source by index, read once and shared by every task."""

    def __init__(self, source):
        self.source, self.cache = source, {}
        self.endless = bool(getattr(source, "endless", False))
        # a source that skips bad records may find one only when reading it (an unreadable image or
        # shard member): that sample is unusable, as one with a bad annotation is
        self.skip_bad = getattr(getattr(source, "bad", None), "policy", None) == "skip"

    def scan_limit(self, n: int) -> int:
        return 20 * n + 100 if self.endless else len(self.source)

    def __getitem__(self, i: int) -> dict | None:
        """Sample ``i``; None for a bad record of a source that skips them."""
        if i not in self.cache:
            try:
                self.cache[i] = self.source[i]
            except DataError:
                if not self.skip_bad:
                    raise
                self.cache[i] = None
        return self.cache[i]


def _build(task, ctx, samples: _Samples, n: int, seed: int) -> tuple[list, list, list, int]:
    """Up to ``n`` (example, sample) pairs with ground truth, the samples' indices, and how many
    samples were unusable."""
    examples, used, indices, skipped = [], [], [], 0
    for i in range(samples.scan_limit(n)):
        if len(examples) >= n:
            break
        if samples[i] is None:  # a bad record (counted by its source)
            skipped += 1
            continue
        sample = task.pick_item(samples[i], _rng(seed, i, task.name))
        if not task.can_build(sample):
            continue
        try:
            ex = task.build(sample, ctx, None)
        except TaskError:  # the task cannot run at all: the caller decides
            raise
        except UnioError:  # one bad annotation (e.g. a degenerate box) must not stop the evaluation
            skipped += 1
            continue
        if not ex.labels:  # no ground truth for this task in the sample
            continue
        examples.append(ex)
        used.append(sample)
        indices.append(i)
    return examples, used, indices, skipped


# ---------------------------------------------------------------------- generation
def _check_option_scopes(options, named: list[str] | None) -> dict:
    """``evaluate``'s ``options`` as ``{task or None: {key: value}}``; a task named there must be
    among the ``named`` tasks (None: every task of the model)."""
    if not options:
        return {}
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise InputError("options must be {task or None: {option: value}}, e.g. {'generate_image': {'guidance': 3}}")
    for scope in options:
        if scope is None:
            continue
        get_task(scope)  # TaskError listing the known tasks
        if named is not None and scope not in named:
            raise InputError(f"an option is given for {scope}, which is not among the tasks evaluated "
                             f"({', '.join(sorted(named))}); add it to the tasks or drop the option")
    return {k: dict(v) for k, v in options.items()}


def _predict(pipe, task, examples, samples, batch_size: int, seed: int, bar=None, user_options=None) -> list:
    """Predictions for prepared examples through ``Pipeline.run`` (which builds, generates, parses)."""
    options: dict[str, Any] = task.eval_options(pipe.ctx, examples)
    if hasattr(task, "predict_set"):  # predictions that depend on the whole set (retrieval ranks a gallery of it)
        out = task.predict_set(pipe, examples, samples, batch_size=batch_size, **{**options, **(user_options or {})})
        if bar is not None:
            bar.update(len(examples))
        return out
    out = []
    for c, start in enumerate(range(0, len(examples), batch_size)):
        chunk = examples[start:start + batch_size]
        inputs = {k: [e.meta[k] for e in chunk] for k in task.inputs}
        run_options = dict(options)
        if "seed" in task.options:
            run_options["seed"] = int(seed) * 100003 + c  # a fixed generator per batch: reproducible sampling
        run_options.update(user_options or {})
        images = None if not task.needs_image else [
            load_image(s["image"]) if task.num_images == 1 else [load_image(x) for x in s["images"]]
            for s in samples[start:start + len(chunk)]]
        result = pipe.run(task.name, images, batch_size=len(chunk), **inputs, **run_options)
        out.extend(result if isinstance(result, list) else [result])
        if bar is not None:
            bar.update(len(chunk))
    return out


def _score(pipe, task, predictions, examples, samples) -> tuple[dict, list[dict]]:
    """The task's metrics (floats where numbers) and its per-example figures, if it gives any."""
    metrics = dict(task.metric(predictions, examples, samples, judge=pipe))
    per_example = metrics.pop("per_example", None) or [{} for _ in examples]
    return {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in metrics.items()}, per_example


def _records(task, examples, samples, indices, predictions, per_example) -> list[dict]:
    """One JSON-ready record per example: what was asked, answered and expected, and its figure."""
    return [{"task": task.name, "i": i, "sample": int(index), "prompt": e.prompt,
             **task.example_record(p, e, s), **extra}
            for i, (e, s, index, p, extra) in enumerate(zip(examples, samples, indices, predictions, per_example))]


def write_jsonl(records: list[dict], path) -> Path:
    """Write records as strict JSON lines (NaN and infinity become null)."""
    path = _new_file(path)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(_jsonable(r)) + "\n")
    return path


# ---------------------------------------------------------------------- the whole evaluation
def _versions() -> dict:
    try:
        coco = version("pycocotools")
    except Exception:
        coco = None
    return {"unio": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "pycocotools": coco, "python": platform.python_version()}


def _task_list(pipe, tasks) -> tuple[list, bool, dict]:
    """(tasks to run, whether they were named, {task left out: why})."""
    explicit = tasks is not None
    if isinstance(tasks, str):
        tasks = [t for t in tasks.replace(",", " ").split() if t]
    names = list(tasks) if explicit else [t for t in task_names() if t in pipe.tasks]
    if explicit and not names:
        raise TaskError(f"no task given; choose among {', '.join(task_names())}")
    out, skipped = [], {}
    for name in dict.fromkeys(names):
        task = get_task(name)  # TaskError listing the known tasks
        problem = None
        if name not in pipe.tasks and not task.prompts:
            problem = (f"the model has no prompt for task {name!r} (its tasks: {', '.join(pipe.tasks)}); "
                       "evaluate one of those")
        elif task.writes_image and pipe.ctx.image_tokenizer is None:
            problem = (f"task {name!r} writes image codes but the model has no image tokenizer; evaluate it on a "
                       "model exported with one (image/ in the export directory)")
        else:
            problem = task.unavailable(pipe.model, pipe.ctx)
        if problem and explicit:
            raise TaskError(problem)
        if problem:
            skipped[name] = problem
        else:
            out.append(task)
    return out, explicit, skipped


def _n_for(n, name: str) -> int:
    value = n.get(name, n.get("default", DEFAULT_N)) if isinstance(n, dict) else n
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"n (examples per task) must be a positive integer, got {value!r} for {name}")
    return int(value)


def evaluate(model, data="shapes:1", tasks=None, n=DEFAULT_N, batch_size: int = 32, *, device=None, seed: int = 0,
             options: dict | None = None, progress: bool = True, return_details: bool = False,
             predictions=None, bootstrap: int = 0, backend: str = "torch"):
    """Evaluate ``model`` (an export directory, a shipped model name or a :class:`~unio.Pipeline`)
    on ``data`` (see :func:`parse_data_spec`), task by task.

    ``tasks``: names (default: every task the model has a prompt for; tasks the data or model
    cannot serve, e.g. depth on a caption dataset, are then left out and listed under
    ``run.skipped_tasks``; named explicitly they raise). ``n``: examples per task, an int or a
    dict ``{task: n, "default": n}``. ``options``: decoding options as ``Pipeline.run`` takes them,
    ``{task: {key: value}}`` with ``None`` for every task (``{None: {"num_beams": 3},
    "generate_image": {"guidance": 3.0}}``); they are recorded under ``run.options``. Returns
    ``{task: {metric: value, "n", "seconds"}, "run": {...}}`` (NaN where a metric is undefined,
    e.g. mAP without ground-truth boxes); with ``return_details`` also ``{task: (examples,
    samples, predictions)}``. ``predictions``: a path for the per-example JSON lines (see the
    module's documentation), recorded under ``run.predictions``.

    95% confidence intervals: every metric that is a mean over examples (``task.means``) gets
    ``METRIC_ci95`` = [low, high], the 2.5th and 97.5th percentiles of the metric over 2,000
    resamples of the examples with replacement (percentile bootstrap, Efron & Tibshirani 1993);
    ``bootstrap=B`` (``--bootstrap B``) also resamples the examples B times for the task's
    headline where it is not such a mean (mAP, CIDEr), scoring each resample again without the
    model (slower: B scorings).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    for value in (n.values() if isinstance(n, dict) else [n]):
        _n_for(value, "every task")
    named = None
    if tasks is not None:  # unknown names fail before the (slower) model load
        named = tasks.replace(",", " ").split() if isinstance(tasks, str) else list(tasks)
        for name in named:
            get_task(name)
    options = _check_option_scopes(options, named)
    source, entry = open_data(data)  # input errors before the (slower) model load
    pipe = model if isinstance(model, Pipeline) else load(model, device=device, batch_size=batch_size,
                                                          backend=backend)
    task_objs, explicit, skipped_tasks = _task_list(pipe, tasks)
    task_options = {t.name: options_for(t.name, options) for t in task_objs}
    samples = _Samples(source)
    results: dict[str, Any] = {}
    details: dict[str, tuple] = {}
    predictions_path = None if predictions is None else Path(predictions)
    if predictions_path is not None and predictions_path.is_dir():
        raise InputError(f"--predictions {predictions_path} is a directory; give a file name such as "
                         f"{predictions_path / 'predictions.jsonl'}")
    records: list[dict] = []
    start_all = time.perf_counter()
    for task in task_objs:
        count = _n_for(n, task.name)
        start = time.perf_counter()
        torch.manual_seed(seed)
        try:
            examples, used, indices, bad = _build(task, pipe.ctx, samples, count, seed)
        except TaskError as exc:  # e.g. an image task without an image tokenizer in the model
            if explicit:
                raise TaskError(f"cannot evaluate {task.name}: {exc}") from None
            skipped_tasks[task.name] = str(exc)
            continue
        if not examples:
            reason = f"the data has no sample with what {task.name} needs (its ground truth)"
            if explicit:
                raise DataError(f"{reason}; choose other tasks or another dataset")
            skipped_tasks[task.name] = reason
            continue
        with tqdm(total=len(examples), desc=f"{task.name:<16}", disable=not progress, leave=False) as bar:
            predictions = _predict(pipe, task, examples, used, batch_size, seed, bar, task_options[task.name])
        metrics, per_example = _score(pipe, task, predictions, examples, used)
        rows = _records(task, examples, used, indices, predictions, per_example)
        metrics.update(intervals(task, rows, predictions, examples, used, bootstrap, seed))
        metrics.update(n=len(examples), seconds=round(time.perf_counter() - start, 3))
        if bad:
            metrics["bad_samples"] = bad
        results[task.name] = metrics
        details[task.name] = (examples, used, predictions)
        if predictions_path is not None:
            records.extend(rows)
    results["run"] = {
        "model": str(model) if not isinstance(model, Pipeline) else str(pipe.meta.get("path", "<Pipeline>")),
        "data": spec_text(data, entry), "data_entry": entry, "tasks": list(results), "seed": int(seed),
        "batch_size": int(batch_size), "n": n if isinstance(n, int) else dict(n), "device": str(pipe.device),
        "model_info": {k: pipe.meta[k] for k in ("preset", "trained", "step", "vocab_fingerprint") if k in pipe.meta},
        "versions": _versions(), "seconds": round(time.perf_counter() - start_all, 3),
        "skipped_tasks": skipped_tasks,
        "options": {("*" if k is None else k): dict(v) for k, v in options.items()},
        "bootstrap": int(bootstrap), "backend": "torch" if isinstance(model, Pipeline) else backend,
        "task_defaults": getattr(pipe, "task_defaults", {}),
    }
    if predictions_path is not None:
        results["run"]["predictions"] = str(write_jsonl(records, predictions_path))
    return (results, details) if return_details else results


MEAN_RESAMPLES = 2000


def intervals(task, rows: list[dict], predictions, examples, samples, bootstrap: int = 0, seed: int = 0) -> dict:
    """``{METRIC_ci95: [low, high]}``: percentile-bootstrap 95% intervals of the task's mean metrics
    (from the per-example ``rows``) and, with ``bootstrap`` > 0, of its headline by scoring
    ``bootstrap`` resamples again (``task.metric`` without a judge)."""
    rng = np.random.default_rng([int(seed), zlib.crc32(task.name.encode()), 95])
    out: dict[str, list[float]] = {}
    for metric, key in task.means.items():
        values = np.array([float(r[key]) for r in rows if isinstance(r.get(key), (bool, int, float, np.floating))
                           and r.get(key) is not None], dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values) >= 2:
            out[f"{metric}_ci95"] = mean_interval95(values, rng, MEAN_RESAMPLES)
    headline = task.headline
    if bootstrap and hasattr(task, "metric_intervals") and len(examples) >= 2:  # the task's own, faster way
        out.update(task.metric_intervals(predictions, examples, samples, int(bootstrap), int(seed)))
    elif bootstrap and headline and headline not in task.means and len(examples) >= 2:
        figures = []
        for _ in range(int(bootstrap)):
            idx = rng.integers(0, len(examples), len(examples))
            got = task.metric([predictions[i] for i in idx], [examples[i] for i in idx],
                              [samples[i] for i in idx], judge=None).get(headline)
            if isinstance(got, (int, float)) and math.isfinite(got):
                figures.append(float(got))
        if figures:
            out[f"{headline}_ci95"] = interval95(figures)
    return out


# ---------------------------------------------------------------------- output
def _fmt(v) -> str:
    if isinstance(v, dict):  # e.g. generate_image.by_objects: 1:0.9000,2:0.5000
        return ",".join(f"{k}:{_fmt(x)}" for k, x in v.items()) or "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}" if abs(v) < 1000 else f"{v:.4g}"
    return str(v)


def format_table(results: dict) -> str:
    """The metrics as a plain-text table, one row per task."""
    rows = [("task", "n", "seconds", "metrics")]
    for name, m in results.items():
        if name == "run" or not isinstance(m, dict):
            continue
        shown = "  ".join(f"{k} {_fmt(v)}" + (f" [{_fmt(m[k + '_ci95'][0])}, {_fmt(m[k + '_ci95'][1])}]"
                                                 if isinstance(m.get(k + "_ci95"), list) else "")
                          for k, v in m.items() if k not in ("n", "seconds") and not k.endswith("_ci95"))
        rows.append((name, str(m.get("n", "")), f"{float(m.get('seconds', float('nan'))):.1f}", shown))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
    skipped = (results.get("run") or {}).get("skipped_tasks") or {}
    lines += [f"(skipped {k}: {v})" for k, v in skipped.items()]
    return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None  # strict JSON has no NaN: null = undefined
    if isinstance(x, np.integer):
        return int(x)
    return x


def _new_file(path) -> Path:
    """``path`` as a Path, its folder created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_json(results: dict, path) -> Path:
    """Write ``results`` as strict JSON (NaN and infinity become null)."""
    path = _new_file(path)
    path.write_text(json.dumps(_jsonable(results), indent=2) + "\n", encoding="utf-8")
    return path


def set_threads(threads) -> None:
    """Set torch's CPU threads from a command-line value (None: leave torch's choice)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"--threads must be a positive integer, got {threads!r}")
    torch.set_num_threads(threads)


def main(args) -> int:
    """``unio eval --model DIR --data SPEC [--tasks ...] [--n N] [--out metrics.json]``."""
    set_threads(getattr(args, "threads", None))
    tasks = None
    if args.tasks:
        tasks = [t for item in args.tasks for t in item.replace(",", " ").split()]
    options = parse_options(getattr(args, "options", None))
    results = evaluate(args.model, args.data, tasks=tasks, n=args.n, batch_size=args.batch_size,
                       device=args.device, seed=getattr(args, "seed", 0), options=options,
                       predictions=getattr(args, "predictions", None), bootstrap=getattr(args, "bootstrap", 0) or 0,
                       backend=getattr(args, "backend", "torch"))
    print(format_table(results))
    if results["run"].get("predictions"):
        print(f"wrote {results['run']['predictions']}")
    if args.out:
        print(f"wrote {write_json(results, args.out)}")
    return 0
