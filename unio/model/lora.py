"""LoRA adapters on a unio model (Hu et al., 2021), through the ``peft`` library (``pip install
"unio[lora]"``).

Each chosen ``nn.Linear`` (weight W, frozen) gets a low-rank update: y = W x + (alpha / r) B A x,
with A (r x in) random, B (out x r) zero at the start, so the adapted model starts as the base.
Only A and B train. The adapters are put into the model in place
(``peft.inject_adapter_in_model``): the model stays a ``UnioForConditionalGeneration`` (its
``generate``, the pipeline and DeepSpeed see the same module), with LoRA layers in place of the
targeted Linear layers.

Targets are module-name patterns, matched against the model's dotted module paths:

- a name matches every module whose path ends with it: ``qkv`` (every self-attention's fused
  q/k/v projection), ``cross_attn.q``, ``decoder.layers.0.mlp.down``;
- a pattern with ``*``, ``?`` or ``[`` is a glob over the whole path: ``decoder.*.qkv``;
- a pattern naming a block (``attn``: the encoder's self-attention, ``self_attn``: the decoder's,
  ``cross_attn``, ``mlp``, ``encoder``, ``decoder.layers.2``) selects every Linear layer inside it.

The default, :data:`DEFAULT_TARGETS`, is every Linear layer of the attention and MLP blocks: the
fused self-attention ``qkv``, the cross-attention ``q`` and ``kv``, every attention output
projection ``out``, and the MLP's ``gate_up`` and ``down`` (the patch stem, the norms and the tied
embedding / output layer stay frozen). A pattern that matches no Linear layer is an error that
lists the layers there are.
"""
from __future__ import annotations

import fnmatch
import importlib
import re
from collections import Counter

import torch
from torch import nn

from ..errors import InputError, UnioError

__all__ = ["DEFAULT_TARGETS", "ADAPTER_NAME", "require_peft", "linear_names", "match_targets", "add_lora",
           "has_lora", "lora_settings", "adapter_state_dict", "load_adapter_state", "merge_lora",
           "copy_lora_structure", "parameter_counts", "base_state_dict"]

DEFAULT_TARGETS = ("qkv", "q", "kv", "out", "gate_up", "down")
ADAPTER_NAME = "default"
INSTALL = 'pip install "unio[lora]"'


def require_peft():
    """The peft module, or a UnioError saying how to install it."""
    try:  # optional dependency, imported only when LoRA is asked for
        return importlib.import_module("peft")
    except ImportError:
        raise UnioError(f"LoRA fine-tuning and adapter exports need the peft package: {INSTALL} "
                        "(or pip install peft)") from None


def _tuner_layer_class():
    return importlib.import_module("peft.tuners.tuners_utils").BaseTunerLayer


def _lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The LoRA layers in ``model`` by path (empty when it has none or peft is not installed)."""
    try:
        base = _tuner_layer_class()
    except ImportError:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, base)}


def has_lora(model: nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None)) and bool(_lora_modules(model))


def linear_names(model: nn.Module) -> list[str]:
    """Paths of the model's own Linear layers (inside a LoRA layer: the layer's path, not its parts)."""
    lora = _lora_modules(model)
    inner = tuple(f"{name}." for name in lora)
    return [name for name, m in model.named_modules()
            if (isinstance(m, nn.Linear) and not name.startswith(inner)) or name in lora]


def _summary(names: list[str]) -> str:
    """Linear layers by kind (digits as N) with counts, e.g. ``decoder.layers.N.cross_attn.kv (3)``."""
    kinds = Counter(re.sub(r"\.\d+(?=\.|$)", ".N", n) for n in names)
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    return (f"Linear layer names: {', '.join(leaves)}; layers: "
            + ", ".join(f"{k} ({c})" for k, c in kinds.items()))


def match_targets(model: nn.Module, patterns) -> list[str]:
    """Paths of the Linear layers the patterns select (see the module's doc); InputError naming the
    patterns that select none, with the Linear layers the model has."""
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",")]
    patterns = list(patterns or [])
    if not patterns or not all(isinstance(p, str) and p.strip() for p in patterns):
        raise InputError(f"LoRA targets must be a non-empty list of module-name patterns, got {patterns!r}; "
                         f"e.g. {list(DEFAULT_TARGETS)}")
    linears = linear_names(model)
    modules = [name for name, _ in model.named_modules() if name]
    chosen: dict[str, None] = {}
    unmatched = []
    for p in (p.strip() for p in patterns):
        glob = any(c in p for c in "*?[")
        hits = [n for n in modules if (fnmatch.fnmatchcase(n, p) if glob else n == p or n.endswith("." + p))]
        picked = [n for n in linears if any(n == h or n.startswith(h + ".") for h in hits)]
        if not picked:
            unmatched.append(p)
        chosen.update(dict.fromkeys(picked))
    if unmatched:
        raise InputError(f"LoRA targets {unmatched} match no Linear layer of the model. {_summary(linears)}. "
                         "Name layers (qkv, out, gate_up), blocks (attn, cross_attn, mlp) or globs (decoder.*.qkv)")
    return [n for n in linears if n in chosen]


def add_lora(model: nn.Module, r: int = 16, alpha: float = 32, targets=DEFAULT_TARGETS, dropout: float = 0.0):
    """Put LoRA adapters into ``model`` in place (returned too): every other parameter is frozen."""
    peft = require_peft()
    if int(r) < 1:
        raise InputError(f"LoRA rank r must be >= 1, got {r}")
    if has_lora(model):
        raise InputError("the model already has LoRA adapters; merge them (merge_lora) before adding others")
    names = match_targets(model, targets)
    config = peft.LoraConfig(r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout),
                             target_modules=names, bias="none")
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, p in model.named_parameters():  # peft freezes the rest; make sure of it
        p.requires_grad_(".lora_A." in name or ".lora_B." in name)
    model._unio_lora = {"r": int(r), "alpha": float(alpha), "dropout": float(dropout),
                        "targets": list(targets) if not isinstance(targets, str) else [targets], "modules": names}
    return model


def lora_settings(model: nn.Module) -> dict | None:
    """What :func:`add_lora` was given (r, alpha, dropout, targets, the adapted ``modules``)."""
    return dict(model._unio_lora) if has_lora(model) and hasattr(model, "_unio_lora") else None


def copy_lora_structure(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Give ``dst`` (same architecture, no adapters) the adapters ``src`` has (weights not copied)."""
    s = lora_settings(src)
    if s is not None:
        add_lora(dst, s["r"], s["alpha"], s["modules"], s["dropout"])
        dst._unio_lora["targets"] = s["targets"]
    return dst


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; a tied weight counts once."""
    seen = {id(p): p for p in model.parameters()}
    return (sum(p.numel() for p in seen.values() if p.requires_grad), sum(p.numel() for p in seen.values()))


def adapter_state_dict(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The adapter weights, keyed as peft saves them (``...qkv.lora_A.weight``) behind ``prefix``."""
    peft = require_peft()
    state = peft.get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    return {prefix + k: v.detach().clone().contiguous() for k, v in state.items()}


def load_adapter_state(model: nn.Module, state: dict, where: str = "the adapter weights") -> None:
    """Set the adapter weights of a model that has the adapters (keys as :func:`adapter_state_dict`
    writes them, with or without peft's ``base_model.model.`` prefix); every adapter weight must be
    there, and nothing else."""
    peft = require_peft()
    state = {k.removeprefix("base_model.model."): v for k, v in state.items()}
    expected = set(peft.get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise UnioError(f"{where} do not fit the model's adapters: missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}; the adapters were made for another model or other targets")
    peft.set_peft_model_state_dict(model, state, adapter_name=ADAPTER_NAME)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W + alpha/r B A) and put the plain Linear layers
    back, in place: the model is then an ordinary unio model with the adapted weights."""
    layers = _lora_modules(model)
    for name, layer in layers.items():
        layer.merge(adapter_names=[ADAPTER_NAME])
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    for attr in ("peft_config", "_unio_lora"):
        if hasattr(model, attr):
            delattr(model, attr)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen base weights of an adapted model, keyed as in the model without adapters."""
    out = {}
    for k, v in model.state_dict().items():
        if ".lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    return out
