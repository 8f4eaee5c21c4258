"""A training run -> an export directory (``unio export RUN OUT``), and where the export came from:
the run, the recipe file and command lines that trained it, the export it was fine-tuned from and
the steps of the whole lineage, all recorded in its ``unio.json``.

The export directory format itself is :mod:`unio.export`'s; this module reads a run's checkpoint
(:mod:`.checkpoint`) and hands the model to :func:`unio.export.save_export`. A LoRA run
(``train.lora``) exports its adapters merged into the weights (a normal export), or as an adapter
export over its ``model.init`` (:func:`unio.export.save_adapters`), as ``train.lora.export`` or
the ``lora`` argument says.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from ..errors import CheckpointError, InputError
from ..export import save_adapters, save_export
from ..model import UnioConfig, UnioForConditionalGeneration
from ..model.lora import add_lora, lora_settings, merge_lora
from ..tasks import TaskContext
from .checkpoint import CKPT_DIR, consolidated_state_dict, latest_tag

__all__ = ["export", "INIT_RECORD", "provenance", "lineage"]

INIT_RECORD = "init.json"  # the model.init export's lineage, written in the run directory when a run starts


def export(run_dir, out_dir, step: int | None = None, dtype: str | None = None, lora: str | None = None) -> Path:
    """Write the export directory ``unio.load`` reads from a run's checkpoint (default: the latest),
    consolidating ZeRO shards into full fp32 weights; ``dtype`` ("float16", "bfloat16") stores the
    weights at lower precision (half the size; ``unio.load`` casts them to the dtype it runs in).
    For a LoRA run, ``lora`` ("merged" or "adapters") overrides the recipe's ``train.lora.export``."""
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
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    adapters = (recipe.get("train") or {}).get("lora")
    if lora not in (None, "merged", "adapters"):
        raise InputError(f"lora must be merged or adapters, got {lora!r}")
    if lora and not adapters:
        raise InputError(f"{run} is not a LoRA run (its recipe has no train.lora); drop --lora")
    mode = (lora or adapters["export"]) if adapters else None
    config = UnioConfig.from_pretrained(str(run))
    state = consolidated_state_dict(ckpt_dir, tag)
    model = UnioForConditionalGeneration(config)
    if adapters:  # the same adapters as in training, then the checkpoint's weights
        add_lora(model, r=adapters["r"], alpha=adapters["alpha"], targets=adapters["targets"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("embed_tokens.weight") or k.startswith("lm_head")}
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"checkpoint {ckpt_dir / tag} does not match the run's model config: missing "
                              f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.tie_weights()
    settings = lora_settings(model)
    if mode == "merged":
        merge_lora(model)
    if dtype not in (None, "float32"):
        if dtype not in ("float16", "bfloat16"):
            raise InputError(f"export dtype {dtype!r} is not supported; use float32, float16 or bfloat16")
        if mode != "adapters":  # adapters: only their own weights are stored, at that dtype
            model.to(getattr(torch, dtype))
    classes = json.loads((run / "classes.json").read_text()) if (run / "classes.json").is_file() else {}
    ctx = TaskContext.from_dir(run / "tokenizers", image_size=config.image_size, patch_size=config.patch_size,
                               prompts_dir=run / "prompts" if (run / "prompts").is_dir() else recipe.get("prompts"),
                               classes=classes,
                               num_bins=(config.vocab_layout or {}).get("num_bins", 1000))
    meta = {"step": int(tag[4:]), "trained": True, "preset": recipe.get("model", {}).get("preset"),
            **provenance(run, recipe, int(tag[4:]))}
    if mode == "adapters":
        out = save_adapters(out_dir, model, ctx, recipe["model"]["init"], meta, dtype=dtype)
    else:
        if mode == "merged":
            meta["lora"] = {**settings, "export": "merged"}
        out = save_export(out_dir, model, ctx, meta)
    print(f"wrote {out} from {ckpt_dir / tag}")
    return out


def shown_path(path) -> str:
    """A path as one would type it here: relative to the working folder when it lies under it."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def provenance(run: Path, recipe: dict, step: int) -> dict:
    """Where an export came from, for its unio.json: the run, the recipe file and command lines that
    trained it, the export it was fine-tuned from, and the steps of the whole lineage
    (``total_steps``: this run's steps plus those recorded by the ``model.init`` export)."""
    out = {"run": shown_path(run)}
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
        out["init"] = shown_path(init)
        try:  # recorded when the run started; else the init export as it is now
            record = json.loads((run / INIT_RECORD).read_text())
        except (OSError, ValueError):
            try:
                record = lineage(init, json.loads((Path(init) / "unio.json").read_text()))
            except (OSError, ValueError):
                record = {}
        if isinstance(record.get("total_steps"), int):
            out["total_steps"] = step + record["total_steps"]
        else:  # the init export moved or is gone, or its own lineage was unknown
            del out["total_steps"]
    return out


def lineage(init, meta: dict) -> dict:
    """What a run fine-tuned from the export ``init`` (its unio.json ``meta``) keeps of it:
    ``total_steps`` of the whole chain behind it, None when that is unknown."""
    total = meta.get("total_steps")
    if total is None and not meta.get("init") and meta.get("trained"):  # trained from scratch
        total = meta.get("step")
    if total is None and not meta.get("trained"):  # an untrained export (unio init)
        total = 0
    return {"init": shown_path(init), "run": meta.get("run"), "step": meta.get("step"),
            "total_steps": int(total) if isinstance(total, (int, float)) else None}
