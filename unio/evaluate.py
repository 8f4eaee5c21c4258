"""Evaluation of one model on one dataset, task by task: ``unio eval`` and :func:`evaluate`.

    >>> from unio.evaluate import evaluate
    >>> results = evaluate("path/to/export", "shapes:1", tasks=["caption", "detect"], n=200)
    >>> results["detect"]["map50"], results["caption"]["exact_match"]

Each task runs the same path: held-out samples -> ``task.build(sample, ctx, rng=None)`` (the
canonical prompt and the ground truth in ``example.meta``) -> batched generation through the
pipeline (``Pipeline.run``, the path users get) -> ``task.parse`` (inside the pipeline) ->
``task.metric`` plus what the task metric leaves out:

============== ==========================================================================
caption        ``bleu4``, ``cider`` (CIDEr-D), ``exact_match`` (any reference)
vqa            ``accuracy``: the VQAv2 rule where a question has 10 human answers, exact match
               (after VQA answer normalisation) where it has fewer (shapes, GQA-style data:
               the VQAv2 rule cannot reach 1 with fewer than 4 answers); ``exact_match``;
               and VQAv2's split by the type of the most common reference answer:
               ``accuracy_yes_no``, ``accuracy_number``, ``accuracy_other`` (types present only)
classify       ``accuracy`` (constrained to the model's class list)
detect         ``map`` (COCO mAP@[.5:.95]), ``map50``, ``map75`` through pycocotools, with the
               model's own scores (the probability of each box's label)
ground         ``acc50`` (IoU >= 0.5), ``mean_iou``
describe_region ``cider``, ``bleu4``, ``exact_match`` (references: the object's referring
               expressions and its label)
classify_region ``accuracy``
segment        ``miou`` (mean over expressions of the mask IoU)
depth          ``absrel``, ``rmse``, ``delta1`` over the pixels named by ``pixels``: ``"objects"``
               (the union of the object masks) where the sample has masks, since the background
               would dominate an all-pixel mean; ``absrel_all`` over every valid pixel
inpaint        ``psnr`` inside the box against the original image
generate_image ``consistency`` and ``object_recall`` (see :func:`consistency`); and the same two
               on the image tokenizer's reconstruction of each real image
               (``reference_consistency``, ``reference_object_recall``): what a generator that
               wrote exactly the real image's codes would score, the ceiling that the detector
               and the image tokenizer leave the metric
============== ==========================================================================

Every task entry also has ``n`` (examples scored) and ``seconds`` (building, generation and
scoring; for generate_image also the detector runs). Determinism: samples are
chosen by index, items within a sample (which question, which expression, which object) by a
generator seeded with (seed, sample index, task), image sampling by ``seed``; the same model,
data spec, seed and batch size give the same numbers.

``predictions=PATH`` (``unio eval --predictions PATH``) also writes one JSON line per scored
example, to see which examples a model gets wrong: ``task``, ``i`` (its place in the task's
examples), ``sample`` (the index of its sample in the data), ``prompt``, ``prediction`` (text;
a label with its ``score``; detections; a box; a segmentation mask as COCO RLE; ``null`` for
depth maps and images), ``truth``, and the example's own figure where the task has one
(``exact_match``, ``accuracy``, ``correct``, ``iou``, ``absrel``, ``psnr``, or ``found`` of
``requested`` for text-to-image).
"""
from __future__ import annotations

import json
import math
import platform
import re
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .data.specs import open_data, spec_text
from .errors import DataError, InputError, TaskError, UnioError

__all__ = ["evaluate", "consistency", "format_table", "write_json", "write_jsonl",
           "set_threads", "main", "DEFAULT_N", "CONSISTENCY_THRESHOLD"]

DEFAULT_N = 200
CONSISTENCY_THRESHOLD = 0.5   # a generated object counts as found when its detection scores at least this
_INPUT_KEYS = {"region": "box"}  # prompt placeholder -> the Pipeline.run input (and example.meta key) it comes from
_VQA_HUMANS = 10              # the VQAv2 rule needs the 10 human answers of VQAv2


# ---------------------------------------------------------------------- examples
def _rng(seed: int, index: int, task: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), zlib.crc32(task.encode())])


def _one_item(task: str, sample: dict, index: int, seed: int) -> dict:
    """The sample narrowed to one question / expression / object, chosen by a seeded generator.

    Building with ``rng=None`` takes the first item of each list; without this, every VQA example
    would be the sample's first question (in the shapes world always "how many objects").
    """
    rng = _rng(seed, index, task)
    if task == "vqa" and sample.get("qa"):
        return {**sample, "qa": [sample["qa"][int(rng.integers(len(sample["qa"])))]]}
    if task in ("ground", "segment") and sample.get("refexps"):
        refs = sample["refexps"]
        if task == "segment":
            objects = sample.get("objects") or []
            refs = [r for r in refs if 0 <= int(r[1]) < len(objects) and objects[int(r[1])].get("mask") is not None]
            if not refs:
                return {**sample, "refexps": []}
        return {**sample, "refexps": [refs[int(rng.integers(len(refs)))]]}
    if task in ("describe_region", "classify_region", "inpaint") and sample.get("objects"):
        k = int(rng.integers(len(sample["objects"])))
        refexps = [(e, 0) for e, i in sample.get("refexps") or [] if int(i) == k]
        return {**sample, "objects": [sample["objects"][k]], "refexps": refexps}
    return sample


class _Samples:
    """Samples of a source by index, read once and shared by every task."""

    def __init__(self, source):
        self.source, self.cache = source, {}
        self.endless = bool(getattr(source, "endless", False))

    def scan_limit(self, n: int) -> int:
        return 20 * n + 100 if self.endless else len(self.source)

    def __getitem__(self, i: int) -> dict:
        if i not in self.cache:
            self.cache[i] = self.source[i]
        return self.cache[i]


def _build(task, ctx, samples: _Samples, n: int, seed: int) -> tuple[list, list, list, int]:
    """Up to ``n`` (example, sample) pairs with ground truth, the samples' indices, and how many
    samples were unusable."""
    examples, used, indices, skipped = [], [], [], 0
    for i in range(samples.scan_limit(n)):
        if len(examples) >= n:
            break
        sample = _one_item(task.name, samples[i], i, seed)
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
    from .tasks import get_task
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
    from .images import load_image
    from .tasks.classify import Classify
    from .tasks.image_gen import ImageTask
    keys = sorted(_INPUT_KEYS.get(p, p) for p in task.placeholders)
    options: dict[str, Any] = {}
    if isinstance(task, Classify) and not pipe.ctx.class_list(task.kind):
        truth = sorted({e.meta["label"] for e in examples if e.meta.get("label")})
        options["labels"] = truth  # no class list in the model: choose among the labels of the data
    out = []
    for c, start in enumerate(range(0, len(examples), batch_size)):
        chunk = examples[start:start + batch_size]
        inputs = {k: [e.meta[k] for e in chunk] for k in keys}
        run_options = dict(options)
        if isinstance(task, ImageTask):
            run_options["seed"] = int(seed) * 100003 + c  # a fixed generator per batch: reproducible sampling
        run_options.update(user_options or {})
        images = None if not task.needs_image else [load_image(s["image"]) for s in samples[start:start + len(chunk)]]
        result = pipe.run(task.name, images, batch_size=len(chunk), **inputs, **run_options)
        out.extend(result if isinstance(result, list) else [result])
        if bar is not None:
            bar.update(len(chunk))
    return out


# ---------------------------------------------------------------------- metrics
def consistency(pipe, images, requested: list[list[str]], batch_size: int = 32,
                threshold: float = CONSISTENCY_THRESHOLD, found_out: list | None = None) -> dict[str, float]:
    """Text-to-image consistency: the model's own detector run on the images it generated.

    ``requested[i]`` are the object labels the text of image ``i`` asked for (with repeats). A
    requested object is *found* when a detection with that label and score >= ``threshold`` is
    left to match it (each detection matches one object). Returns

    - ``consistency``: the fraction of images in which every requested object is found (the
      all-or-nothing rule of object-focused benchmarks such as GenEval, Ghosh et al., 2023);
    - ``object_recall``: the mean over images of the fraction of requested objects found;
    - ``by_objects``: ``consistency`` over the images that request 1, 2, ... objects
      (``{"1": ..., "2": ...}``), which tells a generator that draws one object well from one
      that composes scenes.

    Images that request nothing are left out; both are NaN when none is left. ``found_out``, a
    list, receives per image the number of requested objects found (None where nothing was
    requested).
    """
    keep = [k for k, r in enumerate(requested) if r]
    if not keep:
        if found_out is not None:
            found_out.extend([None] * len(requested))
        return {"consistency": float("nan"), "object_recall": float("nan"), "threshold": float(threshold),
                "by_objects": {}}
    detections = []
    for start in range(0, len(keep), batch_size):
        chunk = [images[k] for k in keep[start:start + batch_size]]
        detections.extend(pipe.run("detect", chunk, batch_size=len(chunk)))
    complete, recall = [], []
    found_per_image: list = [None] * len(requested)
    for k, dets in zip(keep, detections):
        want = Counter(requested[k])
        have = Counter(d.label for d in dets if d.score >= threshold)
        found = sum(min(c, have[label]) for label, c in want.items())
        found_per_image[k] = found
        complete.append(found == sum(want.values()))
        recall.append(found / sum(want.values()))
    if found_out is not None:
        found_out.extend(found_per_image)
    by_count: dict[int, list[bool]] = {}
    for k, ok in zip(keep, complete):
        by_count.setdefault(len(requested[k]), []).append(ok)
    return {"consistency": float(np.mean(complete)), "object_recall": float(np.mean(recall)),
            "threshold": float(threshold),
            "by_objects": {str(c): float(np.mean(v)) for c, v in sorted(by_count.items())}}


def _requested(example, sample) -> list[str]:
    """Labels of the sample's objects that the generation text names as whole words (shapes
    captions name every object by its label)."""
    text = str(example.meta.get("text", "")).lower()
    named = lambda label: re.search(rf"\b{re.escape(label.lower())}\b", text) is not None  # noqa: E731
    return [str(o["label"]) for o in sample.get("objects") or [] if o.get("label") and named(str(o["label"]))]


def _answer_type(normalized: list[str]) -> str:
    """VQAv2's answer types: "yes/no", "number" or "other", of the most common reference answer."""
    top = Counter(normalized).most_common(1)[0][0] if normalized else ""
    if top in ("yes", "no"):
        return "yes/no"
    return "number" if top.replace(".", "", 1).isdigit() else "other"


def _vqa_item(pred, answers: list) -> tuple[float, bool, str]:
    """One answer's accuracy (see the module's table), exact match and VQAv2 answer type."""
    from .metrics import normalize_answer, vqa_accuracy
    normalized = [normalize_answer(a) for a in answers]
    match = normalize_answer(pred) in set(normalized)
    acc = vqa_accuracy(pred, answers) if len(answers) >= _VQA_HUMANS else float(match)
    return acc, match, _answer_type(normalized)


def _vqa_scores(predictions, examples) -> dict[str, float]:
    acc, em, by_type = [], [], {}
    for p, e in zip(predictions, examples):
        a, match, kind = _vqa_item(p, list(e.meta.get("answers") or []))
        acc.append(a)
        em.append(match)
        by_type.setdefault(kind, []).append(a)
    out = {"accuracy": float(np.mean(acc)), "exact_match": float(np.mean(em))}
    for kind in ("yes/no", "number", "other"):
        if kind in by_type:
            out[f"accuracy_{kind.replace('/', '_')}"] = float(np.mean(by_type[kind]))
    return out


def _object_pixels(sample) -> np.ndarray | None:
    """The union of the sample's object masks; None without masks or when it is empty."""
    masks = [np.asarray(o["mask"], dtype=bool) for o in sample.get("objects") or [] if o.get("mask") is not None]
    union = np.logical_or.reduce(masks) if masks else None
    return union if union is not None and union.any() else None


def _ground_iou(pred, box) -> float:
    from .metrics import box_iou
    return box_iou(np.ravel(tuple(pred)), np.ravel(box)) if pred is not None else 0.0


def _depth_scores(predictions, examples, samples) -> dict:
    from .metrics import depth_metrics
    masks = [_object_pixels(s) for s in samples]
    n_objects = sum(m is not None for m in masks)
    truth = [e.meta["depth"] for e in examples]
    out: dict[str, Any] = depth_metrics(predictions, truth, masks)
    out["pixels"] = ("objects" if n_objects == len(samples) else "all" if n_objects == 0
                     else "objects where masked, else all")
    out["absrel_all"] = depth_metrics(predictions, truth)["absrel"]
    return out


def _score(pipe, task, predictions, examples, samples, batch_size: int, found: list | None = None) -> dict:
    """The task's metrics; for generate_image, ``found`` receives the objects found per image."""
    from .metrics import exact_match
    name = task.name
    if name == "vqa":
        return _vqa_scores(predictions, examples)
    if name == "depth":
        return _depth_scores(predictions, examples, samples)
    if name == "generate_image":
        requested = [_requested(e, s) for e, s in zip(examples, samples)]
        metrics = consistency(pipe, predictions, requested, batch_size, found_out=found)
        reference = consistency(pipe, [task.parse(e.labels, pipe.ctx) for e in examples], requested, batch_size)
        metrics["reference_consistency"] = reference["consistency"]
        metrics["reference_object_recall"] = reference["object_recall"]
        metrics["reference_by_objects"] = reference["by_objects"]
        return metrics
    metrics = dict(task.metric(predictions, examples))
    if name in ("caption", "describe_region"):
        metrics["exact_match"] = exact_match(predictions, [e.meta["references"] for e in examples])
    if name == "ground":
        metrics = {"acc50": metrics.pop("grounding_acc"), **metrics}
        ious = [_ground_iou(p, e.meta["box"]) for p, e in zip(predictions, examples)]
        metrics["mean_iou"] = float(np.mean(ious))
    return {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in metrics.items()}


# ---------------------------------------------------------------------- per-example records
def _box(b) -> list[float] | None:
    return None if b is None else [round(float(v), 2) for v in np.ravel(tuple(b))]


def _records(pipe, task, examples, samples, indices, predictions, found) -> list[dict]:
    """One JSON-ready record per example: what was asked, answered and expected, and its figure."""
    from .data.coco import encode_mask
    from .metrics import depth_metrics, exact_match, mask_iou
    name, out = task.name, []
    for i, (e, s, index, p) in enumerate(zip(examples, samples, indices, predictions)):
        m = e.meta
        rec: dict[str, Any] = {"task": name, "i": i, "sample": int(index), "prompt": getattr(e, "prompt", None)}
        if name in ("caption", "describe_region"):
            refs = list(m["references"])
            rec.update(prediction=p, truth=refs, exact_match=exact_match([p], [refs]) == 1.0)
            if name == "describe_region":
                rec["box"] = _box(m["box"])
        elif name == "vqa":
            answers = list(m.get("answers") or [])
            acc, _, kind = _vqa_item(p, answers)
            rec.update(prediction=p, truth=answers, accuracy=acc, answer_type=kind)
        elif name in ("classify", "classify_region"):
            rec.update(prediction=str(p), score=float(getattr(p, "score", float("nan"))), truth=m["label"],
                       correct=str(p) == m["label"])
            if name == "classify_region":
                rec["box"] = _box(m["box"])
        elif name == "detect":
            rec.update(prediction=[d.to_dict() for d in p],
                       truth=[{"box": _box(b), "label": lb} for b, lb in zip(m["boxes"], m["labels"])])
        elif name == "ground":
            rec.update(prediction=_box(p), truth=_box(m["box"]), expression=m.get("expression"),
                       iou=_ground_iou(p, m["box"]))
        elif name == "segment":
            rec.update(prediction=encode_mask(p), truth=encode_mask(m["mask"]), expression=m.get("expression"),
                       iou=mask_iou(p, m["mask"]))
        elif name == "depth":
            union = _object_pixels(s)
            rec.update(prediction=None, truth=None, absrel=depth_metrics(p, m["depth"], union)["absrel"],
                       pixels="objects" if union is not None else "all")
        elif name == "inpaint":
            rec.update(prediction=None, truth=None, text=m.get("text"), box=_box(m.get("box")),
                       psnr=task.metric([p], [e])["psnr"])
        elif name == "generate_image":
            requested = _requested(e, s)
            rec.update(prediction=None, truth=None, text=m.get("text"), requested=requested,
                       found=found[i] if found else None)
        else:  # a task added later: its prediction as far as it is JSON
            rec.update(prediction=getattr(p, "to_dict", lambda: p)())
        out.append(rec)
    return out


def write_jsonl(records: list[dict], path) -> Path:
    """Write records as strict JSON lines (NaN and infinity become null)."""
    path = _new_file(path)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(_jsonable(r)) + "\n")
    return path


# ---------------------------------------------------------------------- the whole evaluation
def _versions() -> dict:
    import torch
    import transformers

    from . import __version__
    try:
        from importlib.metadata import version
        coco = version("pycocotools")
    except Exception:
        coco = None
    return {"unio": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "pycocotools": coco, "python": platform.python_version()}


def _task_list(pipe, tasks) -> tuple[list, bool, dict]:
    """(tasks to run, whether they were named, {task left out: why})."""
    from .tasks import TASKS, get_task
    from .tasks.dense import DenseTask
    from .tasks.image_gen import ImageTask
    explicit = tasks is not None
    if isinstance(tasks, str):
        tasks = [t for t in tasks.replace(",", " ").split() if t]
    names = list(tasks) if explicit else [t for t in TASKS if t in pipe.tasks]
    if explicit and not names:
        raise TaskError(f"no task given; choose among {', '.join(TASKS)}")
    out, skipped = [], {}
    for name in dict.fromkeys(names):
        task = get_task(name)  # TaskError listing the known tasks
        problem = None
        if name not in pipe.tasks:
            problem = (f"the model has no prompt for task {name!r} (its tasks: {', '.join(pipe.tasks)}); "
                       "evaluate one of those")
        elif isinstance(task, (DenseTask, ImageTask)) and pipe.ctx.image_tokenizer is None:
            problem = (f"task {name!r} writes image codes but the model has no image tokenizer; evaluate it on a "
                       "model exported with one (image/ in the export directory)")
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
             predictions=None):
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
    """
    import torch
    from tqdm.auto import tqdm

    from .pipeline import Pipeline, load
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    for value in (n.values() if isinstance(n, dict) else [n]):
        _n_for(value, "every task")
    named = None
    if tasks is not None:  # unknown names fail before the (slower) model load
        from .tasks import get_task
        named = tasks.replace(",", " ").split() if isinstance(tasks, str) else list(tasks)
        for name in named:
            get_task(name)
    options = _check_option_scopes(options, named)
    source, entry = open_data(data)  # input errors before the (slower) model load
    pipe = model if isinstance(model, Pipeline) else load(model, device=device, batch_size=batch_size)
    task_objs, explicit, skipped_tasks = _task_list(pipe, tasks)
    from .pipeline import options_for
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
        found: list = []
        metrics = _score(pipe, task, predictions, examples, used, batch_size, found)
        metrics.update(n=len(examples), seconds=round(time.perf_counter() - start, 3))
        if bad:
            metrics["bad_samples"] = bad
        results[task.name] = metrics
        details[task.name] = (examples, used, predictions)
        if predictions_path is not None:
            records.extend(_records(pipe, task, examples, used, indices, predictions, found))
    results["run"] = {
        "model": str(model) if not isinstance(model, Pipeline) else str(pipe.meta.get("path", "<Pipeline>")),
        "data": spec_text(data, entry), "data_entry": entry, "tasks": list(results), "seed": int(seed),
        "batch_size": int(batch_size), "n": n if isinstance(n, int) else dict(n), "device": str(pipe.device),
        "model_info": {k: pipe.meta[k] for k in ("preset", "trained", "step", "vocab_fingerprint") if k in pipe.meta},
        "versions": _versions(), "seconds": round(time.perf_counter() - start_all, 3),
        "skipped_tasks": skipped_tasks,
        "options": {("*" if k is None else k): dict(v) for k, v in options.items()},
        "task_defaults": getattr(pipe, "task_defaults", {}),
    }
    if predictions_path is not None:
        results["run"]["predictions"] = str(write_jsonl(records, predictions_path))
    return (results, details) if return_details else results


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
        shown = "  ".join(f"{k} {_fmt(v)}" for k, v in m.items() if k not in ("n", "seconds"))
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
    import torch
    torch.set_num_threads(threads)


def main(args) -> int:
    """``unio eval --model DIR --data SPEC [--tasks ...] [--n N] [--out metrics.json]``."""
    set_threads(getattr(args, "threads", None))
    tasks = None
    if args.tasks:
        tasks = [t for item in args.tasks for t in item.replace(",", " ").split()]
    from .pipeline import parse_options
    options = parse_options(getattr(args, "options", None))
    results = evaluate(args.model, args.data, tasks=tasks, n=args.n, batch_size=args.batch_size,
                       device=args.device, seed=getattr(args, "seed", 0), options=options,
                       predictions=getattr(args, "predictions", None))
    print(format_table(results))
    if results["run"].get("predictions"):
        print(f"wrote {results['run']['predictions']}")
    if args.out:
        print(f"wrote {write_json(results, args.out)}")
    return 0
