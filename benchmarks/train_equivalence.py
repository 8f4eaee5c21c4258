"""One process vs two CPU processes under ZeRO-3: the same recipe must train the same model.

    python benchmarks/train_equivalence.py                                   # shapes-tiny, 20 steps
    python benchmarks/train_equivalence.py --steps 20 --multi-stage zero3 --set train.batch_size=32

Runs ``unio train`` once in one process (the recipe's DeepSpeed config, or ``--single-stage``) and
once with ``torchrun --nproc_per_node 2`` under ``--multi-stage``, same global batch and seed, and
compares the logged loss of every step. Target: max |difference| <= 1e-3 over 20 steps. Prints a
table and writes JSON (default benchmarks/results/train_equivalence.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1e-3


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def run_train(cmd: list[str], out: Path, env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/shapes-tiny.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--single-stage", default=None, help="DeepSpeed config of the 1-process run (default: the recipe's)")
    p.add_argument("--multi-stage", default="zero3", help="DeepSpeed config of the 2-process run")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_equivalence.json"))
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="unio-equiv-"))
    common = [f"train.steps={args.steps}", "train.log_every=1", "train.save_every=0", "data.eval=[]", *args.overrides]
    sets = lambda extra: [x for kv in common + extra for x in ("--set", kv)]  # noqa: E731
    env = dict(os.environ)
    one, two = tmp / "one", tmp / "two"
    single = [f"deepspeed={args.single_stage}"] if args.single_stage else []
    t_one = run_train([sys.executable, "-m", "unio", "train", args.recipe, *sets([f"out={one}", *single])], one, env)
    t_two = run_train([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                       "-m", "unio", "train", args.recipe, *sets([f"out={two}", f"deepspeed={args.multi_stage}"])],
                      two, dict(env, OMP_NUM_THREADS="1"))
    a, b = losses(one), losses(two)
    steps = sorted(set(a) & set(b))
    diffs = {s: abs(a[s] - b[s]) for s in steps}
    worst = max(diffs.values())
    print(f"{'step':>5} {'1 process':>12} {f'{args.nproc} x ' + args.multi_stage:>14} {'|diff|':>10}")
    for s in steps:
        print(f"{s:>5} {a[s]:>12.6f} {b[s]:>14.6f} {diffs[s]:>10.2e}")
    ok = len(steps) == args.steps and worst <= TARGET
    print(f"max |diff| over {len(steps)} steps: {worst:.2e} (target <= {TARGET:g}): {'PASS' if ok else 'FAIL'}")
    result = {"recipe": args.recipe, "steps": args.steps, "overrides": args.overrides, "nproc": args.nproc,
              "single_stage": args.single_stage or "recipe", "multi_stage": args.multi_stage,
              "max_abs_diff": worst, "target": TARGET, "pass": ok, "wall_s": {"one": t_one, "multi": t_two},
              "losses": {"one": [a[s] for s in steps], "multi": [b[s] for s in steps]},
              "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
