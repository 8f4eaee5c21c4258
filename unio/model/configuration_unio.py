"""Configuration of the unified encoder-decoder (:class:`UnioConfig`) and its size presets.

The config carries the unified vocabulary's layout and fingerprint, so a checkpoint knows which
tokenizers it was trained with (DESIGN.md, "The unified vocabulary").
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from transformers import PretrainedConfig

from ..errors import InputError, VocabMismatchError
from ..vocab import UnifiedVocab

__all__ = ["UnioConfig", "PRESETS", "check_vocab"]

# d_model, encoder layers, decoder layers, heads. head_dim is 64 everywhere (T5, ViT, Llama), the size
# at which SDPA kernels are fastest; the gated MLP is 8/3 d_model wide (SwiGLU's parameter-matched width,
# Shazeer 2020), rounded up to a multiple of 64.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=256, encoder_layers=4, decoder_layers=4, num_heads=4),
    "small": dict(d_model=512, encoder_layers=8, decoder_layers=8, num_heads=8),
    "base": dict(d_model=768, encoder_layers=12, decoder_layers=12, num_heads=12),
    "large": dict(d_model=1024, encoder_layers=24, decoder_layers=24, num_heads=16),
}


def gated_mlp_width(d_model: int, multiple: int = 64) -> int:
    return -(-(8 * d_model // 3) // multiple) * multiple


class UnioConfig(PretrainedConfig):
    """Hyper-parameters of :class:`~unio.model.UnioForConditionalGeneration`.

    Build one with :meth:`preset`; every field can be overridden there.
    """

    model_type = "unio"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    # Names the transformers machinery (caches, generation, Trainer) looks up.
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "num_heads",
                     "num_hidden_layers": "decoder_layers"}

    # ---- vocabulary (global ids of unio.vocab.UnifiedVocab)
    vocab_size: int = 1024            # UnifiedVocab.size: rows of the (tied) embedding, a multiple of 64
    used_vocab_size: int | None = None  # UnifiedVocab.used_size: ids >= this are padding and never generated
    pad_token_id: int | None = 0
    eos_token_id: int | None = 1
    bos_token_id: int | None = None     # unused: the decoder starts from decoder_start_token_id
    decoder_start_token_id: int | None = 3  # UnifiedVocab.bos_id
    vocab_layout: dict | None = None    # UnifiedVocab.to_dict(): ranges, tokenizer hashes
    vocab_fingerprint: str | None = None
    # ---- network
    d_model: int = 256
    encoder_layers: int = 4
    decoder_layers: int = 4
    num_heads: int = 4
    d_ff: int | None = None             # gated MLP width; None -> 8/3 d_model rounded up to 64
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0         # 1-D rotary positions of prompt and target tokens
    dropout: float = 0.0                # on attention probabilities and residual branches
    initializer_range: float = 0.02
    # ---- image input
    image_size: int = 64                # images arrive letterboxed to image_size x image_size
    patch_size: int = 8
    patch_stem: str = "linear"          # "linear" (ViT) or "conv" (Xiao et al. 2021); see modeling_unio
    max_images: int = 1                 # images one example may hold (pairs, clip frames); > 1 adds a learned
    #                                     image-index embedding, zero at init (see UnioEncoder)
    # ---- contrastive embeddings (CoCa; unio.model.contrastive)
    projection_dim: int = 0             # > 0: image/text embedding head of this size (CLIP's name); 0: no head
    contrastive_weight: float = 1.0     # weight of the InfoNCE loss beside the token loss
    # ---- transformers flags
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = True
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        if self.d_ff is None:
            self.d_ff = gated_mlp_width(self.d_model)
        if self.used_vocab_size is None:
            self.used_vocab_size = self.vocab_size
        problems = []
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            problems.append(f"d_model={self.d_model} must split into num_heads={self.num_heads} heads of even size")
        if self.image_size % self.patch_size:
            problems.append(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        if self.patch_stem not in ("linear", "conv"):
            problems.append(f"patch_stem={self.patch_stem!r} must be 'linear' or 'conv'")
        if self.patch_stem == "conv" and (self.patch_size & (self.patch_size - 1) or self.patch_size < 2):
            problems.append(f"patch_stem='conv' needs a power-of-two patch_size >= 2, got {self.patch_size}")
        if not 1 <= self.max_images <= 64:
            problems.append(f"max_images={self.max_images} must lie in 1..64")
        dim = self.projection_dim
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            problems.append(f"projection_dim={dim!r} must be a whole number >= 0 (0: no embedding head)")
        if isinstance(self.contrastive_weight, bool) or not isinstance(self.contrastive_weight, (int, float)) \
                or not self.contrastive_weight >= 0:
            problems.append(f"contrastive_weight={self.contrastive_weight!r} must be >= 0")
        if not 0 < self.used_vocab_size <= self.vocab_size:
            problems.append(f"used_vocab_size={self.used_vocab_size} must lie in (0, vocab_size={self.vocab_size}]")
        if problems:
            raise InputError("invalid UnioConfig: " + "; ".join(problems))
        super().__post_init__(**kwargs)

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def grid_size(self) -> int:
        """Patches per side of the letterboxed image."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, vocab=None, image_size: int = 64, patch_size: int = 8, **overrides: Any) -> "UnioConfig":
        """A config of a named size: ``tiny``, ``small``, ``base`` or ``large``.

        ``vocab`` (a :class:`~unio.vocab.UnifiedVocab`) sets the vocabulary size, the special ids and the
        layout + fingerprint that checkpoints carry. Without it pass ``vocab_size`` (benchmarks do).
        """
        if name not in PRESETS:
            raise InputError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(f"unknown UnioConfig field(s) {unknown}; known fields: {sorted(known - _HIDDEN_FIELDS)}")
        values: dict[str, Any] = dict(PRESETS[name], image_size=image_size, patch_size=patch_size)
        if vocab is not None:
            values.update(vocab_size=vocab.size, used_vocab_size=vocab.used_size, pad_token_id=vocab.pad_id,
                          eos_token_id=vocab.eos_id, decoder_start_token_id=vocab.bos_id,
                          vocab_layout=vocab.to_dict(), vocab_fingerprint=vocab.fingerprint)
        elif "vocab_size" not in overrides:
            raise InputError("UnioConfig.preset needs vocab=UnifiedVocab(...) (or vocab_size=... for a "
                             "vocabulary-free benchmark model)")
        values.update(overrides)
        return cls(**values)


_HIDDEN_FIELDS = {f.name for f in fields(PretrainedConfig)}


def check_vocab(config: UnioConfig, vocab) -> None:
    """Raise :class:`VocabMismatchError` unless ``vocab`` is the vocabulary ``config`` was built with.

    The message names every part that differs (text tokenizer, image tokenizer, number of bins, ...).
    """
    layout = getattr(config, "vocab_layout", None)
    if not layout:
        raise VocabMismatchError("this model config records no vocabulary layout (it was built without "
                                 "vocab=...), so its tokenizers cannot be verified; build it with "
                                 "UnioConfig.preset(name, vocab=UnifiedVocab(...))")
    UnifiedVocab.from_dict(layout).check(vocab, what="the tokenizers supplied")
    if config.vocab_size != vocab.size:
        raise VocabMismatchError(f"the model has {config.vocab_size} embedding rows but the vocabulary has "
                                 f"{vocab.size} ids; load the model with the tokenizers it was trained with")
