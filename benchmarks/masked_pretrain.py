"""What masked visual-token pretraining (masked_image) buys classify + detect, at equal steps.

    python benchmarks/masked_pretrain.py                      # N=200, M=200: about 25 CPU minutes
    python benchmarks/masked_pretrain.py --pretrain-steps 20 --finetune-steps 20 --n 32   # a quick look

Three arms, every one from the same random initialisation (the shapes-tiny model shape, built by
``unio train`` with ``train.seed`` 0), trained in this process through ``unio.recipe`` and
``unio.training`` with the same torch threads:

- **A**: ``--pretrain-steps`` N steps of masked_image (recipes/masked-pretrain.yaml) on a folder of
  unlabeled pictures (``--pretrain-images`` shapes-world scenes of seed 2, written as PNG files
  with no annotation beside them; read by the ``folder`` source), exported, then
  ``--finetune-steps`` M steps of fine-tuning on classify + detect from that export (``model.init``);
- **B**: N + M steps of the same fine-tuning from the random initialisation (equal steps);
- **C**: M steps of the same fine-tuning alone: A without its pretraining (``--no-arm-c`` skips it).

Fine-tuning is recipes/shapes-tiny.yaml with ``tasks: {classify: 1, detect: 1}`` on the annotated
shapes world of seed 0, its own warmup and cosine schedule over its steps. Each arm's CPU time is
this process's user + system time while it trains and exports (``os.times``).

Evaluation: the report seed (``--report-seed``, shapes:43), ``--n`` examples per task, through
``unio.evaluate`` (classify ``accuracy`` with its 95% bootstrap interval, detect ``map50`` and
``map`` with ``--bootstrap`` resamples), plus each model's negative log-likelihood per target token
of the reference answers of the same examples (teacher forcing, ``Pipeline.target_loglik``): at
this budget the greedy answers barely move (every arm may answer the majority class), the
likelihood does. Paired 95% bootstrap intervals of the differences A - B and A - C over the same
report examples. The report seed is used for nothing else: N, M, the learning rate and the batch
size were set from the CPU budget, shapes-tiny's recipe and training losses (shapes seed 0),
never from report figures. (shapes:41 served a first version of this benchmark without the
likelihood figure, where all three arms answered "circle" to every classify question; it is not
reused.) A diagnostic: masked_image on the report seed after A's pretraining (code accuracy on the
hidden cells, against the non-learned baseline of the most frequent visible code).
Prints a table and writes JSON (default benchmarks/results/masked_pretrain.json).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from unio.data.shapes import ShapesWorld
from unio.evaluate import evaluate, write_json
from unio.pipeline import load
from unio.metrics import coco_matched, coco_resampled_aps, interval95, mean_interval95
from unio.recipe import load_recipe
from unio.tasks.classify import Classify
from unio.tasks.detect import Detect, truth
from unio.tasks.masked import MaskedImage
from unio.training import export, train

ROOT = Path(__file__).resolve().parent.parent
PRETRAIN = ROOT / "recipes" / "masked-pretrain.yaml"
FINETUNE = ROOT / "recipes" / "shapes-tiny.yaml"


def write_pictures(folder: Path, n: int, seed: int) -> Path:
    """``n`` shapes-world scenes as PNG files and nothing else: pictures without annotations."""
    folder.mkdir(parents=True, exist_ok=True)
    world = ShapesWorld(64, seed=seed)
    for i in range(n):
        world[i]["image"].save(folder / f"{i:05d}.png")
    return folder


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run(recipe: Path, sets: list[str]) -> tuple[dict, float, float]:
    """One ``unio train`` run in this process -> (last logged record, CPU seconds, wall seconds)."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    last = train(load_recipe(recipe, sets))
    return last, cpu_seconds() - cpu, time.perf_counter() - wall


def finetune_sets(args, out: Path, steps: int, init: Path | None = None) -> list[str]:
    sets = [f"out={out}", f"train.steps={steps}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
            f"train.warmup={args.warmup}", "train.log_every=10", "train.eval_every=0", "train.save_every=0",
            "data.eval=[]", f"data.train.0.tasks={{{Classify.name}: 1, {Detect.name}: 1}}"]
    return sets + ([f"model.init={init}"] if init is not None else [])


def timed_export(run_dir: Path, out: Path) -> tuple[Path, float]:
    cpu = cpu_seconds()
    path = export(run_dir, out)
    return Path(path), cpu_seconds() - cpu


def scores(model: Path, args) -> tuple[dict, dict]:
    """Report-seed figures of one model, and its per-example details for paired intervals:
    ``unio.evaluate``'s (examples, samples, predictions) per task, and ``nll``, each example's
    negative log-likelihood per target token of its reference answer (teacher forcing, the whole
    vocabulary), a figure that moves before greedy answers change."""
    pipe = load(str(model))
    results, details = evaluate(pipe, f"shapes:{args.report_seed}", tasks=[Classify.name, Detect.name],
                                n=args.n, seed=args.report_seed, progress=False, return_details=True,
                                bootstrap=args.bootstrap, batch_size=32)
    figures = {Classify.name: {k: results[Classify.name][k] for k in ("accuracy", "accuracy_ci95")},
               Detect.name: {k: results[Detect.name][k] for k in ("map50", "map50_ci95", "map", "map_ci95")}}
    rng = np.random.default_rng(args.report_seed)
    for task in (Classify.name, Detect.name):
        examples = details[task][0]
        nll = -pipe.target_loglik(examples, [e.labels for e in examples]) / np.array([len(e.labels) for e in examples])
        details[task] = (*details[task], nll)
        figures[task].update(nll=float(nll.mean()), nll_ci95=mean_interval95(nll, rng))
    return figures, details


def ap50(ev, idx) -> float:
    """COCO AP at IoU .5 (all areas, 100 detections) of the images ``idx`` (a resample, with repeats) of
    a matched COCOeval (unio.metrics.coco_matched: matching once per arm, resamples re-accumulate)."""
    return coco_resampled_aps(ev, idx)[1]


def paired(details_a: dict, details_b: dict, resamples: int, seed: int) -> dict:
    """95% paired bootstrap intervals of A - B on the same report examples (the same resamples of
    images for both): classify accuracy, detect mAP@.5 (matching once per arm, as unio.metrics does)."""
    rng = np.random.default_rng(seed)
    ex_a, _, pred_a, _ = details_a[Classify.name]
    ex_b, _, pred_b, _ = details_b[Classify.name]
    right = lambda ex, pred: np.array([str(p) == e.meta["label"] for e, p in zip(ex, pred)], float)  # noqa: E731
    diff = right(ex_a, pred_a) - right(ex_b, pred_b)
    idx = rng.integers(0, len(diff), (2000, len(diff)))
    out = {"classify_accuracy": {"difference": float(diff.mean()), "ci95": interval95(diff[idx].mean(1))}}
    for task in (Classify.name, Detect.name):
        d = details_a[task][3] - details_b[task][3]
        out[f"{task}_nll"] = {"difference": float(d.mean()), "ci95": mean_interval95(d, rng)}
    ex, _, pred_a, _ = details_a[Detect.name]
    pred_b = details_b[Detect.name][2]
    gts = [truth(e) for e in ex]
    categories = sorted({str(o["label"]) for objs in gts for o in objs})
    ev_a, ev_b = coco_matched(pred_a, gts, categories), coco_matched(pred_b, gts, categories)
    everything = np.arange(len(gts))
    draws = []
    for _ in range(resamples):
        k = rng.integers(0, len(gts), len(gts))
        draws.append(ap50(ev_a, k) - ap50(ev_b, k))
    draws = [d for d in draws if np.isfinite(d)]
    out["detect_map50"] = {"difference": ap50(ev_a, everything) - ap50(ev_b, everything),
                           "ci95": interval95(draws) if draws else None, "resamples": len(draws)}
    return out


def fmt(value, ci=None) -> str:
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrain-steps", type=int, default=200, help="N: masked_image steps of arm A")
    p.add_argument("--finetune-steps", type=int, default=200, help="M: classify + detect steps after them")
    p.add_argument("--pretrain-images", type=int, default=4000, help="unlabeled pictures in the folder")
    p.add_argument("--pretrain-seed", type=int, default=2, help="shapes world the unlabeled pictures come from")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the faster choice on a shared CPU)")
    p.add_argument("--report-seed", type=int, default=43)
    p.add_argument("--n", type=int, default=200, help="report examples per task")
    p.add_argument("--bootstrap", type=int, default=200, help="resamples for the mAP intervals")
    p.add_argument("--no-arm-c", action="store_true", help="skip arm C (fine-tuning for M steps alone)")
    p.add_argument("--keep", help="keep the runs and exports in this folder (default: a temporary one, removed)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "masked_pretrain.json"))
    args = p.parse_args(argv)
    N, M = args.pretrain_steps, args.finetune_steps
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the recipes name tokenizers/ and recipes/ relative to the repository
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="unio-masked-"))
    tmp.mkdir(parents=True, exist_ok=True)
    start_cpu, start_wall = cpu_seconds(), time.perf_counter()
    arms: dict[str, dict] = {}

    cpu = cpu_seconds()
    folder = write_pictures(tmp / "pictures", args.pretrain_images, args.pretrain_seed)
    pictures_cpu = cpu_seconds() - cpu
    pre_sets = [f"out={tmp / 'A-pretrain'}", f"train.steps={N}", f"train.batch_size={args.batch_size}",
                f"train.lr={args.lr}", f"train.warmup={args.warmup}", "train.eval_every=0", "train.save_every=0",
                "data.eval=[]", f"data.train=[{{source: folder, path: {folder}, tasks: {{{MaskedImage.name}: 1}}}}]"]
    pre_last, pre_cpu, pre_wall = run(PRETRAIN, pre_sets)
    pretrained, export_cpu = timed_export(tmp / "A-pretrain", tmp / "A-pretrain-export")
    ft_last, ft_cpu, ft_wall = run(FINETUNE, finetune_sets(args, tmp / "A-finetune", M, pretrained))
    model_a, export2_cpu = timed_export(tmp / "A-finetune", tmp / "A-export")
    arms["A"] = {"what": f"{N} masked_image steps on unlabeled pictures, then {M} classify + detect steps",
                 "steps": N + M, "cpu_minutes": (pre_cpu + export_cpu + ft_cpu + export2_cpu) / 60,
                 "train_wall_minutes": (pre_wall + ft_wall) / 60, "pretrain_cpu_minutes": pre_cpu / 60,
                 "pretrain_final_loss": pre_last.get("loss"), "final_loss": ft_last.get("loss")}
    b_last, b_cpu, b_wall = run(FINETUNE, finetune_sets(args, tmp / "B", N + M))
    model_b, b_export = timed_export(tmp / "B", tmp / "B-export")
    arms["B"] = {"what": f"{N + M} classify + detect steps", "steps": N + M, "cpu_minutes": (b_cpu + b_export) / 60,
                 "train_wall_minutes": b_wall / 60, "final_loss": b_last.get("loss")}
    models = {"A": model_a, "B": model_b}
    if not args.no_arm_c:
        c_last, c_cpu, c_wall = run(FINETUNE, finetune_sets(args, tmp / "C", M))
        models["C"], c_export = timed_export(tmp / "C", tmp / "C-export")
        arms["C"] = {"what": f"{M} classify + detect steps (A without its pretraining)", "steps": M,
                     "cpu_minutes": (c_cpu + c_export) / 60, "train_wall_minutes": c_wall / 60,
                     "final_loss": c_last.get("loss")}

    cpu = cpu_seconds()
    details = {}
    for name, model in models.items():
        arms[name]["report"], details[name] = scores(model, args)
    diffs = {f"A-{other}": paired(details["A"], details[other], args.bootstrap, args.report_seed)
             for other in models if other != "A"}
    probe = evaluate(str(pretrained), f"shapes:{args.report_seed}", tasks=[MaskedImage.name], n=min(args.n, 100),
                     seed=args.report_seed, progress=False)[MaskedImage.name]
    eval_cpu = cpu_seconds() - cpu

    results = {
        "benchmark": "masked_pretrain", "command": "python benchmarks/masked_pretrain.py " + " ".join(argv or sys.argv[1:]),
        "settings": {"pretrain_steps": N, "finetune_steps": M, "batch_size": args.batch_size, "lr": args.lr,
                     "warmup": args.warmup, "threads": args.threads, "pretrain_images": args.pretrain_images,
                     "pretrain_data": f"folder of shapes-world seed {args.pretrain_seed} pictures, no annotations",
                     "finetune_data": "shapes seed 0, tasks classify + detect", "model": "shapes-tiny shape",
                     "init": "the same random initialisation (train.seed 0) in every arm",
                     "report": f"shapes:{args.report_seed}, n={args.n} per task, never used for a choice",
                     "bootstrap": args.bootstrap},
        "arms": arms, "paired_differences": diffs,
        "pretrained_masked_image": {k: probe[k] for k in ("code_accuracy", "code_accuracy_ci95", "baseline_accuracy",
                                                          "psnr", "reference_psnr", "n") if k in probe},
        "cpu_minutes": {"pictures": pictures_cpu / 60, "evaluation": eval_cpu / 60,
                        "total": (cpu_seconds() - start_cpu) / 60},
        "wall_minutes": (time.perf_counter() - start_wall) / 60,
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "python": platform.python_version(),
                    "torch": torch.__version__},
    }
    print(table(results))
    write_json(results, args.out)
    print(f"wrote {args.out}")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def table(results: dict) -> str:
    """Arms as rows: steps, CPU minutes, then each report figure with its 95% interval."""
    head = ["arm", "steps", "CPU min", "classify acc", "classify NLL/token", "detect mAP@.5", "detect NLL/token"]
    rows = [head]
    for name, arm in results["arms"].items():
        c, d = arm["report"][Classify.name], arm["report"][Detect.name]
        rows.append([name, str(arm["steps"]), f"{arm['cpu_minutes']:.1f}", fmt(c["accuracy"], c["accuracy_ci95"]),
                     fmt(c["nll"], c["nll_ci95"]), fmt(d["map50"], d.get("map50_ci95")), fmt(d["nll"], d["nll_ci95"])])
    for pair, diff in results["paired_differences"].items():
        rows.append([pair, "", "", fmt(diff["classify_accuracy"]["difference"], diff["classify_accuracy"]["ci95"]),
                     fmt(diff[f"{Classify.name}_nll"]["difference"], diff[f"{Classify.name}_nll"]["ci95"]),
                     fmt(diff["detect_map50"]["difference"], diff["detect_map50"]["ci95"]),
                     fmt(diff[f"{Detect.name}_nll"]["difference"], diff[f"{Detect.name}_nll"]["ci95"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(f"{v:<{w}}" for v, w in zip(r, widths)).rstrip() for r in rows]
    lines += [f"{name}: {arm['what']}" for name, arm in results["arms"].items()]
    lines.append("A-B, A-C: paired differences on the same report examples, 95% bootstrap intervals")
    probe = results["pretrained_masked_image"]
    lines.append(f"after pretraining: masked_image code accuracy {fmt(probe['code_accuracy'], probe.get('code_accuracy_ci95'))}"
                 f" (most frequent visible code: {probe['baseline_accuracy']:.3f}) on {probe['n']} report images")
    lines.append(f"total {results['cpu_minutes']['total']:.1f} CPU minutes, {results['wall_minutes']:.1f} wall minutes")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
