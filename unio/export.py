"""The export directory (DESIGN.md, "Export directory"): what :func:`unio.load` reads.

    config.json  model.safetensors     the network (transformers save_pretrained, safetensors only)
    text.model                         the SentencePiece model
    image/                             the VQ image tokenizer (config.json + model.safetensors)
    prompts/prompts.yaml               the prompt templates the model was trained with
    unio.json                          versions, vocabulary layout + fingerprint, class lists, sizes,
                                       optional per-task decoding defaults (task_defaults)

An adapter export (LoRA fine-tuning with ``train.lora.export: adapters``, ``"kind": "adapters"`` in
its unio.json) holds no network and no tokenizers: ``adapter_config.json`` and
``adapter_model.safetensors`` (peft's format), the prompts, and a unio.json naming its ``base``
export (a shipped model's name, or its path: absolute and relative to the adapter folder) with the
base's weights hash. Loading finds the base, checks its tokenizers against the recorded vocabulary
fingerprint and its weights against the hash, and merges the adapters into its weights.

:func:`save_export` writes one (``unio init`` and ``unio export`` both use it); :func:`load_export`
reads one and refuses tokenizers that do not match the fingerprint; :func:`export_path` resolves a
shipped model's name (:func:`list_models`) to its folder. Nothing is unpickled.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers.utils import logging as hf_logging

from . import __version__
from .errors import CheckpointError, InputError, UnioError, VocabMismatchError
from .resources import data_path, default_file_mode
from .tasks import TaskContext, get_task
from .model import UnioConfig, UnioForConditionalGeneration, check_vocab
from .model.lora import (ADAPTER_NAME, add_lora, adapter_state_dict, base_state_dict, load_adapter_state,
                         lora_settings, merge_lora, require_peft)
from .tokenizers.image import ImageTokenizer
from .vocab import UnifiedVocab

__all__ = ["save_export", "save_adapters", "read_meta", "export_kind", "load_export", "init_export", "swap_image_tokenizer",
           "export_path", "list_models", "pick_device", "EXPORT_FILES", "ADAPTER_FILES", "META_NAME", "ADAPTERS",
           "task_defaults"]

FORMAT = "unio-export"
FORMAT_VERSION = 1
META_NAME = "unio.json"
TEXT_NAME = "text.model"
IMAGE_DIR = "image"
PROMPTS_DIR = "prompts"
EXPORT_FILES = ("config.json", "model.safetensors", TEXT_NAME, META_NAME)
ADAPTERS = "adapters"  # unio.json "kind" of an adapter export
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # peft's file names
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, META_NAME)


# ---------------------------------------------------------------------- export directories
def save_export(out_dir, model, ctx: TaskContext, metadata: dict | None = None) -> Path:
    """Write an export directory from a model, its task context and extra metadata (e.g. step, recipe)."""
    if lora_settings(model) is not None:
        raise InputError("the model has LoRA adapters: merge them into its weights first (unio.model.lora.merge_lora) "
                         "or write them over their base with save_adapters")
    out = _out_dir(out_dir)
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
    files = {"text_tokenizer": TEXT_NAME, "image_tokenizer": IMAGE_DIR if ctx.image_tokenizer is not None else None,
             "prompts": PROMPTS_DIR}
    (out / META_NAME).write_text(json.dumps({**_meta(ctx, files), **(metadata or {})}, indent=2, sort_keys=True,
                                            default=str) + "\n")
    return out


def _out_dir(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not (out / META_NAME).is_file():
        raise CheckpointError(f"{out} is not empty and is not an export directory; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _meta(ctx: TaskContext, files: dict) -> dict:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "versions": {"unio": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "vocab": ctx.vocab.to_dict(), "vocab_fingerprint": ctx.vocab.fingerprint,
        "image_size": ctx.image_size, "patch_size": ctx.patch_size, "num_bins": ctx.vocab.num_bins,
        "classes": ctx.classes, "tasks": ctx.prompts.tasks, "files": files,
    }


def save_adapters(out_dir, model, ctx: TaskContext, base, metadata: dict | None = None, dtype=None) -> Path:
    """Write an adapter export: the LoRA weights of ``model`` (adapted with :func:`unio.model.lora.add_lora`)
    over the export ``base`` (a folder or shipped model name), whose weights must be the model's frozen
    ones and whose tokenizers must be ``ctx``'s; ``dtype`` (e.g. "float16") stores the adapters at it."""
    peft = require_peft()
    settings = lora_settings(model)
    if settings is None:
        raise InputError("the model has no LoRA adapters to export; save it with save_export")
    base_dir = export_path(base)
    base_meta = read_meta(base_dir)
    if base_meta.get("kind") == ADAPTERS:
        raise CheckpointError(f"the base {base_dir} is itself an adapter export; give the whole model it applies to")
    if base_meta.get("vocab_fingerprint") != ctx.vocab.fingerprint:
        raise VocabMismatchError(f"the base model {base_dir} has other tokenizers than the adapted model; adapters "
                                 "apply only to the base they were trained on")
    frozen = base_state_dict(model)
    changed = [k for k, v in load_file(base_dir / "model.safetensors").items()
               if k not in frozen or not torch.equal(frozen[k].float().cpu(), v.float())]
    if changed:
        raise CheckpointError(f"the adapted model's frozen weights differ from those of the base {base_dir} "
                              f"({len(changed)} tensors, e.g. {changed[0]}): the base changed after training; "
                              "export merged instead (unio export RUN OUT --lora merged)")
    out = _out_dir(out_dir)
    shipped = [n for n in list_models() if export_path(n).resolve() == base_dir.resolve()]
    ref = {"name": shipped[0] if shipped else None, "path": str(base_dir.resolve()),
           "relative": os.path.relpath(base_dir.resolve(), out.resolve()),
           "weights_sha256": _sha256(base_dir / "model.safetensors"), "vocab_fingerprint": ctx.vocab.fingerprint}
    config = copy.deepcopy(model.peft_config[ADAPTER_NAME])
    config.base_model_name_or_path, config.inference_mode = ref["name"] or ref["path"], True
    config.save_pretrained(str(out))
    state = adapter_state_dict(model, prefix="base_model.model.")
    if dtype not in (None, "float32"):
        state = {k: v.to(getattr(torch, dtype)) for k, v in state.items()}
    save_file(state, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    default_file_mode(out / ADAPTER_WEIGHTS)
    ctx.prompts.save(out / PROMPTS_DIR)
    meta = _meta(ctx, {"adapter_config": ADAPTER_CONFIG, "adapter_weights": ADAPTER_WEIGHTS, "prompts": PROMPTS_DIR})
    meta["versions"]["peft"] = peft.__version__
    meta.update({**(metadata or {}), "kind": ADAPTERS, "base": ref, "lora": settings})
    (out / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return out


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    try:
        meta = json.loads((d / META_NAME).read_text()) if (d / META_NAME).is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        meta = exc
    adapters = isinstance(meta, dict) and meta.get("kind") == ADAPTERS
    missing = [n for n in (ADAPTER_FILES if adapters else EXPORT_FILES) if not (d / n).is_file()]
    if missing:
        raise CheckpointError(f"{d} is not a complete {'adapter ' if adapters else ''}export directory: missing "
                              f"{', '.join(missing)}; write it with `unio init` or `unio export`")
    if isinstance(meta, Exception):
        raise CheckpointError(f"{d / META_NAME} is not valid JSON ({meta}); re-export the model") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{d / META_NAME} is not a unio export description (format != {FORMAT!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{d} was written by a newer unio (format {meta['format_version']}); upgrade unio")
    return meta


def export_kind(path) -> str | None:
    """``"adapters"`` for an adapter export; None for a whole model (or a folder that is no export)."""
    try:
        meta = json.loads((Path(path) / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    return meta.get("kind") if isinstance(meta, dict) else None


def load_export(path, device=None, dtype=None, device_map=None, base=None):
    """-> (model, ctx, meta). Checks the tokenizers in the folder against the recorded fingerprint.

    An adapter export is applied to its base export (``base``: another folder or shipped name to
    use as the base instead of the recorded one) and merged into its weights; ``meta["base"]["path"]``
    then says which base was used."""
    d = Path(path)
    meta = read_meta(d)
    device, dtype = pick_device(device, dtype)
    if meta.get("kind") == ADAPTERS:
        return _load_adapters(d, meta, device, dtype, device_map, base)
    ctx = _context(d, d, meta, device if device_map is None else None)
    model = _network(d, ctx, dtype, device_map)
    if device_map is None:
        model.to(device)
    elif ctx.image_tokenizer is not None:
        ctx.image_tokenizer.to(model.device)
    model.eval()
    return model, ctx, meta


def _context(tok_dir: Path, d: Path, meta: dict, device) -> TaskContext:
    """The task context of export ``d`` with the tokenizers in ``tok_dir``, checked against ``meta``."""
    ctx = TaskContext.from_dir(tok_dir, image_size=meta["image_size"], patch_size=meta["patch_size"],
                               prompts_dir=d / PROMPTS_DIR if (d / PROMPTS_DIR).is_dir() else None,
                               num_bins=meta.get("num_bins", 1000), classes=meta.get("classes") or {},
                               device=device)
    if ctx.vocab.fingerprint != meta.get("vocab_fingerprint"):
        what = f"the tokenizers in {tok_dir}" + (f" (the base of the adapters in {d})" if tok_dir != d else "")
        if isinstance(meta.get("vocab"), dict):  # names the part that differs
            UnifiedVocab.from_dict(meta["vocab"]).check(ctx.vocab, what=what)
        raise VocabMismatchError(f"{what} do not match the vocabulary fingerprint in {d / META_NAME}; "
                                 + ("adapters apply only to the base they were trained on" if tok_dir != d else
                                    "re-export the model with the tokenizers it was trained with"))
    return ctx


def _network(d: Path, ctx: TaskContext, dtype, device_map):
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
    return model


def _load_adapters(d: Path, meta: dict, device, dtype, device_map, base):
    """An adapter export: its base found and checked, the adapters merged into the base's weights."""
    if device_map is not None:
        raise InputError(f"{d} holds LoRA adapters; device_map is not supported for them: export the run merged "
                         "(unio export RUN OUT --lora merged) to spread the model over devices")
    ref = meta.get("base") or {}
    base_dir = _find_base(d, ref, base)
    base_meta = read_meta(base_dir)
    if base_meta.get("kind") == ADAPTERS:
        raise CheckpointError(f"the base of the adapters in {d}, {base_dir}, is itself an adapter export")
    if base_meta.get("vocab_fingerprint") != meta.get("vocab_fingerprint"):  # its tokenizers or bins differ
        what = f"the base model {base_dir} (adapters apply only to the base they were trained on)"
        if isinstance(meta.get("vocab"), dict) and isinstance(base_meta.get("vocab"), dict):
            UnifiedVocab.from_dict(meta["vocab"]).check(UnifiedVocab.from_dict(base_meta["vocab"]), what=what)
        raise VocabMismatchError(f"the vocabulary of {what} differs from the one recorded in {d / META_NAME}")
    ctx = _context(base_dir, d, meta, device)  # and its tokenizer files are what it says
    if ref.get("weights_sha256") and _sha256(base_dir / "model.safetensors") != ref["weights_sha256"]:
        raise CheckpointError(f"the base model {base_dir} is not the one the adapters in {d} were trained on (its "
                              "weights differ from the recorded sha256); give the original base (load_export(..., "
                              "base=DIR)), or export the run merged")
    model = _network(base_dir, ctx, torch.float32, None)  # merged in fp32, then cast
    raw = json.loads((d / ADAPTER_CONFIG).read_text())
    lora = meta.get("lora") or {}
    add_lora(model, r=raw["r"], alpha=raw["lora_alpha"], targets=lora.get("modules") or raw["target_modules"])
    load_adapter_state(model, load_file(d / ADAPTER_WEIGHTS), where=f"the adapter weights in {d}")
    merge_lora(model)
    model.to(device, dtype).eval()
    return model, ctx, {**meta, "base": {**ref, "path": str(base_dir)}}


def _find_base(d: Path, ref: dict, override=None) -> Path:
    """The base export of the adapters in ``d``: ``override``, else the recorded shipped name, path,
    or path relative to ``d``."""
    if override is not None:
        return export_path(override)
    looked = []
    if ref.get("name"):
        if ref["name"] in list_models():
            return export_path(ref["name"])
        looked.append(f"the shipped model {ref['name']!r}")
    for path in (ref.get("path"), ref.get("relative") and d / ref["relative"]):
        if path:
            if (Path(path) / META_NAME).is_file():
                return Path(path)
            looked.append(str(path))
    raise CheckpointError(f"the base model of the adapters in {d} cannot be found (looked for "
                          f"{', '.join(looked) or 'nothing: no base is recorded'}); put the base export back, pass "
                          "base=DIR to load_export, or export the run merged (unio export RUN OUT --lora merged)")


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


def task_defaults(meta: dict) -> dict[str, dict]:
    """``unio.json``'s optional ``task_defaults`` ({task: {option: value}}: decoding defaults chosen
    for this model, e.g. guidance 2.5 and temperature 0.6 for generate_image), checked."""
    raw = meta.get("task_defaults") or {}
    where = f"{meta.get('path', 'the export')}/{META_NAME}"
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise CheckpointError(f"task_defaults in {where} must map task names to {{option: value}}, "
                              f"e.g. {{\"generate_image\": {{\"guidance\": 2.5}}}}; got {raw!r}")
    for task, options in raw.items():
        try:
            get_task(task).check_options(options)
        except UnioError as exc:
            raise CheckpointError(f"task_defaults in {where}: {exc}") from None
    return {task: dict(options) for task, options in raw.items()}
