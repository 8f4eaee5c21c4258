"""Text-to-image read by the non-learned shapes judge: consistency against candidates, and seconds per picture.

    python benchmarks/generation_quality.py --model shapes-demo --seed 41 --n 200 --candidates 1 8 64 \
        --out benchmarks/results/generation_quality.json

Texts come from ``--n`` held-out scenes of ``ShapesWorld(seed=--seed)`` in two forms: the world's
own caption ("a small red star, a large blue circle. the red star is left of the blue circle.") and
the form people type, the object list alone ("a small red star and a large blue circle"). For each
candidate count k the model draws k pictures per text with its shipped decoding defaults (guidance,
temperature, and its reranker, which reads the pictures with the model itself and never with the
judge) and keeps one; the judge (:mod:`unio.data.shapes_judge`, no learned part) then reads every
kept picture. Reported per k and form: consistency with its 95% percentile-bootstrap interval,
consistency by the number of objects asked for, object recall, and seconds per text on this machine.
Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import time

import numpy as np
import torch

import unio
from unio.data.shapes import ShapesWorld
from unio.data.shapes_judge import judge_many
from unio.metrics import mean_interval95


def typed_form(caption: str) -> str:
    """The object list of a world caption, as people type it: no relation sentence, no region, no period."""
    first = caption.split(".")[0]
    for phrase in ("in the top left", "in the top right", "in the bottom left", "in the bottom right", "at the top",
                   "at the bottom", "on the left", "on the right", "in the center"):
        first = first.replace(" " + phrase, "")
    return first.strip()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-demo")
    p.add_argument("--seed", type=int, default=41, help="ShapesWorld seed of the texts (a report seed: no choice used it)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--candidates", type=int, nargs="+", default=[1, 8])
    p.add_argument("--forms", nargs="+", default=["caption", "typed"], choices=["caption", "typed"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="generation_quality.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = unio.load(args.model)
    defaults = dict(getattr(pipe, "task_defaults", {}).get("generate_image", {}))
    world = ShapesWorld(64, seed=args.seed)
    captions = [world[i]["caption"] for i in range(args.n)]
    texts = {"caption": captions, "typed": [typed_form(c) for c in captions]}
    rng = np.random.default_rng(args.seed)
    rows = []
    for form in args.forms:
        for k in args.candidates:
            options = {**defaults, "candidates": k, "seed": args.seed}
            pictures = []
            t = time.perf_counter()
            for i in range(0, args.n, args.batch_size):
                chunk = texts[form][i:i + args.batch_size]
                out = pipe.run("generate_image", text=chunk, batch_size=len(chunk), **{**options, "seed": args.seed + i})
                pictures += out if isinstance(out, list) else [out]
            seconds = (time.perf_counter() - t) / args.n
            judged = judge_many(pictures, texts[form])
            ok = [v.ok for v in judged["verdicts"] if v is not None]
            row = {"form": form, "candidates": k, "consistency": judged["consistency"],
                   "consistency_ci95": mean_interval95(ok, rng), "by_objects": judged["by_objects"],
                   "object_recall": judged["object_recall"], "all_found": judged["all_found"],
                   "extra_rate": judged["extra_rate"], "position_accuracy": judged["position_accuracy"],
                   "seconds_per_text": seconds, "options": options}
            rows.append(row)
            lo, hi = row["consistency_ci95"]
            print(f"{form:<8} k={k:<3} consistency {row['consistency']:.3f} [{lo:.3f}, {hi:.3f}]  by objects "
                  + " ".join(f"{c}:{v:.2f}" for c, v in row["by_objects"].items())
                  + f"  {seconds:.2f} s/text", flush=True)
    result = {"model": args.model, "seed": args.seed, "n": args.n, "judge": "unio.data.shapes_judge (non-learned)",
              "defaults": defaults, "rows": rows, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine()}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
