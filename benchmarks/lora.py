"""Full fine-tuning vs LoRA: shapes-demo fine-tuned to Fashion-MNIST classification, same steps.

    python benchmarks/lora.py                                   # 300 steps a run, ~25 min CPU
    python benchmarks/lora.py --steps 100 --lr-full 3e-4 --lr-lora 3e-3     # one run a side, no sweep

Both sides start from the shipped ``shapes-demo`` model (``model.init``), which has never seen
Fashion-MNIST, and train ``unio train`` runs of ``--steps`` steps of ``--batch-size`` images on the
Fashion-MNIST training file (``apt-get install dataset-fashion-mnist``, or ``--data DIR`` holding
the four IDX files), with the same schedule, seed and torch threads: (a) every weight trainable,
(b) ``train.lora`` (rank ``--r``, the default targets: every attention and MLP Linear layer).

Choices are made on the development set only: ``--dev-n`` training images held out with
``--dev-seed`` (left out of the training file), on which each side's learning rate is picked from
its grid (``--lr-full``, ``--lr-lora``). The report set is ``--report-n`` images of the test file
drawn with ``--report-seed`` and used for nothing else. Reported per side: trainable parameters,
seconds per step (a separate timing phase: ``--timing-rounds`` rounds of ``--timing-steps`` steps
a side, the sides alternating in one process, so that the load of a shared machine falls on both
alike; the median over 5-step windows), the bytes of Adam's two moments (read from the final
checkpoint), the peak RSS of the training process, the accuracy on the report set through
``unio.evaluate`` with a 95% Wilson interval, the paired bootstrap interval of the difference,
and how much of shapes-demo's own skills each keeps (classify and vqa on held-out shapes images).
The LoRA run is exported both ways and the two exports must give the same report predictions.
Prints a table and writes JSON (default benchmarks/results/lora.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An uncompressed IDX file of a uint8 array (what unio.data.idx reads)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return path


def split_data(data: Path, tmp: Path, dev_n: int, dev_seed: int, report_n: int, report_seed: int) -> dict:
    """train (the training file less the dev images), dev (held out with dev_seed) and report (test
    images drawn with report_seed) as data entries."""
    from unio.data.idx import read_idx

    images, labels = (read_idx(data / f) for f in FILES["train"])
    dev = np.random.default_rng(dev_seed).permutation(len(images))[:dev_n]
    keep = np.setdiff1d(np.arange(len(images)), dev)
    test_images, test_labels = (read_idx(data / f) for f in FILES["test"])
    report = np.sort(np.random.default_rng(report_seed).permutation(len(test_images))[:report_n])
    out = {}
    for name, (x, y) in {"train": (images[keep], labels[keep]), "dev": (images[np.sort(dev)], labels[np.sort(dev)]),
                         "report": (test_images[report], test_labels[report])}.items():
        out[name] = {"source": "idx", "names": "fashion-mnist",
                     "images": str(write_idx(tmp / f"{name}-images.idx", x)),
                     "labels": str(write_idx(tmp / f"{name}-labels.idx", y))}
    return out


def run_training(name: str, lr: float, lora: bool, args, data: dict, tmp: Path) -> dict:
    """One ``unio train`` process; its step time, optimizer state, trainable parameters and peak RSS."""
    out = tmp / name
    recipe = tmp / "recipe.yaml"
    sets = [f"out={out}", f"train.lr={lr}", f"train.steps={args.steps}", f"train.batch_size={args.batch_size}"]
    if lora:
        sets += [f"train.lora.r={args.r}", f"train.lora.alpha={2 * args.r}"]
    cmd = [sys.executable, "-m", "unio", "train", str(recipe), *[x for kv in sets for x in ("--set", kv)]]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{err[-4000:]}")
    wall = time.perf_counter() - t0
    import torch

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_s = [args.batch_size / r["samples_per_s"] for r in records[1:] or records]  # first window: warm-up
    ckpt = next((out / "checkpoints").glob("step*/mp_rank_*_model_states.pt"))
    moments = torch.load(ckpt, map_location="cpu", weights_only=False)["optimizer"]["state"].values()
    return {"name": name, "lr": lr, "lora": lora, "run": str(out), "wall_s": round(wall, 1),
            "sweep_step_s": statistics.median(step_s),
            "trainable": int(sum(m["exp_avg"].numel() for m in moments)),
            "adam_bytes": int(sum(m["exp_avg"].nbytes + m["exp_avg_sq"].nbytes for m in moments)),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "final_loss": records[-1]["loss"]}


def timing(args, tmp: Path, lrs: dict) -> dict[str, list[float]]:
    """Seconds per step of each side, from short in-process runs alternating full, LoRA, LoRA, full, ..."""
    from unio.recipe import load_recipe
    from unio.training import train

    out: dict[str, list[float]] = {"full": [], "lora": []}
    for k in range(args.timing_rounds):
        for side in ("full", "lora") if k % 2 == 0 else ("lora", "full"):
            run = tmp / f"timing-{side}-{k}"
            sets = [f"out={run}", f"train.lr={lrs[side]}", f"train.steps={args.timing_steps}", "train.log_every=5",
                    f"train.batch_size={args.batch_size}", "train.warmup=0"]
            if side == "lora":
                sets += [f"train.lora.r={args.r}", f"train.lora.alpha={2 * args.r}"]
            train(load_recipe(tmp / "recipe.yaml", sets))
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            out[side] += [args.batch_size / r["samples_per_s"] for r in records[1:]]  # first window: warm-up
            shutil.rmtree(run, ignore_errors=True)
    return out


def accuracy(model, entry: dict, n: int, seed: int, path: Path | None = None, options=None) -> tuple[float, list]:
    """Accuracy of classify on a data entry through unio.evaluate, and the per-example correctness."""
    from unio.evaluate import evaluate

    results = evaluate(model, entry, tasks=["classify"], n=n, seed=seed, progress=False, predictions=path,
                       options=options)
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path else []
    return results["classify"]["accuracy"], [bool(r["correct"]) for r in rows]


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(centre - half), float(centre + half)]


def paired_interval(a: list[bool], b: list[bool], seed: int, resamples: int = 10000) -> list[float]:
    """95% percentile-bootstrap interval of mean(a) - mean(b) over the same examples."""
    d = np.asarray(a, float) - np.asarray(b, float)
    idx = np.random.default_rng(seed).integers(0, len(d), (resamples, len(d)))
    means = d[idx].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def shapes_skills(model, n: int, seed: int) -> dict:
    from unio.evaluate import evaluate

    r = evaluate(model, f"shapes:{seed}", tasks=["classify", "vqa"], n=n, seed=seed, progress=False)
    return {"classify_accuracy": r["classify"]["accuracy"], "vqa_accuracy": r["vqa"]["accuracy"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--model", default="shapes-demo", help="the export both sides fine-tune")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--r", type=int, default=16, help="LoRA rank (alpha = 2 r)")
    p.add_argument("--lr-full", default="3e-4,1e-3,3e-3", help="learning rates tried for full fine-tuning (dev set picks)")
    p.add_argument("--lr-lora", default="1e-3,3e-3,1e-2", help="learning rates tried for LoRA (dev set picks)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every process (same on both sides)")
    p.add_argument("--timing-rounds", type=int, default=4)
    p.add_argument("--timing-steps", type=int, default=25)
    p.add_argument("--dev-n", type=int, default=1000)
    p.add_argument("--dev-seed", type=int, default=0)
    p.add_argument("--report-n", type=int, default=2000)
    p.add_argument("--report-seed", type=int, default=1)
    p.add_argument("--shapes-n", type=int, default=200, help="held-out shapes images for the kept skills (0: skip)")
    p.add_argument("--shapes-seed", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lora.json"))
    args = p.parse_args(argv)
    data = Path(args.data)
    if not all((data / f).is_file() for pair in FILES.values() for f in pair):
        sys.exit(f"{data} lacks the Fashion-MNIST IDX files; apt-get install dataset-fashion-mnist or pass --data DIR")

    import torch

    import unio
    from unio.data.idx import FASHION_MNIST
    from unio.export import export_path
    from unio.training import export

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="unio-lora-"))
    entries = split_data(data, tmp, args.dev_n, args.dev_seed, args.report_n, args.report_seed)
    (tmp / "recipe.yaml").write_text(json.dumps({
        "model": {"init": str(export_path(args.model))},
        "data": {"train": [{**entries["train"], "tasks": {"classify": 1}}], "eval": []},
        "train": {"warmup": 20, "log_every": 10, "eval_every": 0, "save_every": 0, "seed": 0},
        "deepspeed": "zero0"}))
    t_start, cpu_start = time.perf_counter(), os.times()

    runs = {"full": [], "lora": []}
    for side, grid in (("full", args.lr_full), ("lora", args.lr_lora)):
        for lr in (float(x) for x in grid.split(",")):
            run = run_training(f"{side}-lr{lr:g}", lr, side == "lora", args, entries, tmp)
            run["export"] = str(export(run["run"], tmp / f"{run['name']}-export", lora="merged" if run["lora"] else None))
            run["dev_accuracy"], _ = accuracy(run["export"], entries["dev"], args.dev_n, args.dev_seed)
            runs[side].append(run)
            print(f"{run['name']:<14} dev accuracy {run['dev_accuracy']:.4f}  {run['sweep_step_s']:.3f} s/step  "
                  f"final loss {run['final_loss']:.4f}", flush=True)
    chosen = {side: max(rs, key=lambda r: r["dev_accuracy"]) for side, rs in runs.items()}
    step_times = timing(args, tmp, {side: run["lr"] for side, run in chosen.items()})
    for side, run in chosen.items():
        run["step_s"] = statistics.median(step_times[side])
        run["samples_per_s"] = args.batch_size / run["step_s"]

    # the report set: used once, for the chosen runs only
    report: dict = {}
    for side, run in chosen.items():
        acc, correct = accuracy(run["export"], entries["report"], args.report_n, args.report_seed, tmp / f"{side}.jsonl")
        report[side] = {"accuracy": acc, "ci95": wilson(sum(correct), len(correct)), "n": len(correct),
                        "correct": correct}
    adapters = export(chosen["lora"]["run"], tmp / "lora-adapters", lora="adapters")
    _, adapter_correct = accuracy(adapters, entries["report"], args.report_n, args.report_seed, tmp / "adapters.jsonl")
    same = [json.loads(a)["prediction"] == json.loads(b)["prediction"] for a, b in
            zip((tmp / "adapters.jsonl").read_text().splitlines(), (tmp / "lora.jsonl").read_text().splitlines())]
    base_acc, base_correct = accuracy(args.model, entries["report"], args.report_n, args.report_seed,
                                      tmp / "base.jsonl", options={"classify": {"labels": list(FASHION_MNIST)}})
    diff = np.mean(report["full"]["correct"]) - np.mean(report["lora"]["correct"])
    diff_ci = paired_interval(report["full"]["correct"], report["lora"]["correct"], args.report_seed)
    skills = {}
    if args.shapes_n:
        skills = {"base": shapes_skills(args.model, args.shapes_n, args.shapes_seed),
                  **{side: shapes_skills(run["export"], args.shapes_n, args.shapes_seed) for side, run in chosen.items()}}
    sizes = {"merged_model_safetensors": (Path(chosen["lora"]["export"]) / "model.safetensors").stat().st_size,
             "adapter_model_safetensors": (adapters / "adapter_model.safetensors").stat().st_size}
    total = sum(p.numel() for p in unio.load(args.model).model.parameters())
    cpu = os.times()
    cpu_s = sum(getattr(cpu, k) - getattr(cpu_start, k) for k in ("user", "system", "children_user", "children_system"))

    rows = [("trainable parameters", lambda r, s: f"{r['trainable']:,} ({100 * r['trainable'] / total:.1f}%)"),
            ("learning rate (dev pick)", lambda r, s: f"{r['lr']:g}"),
            ("s / step", lambda r, s: f"{r['step_s']:.3f}"),
            ("samples / s", lambda r, s: f"{r['samples_per_s']:.1f}"),
            ("Adam moments", lambda r, s: f"{r['adam_bytes'] / 2 ** 20:.2f} MiB"),
            ("peak RSS", lambda r, s: f"{r['peak_rss_mb']:.0f} MB"),
            ("final train loss", lambda r, s: f"{r['final_loss']:.4f}"),
            ("dev accuracy", lambda r, s: f"{r['dev_accuracy']:.4f}"),
            ("report accuracy [95% CI]", lambda r, s: f"{report[s]['accuracy']:.4f} [{report[s]['ci95'][0]:.4f}, "
                                                      f"{report[s]['ci95'][1]:.4f}]")]
    if skills:
        rows += [(f"shapes {k} (base {skills['base'][k]:.3f})", lambda r, s, k=k: f"{skills[s][k]:.3f}")
                 for k in skills["base"]]
    print(f"\n{args.model} -> Fashion-MNIST classify, {args.steps} steps x {args.batch_size}, {args.threads} thread(s)")
    print(f"{'':<34}{'full fine-tuning':>24}{'LoRA r=' + str(args.r):>24}")
    for label, fmt in rows:
        print(f"{label:<34}{fmt(chosen['full'], 'full'):>24}{fmt(chosen['lora'], 'lora'):>24}")
    print(f"report accuracy, full - LoRA: {diff:+.4f} [95% CI {diff_ci[0]:+.4f}, {diff_ci[1]:+.4f}] (paired bootstrap)")
    print(f"base {args.model} zero-shot (labels given): {base_acc:.4f}; LoRA adapters export: {sum(same)}/{len(same)} "
          f"report predictions equal to the merged export; adapters {sizes['adapter_model_safetensors'] / 2 ** 20:.2f} "
          f"MiB vs merged weights {sizes['merged_model_safetensors'] / 2 ** 20:.2f} MiB")
    print(f"CPU time {cpu_s / 60:.1f} min, wall {(time.perf_counter() - t_start) / 60:.1f} min")

    result = {
        "model": args.model, "task": "classify", "data": "Fashion-MNIST (IDX)", "steps": args.steps,
        "batch_size": args.batch_size, "threads": args.threads, "lora_r": args.r, "lora_alpha": 2 * args.r,
        "dev": {"n": args.dev_n, "seed": args.dev_seed, "from": "training file (held out of training)"},
        "report": {"n": args.report_n, "seed": args.report_seed, "from": "test file"},
        "total_parameters": total,
        "runs": {side: [{k: v for k, v in r.items() if k not in ("run", "export")} for r in rs] for side, rs in runs.items()},
        "chosen": {side: {**{k: v for k, v in run.items() if k not in ("run", "export")},
                          "report_accuracy": report[side]["accuracy"], "report_ci95": report[side]["ci95"]}
                   for side, run in chosen.items()},
        "report_difference_full_minus_lora": {"value": float(diff), "ci95": diff_ci},
        "timing": {"rounds": args.timing_rounds, "steps": args.timing_steps, "step_s_windows": step_times},
        "base_zero_shot_report_accuracy": base_acc,
        "adapters_export": {"same_predictions": int(sum(same)), "of": len(same),
                            "adapters_report_accuracy": float(np.mean(adapter_correct)), **sizes},
        "shapes_skills": skills, "shapes": {"n": args.shapes_n, "seed": args.shapes_seed},
        "cpu_s": round(cpu_s, 1), "wall_s": round(time.perf_counter() - t_start, 1),
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "command": " ".join(["python benchmarks/lora.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
