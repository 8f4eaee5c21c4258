"""Exact resume: 40 uninterrupted steps vs 20 steps, kill -9, ``--resume`` to 40.

    python benchmarks/resume_exactness.py                       # shapes-tiny
    python benchmarks/resume_exactness.py --steps 40 --save-every 20 --kill-after 25 --set train.batch_size=32

Run A trains ``--steps`` steps. Run B is the same command, killed with SIGKILL once it has logged
step ``--kill-after`` (past its checkpoint at ``--save-every``), then continued with ``--resume``.
Steps save_every+1 .. steps must give the same losses: target max |difference| <= 1e-5 on CPU.
Prints a table and writes JSON (default benchmarks/results/resume_exactness.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1e-5


def records(run: Path) -> dict[int, float]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        out[r["step"]] = r["loss"]
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/shapes-tiny.yaml")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--save-every", type=int, default=20)
    p.add_argument("--kill-after", type=int, default=25, help="kill run B once it has logged this step")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "resume_exactness.json"))
    args = p.parse_args(argv)
    if not args.save_every < args.kill_after < args.steps:
        sys.exit("need --save-every < --kill-after < --steps")

    tmp = Path(tempfile.mkdtemp(prefix="unio-resume-"))
    common = [f"train.steps={args.steps}", f"train.save_every={args.save_every}", "train.log_every=1",
              "data.eval=[]", *args.overrides]
    cmd = lambda out, *extra: [sys.executable, "-m", "unio", "train", args.recipe,  # noqa: E731
                               *[x for kv in common + [f"out={out}"] for x in ("--set", kv)], *extra]
    a, b = tmp / "A", tmp / "B"
    t0 = time.perf_counter()
    subprocess.run(cmd(a), cwd=ROOT, check=True, capture_output=True)
    t_a = time.perf_counter() - t0

    proc = subprocess.Popen(cmd(b), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while max(records(b), default=0) < args.kill_after:
        if proc.poll() is not None:
            sys.exit(f"run B ended (status {proc.returncode}) before step {args.kill_after}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(records(b))
    latest = (b / "checkpoints" / "latest").read_text().strip()
    subprocess.run(cmd(b, "--resume"), cwd=ROOT, check=True, capture_output=True)

    ra, rb = records(a), records(b)
    steps = list(range(args.save_every + 1, args.steps + 1))
    missing = [s for s in steps if s not in ra or s not in rb]
    if missing:
        sys.exit(f"steps {missing} are missing from the metrics")
    diffs = {s: abs(ra[s] - rb[s]) for s in steps}
    worst = max(diffs.values())
    print(f"run B killed (SIGKILL) after logging step {killed_at}; resumed from checkpoint {latest}")
    print(f"{'step':>5} {'uninterrupted':>14} {'resumed':>12} {'|diff|':>10}")
    for s in steps:
        print(f"{s:>5} {ra[s]:>14.7f} {rb[s]:>12.7f} {diffs[s]:>10.2e}")
    ok = worst <= TARGET and sorted(rb) == list(range(1, args.steps + 1))
    print(f"max |diff| over steps {steps[0]}..{steps[-1]}: {worst:.2e} (target <= {TARGET:g}): {'PASS' if ok else 'FAIL'}")
    result = {"recipe": args.recipe, "steps": args.steps, "save_every": args.save_every, "killed_after_step": killed_at,
              "resumed_from": latest, "overrides": args.overrides, "max_abs_diff": worst, "target": TARGET, "pass": ok,
              "losses": {"uninterrupted": [ra[s] for s in steps], "resumed": [rb[s] for s in steps]},
              "wall_s_uninterrupted": t_a, "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
