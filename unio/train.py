"""Training under DeepSpeed (``unio train RECIPE``) and export of a run (``unio export RUN OUT``).

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
import math
import os
import random
import re
import shlex
import shutil
import socket
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CheckpointError, InputError, RecipeError

__all__ = ["main", "train", "export", "build_ds_config", "WarmupCosine", "latest_tag"]

CKPT_DIR = "checkpoints"
LATEST = "latest"
INIT_RECORD = "init.json"  # the model.init export's lineage, written when a run starts


# ----------------------------------------------------------------------------- environment
def import_deepspeed():
    """Import deepspeed for this machine: the CPU accelerator when there is no GPU (it must be chosen
    before the import), and none of the shared-memory collective kernels DeepSpeed compiles on first
    use (minutes of C++ build) unless UNIO_DS_SHM=1: training collectives go through torch.distributed
    either way; the kernels only serve tensor-parallel inference."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    import importlib

    import deepspeed

    ds_torch_comm = importlib.import_module("deepspeed.comm.torch")  # `deepspeed.comm.torch` the attribute is torch
    if os.environ.get("UNIO_DS_SHM") != "1" and hasattr(ds_torch_comm, "build_shm_op"):
        ds_torch_comm.build_shm_op = lambda: None
    if not os.environ.get("UNIO_VERBOSE"):
        import logging
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
    import torch.distributed as dist

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


# ----------------------------------------------------------------------------- configuration
class WarmupCosine:
    """LR multiplier: linear warmup to 1 over ``warmup`` steps, then cosine to ``min_ratio`` at ``steps``."""

    def __init__(self, warmup: int, steps: int, min_ratio: float):
        self.warmup, self.steps, self.min_ratio = int(warmup), int(steps), float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


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


def _param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices; no decay for norms, biases and embeddings (GPT-2 / nanoGPT practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "embed" not in name and "shared" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------- run setup
def _prepare_run(recipe: dict, run: Path, resume: bool, rank: int) -> None:
    """Rank 0 writes recipe.yaml and tokenizers/ (copied, or a text tokenizer trained on the data)."""
    from .recipe import save_recipe

    ckpts = run / CKPT_DIR
    if not resume and latest_tag(ckpts) is not None:
        raise RecipeError(f"{run} already holds checkpoints; pass --resume to continue that run, or set "
                          "another out= (e.g. --set out=runs/new)")
    if resume and latest_tag(ckpts) is None:
        raise CheckpointError(f"--resume: {ckpts} holds no complete checkpoint; start the run without --resume")
    if rank != 0:
        return
    run.mkdir(parents=True, exist_ok=True)
    command = "unio train " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["train"] else None
    save_recipe(recipe, run / ("recipe.yaml" if not resume else "recipe.resume.yaml"), command=command)
    if not resume:  # a run that died before its first checkpoint starts over
        for name in ("metrics.jsonl", "eval.jsonl", INIT_RECORD):
            (run / name).unlink(missing_ok=True)
    tok = run / "tokenizers"
    if resume and (tok / "text.model").is_file():
        return
    tok.mkdir(exist_ok=True)
    src = Path(recipe["model"]["init"] or recipe["tokenizers"])
    if (src / "image").is_dir():
        shutil.copytree(src / "image", tok / "image", dirs_exist_ok=True)
    if recipe["text_tokenizer"]["train"]:
        _train_text_tokenizer(recipe, tok / "text.model")
    else:
        shutil.copy2(src / "text.model", tok / "text.model")


def _train_text_tokenizer(recipe: dict, path: Path) -> None:
    """SentencePiece over the training sources' texts (captions, questions, answers, labels) and the prompts."""
    from .data.formats import open_source
    from .prompts import Prompts
    from .tokenizers.text import TextTokenizer

    tt = recipe["text_tokenizer"]
    texts: list[str] = []
    budget = tt["max_texts"] // len(recipe["data"]["train"])
    for spec in recipe["data"]["train"]:
        texts.extend(open_source(spec, recipe["data"]["on_bad_record"]).texts(budget))
    prompts = Prompts.load(recipe["prompts"])
    for task in prompts.tasks:  # prompt words recur in every example: repeat them so they get whole pieces
        templates = prompts.templates(task) + [prompts.unconditional(task) or ""]
        words = [re.sub(r"\{\w+\}", " ", tpl).strip() for tpl in templates]
        texts.extend([w for w in words if w] * 20)
    if not texts:
        raise RecipeError("text_tokenizer.train: the training sources hold no text to learn from")
    TextTokenizer.train(texts, vocab_size=tt["vocab_size"], path=path, model_type=tt["model_type"])


def _classes(recipe: dict, sources) -> dict:
    """Closed label sets the export records (classify without labels, detection labels): the init
    model's or the tokenizer folder's, then those the training sources declare, in first-seen order."""
    tok = Path(recipe["model"]["init"] or recipe["tokenizers"])
    known = {}
    if recipe["model"]["init"]:
        known = json.loads((tok / "unio.json").read_text()).get("classes") or {}
    elif (tok / "classes.json").is_file():
        known = json.loads((tok / "classes.json").read_text())
    out = {k: dict.fromkeys(known.get(k, [])) for k in ("image", "object")}
    for s in sources:
        out["image"].update(dict.fromkeys(getattr(s, "classes", [])))
        out["object"].update(dict.fromkeys(getattr(s, "object_labels", [])))
    return {k: list(v) for k, v in out.items() if v}


def _build_model(recipe: dict, ctx):
    from .model import UnioConfig, UnioForConditionalGeneration
    from .recipe import model_overrides

    m = recipe["model"]
    torch.manual_seed(recipe["train"]["seed"])
    if m["init"]:  # overrides (e.g. dropout) apply to the config before the modules are built
        return UnioForConditionalGeneration.from_pretrained(m["init"], vocab=ctx.vocab, dtype=torch.float32,
                                                            **model_overrides(m))
    config = UnioConfig.preset(m["preset"], vocab=ctx.vocab, image_size=m["image_size"],
                               patch_size=m["patch_size"], **model_overrides(m))
    return UnioForConditionalGeneration(config)


def _make_example(task_name: str, sample: dict, rng, ctx):
    from .tasks import get_task

    task = get_task(task_name)
    if not task.can_build(sample):
        return None
    return task.build(sample, ctx, rng)


def _collate(examples, ctx, multiple):
    from .data.collate import collate

    batch = collate(examples, ctx.vocab, multiple, image_size=ctx.image_size, patch_size=ctx.patch_size)
    return batch, [e.task for e in examples], sum(e.meta.get("skipped_records", 0) for e in examples)


# ----------------------------------------------------------------------------- checkpoints
def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag ``checkpoints/latest`` names, if that checkpoint is complete."""
    p = Path(ckpt_dir) / LATEST
    if not p.is_file():
        return None
    tag = p.read_text().strip()
    return tag if tag and (Path(ckpt_dir) / tag).is_dir() else None


def _save(engine, ckpt_dir: Path, step: int, client_state: dict, rank: int, keep: int) -> str:
    """Save under a temporary tag, then rename it and atomically repoint ``latest``: a kill at any
    moment leaves the previous checkpoint and its pointer intact."""
    import torch.distributed as dist

    tag, tmp = f"step{step:08d}", f".tmp-step{step:08d}"
    if rank == 0 and (ckpt_dir / tmp).exists():
        shutil.rmtree(ckpt_dir / tmp)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp, client_state=client_state, save_latest=False)
    torch.save(_rng_state(), ckpt_dir / tmp / f"rng_rank{rank}.pt")
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


def _rng_state() -> dict:
    """Every global generator, as tensors (so that torch.load(weights_only=True) reads it back)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64)),
             "numpy_pos": torch.tensor([pos, has_gauss]), "numpy_gauss": torch.tensor([gauss], dtype=torch.float64),
             "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss = (int(v) for v in state["numpy_pos"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss,
                         float(state["numpy_gauss"][0])))
    random.setstate((3, tuple(int(v) for v in state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------- evaluation
class Evaluator:
    """Periodic held-out evaluation through :func:`unio.evaluate.evaluate` (each task's canonical
    prompt, generation through the Pipeline, parse and metric: the numbers ``unio eval`` reports).

    Rank 0 evaluates while the others wait. Under ZeRO-3 no rank holds whole weights, so all ranks
    first gather them, parameter by parameter, into a plain copy of the model on rank 0. The global
    RNG state is left as it was, so evaluating never changes the training that follows.
    """

    def __init__(self, recipe: dict, tasks: list[str], rank: int, zero3: bool, explicit: bool):
        from .data.formats import open_source
        from .tasks import get_task

        self.n, self.rank, self.zero3 = recipe["train"]["eval_n"], rank, zero3
        self.plan: list[tuple[dict, list[str]]] = []  # (data entry, the tasks it can serve)
        for i, spec in enumerate(recipe["data"]["eval"]):
            source = open_source(spec, recipe["data"]["on_bad_record"])
            samples = [source[j] for j in range(min(len(source), 50))]
            served = [t for t in tasks if any(get_task(t).can_build(x) for x in samples)]
            if explicit and len(served) < len(tasks):  # fail now, not at the first evaluation
                missing = sorted(set(tasks) - set(served))
                raise RecipeError(f"data.eval[{i}] cannot serve the task(s) {missing}: its samples lack what they "
                                  "need (captions, questions, boxes, depth, ...); change data.eval_tasks")
            if served:
                self.plan.append((spec, served))

    def __call__(self, engine, ctx, step: int) -> dict[str, float]:
        import torch.distributed as dist

        from .evaluate import evaluate
        from .pipeline import Pipeline

        scores: dict[str, float] = {}
        devices = [engine.device] if torch.device(engine.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            model = self._whole_model(engine) if self.zero3 else engine.module
            if self.rank == 0:
                was_training = model.training
                model.eval()
                pipe = Pipeline(model, ctx, {"step": step})
                for k, (spec, tasks) in enumerate(self.plan):
                    results = evaluate(pipe, spec, tasks=tasks, n=self.n, progress=False)
                    prefix = f"eval{k}/" if len(self.plan) > 1 else ""
                    for task, metrics in results.items():
                        if task == "run":
                            continue
                        for key, value in metrics.items():
                            if key not in ("n", "seconds", "bad_samples") and isinstance(value, (int, float)):
                                scores[f"{prefix}{task}/{key}"] = float(value)
                model.train(was_training)
        dist.barrier()
        return scores

    def _whole_model(self, engine):
        """Rank 0: a full copy of the ZeRO-3 partitioned model (None elsewhere); a collective."""
        import deepspeed

        from .model import UnioForConditionalGeneration

        module = engine.module
        copy = UnioForConditionalGeneration(module.config) if self.rank == 0 else None
        target = dict(copy.named_parameters()) if copy is not None else {}
        for name, param in module.named_parameters():
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if copy is not None:
                    target[name].data.copy_(param.data.float())
        if copy is not None:
            copy.to(engine.device, next(module.parameters()).dtype)
        return copy


# ----------------------------------------------------------------------------- training
def main(args) -> int:
    """``unio train RECIPE [--set key=value ...] [--resume]``."""
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    train(recipe, resume=args.resume)
    return 0


def train(recipe: dict, resume: bool = False, stop_after: int | None = None) -> dict:
    """Run (or continue) the training a resolved recipe describes; returns the last logged metrics.

    ``stop_after`` ends this invocation after that step (as an interruption would; the schedule
    stays the recipe's), for tests and benchmarks of resumption.
    """
    deepspeed = import_deepspeed()
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from .data.formats import open_source
    from .data.mixture import ExampleDataset, Mixture
    from .tasks import TaskContext

    rank, world = init_distributed(deepspeed)
    run, t, d, m = Path(recipe["out"]), recipe["train"], recipe["data"], recipe["model"]
    ckpt_dir = run / CKPT_DIR
    _prepare_run(recipe, run, resume, rank)
    dist.barrier()

    if m["init"]:  # a fine-tuned model keeps its input size and vocabulary
        meta = json.loads((Path(m["init"]) / "unio.json").read_text())
        m["image_size"], m["patch_size"] = meta["image_size"], meta["patch_size"]
        recipe["num_bins"] = meta.get("num_bins", recipe["num_bins"])
        if rank == 0 and not (run / INIT_RECORD).is_file():  # the lineage outlives the init export
            (run / INIT_RECORD).write_text(json.dumps(_lineage(m["init"], meta), indent=2) + "\n")
    sources = [open_source(spec, d["on_bad_record"]) for spec in d["train"]]
    for i, s in enumerate(sources):
        if s.skipped and rank == 0:
            print(f"data.train[{i}]: skipped {s.skipped} bad records, e.g. {s.bad.examples[0]}", file=sys.stderr)
    classes = _classes(recipe, sources)
    ctx = TaskContext.from_dir(run / "tokenizers", image_size=m["image_size"], patch_size=m["patch_size"],
                               prompts_dir=recipe["prompts"], classes=classes, num_bins=recipe["num_bins"])
    model = _build_model(recipe, ctx)
    if rank == 0:  # what export needs besides the weights: the run directory stands on its own
        model.config.save_pretrained(run)
        (run / "classes.json").write_text(json.dumps(classes))
        ctx.prompts.save(run / "prompts")
    engine, scheduler, ds_config = _engine(deepspeed, recipe, model, world)
    if engine.zero_optimization_stage() == 3 and world > 1:  # same module calls on every rank
        engine.module.max_length_groups = 1

    mixture = Mixture(sources, [s["tasks"] for s in d["train"]], [s.get("weight", 1.0) for s in d["train"]],
                      seed=t["seed"], batch_size=t["batch_size"])
    step, skipped = _resume(engine, scheduler, mixture, recipe, rank) if resume else (0, 0)
    if not resume:  # dropout streams differ per rank; everything the data needs is seeded per sample
        torch.manual_seed(t["seed"] + 1000 * rank)
        np.random.seed(t["seed"] + 1000 * rank)
    dataset = ExampleDataset(mixture, partial(_make_example, ctx=ctx), skip_bad=d["on_bad_record"] == "skip")
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
            _save(engine, ckpt_dir, step, client, rank, t["keep_checkpoints"])
        window.t0 += time.perf_counter() - paused
        if stop_after is not None and step >= stop_after:
            break
    bar.close()
    if writer:
        writer.close()
    return last


def _engine(deepspeed, recipe: dict, model, world: int):
    """deepspeed.initialize with our AdamW (unless the DeepSpeed JSON names an optimizer) and the
    warmup + cosine schedule; activation checkpointing when the recipe asks for it."""
    t = recipe["train"]
    if t["activation_checkpointing"]:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    use_cuda = torch.cuda.is_available()
    ds_config = build_ds_config(recipe, world, use_cuda)
    groups = _param_groups(model, t["weight_decay"])
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


def _resume(engine, scheduler, mixture, recipe: dict, rank: int) -> tuple[int, int]:
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
        _set_rng_state(torch.load(rng_file, weights_only=True))
    if rank == 0:
        _truncate_jsonl(run / "metrics.jsonl", step)
        _truncate_jsonl(run / "eval.jsonl", step)
    return step, int(client.get("records_skipped", 0))


def _batches(dataset, mixture, recipe: dict, rank: int, world: int, grad_accum: int, ctx):
    """This rank's micro-batches, step after step, from the mixture's current position."""
    from .data.mixture import RankBatchSampler

    t, workers = recipe["train"], recipe["data"]["num_workers"]
    sampler = RankBatchSampler(mixture, rank=rank, world_size=world, grad_accum=grad_accum, steps=t["steps"])
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, prefetch_factor=4 if workers else None,
        collate_fn=partial(_collate, ctx=ctx, multiple=t["pad_to_multiple_of"]))
    return iter(loader)


def _train_step(engine, batches, window, ctx, dtype, world: int) -> None:
    """One optimizer step over this rank's micro-batches. The loss is normalised by the target weight
    of the whole GLOBAL batch (all ranks, all micro-batches), so that the update is the same for any
    number of processes and accumulation steps; DeepSpeed averages over both, hence world x gas."""
    import torch.distributed as dist

    from .model.modeling_unio import shift_tokens_right

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
        logits = engine(**inputs, logits_mask=keep).logits  # (N, V)
        wce = F.cross_entropy(logits.float(), labels[keep], reduction="none") * weights[keep]
        engine.backward(wce.sum() * scale)
        engine.step()
        rows = keep.nonzero()[:, 0]
        window.add(torch.zeros(len(labels), dtype=wce.dtype, device=wce.device).index_add_(0, rows, wce.detach()),
                   weights.sum(1), tasks)


def _lambda_lr(optimizer, schedule):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


class _Window:
    """Sums of weighted loss and weight per task between two log records, reduced over ranks."""

    def __init__(self, names: list[str], device):
        self.names, self.device = list(names), device
        # per task: weighted loss, then weight; last: bad records replaced (on_bad_record: skip)
        self.sums = torch.zeros(2 * len(names) + 1, dtype=torch.float64, device=device)
        self.samples, self.data_s, self.t0 = 0, 0.0, time.perf_counter()
        self.skipped_total = 0  # over all ranks since the run started

    def add(self, wce_per_sample, w_per_sample, tasks: list[str]):
        idx = torch.tensor([self.names.index(k) for k in tasks], device=self.device)
        self.sums.index_add_(0, idx, wce_per_sample.double())
        self.sums.index_add_(0, idx + len(self.names), w_per_sample.double())

    def flush(self, step: int, lr: float) -> dict:
        import torch.distributed as dist

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
        self.sums.zero_()
        self.samples, self.data_s, self.t0 = 0, 0.0, time.perf_counter()
        return rec


def _tensorboard(run: Path, purge_step: int | None = None):
    """A TensorBoard writer for run/tb when tensorboard is installed. On resume, events logged after
    the checkpoint by the interrupted process are purged, as metrics.jsonl is truncated."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(run / "tb"), purge_step=purge_step)


def _log(path: Path, writer, prefix: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer:
        for key, value in record.items():
            if key != "step":
                writer.add_scalar(f"{prefix}/{key}", value, record["step"])


def _truncate_jsonl(path: Path, step: int) -> None:
    """Drop records written after the checkpoint a resumed run continues from."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


# ----------------------------------------------------------------------------- export
def export(run_dir, out_dir, step: int | None = None, dtype: str | None = None) -> Path:
    """Write the export directory ``unio.load`` reads from a run's checkpoint (default: the latest),
    consolidating ZeRO shards into full fp32 weights; ``dtype`` ("float16", "bfloat16") stores the
    weights at lower precision (half the size; ``unio.load`` casts them to the dtype it runs in)."""
    from .model import UnioConfig, UnioForConditionalGeneration
    from .export import save_export
    from .tasks import TaskContext

    run = Path(run_dir)
    ckpt_dir = run / CKPT_DIR
    if not (run / "config.json").is_file() or not ckpt_dir.is_dir():
        raise CheckpointError(f"{run} is not a training run directory (no config.json / {CKPT_DIR}/); "
                              "pass the `out` folder of a `unio train` run")
    if step is None:
        tag = latest_tag(ckpt_dir)
        if tag is None:
            raise CheckpointError(f"{ckpt_dir} holds no complete checkpoint yet; train longer or wait for a save")
    else:
        tag = f"step{int(step):08d}"
        if not (ckpt_dir / tag).is_dir():
            have = sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("step"))
            raise CheckpointError(f"no checkpoint for step {step} in {ckpt_dir}; available: {', '.join(have) or 'none'}")
    import yaml
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    config = UnioConfig.from_pretrained(str(run))
    state = _consolidated_state_dict(ckpt_dir, tag)
    model = UnioForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("embed_tokens.weight") or k.startswith("lm_head")}
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"checkpoint {ckpt_dir / tag} does not match the run's model config: missing "
                              f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.tie_weights()
    if dtype not in (None, "float32"):
        if dtype not in ("float16", "bfloat16"):
            raise InputError(f"export dtype {dtype!r} is not supported; use float32, float16 or bfloat16")
        model.to(getattr(torch, dtype))
    classes = json.loads((run / "classes.json").read_text()) if (run / "classes.json").is_file() else {}
    ctx = TaskContext.from_dir(run / "tokenizers", image_size=config.image_size, patch_size=config.patch_size,
                               prompts_dir=run / "prompts" if (run / "prompts").is_dir() else recipe.get("prompts"),
                               classes=classes,
                               num_bins=(config.vocab_layout or {}).get("num_bins", 1000))
    meta = {"step": int(tag[4:]), "trained": True, "preset": recipe.get("model", {}).get("preset"),
            **_provenance(run, recipe, int(tag[4:]))}
    out = save_export(out_dir, model, ctx, meta)
    print(f"wrote {out} from {ckpt_dir / tag}")
    return out


def _shown_path(path) -> str:
    """A path as one would type it here: relative to the working folder when it lies under it."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _provenance(run: Path, recipe: dict, step: int) -> dict:
    """Where an export came from, for its unio.json: the run, the recipe file and command lines that
    trained it, the export it was fine-tuned from, and the steps of the whole lineage
    (``total_steps``: this run's steps plus those recorded by the ``model.init`` export)."""
    out = {"run": _shown_path(run)}
    for name, key in (("recipe.yaml", "command"), ("recipe.resume.yaml", "resume_command")):
        f = run / name
        header = []
        if f.is_file():
            for line in f.read_text(encoding="utf-8").splitlines():
                if not line.startswith("#"):
                    break
                header.append(line[1:].strip())
        if header and header[0].startswith("unio train "):
            out[key] = header[0]
        if name == "recipe.yaml":
            source = next((h[len("resolved from "):] for h in header if h.startswith("resolved from ")), "?")
            if source != "?":
                out["recipe"] = source
    init = (recipe.get("model") or {}).get("init")
    out["total_steps"] = step
    if init:
        out["init"] = _shown_path(init)
        try:  # recorded when the run started; else the init export as it is now
            lineage = json.loads((run / INIT_RECORD).read_text())
        except (OSError, ValueError):
            try:
                lineage = _lineage(init, json.loads((Path(init) / "unio.json").read_text()))
            except (OSError, ValueError):
                lineage = {}
        if isinstance(lineage.get("total_steps"), int):
            out["total_steps"] = step + lineage["total_steps"]
        else:  # the init export moved or is gone, or its own lineage was unknown
            del out["total_steps"]
    return out


def _lineage(init, meta: dict) -> dict:
    """What a run fine-tuned from the export ``init`` (its unio.json ``meta``) keeps of it:
    ``total_steps`` of the whole chain behind it, None when that is unknown."""
    total = meta.get("total_steps")
    if total is None and not meta.get("init") and meta.get("trained"):  # trained from scratch
        total = meta.get("step")
    if total is None and not meta.get("trained"):  # an untrained export (unio init)
        total = 0
    return {"init": _shown_path(init), "run": meta.get("run"), "step": meta.get("step"),
            "total_steps": int(total) if isinstance(total, (int, float)) else None}


def _consolidated_state_dict(ckpt_dir: Path, tag: str) -> dict:
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
