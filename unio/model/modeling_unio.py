"""The unified encoder-decoder, top to bottom in one file.

norm -> rotary positions -> attention -> gated MLP -> blocks -> patch stem -> encoder -> decoder -> model.

The encoder reads ``[image patches ; prompt tokens]`` and the decoder writes global ids of the unified
vocabulary (unio.vocab), as in Pix2Seq, OFA, Unified-IO and Florence-2. Blocks follow the current
recipe of large Transformers: pre-norm RMSNorm, QK-norm (Dehghani et al. 2023, ViT-22B; Unified-IO 2),
SwiGLU MLP (Shazeer 2020), rotary positions (Su et al. 2021), no biases, and every attention through
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels where available).
Generation, beam search, sampling and logits processors are transformers' ``GenerationMixin``; the KV
cache is transformers' ``EncoderDecoderCache`` of two ``DynamicCache``.

Shapes: B batch, N encoder tokens (patches + prompt), T decoder tokens, H heads, D head size, C d_model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from ..errors import InputError
from .configuration_unio import UnioConfig, check_vocab
from .contrastive import INIT_LOGIT_SCALE, ContrastiveHead, UnioSeq2SeqLMOutput
from .grouping import length_groups
from .loss import token_loss

__all__ = ["UnioForConditionalGeneration", "UnioPreTrainedModel", "UnioEncoderOutput", "shift_tokens_right"]

# transformers 5.24 renamed the cache field of model outputs (and generate's keyword) from
# past_key_values to cache; the model speaks whichever name the installed release uses.
_CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"


# ----------------------------------------------------------------------------- norm and positions
def _rms_forward(x, weight, eps):
    r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()  # (..., 1)
    return torch.mul(x, r).mul_(weight), r


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-written backward. On CPU ``F.rms_norm`` is a chain of unfused ops whose
    autograd backward makes about ten passes over the activations; this one makes six. With QK-norm
    there are up to six norms per block, and they were the largest non-matmul cost of a CPU step."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        out, r = _rms_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, r)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, r = ctx.saved_tensors
        y = x * r  # the normalised input
        grad_weight = (grad * y).sum_to_size(weight.shape) if ctx.needs_input_grad[1] else None
        gy = grad * weight
        dot = (gy * y).mean(dim=-1, keepdim=True)
        return torch.addcmul(gy, y, dot, value=-1).mul_(r), grad_weight, None


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019) over the last dim; ``shape`` may add leading
    broadcast dims to the weight, e.g. (2, 1, D) normalises queries and keys in one call with their own
    weights. Computed in float32 under bf16."""

    def __init__(self, shape: int | tuple[int, ...], eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            return self(x.float()).to(x.dtype)
        if x.is_cuda:  # fused kernel there
            return F.rms_norm(x, x.shape[-1:], None, self.eps) * self.weight
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _RMSNormFunction.apply(x, self.weight, self.eps)
        return _rms_forward(x, self.weight, self.eps)[0]


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """Rotary embedding tables (T, 1, 1, D) for tokens at ``positions``, half-split layout (GPT-NeoX,
    Llama). The sign of rotate-half is folded into ``sin``, so rotating is x*cos + roll(x)*sin."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq  # (T, D/2)
    cos, sin = angles.cos(), angles.sin()
    cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)  # (T, D)
    return cos.to(dtype)[:, None, None], sin.to(dtype)[:, None, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, T, ..., D) queries/keys by position (Su et al. 2021, RoFormer)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


# ----------------------------------------------------------------------------- attention
class SelfAttention(nn.Module):
    """Multi-head self-attention: one fused q/k/v projection, QK-norm and rotary positions applied to
    queries and keys together."""

    def __init__(self, config: UnioConfig, num_branches: int, layer_idx: int | None = None):
        super().__init__()
        self.num_heads, self.head_dim, self.layer_idx = config.num_heads, config.head_dim, layer_idx
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.qk_norm = RMSNorm((2, 1, self.head_dim), config.norm_eps)  # [q weight ; k weight]
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.out.residual_branches = num_branches  # read by _init_weights (scaled residual init)

    def forward(self, x, cos, sin, attn_mask=None, is_causal=False, cache=None):
        B, T, C = x.shape
        # split / unbind rather than indexing: their backward writes all gradients in one concatenation
        qk, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).split((2, 1), dim=2)
        qk = apply_rotary(self.qk_norm(qk), cos, sin)  # (B, T, 2, H, D)
        q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, T, D)
        v = v.squeeze(2).transpose(1, 2)  # (B, H, T, D)
        if cache is not None:  # decoder under generation: append to and read back the whole history
            k, v = cache.update(k, v, self.layer_idx)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, D)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class CrossAttention(nn.Module):
    """Decoder-to-encoder attention. Keys and values of the encoder output are computed once per
    generation and kept in the cross-attention half of the ``EncoderDecoderCache``."""

    def __init__(self, config: UnioConfig, num_branches: int, layer_idx: int | None = None):
        super().__init__()
        self.num_heads, self.head_dim, self.layer_idx = config.num_heads, config.head_dim, layer_idx
        self.dropout = config.dropout
        self.q = nn.Linear(config.d_model, config.d_model, bias=False)
        self.kv = nn.Linear(config.d_model, 2 * config.d_model, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.out.residual_branches = num_branches

    def encoder_kv(self, encoder_states):
        """Keys and values (B, H, N, D) of the encoder states, as every decoding step reads them."""
        B, N, _ = encoder_states.shape
        k, v = self.kv(encoder_states).view(B, N, 2, self.num_heads, self.head_dim).unbind(2)
        return self.k_norm(k).transpose(1, 2), v.transpose(1, 2)

    def forward(self, x, encoder_states, encoder_mask=None, cache: EncoderDecoderCache | None = None):
        B, T, C = x.shape
        q = self.q_norm(self.q(x).view(B, T, self.num_heads, self.head_dim)).transpose(1, 2)  # (B, H, T, D)
        if cache is not None and cache.is_updated.get(self.layer_idx):
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            k, v = layer.keys, layer.values
        else:
            k, v = self.encoder_kv(encoder_states)
            if cache is not None:
                k, v = cache.cross_attention_cache.update(k, v, self.layer_idx)
                cache.is_updated[self.layer_idx] = True
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=encoder_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class GatedMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up fused into one matmul."""

    def __init__(self, config: UnioConfig, num_branches: int):
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.down.residual_branches = num_branches

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


# ----------------------------------------------------------------------------- blocks
class EncoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: UnioConfig):
        super().__init__()
        branches = 2 * config.encoder_layers
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = SelfAttention(config, branches)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = GatedMLP(config, branches)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, cos=None, sin=None, attn_mask=None):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, attn_mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class DecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: UnioConfig, layer_idx: int):
        super().__init__()
        branches = 3 * config.decoder_layers
        self.self_norm = RMSNorm(config.d_model, config.norm_eps)
        self.self_attn = SelfAttention(config, branches, layer_idx)
        self.cross_norm = RMSNorm(config.d_model, config.norm_eps)
        self.cross_attn = CrossAttention(config, branches, layer_idx)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = GatedMLP(config, branches)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, encoder_states, cos=None, sin=None, self_mask=None, is_causal=False, encoder_mask=None,
                past_key_values: EncoderDecoderCache | None = None):
        self_cache = past_key_values.self_attention_cache if past_key_values is not None else None
        x = x + self.drop(self.self_attn(self.self_norm(x), cos, sin, self_mask, is_causal, self_cache))
        x = x + self.drop(self.cross_attn(self.cross_norm(x), encoder_states, encoder_mask, past_key_values))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


# ----------------------------------------------------------------------------- encoder
class PatchStem(nn.Module):
    """Image (B, 3, S, S) -> one token per P x P patch (B, N, C).

    "linear" is ViT's linear projection of each flattened patch (written as a stride-P convolution).
    "conv" is the convolutional stem of Xiao et al. 2021 ("Early convolutions help Transformers see
    better"): log2(P) stride-2 3x3 convolutions, then a 1x1 projection. The default is "linear"
    because it learned faster per step: training the tiny preset to read a square's box and colour
    (``benchmarks/model_speed.py --stem-study --stem-steps 500``, batch 16, AdamW 1e-3), mean loss over
    steps 451-500 was 1.22 with "linear" and 1.81 with "conv" (3.08 vs 3.18 over steps 1-50);
    results in benchmarks/results/stem_study.json. On the shapes world itself (the shapes-tiny recipe,
    300 steps, one seed; benchmarks/results/stem_study_shapes.json) the mean training loss over steps
    251-300 was 1.99 with "linear" and 2.09 with "conv": "conv" was ahead on VQA and classification
    (what an object is) and behind on captions, boxes and grounding (where it is). It is also the
    cheaper of the two.
    """

    def __init__(self, config: UnioConfig):
        super().__init__()
        P, C = config.patch_size, config.d_model
        if config.patch_stem == "linear":
            self.proj = nn.Conv2d(3, C, P, stride=P)
        else:
            n = int(math.log2(P))
            widths = [max(C >> (n - i), 8) for i in range(n)]  # C/2^n, ..., C/2
            layers, ch = [], 3
            for w in widths:
                layers += [nn.Conv2d(ch, w, 3, stride=2, padding=1), nn.GELU()]
                ch = w
            layers.append(nn.Conv2d(ch, C, 1))
            self.proj = nn.Sequential(*layers)

    def forward(self, pixel_values):
        return self.proj(pixel_values).flatten(2).transpose(1, 2)  # (B, N, C)


@dataclass
class UnioEncoderOutput(BaseModelOutput):
    """Encoder states plus the (B, N) bool mask of the encoder tokens the decoder may attend to
    (None when all are valid). Keeping the mask here lets ``generate`` expand it for beams together
    with the states, whatever mixture of image-less and padded samples the batch holds."""

    attention_mask: torch.Tensor | None = None


class UnioEncoder(nn.Module):
    """Bidirectional Transformer over [image patches ; prompt tokens].

    Several images per example (an image pair, the frames of a clip; ``config.max_images`` > 1) are
    read together: each image's patches get the same 2-D positions plus a learned image-index (time)
    embedding, and every patch attends to every other patch and the prompt (joint space-time attention,
    ViViT's first model, Arnab et al. 2021: at 4 frames x 64 patches the full attention costs little, and
    one attention pattern keeps the encoder the same for one image, a pair or a clip; TimeSformer's
    divided attention pays off at hundreds of patches per frame). Image 0's index embedding starts at
    zero, so a single-image model given ``max_images`` > 1 computes exactly what it did before.

    Positions: patches get learned 2-D position embeddings, one row and one column vector per grid
    index added together (as Pix2Struct does). Images always arrive letterboxed to the same square, so
    nothing needs to extrapolate; an additive table costs nothing per layer (2-D RoPE would rotate q and
    k in every layer); and a factorised row + column table gives each vector G times more training
    signal than a full G x G grid, which matters for small-data training. Prompt tokens get 1-D rotary
    positions, so prompts have no length cap; patches get the identity rotation (position 0), so
    text-patch attention depends on content and modality alone. A learned modality vector tells patch
    tokens from text tokens.
    """

    main_input_name = "input_ids"  # read by GenerationMixin._prepare_model_inputs

    def __init__(self, config: UnioConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.config = config
        G, C = config.grid_size, config.d_model
        self.embed_tokens = embed_tokens  # shared with the decoder and the output layer
        self.patch_stem = PatchStem(config)
        self.row_embed = nn.Parameter(torch.zeros(G, C))
        self.col_embed = nn.Parameter(torch.zeros(G, C))
        self.modality_embed = nn.Parameter(torch.zeros(2, C))  # 0: image patch, 1: prompt token
        self.mask_embed = nn.Parameter(torch.zeros(C))  # replaces masked patches (inpainting)
        if config.max_images > 1:  # which image of the example a patch belongs to (pairs, clip frames)
            self.image_index_embed = nn.Parameter(torch.zeros(config.max_images, C))
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.norm = RMSNorm(C, config.norm_eps)

    def embed_images(self, pixel_values, patch_mask=None):
        """(B, K, 3, S, S) -> (B, K * N, C): each image's patches plus its image-index embedding."""
        cfg = self.config
        B, K = pixel_values.shape[:2]
        if K > cfg.max_images:
            raise InputError(f"an example holds {K} images but this model reads at most max_images={cfg.max_images}"
                             + ("; it was trained on one image per example: fine-tune it with model.max_images set"
                                " (e.g. --set model.max_images=8)" if cfg.max_images == 1 else ""))
        if patch_mask is not None:
            patch_mask = patch_mask.reshape(B * K, *patch_mask.shape[2:]) if patch_mask.ndim >= 3 and \
                patch_mask.shape[:2] == (B, K) else patch_mask
        x = self._embed_patches(pixel_values.reshape(B * K, *pixel_values.shape[2:]), patch_mask)
        x = x.view(B, K, -1, x.shape[-1])
        if cfg.max_images > 1:
            x = x + self.image_index_embed[:K, None].to(x.dtype)
        return x.reshape(B, -1, x.shape[-1])

    def embed_image(self, pixel_values, patch_mask=None):
        """(B, 3, S, S) -> (B, N, C) patch embeddings with positions; (B, K, 3, S, S) -> (B, K * N, C)."""
        if pixel_values.ndim == 5:
            return self.embed_images(pixel_values, patch_mask)
        x = self._embed_patches(pixel_values, patch_mask)
        if self.config.max_images > 1:  # one image: it is image 0 of its example
            x = x + self.image_index_embed[0].to(x.dtype)
        return x

    def _embed_patches(self, pixel_values, patch_mask=None):
        cfg = self.config
        S, G = cfg.image_size, cfg.grid_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, S, S):
            raise InputError(f"pixel_values must be (B, 3, {S}, {S}) or (B, K, 3, {S}, {S}) for K images per example "
                             f"(images letterboxed to image_size={S}, e.g. with unio.images.letterbox), "
                             f"got {tuple(pixel_values.shape)}")
        pixel_values = pixel_values.to(self.row_embed.dtype)
        if patch_mask is not None:
            patch_mask = patch_mask.to(device=pixel_values.device, dtype=torch.bool)
            if patch_mask.shape[1:] == (G * G,):
                patch_mask = patch_mask.view(-1, G, G)
            if patch_mask.shape != (pixel_values.shape[0], G, G):
                raise InputError(f"patch_mask must be bool (B, {G}, {G}) or (B, {G * G}) for a {G}x{G} patch grid, "
                                 f"got {tuple(patch_mask.shape)}")
            # Blank the masked pixels too: a convolutional stem would otherwise see them across patch borders.
            P = cfg.patch_size
            pixel_mask = patch_mask.repeat_interleave(P, 1).repeat_interleave(P, 2)[:, None]
            pixel_values = pixel_values.masked_fill(pixel_mask, 0.0)
        x = self.patch_stem(pixel_values)  # (B, N, C)
        if patch_mask is not None:
            x = torch.where(patch_mask.view(x.shape[0], -1, 1), self.mask_embed.to(x.dtype), x)
        pos = (self.row_embed[:, None] + self.col_embed[None, :]).view(G * G, -1)  # (N, C)
        return x + (pos + self.modality_embed[0])

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, patch_mask=None, has_image=None,
                output_attentions=None, output_hidden_states=None, return_dict=True) -> UnioEncoderOutput:
        """Encode a batch.

        Args:
            pixel_values: (B, 3, S, S) floats in [-1, 1], letterboxed; or (B, K, 3, S, S), K images per
                example (at most ``config.max_images``); None for image-less batches.
            input_ids: (B, L) prompt ids (global ids of the unified vocabulary), right-padded.
            attention_mask: (B, L) 1 for prompt tokens, 0 for padding.
            patch_mask: bool (B, S/P, S/P) or (B, N) (with K images: (B, K, S/P, S/P)): patches replaced
                by a learned mask embedding.
            has_image: bool (B,) (with K images: (B, K)): False for samples of a mixed batch that have no
                image, or fewer than K (their pixel_values are ignored: no encoder or decoder token
                attends to their patches).

        A batch whose examples hold different numbers of images (a clip beside single pictures) is
        encoded group by group, each group as long as its own images need, and the states padded
        to the longest (``attention_mask`` marks the real ones): an example reads exactly what it
        would read alone, and a single picture does not pay for a clip's frames.
        """
        groups = _image_count_groups(pixel_values, has_image)
        if groups is not None and input_ids is not None and not output_hidden_states:
            return self._forward_groups(groups, pixel_values, input_ids, attention_mask, patch_mask, has_image,
                                        return_dict)
        parts, valid = [], []
        B = None
        if pixel_values is not None:
            img = self.embed_image(pixel_values, patch_mask)
            B, N = img.shape[:2]
            parts.append(img)
            if has_image is not None:
                has_image = torch.as_tensor(has_image, dtype=torch.bool, device=img.device)
                K = pixel_values.shape[1] if pixel_values.ndim == 5 else 1
                want = (B,) if pixel_values.ndim == 4 else (B, K)
                if has_image.shape != want:
                    raise InputError(f"has_image must be bool {want}, got {tuple(has_image.shape)}")
                valid.append(has_image.view(B, K, 1).expand(B, K, N // K).reshape(B, N))
            else:
                valid.append(None)
        elif patch_mask is not None:
            raise InputError("patch_mask was given without pixel_values; pass the image whose patches it masks")
        L = 0 if input_ids is None else input_ids.shape[1]
        if input_ids is not None and L > 0:
            if B is not None and input_ids.shape[0] != B:
                raise InputError(f"pixel_values hold {B} images but input_ids hold {input_ids.shape[0]} prompts")
            B = input_ids.shape[0]
            V = self.embed_tokens.num_embeddings
            if int(input_ids.min()) < 0 or int(input_ids.max()) >= V:
                raise InputError(f"input_ids must be global ids in [0, {V}); got values in "
                                 f"[{int(input_ids.min())}, {int(input_ids.max())}] (pad prompts with the pad id, not -100)")
            parts.append(self.embed_tokens(input_ids) + self.modality_embed[1])
            if attention_mask is not None and attention_mask.shape != input_ids.shape:
                raise InputError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                                 f"{tuple(input_ids.shape)}")
            valid.append(None if attention_mask is None else attention_mask.bool())
        if not parts:
            raise InputError("the encoder needs pixel_values, input_ids, or both")
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, N, C)

        mask = None
        if any(v is not None for v in valid):
            mask = torch.cat([torch.ones(p.shape[:2], dtype=torch.bool, device=x.device) if v is None else v
                              for p, v in zip(parts, valid)], dim=1)  # (B, N)
            if bool(mask.all()):
                mask = None  # no mask lets SDPA take its fastest path
            elif not bool(mask.any(dim=1).all()):
                raise InputError("a sample has neither an image (has_image=False) nor any prompt token; give "
                                 "every sample at least one of the two")

        # rotary tables: identity for patches, positions 0..L-1 for prompt tokens
        cos, sin = rotary_tables(torch.arange(L, device=x.device), self.config.head_dim, self.config.rope_theta,
                                 x.dtype)  # (L, 1, 1, D)
        n_img = x.shape[1] - L
        if n_img:
            cos = torch.cat((cos.new_ones((n_img,) + cos.shape[1:]), cos))
            sin = torch.cat((sin.new_zeros((n_img,) + sin.shape[1:]), sin))

        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, N) broadcast over heads, queries
        hidden_states = (x,) if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, cos=cos, sin=sin, attn_mask=attn_mask)
            if output_hidden_states:
                hidden_states += (x,)
        x = self.norm(x)
        out = UnioEncoderOutput(last_hidden_state=x, hidden_states=hidden_states, attention_mask=mask)
        return out if return_dict else out.to_tuple()


    def _forward_groups(self, groups, pixel_values, input_ids, attention_mask, patch_mask, has_image, return_dict):
        """Each group of examples with the same number of images encoded alone, states padded to the longest."""
        B, C = input_ids.shape[0], self.config.d_model
        outs = []
        for k, rows in groups:
            sub = self(pixel_values[rows, :k], input_ids[rows],
                       None if attention_mask is None else attention_mask[rows],
                       None if patch_mask is None else patch_mask[rows, :k], has_image[rows, :k])
            outs.append((rows, sub.last_hidden_state, sub.attention_mask))
        length = max(h.shape[1] for _, h, _ in outs)
        states = outs[0][1].new_zeros(B, length, C)
        mask = torch.zeros(B, length, dtype=torch.bool, device=states.device)
        for rows, h, m in outs:
            states[rows, : h.shape[1]] = h
            mask[rows, : h.shape[1]] = True if m is None else m
        out = UnioEncoderOutput(last_hidden_state=states, attention_mask=mask)
        return out if return_dict else out.to_tuple()


def _image_count_groups(pixel_values, has_image):
    """[(k, row indices)] when a (B, K, ...) batch mixes examples of different image counts (each
    example's images first, as collate lays them out); None when one layout serves every row."""
    if pixel_values is None or pixel_values.ndim != 5 or pixel_values.shape[1] < 2 or has_image is None:
        return None
    has_image = torch.as_tensor(has_image, dtype=torch.bool, device=pixel_values.device)
    if has_image.shape != pixel_values.shape[:2]:
        return None  # forward's own check says what is wrong
    counts = has_image.sum(1)
    prefix = torch.arange(has_image.shape[1], device=has_image.device)[None] < counts[:, None]
    if not torch.equal(prefix, has_image) or int(counts.min()) == int(counts.max()):
        return None
    counts = counts.clamp_min(1)  # an example without any image reads one masked slot, as before
    return [(int(k), (counts == k).nonzero()[:, 0]) for k in torch.unique(counts).tolist()]


# ----------------------------------------------------------------------------- decoder
class UnioDecoder(nn.Module):
    """Causal Transformer over unified-vocabulary ids with cross-attention to the encoder; 1-D rotary
    positions, so target length is not capped (detection targets run to a few hundred tokens)."""

    def __init__(self, config: UnioConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.config = config
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.decoder_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)

    def forward(self, input_ids, encoder_hidden_states, encoder_attention_mask=None, attention_mask=None,
                past_key_values: EncoderDecoderCache | None = None, output_hidden_states=False):
        B, T = input_ids.shape
        x = self.embed_tokens(input_ids)
        rows = getattr(past_key_values, "row_positions", None)
        if rows is not None:  # rows that started at different steps (unio.model.decoding.LiveBatch): one token each
            cos, sin = rotary_tables(rows, self.config.head_dim, self.config.rope_theta, x.dtype)
            return self._layers(x, encoder_hidden_states, cos[:, None], sin[:, None], past_key_values.self_mask(),
                                False, encoder_attention_mask, past_key_values, output_hidden_states)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        positions = torch.arange(past, past + T, device=x.device)
        cos, sin = rotary_tables(positions, self.config.head_dim, self.config.rope_theta, x.dtype)

        # Right-padded targets need no mask: causality alone keeps padding out of real tokens' view.
        # An explicit mask is built only for padding inside the history or several new tokens after a cache.
        padded = attention_mask is not None and not bool(attention_mask.all())
        self_mask, is_causal = None, False
        if past == 0 and not padded:
            is_causal = T > 1
        elif T > 1 or padded:
            keys = torch.arange(past + T, device=x.device)
            self_mask = (keys[None, :] <= positions[:, None])[None, None]  # (1, 1, T, past + T)
            if padded:
                key_ok = attention_mask.bool()[:, -(past + T):]
                self_mask = self_mask & (key_ok[:, None, None, :] | (keys[None, :] == positions[:, None]))

        return self._layers(x, encoder_hidden_states, cos, sin, self_mask, is_causal, encoder_attention_mask,
                            past_key_values, output_hidden_states)

    def _layers(self, x, encoder_hidden_states, cos, sin, self_mask, is_causal, encoder_attention_mask,
                past_key_values, output_hidden_states):
        encoder_mask = None if encoder_attention_mask is None else encoder_attention_mask[:, None, None, :]
        hidden_states = (x,) if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, encoder_hidden_states, cos=cos, sin=sin, self_mask=self_mask, is_causal=is_causal,
                      encoder_mask=encoder_mask, past_key_values=past_key_values)
            if output_hidden_states:
                hidden_states += (x,)
        return self.norm(x), hidden_states


# ----------------------------------------------------------------------------- model
def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: [start, y_0, ..., y_{T-2}], ignored (-100) labels -> pad."""
    shifted = labels.new_empty(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == -100, pad_token_id)


class UnioPreTrainedModel(PreTrainedModel):
    config_class = UnioConfig
    config: UnioConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EncoderLayer", "DecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            # GPT-2's scaled init: each residual branch's output projection shrinks with the number of
            # branches summed into the residual stream, so activations stay O(1) at any depth.
            init.normal_(module.weight, mean=0.0, std=std / math.sqrt(getattr(module, "residual_branches", 1)))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.lecun_normal_(module.weight)  # unit-variance outputs from unit-variance pixels (ViT)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, UnioEncoder):
            for p in (module.row_embed, module.col_embed, module.modality_embed, module.mask_embed):
                init.normal_(p, mean=0.0, std=std)
            if hasattr(module, "image_index_embed"):
                # image 0's vector zero (a single picture reads exactly as before); the others random, so
                # that frames are told apart from the first step: with all of them zero, the encoder sees
                # a clip's frames as an unordered set and cannot tell "moves left" from "moves right"
                if not getattr(module.image_index_embed, "_is_hf_initialized", False):  # never a loaded one
                    init.normal_(module.image_index_embed, mean=0.0, std=std)
                    with torch.no_grad():
                        module.image_index_embed[0].zero_()


class UnioForConditionalGeneration(UnioPreTrainedModel, GenerationMixin):
    """Encoder over [image patches ; prompt] -> decoder over the unified vocabulary.

    ``model(pixel_values, input_ids, attention_mask, labels=labels)`` returns a ``Seq2SeqLMOutput``
    with the loss; ``model.generate(pixel_values=..., input_ids=..., max_new_tokens=...)`` decodes with
    any of transformers' strategies. Padded vocabulary ids (>= ``config.used_vocab_size``) get -inf
    logits and are never generated.
    """

    # The encoder's and decoder's token tables are the shared one: saved once, re-tied on load.
    _tied_weights_keys = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}

    def __init__(self, config: UnioConfig):
        super().__init__(config)
        # One embedding table for prompt tokens, decoder inputs and the output layer (T5, Pix2Seq).
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = UnioEncoder(config, self.shared)
        self.decoder = UnioDecoder(config, self.shared)
        # CoCa's embedding head, only with projection_dim > 0 (models without it keep exactly their weights)
        self.contrastive = ContrastiveHead(config) if config.projection_dim else None
        self.max_length_groups = 3  # decoder passes per batch under ``logits_mask`` (see forward)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ContrastiveHead):
            init.constant_(module.logit_scale, INIT_LOGIT_SCALE)

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, value):
        self.shared = self.encoder.embed_tokens = self.decoder.embed_tokens = value

    def get_encoder(self, modality=None):
        return self.encoder

    def get_decoder(self):
        return self.decoder

    def get_image_features(self, pixel_values, has_image=None) -> torch.Tensor:
        """(B, D) unit-norm image embeddings (CLIP's name): the encoder on the images alone, pooled."""
        return self._head().image_embeds(self.encoder, pixel_values, has_image)

    def get_text_features(self, input_ids, attention_mask=None) -> torch.Tensor:
        """(B, D) unit-norm text embeddings (CLIP's name): the encoder on the texts alone, pooled."""
        return self._head().text_embeds(self.encoder, input_ids, attention_mask)

    def _head(self) -> ContrastiveHead:
        if self.contrastive is None:
            raise InputError("this model has no embedding head (config.projection_dim=0); train one with the retrieve "
                             "task and model.projection_dim set (e.g. --set model.projection_dim=256)")
        return self.contrastive

    @classmethod
    def from_pretrained(cls, *args, vocab=None, **kwargs):
        """``from_pretrained(path, vocab=UnifiedVocab(...))`` refuses a checkpoint made with other tokenizers."""
        model = super().from_pretrained(*args, **kwargs)
        if vocab is not None:
            check_vocab(model.config, vocab)
        return model

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        label_weights: torch.Tensor | None = None,
        logits_mask: torch.Tensor | None = None,
        contrast_ids: torch.LongTensor | None = None,
        contrast_mask: torch.Tensor | None = None,
        encoder_outputs: UnioEncoderOutput | tuple | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        use_cache: bool | None = None,
        cache: EncoderDecoderCache | None = None,
        cache_position: torch.Tensor | None = None,  # accepted for API compatibility; positions come from the cache
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = True,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        """One teacher-forced pass, or one decoding step under ``generate``.

        ``labels`` (B, T) are global ids with -100 ignored; without ``decoder_input_ids`` they are shifted
        right behind ``config.decoder_start_token_id``. ``label_weights`` (B, T) weight each token's loss
        (Pix2Seq's sequence augmentation): loss = sum(w * ce) / sum(w) over the non-ignored tokens.
        Attention weights are never materialised (SDPA), so ``output_attentions`` returns none.

        ``logits_mask`` (B, T) bool, right-aligned runs of True (teacher forcing only): logits are
        computed only where it is True and come back flattened, (N, V) in row-major order of the
        mask, and the loss (if ``labels``) is taken over those positions. The decoder then runs the
        samples in up to ``max_length_groups`` (3; 1 under ZeRO-3, whose parameter gathers need the
        same module calls on every process) groups of similar target length, so a batch that mixes 3-token
        answers with 65-token images pays for neither the padding nor the output layer on it.
        Causality makes this exact: a position never sees the padding after it.

        The KV cache comes as ``cache`` (the name ``generate`` uses from transformers 5.24 on) or
        ``past_key_values`` (earlier releases); the output carries it under the field name of the
        installed release, so ``generate`` finds it again on either side of the rename.

        ``contrast_ids`` (B, Lt) with ``contrast_mask`` (B, Lt; rows of zeros: no text) pair some rows'
        images with texts (the retrieve task): with ``config.projection_dim`` > 0 the output's
        ``contrastive_loss`` is ``config.contrastive_weight`` times their symmetric InfoNCE loss
        (unio.model.contrastive), added to ``loss`` when ``labels`` are given.
        """
        if cache is not None:
            if past_key_values is not None and past_key_values is not cache:
                raise InputError("pass the KV cache once, as cache or as past_key_values, not both")
            past_key_values = cache
        if encoder_outputs is None:
            encoder_outputs = self.encoder(pixel_values, input_ids, attention_mask, patch_mask, has_image,
                                           output_hidden_states=output_hidden_states)
        elif not isinstance(encoder_outputs, UnioEncoderOutput):  # a tuple or another library's output
            states = encoder_outputs[0]
            mask = attention_mask.bool() if attention_mask is not None and attention_mask.shape == states.shape[:2] \
                else None
            encoder_outputs = UnioEncoderOutput(last_hidden_state=states, attention_mask=mask)

        if labels is not None:
            use_cache = False
            if decoder_input_ids is None:
                decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id,
                                                       self.config.decoder_start_token_id)
        if decoder_input_ids is None:
            raise InputError("forward needs decoder_input_ids or labels (generate() supplies them itself)")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(), DynamicCache())
        elif isinstance(past_key_values, DynamicCache):
            past_key_values = EncoderDecoderCache(past_key_values, DynamicCache())

        if logits_mask is not None:
            if use_cache and past_key_values is not None and past_key_values.get_seq_length() > 0:
                raise InputError("logits_mask is for teacher-forced passes, not for decoding with a cache")
            if output_hidden_states:
                raise InputError("logits_mask and output_hidden_states cannot be combined: the decoder runs "
                                 "in length groups; pass one or the other")
            h = self._grouped_decoder(decoder_input_ids, encoder_outputs, decoder_attention_mask,
                                      logits_mask.to(torch.bool))
            decoder_hidden_states, use_cache = None, False
        else:
            h, decoder_hidden_states = self.decoder(
                decoder_input_ids, encoder_outputs.last_hidden_state, encoder_outputs.attention_mask,
                decoder_attention_mask, past_key_values if use_cache else None, output_hidden_states)
        bias = None
        if self.config.used_vocab_size < self.config.vocab_size:  # padding ids are never predicted
            bias = h.new_zeros(self.config.vocab_size)
            bias[self.config.used_vocab_size:] = float("-inf")
        logits = F.linear(h, self.shared.weight, bias)  # (B, T, V): tied output layer

        loss = None
        if labels is not None and logits_mask is not None:
            if labels.shape != logits_mask.shape:
                raise InputError(f"labels {tuple(labels.shape)} and logits_mask {tuple(logits_mask.shape)} must "
                                 "have the same shape")
            keep = logits_mask.to(torch.bool)
            loss = token_loss(logits[None], labels[keep][None],
                              None if label_weights is None else label_weights[keep][None],
                              self.config.used_vocab_size)
        elif labels is not None:
            loss = token_loss(logits, labels, label_weights, self.config.used_vocab_size)
        contrastive_loss = None
        if self.contrastive is not None and (contrast_ids is not None or not use_cache):  # not while decoding
            contrastive_loss = self.contrastive.batch_loss(self.encoder, self.config, pixel_values, has_image,
                                                           contrast_ids, contrast_mask)
            if loss is not None and contrastive_loss is not None:
                loss = loss + contrastive_loss
        elif contrast_ids is not None and (contrast_mask is None or bool(contrast_mask.any())):
            self._head()  # texts to contrast but no head: raises, saying how to get one

        out = UnioSeq2SeqLMOutput(contrastive_loss=contrastive_loss,
            loss=loss, logits=logits, **{_CACHE_FIELD: past_key_values if use_cache else None},
            decoder_hidden_states=decoder_hidden_states,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states)
        return out if return_dict or return_dict is None else out.to_tuple()

    def _grouped_decoder(self, decoder_input_ids, encoder_outputs, decoder_attention_mask, keep):
        """Final decoder states (N, C) at the True positions of ``keep`` (B, T), row-major, with the
        samples decoded in length groups (see ``forward``)."""
        B, T = decoder_input_ids.shape
        if keep.shape != (B, T):
            raise InputError(f"logits_mask {tuple(keep.shape)} must be (B, T) = {(B, T)}")
        cols = torch.arange(1, T + 1, device=keep.device)
        lengths = (keep * cols).amax(dim=1)  # 1 + last kept position (0: nothing kept)
        states, enc_mask = encoder_outputs.last_hidden_state, encoder_outputs.attention_mask
        if self.max_length_groups > 1:
            groups = length_groups(lengths.tolist(), self.max_length_groups)
        else:  # one pass over every sample, always: the same module calls on every rank (ZeRO-3)
            groups = [(list(range(B)), max(1, int(lengths.max())))]
        if len(groups) == 1 and groups[0][1] == T and len(groups[0][0]) == B:
            h, _ = self.decoder(decoder_input_ids, states, enc_mask, decoder_attention_mask)
            return h[keep]
        full = states.new_zeros(B, T, self.config.d_model)
        for idx, length in groups:
            rows = torch.tensor(idx, device=keep.device)
            h, _ = self.decoder(decoder_input_ids[rows, :length], states[rows],
                                None if enc_mask is None else enc_mask[rows],
                                None if decoder_attention_mask is None else decoder_attention_mask[rows, :length])
            full = full.index_put((rows[:, None], torch.arange(length, device=keep.device)[None]), h)
        return full[keep]

    # ------------------------------------------------------------------ generation hooks
    def prepare_inputs_for_generation(self, *args, **kwargs):
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        for name in ("pixel_values", "patch_mask", "has_image"):  # already consumed by the encoder
            inputs.pop(name, None)
        return inputs

    def _maybe_initialize_input_ids_for_generation(self, inputs=None, bos_token_id=None, model_kwargs=None):
        # An image with no prompt: an empty prompt, rather than transformers' default of a bos token.
        if inputs is None and model_kwargs and model_kwargs.get("pixel_values") is not None \
                and model_kwargs.get("encoder_outputs") is None:
            pixels = model_kwargs["pixel_values"]
            return torch.zeros((pixels.shape[0], 0), dtype=torch.long, device=pixels.device)
        return super()._maybe_initialize_input_ids_for_generation(inputs, bos_token_id, model_kwargs)

    # ------------------------------------------------------------------ measurement
    def estimate_flops(self, src_len: int, tgt_len: int, batch_size: int = 1, backward: bool = True) -> float:
        """Matmul FLOPs of one pass over ``batch_size`` samples of ``src_len`` encoder tokens (patches +
        prompt) and ``tgt_len`` target tokens; x3 with the backward pass (nanoGPT's estimate_mfu, counted
        matrix by matrix). Causal self-attention counts half its square; norms and softmax are not counted."""
        c = self.config
        C, F_, S, T = c.d_model, c.d_ff, src_len, tgt_len
        mlp = 2 * 3 * C * F_
        enc = c.encoder_layers * S * (2 * 4 * C * C + mlp + 2 * 2 * S * C)
        dec = c.decoder_layers * (T * (2 * 4 * C * C + 2 * 2 * (T / 2) * C)  # self-attention
                                  + T * 2 * 2 * C * C + S * 2 * 2 * C * C + T * 2 * 2 * S * C  # cross-attention
                                  + T * mlp)
        head = T * 2 * C * c.vocab_size
        patches = c.num_patches * 2 * 3 * c.patch_size ** 2 * C if S >= c.num_patches else 0
        flops = batch_size * (enc + dec + head + patches)
        return 3 * flops if backward else flops

    def estimate_flops_per_token(self, src_len: int, tgt_len: int, backward: bool = True) -> float:
        """:meth:`estimate_flops` of one sample divided by its target tokens."""
        return self.estimate_flops(src_len, tgt_len, 1, backward) / tgt_len
