"""Training under DeepSpeed: ``unio train RECIPE`` (:func:`main`) and :func:`train`, the loop.

Every run, one CPU process or many GPUs, goes through ``deepspeed.initialize`` with the recipe's
DeepSpeed JSON (ZeRO 0-3, CPU optimizer offload, accumulation, clipping, bf16 on GPU / fp32 on
CPU). Launch several processes with the usual tools::

    unio train recipes/shapes-tiny.yaml                                   # one process
    torchrun --nproc_per_node 2 -m unio train recipes/shapes-tiny.yaml    # CPU (gloo) or GPUs
    deepspeed --module unio train recipes/shapes-small.yaml
    accelerate launch -m unio train recipes/shapes-small.yaml

``train.batch_size`` is the global batch: the mixture draws the same samples for any number of
processes, and the loss is normalised by the number of target tokens of the whole global batch,
so N processes train exactly the model one process would (up to float summation order).

A run directory holds ``recipe.yaml`` (resolved), ``tokenizers/`` (what the model reads),
``config.json`` (the model's), ``metrics.jsonl``, ``eval.jsonl``, ``checkpoints/`` (DeepSpeed
checkpoints; ``checkpoints/latest`` names the last complete one) and ``tb/`` (TensorBoard).
"""
from __future__ import annotations

import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.formats import open_source
from ..data.mixture import ExampleDataset, Mixture, RankBatchSampler
from ..model.lora import lora_settings, parameter_counts
from ..model.modeling_unio import shift_tokens_right
from ..recipe import load_recipe
from ..tasks import TaskContext
from .checkpoint import CKPT_DIR, resume as resume_from, save
from .engine import build_engine, import_deepspeed, init_distributed
from .evaluator import Evaluator
from .run_export import INIT_RECORD, lineage
from .prepare import build_model, collate_examples, make_example, prepare_run, run_classes

__all__ = ["main", "train"]


def main(args) -> int:
    """``unio train RECIPE [--set key=value ...] [--resume]``."""
    recipe = load_recipe(args.recipe, args.overrides)
    train(recipe, resume=args.resume)
    return 0


def train(recipe: dict, resume: bool = False, stop_after: int | None = None) -> dict:
    """Run (or continue) the training a resolved recipe describes; returns the last logged metrics.

    ``stop_after`` ends this invocation after that step (as an interruption would; the schedule
    stays the recipe's), for tests and benchmarks of resumption.
    """
    deepspeed = import_deepspeed()
    rank, world = init_distributed(deepspeed)
    run, t, d, m = Path(recipe["out"]), recipe["train"], recipe["data"], recipe["model"]
    ckpt_dir = run / CKPT_DIR
    prepare_run(recipe, run, resume, rank)
    dist.barrier()

    if m["init"]:  # a fine-tuned model keeps its input size and vocabulary
        meta = json.loads((Path(m["init"]) / "unio.json").read_text())
        m["image_size"], m["patch_size"] = meta["image_size"], meta["patch_size"]
        recipe["num_bins"] = meta.get("num_bins", recipe["num_bins"])
        if rank == 0 and not (run / INIT_RECORD).is_file():  # the lineage outlives the init export
            (run / INIT_RECORD).write_text(json.dumps(lineage(m["init"], meta), indent=2) + "\n")
    sources = [open_source(spec, d["on_bad_record"]) for spec in d["train"]]
    for i, s in enumerate(sources):
        if s.skipped and rank == 0:
            print(f"data.train[{i}]: skipped {s.skipped} bad records, e.g. {s.bad.examples[0]}", file=sys.stderr)
    classes = run_classes(recipe, sources)
    ctx = TaskContext.from_dir(run / "tokenizers", image_size=m["image_size"], patch_size=m["patch_size"],
                               prompts_dir=recipe["prompts"], classes=classes, num_bins=recipe["num_bins"])
    ctx.add_task_prompts({k for s in d["train"] for k in s["tasks"]} | set(d["eval_tasks"] or []))
    model = build_model(recipe, ctx)
    if rank == 0 and lora_settings(model):
        trainable, total = parameter_counts(model)
        tqdm.write(f"LoRA r={t['lora']['r']} on {len(lora_settings(model)['modules'])} Linear layers: {trainable:,} "
                   f"trainable parameters of {total:,} ({100 * trainable / total:.2f}%)")
    if rank == 0:  # what export needs besides the weights: the run directory stands on its own
        model.config.save_pretrained(run)
        (run / "classes.json").write_text(json.dumps(classes))
        ctx.prompts.save(run / "prompts")
    engine, scheduler, ds_config = build_engine(deepspeed, recipe, model, world)
    if engine.zero_optimization_stage() == 3 and world > 1:  # same module calls on every rank
        engine.module.max_length_groups = 1

    mixture = Mixture(sources, [s["tasks"] for s in d["train"]], [s.get("weight", 1.0) for s in d["train"]],
                      seed=t["seed"], batch_size=t["batch_size"])
    step, skipped = resume_from(engine, scheduler, mixture, recipe, rank) if resume else (0, 0)
    if not resume:  # dropout streams differ per rank; everything the data needs is seeded per sample
        torch.manual_seed(t["seed"] + 1000 * rank)
        np.random.seed(t["seed"] + 1000 * rank)
    dataset = ExampleDataset(mixture, partial(make_example, ctx=ctx), skip_bad=d["on_bad_record"] == "skip")
    batches = _batches(dataset, mixture, recipe, rank, world, engine.gradient_accumulation_steps(), ctx)

    task_names = sorted({k for s in d["train"] for k in s["tasks"]})
    evaluator = None
    if d["eval"]:
        evaluator = Evaluator(recipe, d["eval_tasks"] or task_names, rank, zero3=engine.zero_optimization_stage() == 3,
                              explicit=d["eval_tasks"] is not None)
    writer = _tensorboard(run, purge_step=step + 1 if resume else None) if rank == 0 else None
    dtype = torch.bfloat16 if ds_config["bf16"]["enabled"] else torch.float32
    window = _Window(task_names, engine.device)
    window.skipped_total = skipped
    bar = tqdm(total=t["steps"], initial=step, disable=rank != 0, dynamic_ncols=True, desc="train")
    last: dict = {}
    engine.train()
    while step < t["steps"]:
        lr = scheduler.get_last_lr()[0]  # the rate this step uses
        _train_step(engine, batches, window, ctx, dtype, world)
        step += 1
        window.samples += t["batch_size"]
        bar.update(1)
        if step % t["log_every"] == 0 or step == t["steps"]:
            last = window.flush(step, lr)
            if rank == 0:
                bar.set_postfix(loss=f"{last['loss']:.4f}", samples_per_s=f"{last['samples_per_s']:.1f}")
                _log(run / "metrics.jsonl", writer, "train", last)
        paused = time.perf_counter()  # evaluation and saving do not count against throughput
        if evaluator and ((t["eval_every"] and step % t["eval_every"] == 0) or step == t["steps"]):
            scores = evaluator(engine, ctx, step)
            if rank == 0:
                _log(run / "eval.jsonl", writer, "eval", {"step": step, **scores})
                tqdm.write(f"step {step} eval: " + ", ".join(f"{k}={v:.3f}" for k, v in scores.items()))
            last = {**last, **scores}
        if (t["save_every"] and step % t["save_every"] == 0) or step == t["steps"]:
            client = {"step": step, "data": mixture.state_after(step), "records_skipped": window.skipped_total}
            save(engine, ckpt_dir, step, client, rank, t["keep_checkpoints"])
        window.t0 += time.perf_counter() - paused
        if stop_after is not None and step >= stop_after:
            break
    bar.close()
    if writer:
        writer.close()
    return last


def _batches(dataset, mixture, recipe: dict, rank: int, world: int, grad_accum: int, ctx):
    """This rank's micro-batches, step after step, from the mixture's current position."""
    t, workers = recipe["train"], recipe["data"]["num_workers"]
    sampler = RankBatchSampler(mixture, rank=rank, world_size=world, grad_accum=grad_accum, steps=t["steps"])
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, prefetch_factor=4 if workers else None,
        collate_fn=partial(collate_examples, ctx=ctx, multiple=t["pad_to_multiple_of"]))
    return iter(loader)


def _train_step(engine, batches, window, ctx, dtype, world: int) -> None:
    """One optimizer step over this rank's micro-batches. The loss is normalised by the target weight
    of the whole GLOBAL batch (all ranks, all micro-batches), so that the update is the same for any
    number of processes and accumulation steps; DeepSpeed averages over both, hence world x gas."""
    gas = engine.gradient_accumulation_steps()
    t0 = time.perf_counter()
    micro_batches = [next(batches) for _ in range(gas)]
    window.data_s += time.perf_counter() - t0
    total = torch.tensor([sum(float(b["label_weights"].sum()) for b, _, _ in micro_batches)],
                         dtype=torch.float64, device=engine.device)
    dist.all_reduce(total)
    scale = world * gas / max(float(total), 1e-8)
    for batch, tasks, skipped in micro_batches:
        window.sums[-1] += skipped
        inputs = {k: (v.to(engine.device, dtype) if v.is_floating_point() else v.to(engine.device))
                  for k, v in batch.items() if v is not None}
        labels, weights = inputs.pop("labels"), inputs.pop("label_weights").float()
        inputs["decoder_input_ids"] = shift_tokens_right(labels, ctx.vocab.pad_id, ctx.vocab.bos_id)
        keep = labels != -100  # logits only where there is a target; the decoder runs in length groups
        out = engine(**inputs, logits_mask=keep)
        logits = out.logits  # (N, V)
        wce = F.cross_entropy(logits.float(), labels[keep], reduction="none") * weights[keep]
        # the contrastive term (models with an embedding head): a mean over this micro-batch's pairs,
        # which DeepSpeed's averaging over processes and micro-batches turns into the global mean
        contrastive = getattr(out, "contrastive_loss", None)
        engine.backward(wce.sum() * scale + (contrastive if contrastive is not None else 0.0))
        if contrastive is not None and "contrast_ids" in inputs and int(inputs["contrast_mask"].any(1).sum()) > 1:
            window.contrast += torch.stack([contrastive.detach().double(), torch.ones_like(window.contrast[0])])
        engine.step()
        rows = keep.nonzero()[:, 0]
        window.add(torch.zeros(len(labels), dtype=wce.dtype, device=wce.device).index_add_(0, rows, wce.detach()),
                   weights.sum(1), tasks)


class _Window:
    """Sums of weighted loss and weight per task between two log records, reduced over ranks."""

    def __init__(self, names: list[str], device):
        self.names, self.device = list(names), device
        # per task: weighted loss, then weight; last: bad records replaced (on_bad_record: skip)
        self.sums = torch.zeros(2 * len(names) + 1, dtype=torch.float64, device=device)
        self.samples, self.data_s, self.t0 = 0, 0.0, time.perf_counter()
        self.skipped_total = 0  # over all ranks since the run started
        self.contrast = torch.zeros(2, dtype=torch.float64, device=device)  # contrastive loss: sum, micro-batches

    def add(self, wce_per_sample, w_per_sample, tasks: list[str]):
        idx = torch.tensor([self.names.index(k) for k in tasks], device=self.device)
        self.sums.index_add_(0, idx, wce_per_sample.double())
        self.sums.index_add_(0, idx + len(self.names), w_per_sample.double())

    def flush(self, step: int, lr: float) -> dict:
        dist.all_reduce(self.sums)
        self.skipped_total += int(self.sums[-1])
        n = len(self.names)
        loss_sum, w_sum = self.sums[:n].cpu().numpy(), self.sums[n:2 * n].cpu().numpy()
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rec = {"step": step, "loss": float(loss_sum.sum() / max(w_sum.sum(), 1e-8)), "lr": float(lr),
               "samples_per_s": self.samples / elapsed, "data_wait": self.data_s / elapsed}
        if self.skipped_total:
            rec["records_skipped"] = self.skipped_total  # since the run started, resumes included
        for k, name in enumerate(self.names):
            if w_sum[k] > 0:
                rec[f"loss/{name}"] = float(loss_sum[k] / w_sum[k])
        dist.all_reduce(self.contrast)
        if self.contrast[1] > 0:
            rec["loss/contrastive"] = float(self.contrast[0] / self.contrast[1])
        self.sums.zero_()
        self.contrast.zero_()
        self.samples, self.data_s, self.t0 = 0, 0.0, time.perf_counter()
        return rec


def _tensorboard(run: Path, purge_step: int | None = None):
    """A TensorBoard writer for run/tb when tensorboard is installed. On resume, events logged after
    the checkpoint by the interrupted process are purged, as metrics.jsonl is truncated."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional (the dev extra installs it)
    except Exception:
        return None
    # TensorBoard reads a folder's event files in name order, and a name starts with the second it
    # was made in; within one second the order falls to a per-process counter ("10" before "9").
    # A resumed run's file must come last for its purge to apply, so it starts in a later second.
    stamps = [int(p.name.split(".")[3]) for p in (run / "tb").glob("events.out.tfevents.*")
              if p.name.split(".")[3].isdigit()]
    if stamps and time.time() < max(stamps) + 1:
        time.sleep(max(stamps) + 1 - time.time())
    return SummaryWriter(str(run / "tb"), purge_step=purge_step)


def _log(path: Path, writer, prefix: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer:
        for key, value in record.items():
            if key != "step":
                writer.add_scalar(f"{prefix}/{key}", value, record["step"])
