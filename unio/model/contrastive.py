"""The contrastive embedding head (CoCa, Yu et al. 2022): image and text embeddings from the shared
encoder, trained with a symmetric InfoNCE loss beside the captioning loss of the decoder.

An image embedding is the encoder run on the image alone (no prompt), its patch states mean-pooled;
a text embedding is the encoder run on the text alone (no image), its token states mean-pooled. Each
goes through its own linear projection to ``config.projection_dim`` and is L2-normalised, so a dot
product is a cosine similarity. A learnable temperature (CLIP's logit scale, Radford et al. 2021)
starts at 1/0.07 and is clamped at 100.

The head exists only when ``config.projection_dim`` > 0, so models without it keep exactly their weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import Seq2SeqLMOutput

from ..errors import InputError

__all__ = ["ContrastiveHead", "UnioSeq2SeqLMOutput", "info_nce", "INIT_LOGIT_SCALE", "MAX_LOGIT_SCALE"]

INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature
MAX_LOGIT_SCALE = 100.0                # CLIP's clamp on exp(logit_scale)


@dataclass
class UnioSeq2SeqLMOutput(Seq2SeqLMOutput):
    """``Seq2SeqLMOutput`` plus ``contrastive_loss``: the weighted InfoNCE term of the batch's rows that
    carry ``contrast_ids`` (already inside ``loss`` when labels were given), None when not computed."""

    contrastive_loss: torch.FloatTensor | None = None


def info_nce(image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP, CoCa) of (B, D) unit-norm image and text embeddings, row i of each a pair:
    the mean of the image->text and text->image cross-entropies of the scaled cosine similarities.

    Identical texts in one batch need no special case: their embeddings are equal, so the loss and its
    gradients are those of a target spread evenly over them.
    """
    if image_embeds.shape != text_embeds.shape or image_embeds.ndim != 2:
        raise InputError(f"image and text embeddings must both be (B, D), got {tuple(image_embeds.shape)} and "
                         f"{tuple(text_embeds.shape)}")
    logits = scale * image_embeds.float() @ text_embeds.float().T  # (B, B): image i vs text j
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _pool(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B, N, C) encoder states over the positions where ``mask`` (B, N) is True (all: None)."""
    if mask is None:
        return states.mean(1)
    m = mask.to(states.dtype)[..., None]
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)


class ContrastiveHead(nn.Module):
    """Projections of pooled encoder states to the joint embedding space, and the temperature."""

    def __init__(self, config):
        super().__init__()
        self.image_proj = nn.Linear(config.d_model, config.projection_dim, bias=False)
        self.text_proj = nn.Linear(config.d_model, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.full((1,), INIT_LOGIT_SCALE))  # 1-d: DeepSpeed broadcasts bytes
        self.weight = float(config.contrastive_weight)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100 (CLIP)."""
        return self.logit_scale.float().exp().clamp(max=MAX_LOGIT_SCALE)[0]

    def image_embeds(self, encoder, pixel_values: torch.Tensor, has_image: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) or (B, K, 3, S, S) -> (B, D) unit-norm float32: the encoder on the image(s) alone,
        mean over their (present) patch states."""
        out = encoder(pixel_values, None, None, None, has_image)
        return F.normalize(self.image_proj(_pool(out.last_hidden_state, out.attention_mask)).float(), dim=-1)

    def text_embeds(self, encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) right-padded global ids -> (B, D) unit-norm float32: the encoder on the text alone,
        mean over its tokens."""
        if input_ids is None or input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise InputError("text embeddings need input_ids (B, L) with at least one token per text")
        out = encoder(None, input_ids, attention_mask)
        return F.normalize(self.text_proj(_pool(out.last_hidden_state, out.attention_mask)).float(), dim=-1)

    def batch_loss(self, encoder, config, pixel_values, has_image, contrast_ids, contrast_mask) -> torch.Tensor | None:
        """The weighted InfoNCE loss over the rows of a training batch that carry ``contrast_ids`` (their
        image vs their text), or None when there are none.

        In training a batch without such rows still runs both passes on one blank row and adds them with
        weight 0: every parameter then takes part in every step, and every process makes the same module
        calls (ZeRO reduces gradients in buckets and, at stage 3, gathers parameters module by module).
        """
        rows = None
        if contrast_ids is not None:
            if contrast_mask is None:
                contrast_mask = torch.ones_like(contrast_ids)
            if contrast_mask.shape != contrast_ids.shape:
                raise InputError(f"contrast_mask {tuple(contrast_mask.shape)} must match contrast_ids "
                                 f"{tuple(contrast_ids.shape)}")
            rows = contrast_mask.bool().any(1).nonzero()[:, 0]
            if len(rows) and pixel_values is None:
                raise InputError("contrast_ids pair texts with their images, but the batch has no pixel_values")
        if rows is not None and len(rows):
            ids, mask = contrast_ids[rows], contrast_mask[rows].bool()
            images = self.image_embeds(encoder, pixel_values[rows], None if has_image is None else has_image[rows])
            texts = self.text_embeds(encoder, ids, mask)
            return self.weight * info_nce(images, texts, self.scale())
        if not (self.training and torch.is_grad_enabled()):
            return None
        device, dtype = self.logit_scale.device, self.image_proj.weight.dtype
        S = config.image_size
        blank = self.image_embeds(encoder, torch.zeros(1, 3, S, S, device=device, dtype=dtype))
        word = self.text_embeds(encoder, torch.full((1, 1), int(config.pad_token_id or 0), device=device))
        return 0.0 * (blank.sum() + word.sum() + self.scale())
