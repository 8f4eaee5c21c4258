"""The export directory (DESIGN.md, "Export directory"): what :func:`unio.load` reads.

    config.json  model.safetensors     the network (transformers save_pretrained, safetensors only)
    text.model                         the SentencePiece model
    image/                             the VQ image tokenizer (config.json + model.safetensors)
    prompts/prompts.yaml               the prompt templates the model was trained with
    unio.json                          versions, vocabulary layout + fingerprint, class lists, sizes,
                                       optional per-task decoding defaults (task_defaults)

:func:`save_export` writes one (``unio init`` and ``unio export`` both use it); :func:`load_export`
reads one and refuses tokenizers that do not match the fingerprint; :func:`export_path` resolves a
shipped model's name (:func:`list_models`) to its folder. Nothing is unpickled.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers.utils import logging as hf_logging

from . import __version__
from .errors import CheckpointError, InputError, UnioError, VocabMismatchError
from .resources import data_path, default_file_mode
from .tasks import TaskContext
from .model import UnioConfig, UnioForConditionalGeneration, check_vocab
from .tokenizers.image import ImageTokenizer
from .vocab import UnifiedVocab

__all__ = ["save_export", "read_meta", "load_export", "init_export", "swap_image_tokenizer", "export_path",
           "list_models", "pick_device", "EXPORT_FILES", "META_NAME"]

FORMAT = "unio-export"
FORMAT_VERSION = 1
META_NAME = "unio.json"
TEXT_NAME = "text.model"
IMAGE_DIR = "image"
PROMPTS_DIR = "prompts"
EXPORT_FILES = ("config.json", "model.safetensors", TEXT_NAME, META_NAME)


# ---------------------------------------------------------------------- export directories
def save_export(out_dir, model, ctx: TaskContext, metadata: dict | None = None) -> Path:
    """Write an export directory from a model, its task context and extra metadata (e.g. step, recipe)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not (out / META_NAME).is_file():
        raise CheckpointError(f"{out} is not empty and is not an export directory; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    if getattr(model.config, "vocab_fingerprint", None) not in (None, ctx.vocab.fingerprint):
        raise VocabMismatchError("the model was built for another vocabulary than the tokenizers given; export it "
                                 "with the tokenizers it was trained with")
    with _quiet_transformers():
        model.save_pretrained(out)
    for weights in out.glob("model*.safetensors"):
        default_file_mode(weights)
    (out / TEXT_NAME).write_bytes(ctx.text.model_proto)
    if ctx.image_tokenizer is not None:
        ctx.image_tokenizer.save(out / IMAGE_DIR)
    ctx.prompts.save(out / PROMPTS_DIR)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "versions": {"unio": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "vocab": ctx.vocab.to_dict(), "vocab_fingerprint": ctx.vocab.fingerprint,
        "image_size": ctx.image_size, "patch_size": ctx.patch_size, "num_bins": ctx.vocab.num_bins,
        "classes": ctx.classes, "tasks": ctx.prompts.tasks,
        "files": {"text_tokenizer": TEXT_NAME, "image_tokenizer": IMAGE_DIR if ctx.image_tokenizer is not None
                  else None, "prompts": PROMPTS_DIR},
    }
    meta.update(metadata or {})
    (out / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return out


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bars or load reports from transformers: unio reports problems itself."""
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def read_meta(path) -> dict:
    d = Path(path)
    if not d.is_dir():
        raise CheckpointError(f"export directory {d} does not exist; create one with `unio init` or `unio export`")
    missing = [n for n in EXPORT_FILES if not (d / n).is_file()]
    if missing:
        raise CheckpointError(f"{d} is not a complete export directory: missing {', '.join(missing)}; "
                              "write it with `unio init` or `unio export`")
    try:
        meta = json.loads((d / META_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{d / META_NAME} is not valid JSON ({exc}); re-export the model") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{d / META_NAME} is not a unio export description (format != {FORMAT!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{d} was written by a newer unio (format {meta['format_version']}); upgrade unio")
    return meta


def load_export(path, device=None, dtype=None, device_map=None):
    """-> (model, ctx, meta). Checks the tokenizers in the folder against the recorded fingerprint."""
    d = Path(path)
    meta = read_meta(d)
    device, dtype = pick_device(device, dtype)
    image_device = device if device_map is None else None
    ctx = TaskContext.from_dir(d, image_size=meta["image_size"], patch_size=meta["patch_size"],
                               prompts_dir=d / PROMPTS_DIR if (d / PROMPTS_DIR).is_dir() else None,
                               num_bins=meta.get("num_bins", 1000), classes=meta.get("classes") or {},
                               device=image_device)
    if ctx.vocab.fingerprint != meta.get("vocab_fingerprint"):
        if isinstance(meta.get("vocab"), dict):  # names the part that differs
            UnifiedVocab.from_dict(meta["vocab"]).check(ctx.vocab, what=f"the tokenizers in {d}")
        raise VocabMismatchError(f"the tokenizers in {d} do not match the vocabulary fingerprint in {META_NAME}; "
                                 "re-export the model with the tokenizers it was trained with")
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "output_loading_info": True}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        with _quiet_transformers():
            model, info = UnioForConditionalGeneration.from_pretrained(str(d), **kwargs)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"could not load the model from {d}: {exc}") from None
    check_vocab(model.config, ctx.vocab)
    problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        detail = "; ".join(f"{k.split('_')[0]} {v[:3]}" for k, v in problems.items() if v)
        raise CheckpointError(f"the weights in {d / 'model.safetensors'} do not fit this version of the model "
                              f"({detail}); export it again with the unio version it was trained with")
    if device_map is None:
        model.to(device)
    elif ctx.image_tokenizer is not None:
        ctx.image_tokenizer.to(model.device)
    model.eval()
    return model, ctx, meta


def init_export(preset: str = "tiny", tokenizers="tokenizers/shapes", out=None, image_size: int = 64,
                patch_size: int = 8, seed: int = 0, classes: dict | None = None, num_bins: int = 1000,
                quiet: bool = False, **config_overrides) -> Path:
    """Write an untrained export directory: the start of a training run, and what tests use.

    ``config_overrides`` go to :meth:`UnioConfig.preset` (e.g. ``d_model=64`` for a smaller model).
    """
    if out is None:
        raise InputError("init_export needs out=DIR, the folder to write")
    tok_dir = Path(tokenizers)
    if classes is None:
        classes = _default_classes(tok_dir)
    ctx = TaskContext.from_dir(tok_dir, image_size=image_size, patch_size=patch_size, num_bins=num_bins,
                               classes=classes)
    torch.manual_seed(int(seed))
    config = UnioConfig.preset(preset, vocab=ctx.vocab, image_size=image_size, patch_size=patch_size,
                               **config_overrides)
    model = UnioForConditionalGeneration(config)
    path = save_export(out, model, ctx, {"preset": preset, "trained": False, "seed": int(seed),
                                         "config_overrides": config_overrides})
    if not quiet:
        n = sum(p.numel() for p in model.parameters())
        print(f"wrote an untrained {preset} model ({n / 1e6:.1f}M parameters) to {path}")
    return path


def swap_image_tokenizer(model, tokenizer, out) -> Path:
    """Write ``out``: the export ``model`` with the image tokenizer in ``tokenizer`` in place of its own.

    The model reads and writes image codes, so the new tokenizer must turn every image into the
    same codes as the old one (equal :attr:`~unio.tokenizers.image.ImageTokenizer.codes_fingerprint`:
    same config, encoder and quantizer); only its decoder and refiners may differ, as after
    ``unio tokenizer image --init OLD --decoder-only`` or ``--refine depth``. Images, depth maps and
    masks the model writes are then drawn by the new decoder (and refined with the input picture
    by its refiners); nothing else changes. The vocabulary fingerprint
    (which covers the whole tokenizer) is recomputed in ``unio.json`` and ``config.json``, and
    ``unio.json`` records the swap under ``image_tokenizer_swaps``. ``out`` may be ``model``
    itself (in place) or a new folder (the export is copied there first).
    """
    src = export_path(model)
    meta = read_meta(src)
    if not (src / IMAGE_DIR).is_dir():
        raise CheckpointError(f"{src} has no image tokenizer ({IMAGE_DIR}/) to replace")
    old = ImageTokenizer.load(src / IMAGE_DIR)
    new = ImageTokenizer.load(tokenizer)
    if new.codes_fingerprint != old.codes_fingerprint:
        raise VocabMismatchError(
            f"the image tokenizer in {tokenizer} makes other codes than the one the model in {src} was trained "
            "with (its config, encoder or quantizer differ), so the model's image tokens would mean something "
            "else; only a tokenizer fine-tuned from the model's own with `unio tokenizer image --init "
            f"{src / IMAGE_DIR} --decoder-only` (or `--refine depth`) can replace it")
    vocab = UnifiedVocab.from_dict(meta["vocab"]) if isinstance(meta.get("vocab"), dict) else None
    if vocab is None or vocab.fingerprint != meta.get("vocab_fingerprint") or \
            vocab.layout["image_fingerprint"] != old.fingerprint:
        raise VocabMismatchError(f"{src / META_NAME} does not describe the tokenizers in {src}; repair the export "
                                 "(re-export it) before swapping its image tokenizer")
    config = json.loads((src / "config.json").read_text())
    dst = Path(out)
    if dst.resolve() != src.resolve():
        if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
            raise CheckpointError(f"{dst} exists and is not empty; pass a new folder, or --out {src} to swap "
                                  "in place")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, dirs_exist_ok=True)
    staging = dst / f".{IMAGE_DIR}.new"
    if staging.exists():
        shutil.rmtree(staging)
    new.save(staging)
    shutil.rmtree(dst / IMAGE_DIR)
    os.replace(staging, dst / IMAGE_DIR)

    swapped = UnifiedVocab(_layout={**vocab.layout, "image_fingerprint": new.fingerprint})
    config["vocab_fingerprint"] = swapped.fingerprint
    if "vocab_layout" in config:
        config["vocab_layout"] = swapped.to_dict()
    meta["vocab"], meta["vocab_fingerprint"] = swapped.to_dict(), swapped.fingerprint
    meta.setdefault("image_tokenizer_swaps", []).append(
        {"from": old.fingerprint, "to": new.fingerprint, "codes_fingerprint": new.codes_fingerprint,
         "to_training": new.config.training})
    for name, data in (("config.json", config), (META_NAME, meta)):
        tmp = dst / f".{name}.new"
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, dst / name)
    return dst


def export_path(name_or_dir) -> Path:
    """An export directory, or the folder of the shipped model with that name."""
    path = Path(name_or_dir)
    if path.exists():
        return path
    shipped = list_models()
    if str(name_or_dir) in shipped:
        return data_path("models", str(name_or_dir))
    raise CheckpointError(f"{name_or_dir!r} is neither an export directory nor a shipped model "
                          f"(shipped: {', '.join(shipped) or 'none'}); make one with `unio init` or `unio export`")


def _default_classes(tok_dir: Path) -> dict:
    """The class lists a tokenizer folder carries in ``classes.json`` ({"image": [...], "object": [...]});
    none when it has no such file (pass ``classes=`` to :func:`init_export`, or let training take them
    from the data)."""
    path = tok_dir / "classes.json"
    if not path.is_file() and not tok_dir.is_absolute() and not tok_dir.exists():
        try:
            path = data_path(*tok_dir.parts) / "classes.json"
        except UnioError:
            return {}
    return json.loads(path.read_text()) if path.is_file() else {}


def list_models() -> list[str]:
    """Names of the models shipped in the package (``unio.load(name)``)."""
    try:
        root = data_path("models")
    except UnioError:
        return []
    return sorted(p.name for p in root.iterdir() if (p / META_NAME).is_file())


def pick_device(device, dtype):
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if isinstance(dtype, str):
        try:
            dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype) \
                or getattr(torch, dtype)
        except AttributeError:
            raise InputError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return device, dtype


# ---------------------------------------------------------------------- results of generate()
