"""Training recipes: YAML files, dotted ``--set key=value`` overrides, validation, resolution.

A recipe is data (big_vision's configs, DESIGN.md "Recipes"): its first line is the command that
runs it, and every key has a default below. Loading checks it completely before any training
starts: an unknown key, a value of the wrong type or a missing file is a
:class:`~unio.errors.RecipeError` that names the key (``data.train[0].captions``) and the path.
The resolved recipe (defaults filled, overrides applied, paths absolute) is what the run
directory keeps as ``recipe.yaml``.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from .data.formats import COMMON_KEYS, folder_keys, pattern_keys, source_keys
from .errors import CheckpointError, DataError, RecipeError, UnioError
from .export import ADAPTERS, export_kind, export_path
from .model.configuration_unio import PRESETS, UnioConfig, _HIDDEN_FIELDS
from .model.lora import DEFAULT_TARGETS, require_peft
from .resources import data_path
from .tasks import task_names

__all__ = ["DEFAULTS", "load_recipe", "apply_override", "resolve", "save_recipe", "resolve_path", "resolve_init"]

# Every key a recipe may set, with its default (and so its type). None: optional, any type.
DEFAULTS: dict[str, Any] = {
    "model": {
        "preset": "tiny",          # UnioConfig.preset name: tiny, small, base, large
        "image_size": 64,          # S: images are letterboxed to S x S
        "patch_size": 8,           # P
        "init": None,              # an export directory (or shipped model name) to start from instead of random weights
        # ...plus any UnioConfig field (d_model, encoder_layers, dropout, patch_stem, ...) as an override
    },
    "tokenizers": "tokenizers/shapes",  # folder with text.model and image/ (ignored with model.init)
    "num_bins": 1000,              # location bins (Pix2Seq: 1000 for 1333 px images; small images need fewer)
    "text_tokenizer": {
        "train": False,            # train a SentencePiece model on the training data's texts first
        "vocab_size": 4000,
        "max_texts": 200000,
        "model_type": "bpe",       # or unigram
    },
    "prompts": None,               # prompts folder; default: the shipped prompts/
    "data": {
        "train": [],               # list of sources: {source: ..., weight: 1, tasks: {task: weight}, ...}
        "eval": [],                # held-out sources: {source: ..., n: 200}
        "eval_tasks": None,        # tasks evaluated (default: every training task)
        "on_bad_record": "error",  # or "skip": leave malformed records out and count them
        "num_workers": 0,          # DataLoader worker processes building examples
    },
    "train": {
        "steps": 1000,
        "batch_size": 64,          # GLOBAL batch: split over processes and accumulation steps
        "micro_batch_size": None,  # per process and forward pass; default batch_size / processes
        "lr": 1.0e-3,
        "min_lr_ratio": 0.1,       # cosine decays to lr * min_lr_ratio
        "warmup": 100,             # linear warmup steps
        "weight_decay": 0.05,
        "betas": [0.9, 0.98],
        "eps": 1.0e-8,
        "grad_clip": 1.0,
        "precision": "auto",       # auto (bf16 on a GPU that has it, else fp32), fp32, bf16
        "activation_checkpointing": False,
        "log_every": 10,
        "eval_every": 500,         # 0: evaluate only at the end
        "eval_n": 32,              # examples per task in the periodic evaluation
        "save_every": 500,         # 0: save only at the end
        "keep_checkpoints": 2,     # most recent checkpoints kept (0: all)
        "seed": 0,
        "pad_to_multiple_of": 8,
        "lora": None,              # LoRA adapters instead of full fine-tuning: a mapping of LORA_DEFAULTS' keys
    },
    "deepspeed": "recipes/deepspeed/zero0.json",  # a DeepSpeed JSON config, or zero0..zero3 / zero3-offload
    "out": "runs/unnamed",
}
_OPEN = {("model",)}  # sections whose keys are checked elsewhere (UnioConfig fields)
# train.lora (off by default): `train.lora: {r: 8}`, `train.lora: true` (these defaults) or `--set train.lora.r=8`
LORA_DEFAULTS: dict[str, Any] = {
    "r": 16,                       # rank of each update B A
    "alpha": 32.0,                 # the update is scaled by alpha / r
    "targets": list(DEFAULT_TARGETS),  # module-name patterns (unio.model.lora): attention + MLP Linear layers
    "dropout": 0.0,                # dropout on the adapters' input
    "export": "merged",            # merged: a normal export; adapters: base name/path + adapter weights
}
_OPTIONAL = {("train", "lora"): LORA_DEFAULTS}  # sections that are off (null) unless a recipe sets them
_PATHS = {"tokenizers": "dir", "prompts": "dir", "deepspeed": "file"}


# ----------------------------------------------------------------------------- loading
def load_recipe(path, overrides: Iterable[str] = ()) -> dict:
    """Read a recipe, apply ``key=value`` overrides and validate it; returns the resolved dict."""
    path = Path(path)
    if not path.is_file():  # a shipped recipe by name: shapes-tiny, recipes/shapes-tiny.yaml
        name = path.name if path.suffix else f"{path.name}.yaml"
        shipped = None
        if path.parent in (Path("."), Path("recipes")):
            try:
                shipped = data_path("recipes", name)
            except UnioError:
                pass
        if shipped is None or not shipped.is_file():
            raise RecipeError(f"recipe {path} does not exist; pass a YAML file such as recipes/shapes-tiny.yaml")
        path = shipped
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise RecipeError(f"recipe {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)}); "
                          "fix the syntax (indentation, colons, quotes)") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a mapping of keys (model, data, train, ...), got {type(raw).__name__}")
    recipe = merge_defaults(raw)
    for item in overrides:
        apply_override(recipe, item)
    return resolve(recipe, source=str(path))


def merge_defaults(raw: dict, defaults: dict = DEFAULTS, prefix: tuple = ()) -> dict:
    """``raw`` on top of ``defaults``; unknown keys are errors, values are coerced to the default's type."""
    out = copy.deepcopy(defaults)
    for key, value in raw.items():
        keypath = prefix + (str(key),)
        if keypath in _OPTIONAL:
            out[key] = _optional_section(value, keypath)
            continue
        if key not in defaults and prefix not in _OPEN:
            raise _unknown(keypath, defaults)
        default = defaults.get(key)
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise RecipeError(f"{_dotted(keypath)} must be a mapping with keys {sorted(default)}, got {value!r}")
            out[key] = merge_defaults(value, default, keypath)
        else:
            out[key] = coerce(value, default, _dotted(keypath))
    return out


def apply_override(recipe: dict, item: str) -> None:
    """Apply one ``dotted.key=value`` (value in YAML syntax; list items by index: data.train.0.seed=1)."""
    if "=" not in item:
        raise RecipeError(f"override {item!r} must look like key=value, e.g. train.steps=20")
    key, text = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise RecipeError(f"override key {key!r} is malformed; use dotted keys like train.steps")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node, defaults, keypath = recipe, DEFAULTS, ()
    for part in parts[:-1]:
        keypath += (part,)
        if isinstance(node, list):
            node, defaults = _list_item(node, part, keypath), None
        elif isinstance(node, dict):
            if part not in node:
                if defaults is not None and keypath[:-1] not in _OPEN:
                    raise _unknown(keypath, defaults)
                node[part] = {}
            if keypath in _OPTIONAL and not node[part]:  # setting one of its keys switches the section on
                node[part] = copy.deepcopy(_OPTIONAL[keypath])
            node = node[part]
            defaults = _OPTIONAL.get(keypath) or (defaults.get(part) if isinstance(defaults, dict) else None)
        else:
            raise RecipeError(f"{_dotted(keypath[:-1])} is a value, not a section; cannot set {key}")
    last = parts[-1]
    keypath += (last,)
    if isinstance(node, list):
        idx = int(last) if last.isdigit() else None
        if idx is None or idx > len(node):
            raise RecipeError(f"{key}: {_dotted(keypath[:-1])} has {len(node)} entries; use an index 0..{len(node)}")
        if idx == len(node):
            node.append(value)
        else:
            node[idx] = value
        return
    if not isinstance(node, dict):
        raise RecipeError(f"{_dotted(keypath[:-1])} is a value, not a section; cannot set {key}")
    if keypath in _OPTIONAL:
        node[last] = _optional_section(value, keypath)
        return
    if isinstance(defaults, dict) and keypath[:-1] not in _OPEN:
        if last not in defaults:
            raise _unknown(keypath, defaults)
        default = defaults[last]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise RecipeError(f"{key} is a section; set one of its keys, e.g. {key}.{next(iter(default))}=...")
            merged = merge_defaults(value, default, keypath)  # checks the keys; keeps the section's others
            node[last].update({k: merged[k] for k in value})
            return
        value = coerce(value, default, key)
    node[last] = value


def _list_item(node: list, part: str, keypath: tuple):
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"{_dotted(keypath)}: {_dotted(keypath[:-1])} has {len(node)} entries; "
                          f"use an index 0..{len(node) - 1}")
    return node[int(part)]


# ----------------------------------------------------------------------------- values
def coerce(value, default, key: str):
    """``value`` as the type of ``default`` (YAML reads ``1e-3`` as a string, ``3`` as an int, ...)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise RecipeError(f"{key} must be true or false, got {value!r}")
    if isinstance(default, int):
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{key} must be an integer, got {value!r}") from None
        if isinstance(value, bool) or not f.is_integer():
            raise RecipeError(f"{key} must be an integer, got {value!r}")
        return int(f)
    if isinstance(default, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{key} must be a number, got {value!r}") from None
    if isinstance(default, str):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise RecipeError(f"{key} must be a string, got {value!r}")
        return str(value)
    if isinstance(default, list):
        if not isinstance(value, list):
            raise RecipeError(f"{key} must be a list, got {value!r}")
        if default and all(isinstance(d, (int, float)) and not isinstance(d, bool) for d in default):
            return [coerce(v, float(default[0]), f"{key}[{i}]") for i, v in enumerate(value)]
        return value
    return value


def _optional_section(value, keypath: tuple):
    """An optional section's value: null/false (off), true (its defaults) or a mapping of its keys."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "null", ""):
        value = value.strip().lower() in ("true", "yes", "on")
    if value is None or value is False:
        return None
    if value is True:
        return copy.deepcopy(_OPTIONAL[keypath])
    if not isinstance(value, dict):
        raise RecipeError(f"{_dotted(keypath)} must be a mapping with keys {sorted(_OPTIONAL[keypath])} (true: "
                          f"their defaults; null: off), got {value!r}")
    return merge_defaults(value, _OPTIONAL[keypath], keypath)


def _dotted(keypath: tuple) -> str:
    return ".".join(keypath)


def _unknown(keypath: tuple, defaults: dict) -> RecipeError:
    known = sorted(defaults) if isinstance(defaults, dict) else []
    close = difflib.get_close_matches(keypath[-1], known, n=1)
    hint = f"did you mean {_dotted(keypath[:-1] + (close[0],))}? " if close else ""
    return RecipeError(f"unknown recipe key {_dotted(keypath)}; {hint}known keys here: {known}")


def resolve_path(value, key: str, kind: str = "file", shipped: bool = True) -> str:
    """Absolute path of a recipe path: as given (absolute, or relative to the working directory),
    else a file shipped with unio (tokenizers/, recipes/, prompts/). Missing -> RecipeError naming ``key``."""
    p = Path(str(value)).expanduser()
    candidates = [p if p.is_absolute() else Path.cwd() / p]
    if shipped and not p.is_absolute():
        try:
            candidates.append(data_path(*p.parts))
        except UnioError:
            pass
    for c in candidates:
        if (c.is_dir() if kind == "dir" else c.is_file()):
            return str(c.resolve())
    what = "folder" if kind == "dir" else "file"
    looked = f" (looked for {candidates[0]}" + (" and in the files shipped with unio)" if len(candidates) > 1 else ")")
    raise RecipeError(f"{key}: {what} {value} does not exist{looked if not p.is_absolute() else ''}; "
                      f"supply the {what} or fix the path in the recipe")


def resolve_init(value, key: str = "model.init") -> str:
    """Absolute path of the export a run starts from: an export directory (absolute, or relative to
    the working directory) or the name of a shipped model (``shapes-demo``), as ``--model`` takes it
    elsewhere (:func:`unio.export.export_path`). Neither -> RecipeError naming ``key``."""
    p = Path(str(value)).expanduser()
    if (p if p.is_absolute() else Path.cwd() / p).is_dir():
        return _whole_model(resolve_path(p, key, "dir", shipped=False), key)
    try:
        found = export_path(str(value))
    except CheckpointError as exc:
        raise RecipeError(f"{key}: {exc}") from None
    if not Path(found).is_dir():
        raise RecipeError(f"{key}: {value} is not a folder; give an export directory or a shipped model name")
    return _whole_model(str(Path(found).resolve()), key)


def _whole_model(path: str, key: str) -> str:
    if export_kind(path) == ADAPTERS:  # LoRA weights over a base: no whole model to start from
        raise RecipeError(f"{key}: {path} holds LoRA adapters, not a whole model; export its run merged "
                          "(unio export RUN OUT --lora merged) and start from that")
    return path


# ----------------------------------------------------------------------------- validation
def resolve(recipe: dict, source: str = "<recipe>") -> dict:
    """Check every section and make paths absolute; returns the recipe (modified in place)."""
    model = recipe["model"]
    _check_model(model)
    if model.get("init"):
        model["init"] = resolve_init(model["init"])
    else:
        recipe["tokenizers"] = resolve_path(recipe["tokenizers"], "tokenizers", "dir")
    if recipe["prompts"]:
        recipe["prompts"] = resolve_path(recipe["prompts"], "prompts", "dir")
    ds = str(recipe["deepspeed"])
    if not ds.endswith(".json") and "/" not in ds:
        ds = f"recipes/deepspeed/{ds}.json"
    recipe["deepspeed"] = resolve_path(ds, "deepspeed")
    recipe["out"] = str((Path.cwd() / Path(str(recipe["out"])).expanduser()).resolve())

    t = recipe["train"]
    for key in ("steps", "batch_size", "log_every"):
        if t[key] < 1:
            raise RecipeError(f"train.{key} must be >= 1, got {t[key]}")
    for key in ("warmup", "eval_every", "save_every", "eval_n", "keep_checkpoints"):
        if t[key] < 0:
            raise RecipeError(f"train.{key} must be >= 0, got {t[key]}")
    if t["micro_batch_size"] is not None:
        t["micro_batch_size"] = coerce(t["micro_batch_size"], 1, "train.micro_batch_size")
        if t["micro_batch_size"] < 1:
            raise RecipeError(f"train.micro_batch_size must be >= 1, got {t['micro_batch_size']}")
    if t["precision"] not in ("auto", "fp32", "bf16"):
        raise RecipeError(f"train.precision must be auto, fp32 or bf16, got {t['precision']!r}")
    if t["lr"] <= 0 or not 0 <= t["min_lr_ratio"] <= 1:
        raise RecipeError(f"train.lr must be > 0 and train.min_lr_ratio in [0, 1], got {t['lr']}, {t['min_lr_ratio']}")
    if len(t["betas"]) != 2:
        raise RecipeError(f"train.betas must be two numbers, got {t['betas']}")
    if t["lora"] is not None:
        _check_lora(t["lora"], model)

    d = recipe["data"]
    if d["on_bad_record"] not in ("error", "skip"):
        raise RecipeError(f"data.on_bad_record must be 'error' or 'skip', got {d['on_bad_record']!r}")
    if not isinstance(d["train"], list) or not d["train"]:
        raise RecipeError("data.train must list at least one source, e.g. [{source: shapes, seed: 0, tasks: {caption: 1}}]")
    if not isinstance(d["eval"], list):
        raise RecipeError("data.eval must be a list of sources (or [])")
    for split in ("train", "eval"):
        d[split] = [_check_source(spec, f"data.{split}[{i}]", need_tasks=split == "train")
                    for i, spec in enumerate(d[split])]
    if d["eval_tasks"] is not None:
        if isinstance(d["eval_tasks"], str):
            d["eval_tasks"] = [s.strip() for s in d["eval_tasks"].split(",") if s.strip()]
        _check_tasks(d["eval_tasks"], "data.eval_tasks")

    if recipe["num_bins"] < 2:
        raise RecipeError(f"num_bins must be >= 2, got {recipe['num_bins']}")
    tt = recipe["text_tokenizer"]
    if tt["train"] and model.get("init"):
        raise RecipeError("text_tokenizer.train cannot be combined with model.init: a fine-tuned model keeps its tokenizers")
    if tt["model_type"] not in ("unigram", "bpe"):
        raise RecipeError(f"text_tokenizer.model_type must be unigram or bpe, got {tt['model_type']!r}")
    recipe["_source"] = source
    return recipe


_MODEL_KEYS = {"preset", "image_size", "patch_size", "init"}
_VOCAB_FIELDS = {"vocab_size", "used_vocab_size", "pad_token_id", "eos_token_id", "bos_token_id",
                 "decoder_start_token_id", "vocab_layout", "vocab_fingerprint"}


def model_overrides(model: dict) -> dict:
    """The UnioConfig fields a recipe's ``model`` section overrides."""
    return {k: v for k, v in model.items() if k not in _MODEL_KEYS}


def _check_model(model: dict) -> None:
    if model["preset"] not in PRESETS:
        raise RecipeError(f"model.preset {model['preset']!r} is unknown; use one of {sorted(PRESETS)}")
    types = {f.name: f.default for f in fields(UnioConfig)
             if f.name not in _HIDDEN_FIELDS and f.name not in _VOCAB_FIELDS}
    for key in list(model_overrides(model)):
        if key not in types:
            raise _unknown(("model", key), {**{k: None for k in _MODEL_KEYS}, **types})
        default = types[key]
        model[key] = coerce(model[key], default if default is not None else None, f"model.{key}")
    for key in ("image_size", "patch_size"):
        model[key] = coerce(model[key], 1, f"model.{key}")
        if model[key] < 1:
            raise RecipeError(f"model.{key} must be >= 1, got {model[key]}")
    if model["image_size"] % model["patch_size"]:
        raise RecipeError(f"model.image_size {model['image_size']} must be a multiple of model.patch_size {model['patch_size']}")


def _check_lora(lora: dict, model: dict) -> None:
    if lora["r"] < 1:
        raise RecipeError(f"train.lora.r must be an integer >= 1 (the adapters' rank), got {lora['r']}")
    if lora["alpha"] <= 0:
        raise RecipeError(f"train.lora.alpha must be > 0 (updates are scaled by alpha / r), got {lora['alpha']}")
    if not 0 <= lora["dropout"] < 1:
        raise RecipeError(f"train.lora.dropout must be in [0, 1), got {lora['dropout']}")
    targets = lora["targets"]
    if not targets or not all(isinstance(p, str) and p.strip() for p in targets):
        raise RecipeError(f"train.lora.targets must list module-name patterns, e.g. {list(DEFAULT_TARGETS)}; "
                          f"got {targets!r}")
    if lora["export"] not in ("merged", "adapters"):
        raise RecipeError(f"train.lora.export must be merged or adapters, got {lora['export']!r}")
    if not model.get("init"):
        raise RecipeError("train.lora adapts an existing model: set model.init to an export directory or a "
                          "shipped model name (e.g. --set model.init=shapes-demo)")
    require_peft()  # UnioError naming the install command, before any training starts


def _check_tasks(tasks, key: str) -> None:
    for name in tasks:
        if name not in task_names():
            close = difflib.get_close_matches(str(name), task_names(), n=1)
            raise RecipeError(f"{key}: unknown task {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                              + f"; known tasks: {', '.join(task_names())}")


def _check_source(spec, key: str, need_tasks: bool) -> dict:
    if isinstance(spec, str):  # "shapes" shorthand
        spec = {"source": spec}
    if not isinstance(spec, dict) or "source" not in spec:
        raise RecipeError(f"{key} must be a mapping with a 'source' key, e.g. {{source: shapes, seed: 0}}; got {spec!r}")
    try:
        required, optional, options = source_keys(str(spec["source"]))
    except DataError as exc:
        raise RecipeError(f"{key}.source: {exc}") from None
    allowed = set(required) | set(optional) | set(options) | COMMON_KEYS
    for k in spec:
        if k not in allowed:
            raise _unknown(tuple(key.split(".")) + (str(k),), {k: None for k in allowed})
    out = dict(spec)
    for k in required:
        if out.get(k) in (None, ""):
            raise RecipeError(f"{key}.{k} is required for a {spec['source']} source (a path to your data)")
    for k in (*required, *optional):
        if out.get(k) not in (None, ""):
            if k in pattern_keys(str(spec["source"])):  # a folder or a pattern of files: matched when opened
                out[k] = str(Path.cwd() / Path(str(out[k])).expanduser())
                continue
            kind = "dir" if k in folder_keys(str(spec["source"])) else "file"
            out[k] = resolve_path(out[k], f"{key}.{k}", kind, shipped=False)
    for k, default in options.items():
        if k in out:
            out[k] = coerce(out[k], default, f"{key}.{k}")
    if "weight" in out:
        out["weight"] = coerce(out["weight"], 1.0, f"{key}.weight")
    if "n" in out and out["n"] is not None:
        out["n"] = coerce(out["n"], 1, f"{key}.n")
    tasks = out.get("tasks")
    if need_tasks:
        if not isinstance(tasks, dict) or not tasks:
            raise RecipeError(f"{key}.tasks must map task names to weights, e.g. {{caption: 1, detect: 2}}")
    if tasks is not None:
        if isinstance(tasks, list):
            tasks = {t: 1.0 for t in tasks}
        if not isinstance(tasks, dict):
            raise RecipeError(f"{key}.tasks must map task names to weights, got {tasks!r}")
        _check_tasks(tasks, f"{key}.tasks")
        out["tasks"] = {t: coerce(w, 1.0, f"{key}.tasks.{t}") for t, w in tasks.items()}
        if any(w < 0 for w in out["tasks"].values()) or sum(out["tasks"].values()) <= 0:
            raise RecipeError(f"{key}.tasks weights must be >= 0 and not all zero, got {out['tasks']}")
    return out


def save_recipe(recipe: dict, path, command: str | None = None) -> None:
    """Write the resolved recipe as YAML (first line: the command that runs it again)."""
    data = {k: v for k, v in recipe.items() if not k.startswith("_")}
    header = f"# {command}\n" if command else ""
    header += f"# resolved from {recipe.get('_source', '?')}\n"
    Path(path).write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None), encoding="utf-8")
