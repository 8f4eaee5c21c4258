"""unio against a ViT and a small CNN on Fashion-MNIST classification, the same CPU minutes each.

    python benchmarks/fashion_peer.py --minutes 12          # results/fashion_peer.json: 8.8 min per arm, 40 min in all
    python benchmarks/fashion_peer.py --minutes 2 --eval-n 1000 --out /tmp/peer.json

Data: the official Fashion-MNIST split (Xiao, Rasul & Vollgraf 2017; ``apt-get install
dataset-fashion-mnist``): all 60,000 training images to train, the 10,000 test images to report.
Every arm reads the same pictures (each 28 px photo letterboxed to 32 px as unio reads it, grey
copied to RGB, [-1, 1]), in batches of --batch-size, with AdamW (lr --lr, weight decay 0.01), a
linear warm-up of 100 steps and a cosine decay, seed 0, --threads torch threads. Nothing was tuned
on the test images: every setting is fixed above, the same for all arms.

- unio: ``unio train`` from scratch (no ``model.init``) of a model of shapes-demo's shape (d_model
  192, 3 encoder and 3 decoder layers, 32 px images in 4 px patches) on the ``classify`` task: the
  prompt asks for the class, the model writes its name. It trains for --unio-steps steps (default:
  what --minutes allow at the step time of a 30-step probe, whose start-up makes it an over-estimate:
  --minutes 12 gave 596 steps in 8.8 min); its wall time, process start and
  DeepSpeed set-up included, is the budget of the other arms. Evaluated through ``unio.evaluate``
  (trie-constrained decoding over the ten names).
- ViT: transformers' ``ViTForImageClassification``, 32 px in 4 px patches, hidden 192, 3 heads, MLP
  768, with as many layers as bring its parameter count nearest unio's.
- CNN: a plain-torch network (three conv-BN-ReLU blocks of 64, 128, 256 channels with max-pooling,
  global average pooling and a linear layer); its parameter count is what it is (printed).
The ViT and the CNN train in this process, stepping until the budget is spent (their cosine runs
over the steps a 20-step probe says fit). Accuracy on --eval-n test images with Wilson 95% intervals.
Prints a table and writes JSON (default benchmarks/results/fashion_peer.json).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from lora import FILES, accuracy, wilson  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/usr/share/datasets/fashion-mnist")
SIZE = 32
RECIPE = """model: {{preset: tiny, image_size: {size}, patch_size: 4, d_model: 192, encoder_layers: 3, decoder_layers: 3,
        num_heads: 3}}
tokenizers: tokenizers/fashion
data:
  train:
    - {{source: idx, names: fashion-mnist, images: {data}/train-images-idx3-ubyte.gz,
       labels: {data}/train-labels-idx1-ubyte.gz, tasks: {{classify: 1}}}}
  eval:
    - {{source: idx, names: fashion-mnist, images: {data}/t10k-images-idx3-ubyte.gz,
       labels: {data}/t10k-labels-idx1-ubyte.gz}}
  eval_tasks: [classify]
train: {{steps: {steps}, batch_size: {batch}, lr: {lr}, warmup: 100, log_every: 50, eval_every: 100000000, eval_n: 16,
        save_every: {steps}, keep_checkpoints: 1, seed: 0}}
deepspeed: zero0
out: {out}
"""


def pictures(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 32, 32) in [-1, 1] as unio's pipeline makes them, and (N,) labels."""
    from unio.data.idx import read_idx
    from unio.images import letterbox, to_pixel_values
    from PIL import Image

    images, labels = (read_idx(DATA / f) for f in FILES[split])
    out = torch.empty(len(images), 3, SIZE, SIZE)
    for i in range(0, len(images), 1000):
        out[i:i + 1000] = to_pixel_values([letterbox(Image.fromarray(a).convert("RGB"), SIZE)[0] for a in images[i:i + 1000]])
    return out, torch.from_numpy(labels.astype(np.int64))


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        blocks, c = [], 3
        for width in (64, 128, 256):
            blocks += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c = width
        self.body, self.head = nn.Sequential(*blocks), nn.Linear(c, classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def vit(layers: int):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=SIZE, patch_size=4, num_channels=3, hidden_size=192, num_hidden_layers=layers,
                    num_attention_heads=3, intermediate_size=768, num_labels=10, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return ViTForImageClassification(cfg)


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def train_peer(name: str, model, logits_of, x, y, budget_s: float, args) -> dict:
    """AdamW + warm-up + cosine over the steps that fit ``budget_s`` (from a 20-step probe), stopped
    at the budget whatever happens; same batches (seed 0) as every arm."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    order, at = torch.randperm(len(x), generator=g), 0

    def batch():
        nonlocal order, at
        if at + args.batch_size > len(order):
            order, at = torch.randperm(len(x), generator=g), 0
        idx = order[at:at + args.batch_size]
        at += args.batch_size
        return x[idx], y[idx]

    model.train()
    t0, steps, total = time.perf_counter(), 0, None
    losses = []
    while time.perf_counter() - t0 < budget_s:
        if steps == 20 and total is None:  # the probe: how many steps fit
            total = max(21, int(budget_s / ((time.perf_counter() - t0) / 20)))
        horizon = total or 10**9
        lr = args.lr * min(1.0, (steps + 1) / 100) * (0.5 * (1 + math.cos(math.pi * min(1.0, steps / horizon))))
        for group in opt.param_groups:
            group["lr"] = lr
        xb, yb = batch()
        loss = F.cross_entropy(logits_of(model, xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        steps += 1
    return {"name": name, "params": params(model), "steps": steps, "train_s": round(time.perf_counter() - t0, 1),
            "samples": steps * args.batch_size, "final_loss": float(np.mean(losses[-50:]))}


@torch.inference_mode()
def test_accuracy(model, logits_of, x, y) -> list[bool]:
    model.eval()
    right = []
    for i in range(0, len(x), 500):
        right += (logits_of(model, x[i:i + 500]).argmax(-1) == y[i:i + 500]).tolist()
    return right


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training minutes of the unio arm (sets its steps)")
    ap.add_argument("--unio-steps", type=int, default=None, help="instead of --minutes")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-n", type=int, default=10000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fashion_peer.json"))
    args = ap.parse_args(argv)
    if not (DATA / FILES["train"][0]).exists():
        sys.exit("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")
    torch.set_num_threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    tmp = Path(tempfile.mkdtemp(prefix="unio-peer-"))

    def unio_run(steps: int, out: Path) -> float:
        recipe = tmp / f"recipe-{steps}.yaml"
        recipe.write_text(RECIPE.format(size=SIZE, data=DATA, steps=steps, batch=args.batch_size, lr=args.lr, out=out))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "unio", "train", str(recipe)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode:
            sys.exit(f"unio train failed:\n{proc.stderr[-4000:]}")
        return time.perf_counter() - t0

    steps = args.unio_steps
    if steps is None:  # a 30-step probe (its start-up counted) sets the steps that fit the minutes
        probe = unio_run(30, tmp / "probe")
        steps = max(50, int(args.minutes * 60 / (probe / 30)))
    run = tmp / "unio"
    budget = unio_run(steps, run)
    export = tmp / "unio-export"
    subprocess.run([sys.executable, "-m", "unio", "export", str(run), str(export)], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import unio

    entry = {"source": "idx", "names": "fashion-mnist", "images": str(DATA / FILES["test"][0]),
             "labels": str(DATA / FILES["test"][1])}
    pipe = unio.load(str(export), device="cpu")
    _, unio_right = accuracy(pipe, entry, args.eval_n, 0, tmp / "unio-predictions.jsonl")
    arms = [{"name": "unio", "params": pipe.model.num_parameters(), "steps": steps, "train_s": round(budget, 1),
             "samples": steps * args.batch_size, "right": unio_right}]
    print(f"unio: {steps} steps in {budget:.0f} s (the peers' budget)", flush=True)

    x, y = pictures("train")
    tx, ty = pictures("test")
    tx, ty = tx[:args.eval_n], ty[:args.eval_n]  # unio.evaluate reads the test file from its start too
    target = arms[0]["params"]
    layers = min(range(1, 25), key=lambda n: abs(params(vit(n)) - target))
    peers = [("ViT", vit(layers), lambda m, xb: m(pixel_values=xb).logits),
             ("CNN", (torch.manual_seed(0), SmallCNN())[1], lambda m, xb: m(xb))]
    for name, model, fn in peers:
        row = train_peer(name, model, fn, x, y, budget, args)
        row["right"] = test_accuracy(model, fn, tx, ty)
        arms.append(row)
        print(f"{name}: {row['steps']} steps in {row['train_s']} s", flush=True)

    print(f"\nFashion-MNIST, {args.eval_n} official test images; {budget / 60:.1f} training minutes per arm, "
          f"{args.threads} threads, batch {args.batch_size}, AdamW lr {args.lr}")
    print(f"{'arm':6s}{'params':>10s}{'steps':>8s}{'samples':>10s}{'accuracy':>10s}  95% CI")
    for a in arms:
        k, n = sum(a["right"]), len(a["right"])
        a["accuracy"], a["ci95"] = k / n, wilson(k, n)
        print(f"{a['name']:6s}{a['params'] / 1e6:9.2f}M{a['steps']:8d}{a['samples']:10d}{a['accuracy']:10.4f}  "
              f"[{a['ci95'][0]:.4f}, {a['ci95'][1]:.4f}]")
    result = {"benchmark": "fashion_peer", "command": "python benchmarks/fashion_peer.py " + " ".join(argv or sys.argv[1:]),
              "budget_s": budget, "threads": args.threads, "batch_size": args.batch_size, "lr": args.lr,
              "eval_n": args.eval_n, "vit_layers": layers, "torch": torch.__version__, "cpus": os.cpu_count(),
              "arms": [{k: v for k, v in a.items() if k != "right"} for a in arms], "target_accuracy": 0.93}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
