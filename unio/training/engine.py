"""DeepSpeed for ``unio train``: importing it for this machine, joining (or making) the process
group, the recipe's DeepSpeed JSON with its ``"auto"`` values filled, the optimizer's parameter
groups, and ``deepspeed.initialize`` with our AdamW and the warmup + cosine schedule.

deepspeed itself is imported inside :func:`import_deepspeed` only: it is slow to import and must
see ``DS_ACCELERATOR`` first.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import RecipeError
from .schedule import WarmupCosine

__all__ = ["import_deepspeed", "init_distributed", "build_ds_config", "param_groups", "build_engine"]


def import_deepspeed():
    """Import deepspeed for this machine: the CPU accelerator when there is no GPU (it must be chosen
    before the import), and none of the shared-memory collective kernels DeepSpeed compiles on first
    use (minutes of C++ build) unless UNIO_DS_SHM=1: training collectives go through torch.distributed
    either way; the kernels only serve tensor-parallel inference."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed

    ds_torch_comm = importlib.import_module("deepspeed.comm.torch")  # `deepspeed.comm.torch` the attribute is torch
    if os.environ.get("UNIO_DS_SHM") != "1" and hasattr(ds_torch_comm, "build_shm_op"):
        ds_torch_comm.build_shm_op = lambda: None
    if not os.environ.get("UNIO_VERBOSE"):
        from deepspeed.utils import logger
        logger.setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=r".*(reduce_scatter_tensor|all_gather_into_tensor).*deprecated")
    return deepspeed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(deepspeed):
    """Join the process group a launcher set up (RANK/WORLD_SIZE in the environment), or make a
    one-process group of our own so that a plain ``unio train`` runs through the same engine."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            deepspeed.init_distributed(dist_backend=backend)
        else:
            os.environ.setdefault("LOCAL_RANK", "0")
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
            deepspeed.init_distributed(dist_backend=backend)
    return dist.get_rank(), dist.get_world_size()


def build_ds_config(recipe: dict, world_size: int, use_cuda: bool) -> dict:
    """The recipe's DeepSpeed JSON with its ``"auto"`` values filled from the recipe."""
    path = Path(recipe["deepspeed"])
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RecipeError(f"deepspeed: {path} line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if "scheduler" in cfg:
        raise RecipeError(f"deepspeed: {path} has a scheduler section, but the schedule is the recipe's "
                          "(train.lr, warmup, min_lr_ratio: linear warmup then cosine); remove the section")
    t = recipe["train"]
    B = t["batch_size"]
    micro = t["micro_batch_size"] or max(1, B // world_size)
    if B % (micro * world_size):
        raise RecipeError(f"train.batch_size {B} must be a multiple of train.micro_batch_size {micro} x "
                          f"{world_size} processes")
    auto = {"train_batch_size": B, "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": B // (micro * world_size), "gradient_clipping": t["grad_clip"]}
    for key, value in auto.items():
        given = cfg.get(key, "auto")
        if given != "auto" and given != value:
            raise RecipeError(f"deepspeed: {path} sets {key}={given} but the recipe implies {value}; write "
                              f'"{key}": "auto" and set it in the recipe (train.batch_size, micro_batch_size, grad_clip)')
        cfg[key] = value
    precision = t["precision"]
    bf16 = precision == "bf16" or (precision == "auto" and use_cuda and torch.cuda.is_bf16_supported())
    cfg.setdefault("bf16", {})["enabled"] = bool(bf16) if cfg["bf16"].get("enabled", "auto") == "auto" else cfg["bf16"]["enabled"]
    if isinstance(cfg.get("fp16", {}).get("enabled"), str):
        cfg["fp16"]["enabled"] = False
    opt = cfg.get("optimizer")
    if opt is not None:
        params = opt.setdefault("params", {})
        for key, value in (("lr", t["lr"]), ("betas", list(t["betas"])), ("eps", t["eps"]),
                           ("weight_decay", t["weight_decay"])):
            if params.get(key, "auto") == "auto":
                params[key] = value
    zero = cfg.setdefault("zero_optimization", {"stage": 0})
    if opt is None and zero.get("offload_optimizer", {}).get("device", "none") != "none":
        cfg.setdefault("zero_force_ds_cpu_optimizer", False)  # our torch AdamW runs on the offloaded states
    cfg.setdefault("steps_per_print", 10 ** 9)
    cfg.setdefault("wall_clock_breakdown", False)
    return cfg


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices; no decay for norms, biases and embeddings (GPT-2 / nanoGPT practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "embed" not in name and "shared" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(deepspeed, recipe: dict, model, world: int):
    """deepspeed.initialize with our AdamW (unless the DeepSpeed JSON names an optimizer) and the
    warmup + cosine schedule; activation checkpointing when the recipe asks for it. Returns the
    engine, its LR scheduler and the filled DeepSpeed config."""
    t = recipe["train"]
    if t["activation_checkpointing"]:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    use_cuda = torch.cuda.is_available()
    ds_config = build_ds_config(recipe, world, use_cuda)
    groups = param_groups(model, t["weight_decay"])
    optimizer = None
    if "optimizer" not in ds_config:
        offload = ds_config["zero_optimization"].get("offload_optimizer", {}).get("device", "none") != "none"
        optimizer = torch.optim.AdamW(groups, lr=t["lr"], betas=tuple(t["betas"]), eps=t["eps"],
                                      fused=use_cuda and not offload)
    schedule = WarmupCosine(t["warmup"], t["steps"], t["min_lr_ratio"])
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, model_parameters=groups if optimizer is None else None,
        lr_scheduler=partial(_lambda_lr, schedule=schedule), config=ds_config)
    return engine, scheduler, ds_config


def _lambda_lr(optimizer, schedule):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
