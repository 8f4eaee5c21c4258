"""Checkpoints of ``unio train`` runs: saving (atomically: a kill at any moment leaves the last
complete one), ``checkpoints/latest``, every generator's state, resuming a run where its last
checkpoint left it, and the full fp32 weights of a checkpoint (ZeRO shards consolidated).

A checkpoint is DeepSpeed's folder ``checkpoints/stepNNNNNNNN`` (model, optimizer and LR
scheduler states, and our client state: ``step``, the mixture's ``data`` position,
``records_skipped``) plus ``rng_rank{R}.pt`` per process.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import CheckpointError
from .engine import import_deepspeed
from .schedule import WarmupCosine

__all__ = ["CKPT_DIR", "LATEST", "latest_tag", "save", "rng_state", "set_rng_state", "resume",
           "truncate_jsonl", "consolidated_state_dict"]

CKPT_DIR = "checkpoints"
LATEST = "latest"


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag ``checkpoints/latest`` names, if that checkpoint is complete."""
    p = Path(ckpt_dir) / LATEST
    if not p.is_file():
        return None
    tag = p.read_text().strip()
    return tag if tag and (Path(ckpt_dir) / tag).is_dir() else None


def save(engine, ckpt_dir: Path, step: int, client_state: dict, rank: int, keep: int) -> str:
    """Save under a temporary tag, then rename it and atomically repoint ``latest``: a kill at any
    moment leaves the previous checkpoint and its pointer intact. Keeps the ``keep`` newest (0: all)."""
    tag, tmp = f"step{step:08d}", f".tmp-step{step:08d}"
    if rank == 0 and (ckpt_dir / tmp).exists():
        shutil.rmtree(ckpt_dir / tmp)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp, client_state=client_state, save_latest=False)
    torch.save(rng_state(), ckpt_dir / tmp / f"rng_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        if (ckpt_dir / tag).exists():
            shutil.rmtree(ckpt_dir / tag)
        os.replace(ckpt_dir / tmp, ckpt_dir / tag)
        pointer = ckpt_dir / f".{LATEST}.tmp"
        with open(pointer, "w") as f:
            f.write(tag)
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer, ckpt_dir / LATEST)
        tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step"))
        for old in tags[:-keep] if keep else []:
            if old != tag:
                shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    dist.barrier()
    return tag


def rng_state() -> dict:
    """Every global generator, as tensors (so that torch.load(weights_only=True) reads it back)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64)),
             "numpy_pos": torch.tensor([pos, has_gauss]), "numpy_gauss": torch.tensor([gauss], dtype=torch.float64),
             "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` recorded."""
    torch.set_rng_state(state["torch"])
    pos, has_gauss = (int(v) for v in state["numpy_pos"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss,
                         float(state["numpy_gauss"][0])))
    random.setstate((3, tuple(int(v) for v in state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def resume(engine, scheduler, mixture, recipe: dict, rank: int) -> tuple[int, int]:
    """Load the latest checkpoint (model, optimizer, schedule, data position, RNG); returns its step
    and the number of bad records skipped before it."""
    run, t = Path(recipe["out"]), recipe["train"]
    ckpt_dir = run / CKPT_DIR
    tag = latest_tag(ckpt_dir)
    stage, world = engine.zero_optimization_stage(), engine.dp_world_size
    saved = len(list((ckpt_dir / tag).glob("zero_pp_rank_*_optim_states.pt")))
    if stage > 0 and saved and saved != world:
        raise CheckpointError(
            f"checkpoint {ckpt_dir / tag} was written by {saved} process(es) with ZeRO stage {stage}, and this run "
            f"has {world}: ZeRO splits the optimizer state between processes, so resume it with {saved}. (A ZeRO "
            f"stage 0 checkpoint resumes on any number of processes.) To go on with {world} anyway, start a new run "
            f"from its weights: unio export {run} EXPORT_DIR, then --set model.init=EXPORT_DIR")
    _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                       load_lr_scheduler_states=True)
    if client is None:
        raise CheckpointError(f"could not load checkpoint {ckpt_dir / tag}; it may be incomplete")
    step = int(client["step"])
    recipe_schedule = vars(WarmupCosine(t["warmup"], t["steps"], t["min_lr_ratio"]))
    for fn in scheduler.lr_lambdas:  # the recipe's schedule, not the saved one: a run may be extended
        fn.__dict__.update(recipe_schedule)
    mixture.load_state_dict(client["data"])
    rng_file = ckpt_dir / tag / f"rng_rank{rank}.pt"
    if rng_file.is_file():  # absent when resuming on more processes than saved
        set_rng_state(torch.load(rng_file, weights_only=True))
    if rank == 0:
        truncate_jsonl(run / "metrics.jsonl", step)
        truncate_jsonl(run / "eval.jsonl", step)
    return step, int(client.get("records_skipped", 0))


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop records written after the checkpoint a resumed run continues from."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


def consolidated_state_dict(ckpt_dir: Path, tag: str) -> dict:
    """Full fp32 weights of a checkpoint: through DeepSpeed's zero_to_fp32 for ZeRO (and bf16)
    shards, else the module weights of the single model-states file."""
    d = ckpt_dir / tag
    if any(p.name.endswith("optim_states.pt") and "zero_pp_rank" in p.name for p in d.iterdir()):
        import_deepspeed()
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        with _quiet():
            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
        return {k: v.float() for k, v in state.items()}
    files = sorted(d.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise CheckpointError(f"{d} holds no model states file; the checkpoint is incomplete")
    blob = torch.load(files[0], map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in blob["module"].items()}


class _quiet:
    """Silence stdout (zero_to_fp32 prints per-tensor progress)."""

    def __enter__(self):
        self._stdout, sys.stdout = sys.stdout, open(os.devnull, "w")

    def __exit__(self, *exc):
        sys.stdout.close()
        sys.stdout = self._stdout
