"""Data never stalls training: the loader's samples/s vs the training step's samples/s.

    python benchmarks/loader_speed.py                          # shapes-tiny
    python benchmarks/loader_speed.py --workers 0 2 --batches 10 --set train.batch_size=32

Loader: the recipe's mixture drawn and built into collated batches exactly as ``unio train``
does (one main process, or a DataLoader with ``--workers`` worker processes). Training: the
recipe's model doing forward + backward + AdamW step on pre-built batches (no data cost), with
the threads torch uses by default. Target: loader samples/s >= 5x training samples/s.
Prints a table (with per-task build times) and writes JSON (default
benchmarks/results/loader_speed.json).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
TARGET = 5.0


def main(argv=None) -> dict:
    from unio.data.formats import open_source
    from unio.data.mixture import ExampleDataset, Mixture, RankBatchSampler
    from unio.model.modeling_unio import shift_tokens_right
    from unio.recipe import load_recipe
    from unio.tasks import TaskContext
    from unio.training.prepare import build_model, collate_examples, make_example, run_classes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/shapes-tiny.yaml")
    p.add_argument("--batches", type=int, default=8, help="global batches timed per loader setting")
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--workers", type=int, nargs="+", default=[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loader_speed.json"))
    args = p.parse_args(argv)

    os.chdir(ROOT)
    recipe = load_recipe(args.recipe, args.overrides)
    t, m = recipe["train"], recipe["model"]
    sources = [open_source(s, recipe["data"]["on_bad_record"]) for s in recipe["data"]["train"]]
    ctx = TaskContext.from_dir(recipe["tokenizers"], image_size=m["image_size"], patch_size=m["patch_size"],
                               prompts_dir=recipe["prompts"], classes=run_classes(recipe, sources),
                               num_bins=recipe["num_bins"])
    B = t["batch_size"]
    tasks = [s["tasks"] for s in recipe["data"]["train"]]
    weights = [s.get("weight", 1.0) for s in recipe["data"]["train"]]

    # per-task cost of building one example (single thread, main process)
    per_task = defaultdict(list)
    mix = Mixture(sources, tasks, weights, seed=t["seed"], batch_size=B)
    for d in mix.next_batch() + mix.next_batch():
        sample = sources[d.source][d.index]
        t0 = time.perf_counter()
        make_example(d.task, sample, d.rng(t["seed"]), ctx)
        per_task[d.task].append(time.perf_counter() - t0)

    rows = []
    for workers in args.workers:
        mix = Mixture(sources, tasks, weights, seed=t["seed"], batch_size=B)
        loader = torch.utils.data.DataLoader(
            ExampleDataset(mix, partial(make_example, ctx=ctx)),
            batch_sampler=RankBatchSampler(mix, rank=0, world_size=1, steps=args.batches + 1),
            num_workers=workers, collate_fn=partial(collate_examples, ctx=ctx, multiple=t["pad_to_multiple_of"]))
        it = iter(loader)
        next(it)  # workers started, first batch in
        t0 = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        rows.append({"workers": workers, "samples_per_s": args.batches * B / (time.perf_counter() - t0)})

    # the training step alone, on batches built beforehand
    model = build_model(recipe, ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"])
    mix = Mixture(sources, tasks, weights, seed=t["seed"], batch_size=B)
    ds = ExampleDataset(mix, partial(make_example, ctx=ctx))
    batches = [collate_examples([ds[d] for d in mix.next_batch()], ctx, t["pad_to_multiple_of"])[0] for _ in range(2)]

    def step(batch):
        inputs = {k: v for k, v in batch.items() if v is not None and k not in ("labels", "label_weights")}
        inputs["decoder_input_ids"] = shift_tokens_right(batch["labels"], ctx.vocab.pad_id, ctx.vocab.bos_id)
        keep = batch["labels"] != -100  # as unio train does: logits only at the targets
        logits = model(**inputs, logits_mask=keep).logits
        ce = F.cross_entropy(logits.float(), batch["labels"][keep], reduction="none")
        w = batch["label_weights"][keep]
        loss = (ce * w).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for i in range(args.train_steps):
        step(batches[i % 2])
    train_sps = args.train_steps * B / (time.perf_counter() - t0)

    params = sum(p.numel() for p in model.parameters())
    print(f"recipe {args.recipe}: model {params / 1e6:.1f}M parameters, global batch {B}, torch threads {torch.get_num_threads()}")
    print(f"{'task':>16} {'ms / example':>13}")
    for name, ts in sorted(per_task.items()):
        print(f"{name:>16} {1000 * float(np.median(ts)):>13.2f}")
    print(f"{'':>16} {'samples/s':>10} {'x training':>11}")
    print(f"{'training step':>16} {train_sps:>10.1f}")
    for r in rows:
        r["ratio"] = r["samples_per_s"] / train_sps
        print(f"{'loader w=' + str(r['workers']):>16} {r['samples_per_s']:>10.1f} {r['ratio']:>11.1f}")
    best = max(r["ratio"] for r in rows)
    print(f"best loader / training = {best:.1f}x (target >= {TARGET:g}x): {'PASS' if best >= TARGET else 'FAIL'}")
    result = {"recipe": args.recipe, "overrides": args.overrides, "batch_size": B, "params": params,
              "train_samples_per_s": train_sps, "loader": rows, "best_ratio": best, "target": TARGET,
              "pass": best >= TARGET, "ms_per_example": {k: 1000 * float(np.median(v)) for k, v in per_task.items()},
              "torch_threads": torch.get_num_threads(),
              "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
